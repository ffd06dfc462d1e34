"""Input discovery and output writing for the client: masks and red overlays as PNG,
written atomically (a crash never leaves half a file)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from brainscan.atomic import write_atomic
from brainscan.layout import image_path_for, mask_path_for

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
OVERLAY_RED = np.array([255, 0, 0], np.float32)
OVERLAY_ALPHA = 0.45


def ground_truth_for(image: Path) -> Path | None:
    """kaggle_3m convention: ``X.tif`` has its ground truth in ``X_mask.tif``."""
    candidate = mask_path_for(image)
    return candidate if candidate.exists() else None


def natural_key(path: Path) -> list:
    """Sort ``P_2`` before ``P_10``: slices come back in their anatomical order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders recursively (images only, ground-truth masks skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*"), key=natural_key):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    image = image_path_for(child)
                    is_truth = image is not None and image.exists()
                    if not is_truth:
                        found.append(child)
        else:
            found.append(path)
    return found


def output_stems(files: list[Path]) -> list[str]:
    """A distinct output name per input: the stem, or parent__stem where stems collide."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{f.parent.name}__{f.stem}" for f in files]


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any decoded image (8/16-bit, grey or RGB) -> uint8 RGB for viewing."""
    pixels = image.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels.astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the tumour tinted red."""
    rgb = display_rgb(image).astype(np.float32)
    where = mask.astype(bool)
    rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * OVERLAY_RED
    return rgb.astype(np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
