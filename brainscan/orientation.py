"""How an axial slice of a volume becomes an image, the one convention of training data,
of the client's volumes and of the masks written back: voxels in RAS+ order, slice ``z``
rotated so that anterior is up."""

from __future__ import annotations

import numpy as np


def axial_image(ras_volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a volume in RAS+ voxel order as an image: anterior up."""
    return np.ascontiguousarray(np.rot90(ras_volume[:, :, z]))


def axial_mask_to_ras(mask: np.ndarray) -> np.ndarray:
    """The inverse of ``axial_image`` for one slice."""
    return np.rot90(mask, -1)
