"""Input discovery and output writing for the client: masks and red overlays as PNG,
written atomically (a crash never leaves half a file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainscan.atomic import write_atomic
from brainscan.errors import DataError
from brainscan.layout import IMAGE_SUFFIXES, InputKind, image_path_for, mask_path_for  # noqa: F401 (InputKind: the client's API)

OVERLAY_RED = np.array([255, 0, 0], np.float32)
OVERLAY_ALPHA = 0.45


def ground_truth_for(image: Path) -> Path | None:
    """kaggle_3m convention: ``X.tif`` has its ground truth in ``X_mask.tif``."""
    candidate = mask_path_for(image)
    return candidate if candidate.exists() else None


def natural_key(path: Path) -> list:
    """Sort ``P_2`` before ``P_10``: slices come back in their anatomical order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _walk(paths: list[Path]):
    """Every file under ``paths`` once: files as given, folders recursively in natural
    order; a file named and also inside a named folder (or named twice) comes once."""
    seen: set[Path] = set()
    for path in paths:
        found = sorted((c for c in path.rglob("*") if c.is_file()), key=natural_key) if path.is_dir() else [path]
        for item in found:
            key = item.resolve()
            if key not in seen:
                seen.add(key)
                yield item


def _is_ground_truth(path: Path) -> bool:
    image = image_path_for(path)
    return image is not None and image.exists()


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Image files: files as given; folders recursively (ground-truth masks skipped)."""
    found: list[Path] = []
    for path in _walk(paths):
        in_folder = path not in paths
        if in_folder and (path.suffix.lower() not in IMAGE_SUFFIXES or _is_ground_truth(path)):
            continue
        found.append(path)
    return found


@dataclass
class Input:
    """One thing to predict: an image file, a NIfTI volume or a DICOM series."""

    kind: InputKind
    path: Path  # the file; for a DICOM series, its folder
    stem: str  # the name its outputs are derived from (made safe by ``safe_stems``)
    series: object | None = None  # dicom.DicomSeries

    @property
    def is_volume(self) -> bool:
        return self.kind is not InputKind.IMAGE

    @property
    def display(self) -> str:
        if self.kind is not InputKind.DICOM:
            return str(self.path)
        s = self.series
        label = " ".join(x for x in (f"series {s.number}" if s.number else "", s.description) if x)
        return f"{self.path} [{label or s.uid}]"


def collect_inputs(paths: list[Path]) -> tuple[list[Input], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Images, NIfTI volumes and DICOM series (grouped by SeriesInstanceUID) under
    ``paths``, in the order they are found. Returns the inputs, the unreadable DICOM files
    and the DICOM files that are not image slices (DICOMDIR, reports), with the reason."""
    from brainscan.client.imaging.dicom import group_series, is_dicom
    from brainscan.client.imaging.volumes import is_nifti, nifti_stem

    order: list[tuple[InputKind, object]] = []
    dicom_files: list[Path] = []
    for path in _walk(paths):
        given = path in paths
        if is_nifti(path):
            order.append((InputKind.NIFTI, path))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if given or not _is_ground_truth(path):
                order.append((InputKind.IMAGE, path))
        elif is_dicom(path):
            if not dicom_files:
                order.append((InputKind.DICOM, None))  # the series take the place of the first DICOM file
            dicom_files.append(path)
        elif given:
            order.append((InputKind.IMAGE, path))  # the server names what is wrong with it
    series, rejected, ignored = group_series(dicom_files) if dicom_files else ([], [], [])
    inputs: list[Input] = []
    images = [p for kind, p in order if kind is InputKind.IMAGE]
    image_stems = dict(zip(images, output_stems(images)))
    for kind, path in order:
        if kind is InputKind.IMAGE:
            inputs.append(Input(kind, path, image_stems[path]))
        elif kind is InputKind.NIFTI:
            inputs.append(Input(kind, path, nifti_stem(path)))
        else:
            for s in series:
                stem = "_".join(x for x in (s.folder.name, s.number, s.description) if x)
                inputs.append(Input(InputKind.DICOM, s.folder, stem, s))
    return inputs, rejected, ignored


def output_stems(files: list[Path]) -> list[str]:
    """A distinct output name per input: the stem, or parent__stem where stems collide."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{f.parent.name}__{f.stem}" for f in files]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_STEM = 120


def safe_stem(text: str) -> str:
    """A file-name stem that cannot leave its folder: no separators, no leading dots, no
    control characters, bounded length, never empty."""
    stem = _UNSAFE.sub("_", text).strip("._ ") or "unnamed"
    return stem[:MAX_STEM]


def safe_stems(stems: list[str]) -> list[str]:
    """``safe_stem`` of each, made distinct with -2, -3, ... in input order (deterministic,
    so a resumed run finds the same names)."""
    seen: dict[str, int] = {}
    out = []
    for stem in map(safe_stem, stems):
        key = stem.lower()
        seen[key] = seen.get(key, 0) + 1
        out.append(stem if seen[key] == 1 else f"{stem}-{seen[key]}")
    return out


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refusing any result outside ``folder`` (defence in depth)."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise DataError(f"output name {name!r} would leave {folder}")
    return folder / name


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


def save_png(path: Path, pixels: np.ndarray, note: str | None = None) -> None:
    """A PNG, atomically; ``note`` goes into its text (a "Comment" chunk), e.g. that the image
    is outside the models' intended use."""
    from PIL.PngImagePlugin import PngInfo

    info = None
    if note:
        info = PngInfo()
        info.add_text("Comment", note)
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info))
