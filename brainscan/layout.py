"""The kaggle_3m naming rule, shared by the dataset readers and the client: the ground
truth of ``X.tif`` is ``X_mask.tif`` beside it."""

from __future__ import annotations

from pathlib import Path

MASK_SUFFIX = "_mask"


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
