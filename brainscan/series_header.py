"""What the intended-use rules read from a series' DICOM headers (``SeriesHeader``), the
planes slices lie in, and which plane an orientation is closest to."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from brainscan.contract import Choice


class Plane(Choice):
    """The plane of a slice, by the axis its normal is closest to."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


# the patient axis each plane's normal runs along (DICOM LPS: x left, y posterior, z head)
PLANE_NORMALS = {Plane.SAGITTAL: (1.0, 0.0, 0.0), Plane.CORONAL: (0.0, 1.0, 0.0), Plane.AXIAL: (0.0, 0.0, 1.0)}


@dataclass(frozen=True)
class SeriesHeader:
    """What the series rules read from a series' DICOM headers (None and empty values: not
    known, not checked; a NIfTI volume has no modality)."""

    modality: str | None
    image_types: frozenset[str]
    orientation: tuple[float, ...] | None  # ImageOrientationPatient of its slices
    body_part: str
    slices: int
    pixel_spacing_mm: tuple[float, float] | None
    rows: int = 0
    columns: int = 0


def plane_of(orientation, planes: Iterable[Plane] = tuple(Plane)) -> tuple[Plane, float]:
    """The plane of ``planes`` closest to slices of ``orientation`` (ImageOrientationPatient:
    row then column direction cosines), and the angle in degrees between their normals."""
    import numpy as np

    values = np.asarray(orientation, float)
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if not length:
        return next(iter(planes)), 90.0
    normal /= length
    angles = {p: math.degrees(math.acos(min(1.0, abs(float(np.dot(normal, PLANE_NORMALS[p])))))) for p in planes}
    plane = min(angles, key=angles.get)
    return plane, angles[plane]
