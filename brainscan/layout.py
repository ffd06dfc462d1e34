"""How image files are named, shared by the dataset readers and the client: the suffixes of
the image files the kit reads, the kaggle_3m rule (the ground truth of ``X.tif`` is
``X_mask.tif`` beside it), and where a DICOM Part-10 file says it is one."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

MASK_SUFFIX = "_mask"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # image files (not volumes, not DICOM)


class InputKind(StrEnum):
    """What an input is; its value is the ``kind`` of the JSON records."""

    IMAGE = "image"
    NIFTI = "nifti"
    DICOM = "dicom"


# A DICOM Part-10 file: a 128-byte preamble, then the marker (PS3.10 7.1)
DICOM_PREAMBLE, DICOM_MARKER = 128, b"DICM"


def mask_path_for(image: Path) -> Path:
    """``X.ext`` -> ``X_mask.ext``."""
    return image.with_name(f"{image.stem}{MASK_SUFFIX}{image.suffix}")


def image_path_for(mask: Path) -> Path | None:
    """``X_mask.ext`` -> ``X.ext``; None when ``mask`` is not named like a mask."""
    if not mask.stem.endswith(MASK_SUFFIX):
        return None
    return mask.with_name(mask.stem[: -len(MASK_SUFFIX)] + mask.suffix)


def is_mask_file(path: Path) -> bool:
    return path.stem.endswith(MASK_SUFFIX)
