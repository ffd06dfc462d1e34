"""Readers for the two dataset layouts, patient-level splits and loading into arrays.

- kaggle_3m (LGG segmentation): ``ROOT/<patient>/<patient>_<k>.tif`` with
  ``<patient>_<k>_mask.tif`` beside it. The phantom generator writes the same layout.
- classification folders: ``ROOT/yes/*`` (tumour) and ``ROOT/no/*`` (no tumour), any of
  PNG, JPEG or TIFF. Each file counts as its own patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan.errors import DataError
from brainscan.layout import IMAGE_SUFFIXES, is_mask_file, mask_path_for
from brainscan.preprocessing import decode_image, mask_to_target, preprocess
from brainscan.train.choices import Split

SPLITS = tuple(s.value for s in Split)
DEFAULT_FRACTIONS = (0.75, 0.15, 0.10)
_KAGGLE_SLICE = re.compile(r"^(?P<patient>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class Sample:
    """One slice: its image, its mask if the layout has masks, its label, its patient."""

    image: Path
    patient: str
    label: int  # 1 = tumour
    mask: Path | None = None
    index: int = 0


def find_kaggle3m(root: Path) -> list[Sample]:
    """All slices of a kaggle_3m-layout folder, ordered by patient and slice number."""
    root = Path(root)
    samples = []
    for image in sorted(root.glob("*/*")):
        if image.suffix.lower() not in IMAGE_SUFFIXES or is_mask_file(image):
            continue
        match = _KAGGLE_SLICE.match(image.stem)
        mask = mask_path_for(image)
        if match is None or not mask.exists():
            continue
        label = int(decode_image(mask.read_bytes()).any())
        samples.append(Sample(image, image.parent.name, label, mask, int(match["k"])))
    samples.sort(key=lambda s: (s.patient, s.index))
    return samples


def find_yes_no(root: Path) -> list[Sample]:
    """All images of a ``yes/`` + ``no/`` classification folder."""
    root = Path(root)
    samples = []
    for label, folder in ((1, "yes"), (0, "no")):
        for image in sorted((root / folder).glob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(image, f"{folder}/{image.stem}", label))
    return samples


def find_samples(root: Path) -> list[Sample]:
    """Detect the layout of ``root`` and read it; raise with a clear message when neither fits."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if (root / "yes").is_dir() and (root / "no").is_dir():
        samples = find_yes_no(root)
    else:
        samples = find_kaggle3m(root)
    if not samples:
        raise DataError(
            f"no images found in {root}: expected <patient>/<patient>_<k>.tif with "
            "<patient>_<k>_mask.tif beside it (kaggle_3m), or yes/ and no/ folders"
        )
    return samples


def split_patients(
    patients: list[str], seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """Split patient ids (never slices) into train/val/test; deterministic for a seed.

    Every split gets at least one patient when there are three or more.
    """
    unique = sorted(set(patients))
    if len(unique) < 3:
        raise DataError(f"need at least 3 patients to split, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n_val = max(1, round(fractions[1] * len(unique)))
    n_test = max(1, round(fractions[2] * len(unique)))
    n_train = len(unique) - n_val - n_test
    if n_train < 1:
        raise DataError(f"too few patients ({len(unique)}) for a train/val/test split")
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def select(samples: list[Sample], patients: list[str]) -> list[Sample]:
    wanted = set(patients)
    return [s for s in samples if s.patient in wanted]


def load_images(samples: list[Sample], size: tuple[int, int]) -> np.ndarray:
    """Model inputs for the samples, through the served preprocessing: float32 [N, h, w, 3]."""
    out = np.empty((len(samples), size[0], size[1], 3), np.float32)
    for i, sample in enumerate(samples):
        out[i] = preprocess(sample.image.read_bytes(), size)[0]
    return out


def load_masks(samples: list[Sample], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks at model size: float32 [N, h, w, 1] of 0/1."""
    out = np.empty((len(samples), size[0], size[1], 1), np.float32)
    for i, sample in enumerate(samples):
        if sample.mask is None:
            raise DataError(f"{sample.image} has no mask: segmentation needs the kaggle_3m layout")
        out[i] = mask_to_target(decode_image(sample.mask.read_bytes()), size)
    return out


def decode_images(samples: list[Sample]) -> list[np.ndarray]:
    """The samples' images as decoded, at their own size (what the served graphs take)."""
    return [decode_image(sample.image.read_bytes()) for sample in samples]


def load_truth(samples: list[Sample]) -> list[np.ndarray]:
    """Ground-truth masks at each image's own size: uint8 [H, W] of 0/1."""
    out = []
    for sample in samples:
        if sample.mask is None:
            raise DataError(f"{sample.image} has no mask: segmentation needs the kaggle_3m layout")
        mask = decode_image(sample.mask.read_bytes())
        out.append(((mask.max(axis=2) if mask.ndim == 3 else mask) > 0).astype(np.uint8))
    return out


def load_labels(samples: list[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples], np.float32)
