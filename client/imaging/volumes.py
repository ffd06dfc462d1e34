"""MRI volumes in and out: NIfTI files and DICOM series (read by ``brainscan.client.imaging.dicom``)
are cut into axial slices, each sent as a lossless 16-bit PNG (the volume's full dynamic
range, not an 8-bit squeeze), and the answers are put back into a mask volume on the
source's own voxel grid, affine and header.

Axial slices are taken in RAS+ space whatever the source's voxel order (so a sagittal or
LPS-ordered series is sliced like the MNI volume the networks were trained on): slice k of
N runs inferior -> superior, and its image has anterior at the top (``axial_image``, which
the phantom generator uses too).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.errors import BrainscanError
from brainscan.layout import InputKind
from brainscan.orientation import axial_image, axial_mask_to_ras  # noqa: F401 (the client's API)
from brainscan.series_header import SeriesHeader

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class VolumeError(BrainscanError, ValueError):
    """A volume that cannot be read or sliced; the message names the file and the problem."""


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def to_uint16(data: np.ndarray) -> np.ndarray:
    """Intensities -> uint16 without losing levels: integer data that fits is kept as is,
    anything else (floats, negative values, 32-bit) is mapped linearly over the volume's
    own range, so every slice keeps its place in the volume's dynamic range."""
    if not np.isfinite(data).all():
        raise VolumeError("the volume holds NaN or infinite intensities")
    low, high = float(data.min()), float(data.max())
    if np.issubdtype(data.dtype, np.integer) and low >= 0 and high <= np.iinfo(np.uint16).max:
        return data.astype(np.uint16)
    if high <= low:
        return np.zeros(data.shape, np.uint16)
    scaled = (data.astype(np.float64) - low) * (np.iinfo(np.uint16).max / (high - low))
    return np.rint(scaled).astype(np.uint16)


def encode_png16(image: np.ndarray) -> bytes:
    """A uint16 image as a 16-bit greyscale PNG (lossless; fast compression)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint16)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class VolumeSummary:
    """What a clinician asks of a mask volume."""

    shape: tuple[int, ...]
    voxel_mm: tuple[float, float, float]
    slices: int
    tumour_voxels: int
    tumour_volume_ml: float
    tumour_slices: list[int]  # axial indices (inferior -> superior) with any tumour pixel
    largest_cross_section_mm2: float
    largest_cross_section_slice: int | None

    def as_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "voxel_mm": [round(v, 4) for v in self.voxel_mm],
            "slices": self.slices,
            "tumour_voxels": self.tumour_voxels,
            "tumour_volume_ml": round(self.tumour_volume_ml, 4),
            "tumour_slices": len(self.tumour_slices),
            "tumour_slice_indices": self.tumour_slices,
            "largest_cross_section_mm2": round(self.largest_cross_section_mm2, 2),
            "largest_cross_section_slice": self.largest_cross_section_slice,
        }


@dataclass(frozen=True)
class SliceBatch:
    """Slices ``start`` to ``stop`` of a volume's axial stack: one request of the pixels path,
    its PIXELS made only when it is sent, so a series waiting its turn holds 2 bytes a voxel."""

    stack: np.ndarray  # uint16 [slices, rows, columns]
    start: int
    stop: int

    @property
    def slices(self) -> range:
        return range(self.start, self.stop)

    def pixels(self) -> np.ndarray:
        """PIXELS of the request as the stack holds them, [slices, rows, columns, 1] (a view): the
        client makes them FP32 where it sends them (the request, or the shared-memory slot)."""
        return self.stack[self.start : self.stop, :, :, None]


@dataclass
class Volume:
    """One 3-D scan: intensities in the source's voxel order and its voxel -> RAS+ mm affine."""

    source: Path
    kind: InputKind  # NIFTI or DICOM
    data: np.ndarray
    affine: np.ndarray
    header: object | None = None  # the NIfTI header of a NIfTI source
    notes: list[str] = field(default_factory=list)
    # a DICOM source: the file and frame (1-based) of each slice along the volume's third axis,
    # and the distance between neighbouring slices (the median: a missing slice does not move it)
    sources: list[tuple[Path, int]] = field(default_factory=list)
    slice_spacing: float | None = None

    def _orientation(self):
        from nibabel import orientations

        return orientations.io_orientation(self.affine)

    def to_ras(self, array: np.ndarray) -> np.ndarray:
        from nibabel import orientations

        return orientations.apply_orientation(array, self._orientation())

    def from_ras(self, array: np.ndarray) -> np.ndarray:
        from nibabel import orientations

        back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), self._orientation())
        return orientations.apply_orientation(array, back)

    @property
    def slices(self) -> int:
        return int(self.data.shape[int(np.flatnonzero(self._orientation()[:, 0] == 2)[0])])

    def axial_stack(self) -> np.ndarray:
        """Every axial slice, inferior -> superior, as uint16 [slices, rows, columns]: the
        volume's range kept (``to_uint16``), as the server sees them either way."""
        ras = self.to_ras(to_uint16(self.data))
        return np.stack([axial_image(ras, z) for z in range(ras.shape[2])])

    def axial_png_slices(self) -> list[bytes]:
        """Every axial slice, inferior -> superior, as a 16-bit PNG."""
        return [encode_png16(image) for image in self.axial_stack()]

    def axial_batches(self, size: int) -> list[SliceBatch]:
        """The axial slices in requests of up to ``size`` slices (``SliceBatch``)."""
        stack = self.axial_stack()
        return [SliceBatch(stack, start, min(start + size, len(stack))) for start in range(0, len(stack), size)]

    def mask_volume(self, masks: list[np.ndarray]) -> np.ndarray:
        """Axial mask images (as ``axial_png_slices`` ordered them) -> uint8 0/1 volume in
        the source's voxel order, on the source's grid."""
        ras = np.stack([axial_mask_to_ras(m) for m in masks], axis=2)
        volume = self.from_ras(ras).astype(np.uint8)
        if volume.shape != self.data.shape:
            raise VolumeError(f"mask volume {volume.shape} does not match the source {self.data.shape}")
        return volume

    def axial_header(self) -> SeriesHeader:
        """What the intended-use rules read of a volume without DICOM headers (NIfTI): its
        axial slices' count, size and pixel spacing; no modality, plane or body part."""
        ornt = self._orientation()
        source_axis = {int(ornt[i, 0]): i for i in range(3)}  # RAS axis -> the source's voxel axis
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        right, anterior = source_axis[0], source_axis[1]  # an axial image's columns and rows
        return SeriesHeader(
            None,
            frozenset(),
            None,
            "",
            self.slices,
            (float(sizes[anterior]), float(sizes[right])),
            int(self.data.shape[anterior]),
            int(self.data.shape[right]),
        )

    @property
    def voxel_mm3(self) -> float:
        """The volume one voxel of the mask stands for: for a DICOM series the pixel area times
        the median distance between its slices (a missing slice does not inflate it, as the
        affine's mean step would); else the affine's voxel volume."""
        axes = self.affine[:3, :3]
        if self.slice_spacing is not None:  # DICOM voxel order: column, row, slice
            return float(np.linalg.norm(np.cross(axes[:, 0], axes[:, 1]))) * self.slice_spacing
        return abs(float(np.linalg.det(axes)))

    def summary(self, mask: np.ndarray) -> VolumeSummary:
        axes = self.affine[:3, :3]
        ornt = self._orientation()
        in_plane = [int(np.flatnonzero(ornt[:, 0] == axis)[0]) for axis in (0, 1)]
        pixel_mm2 = float(np.linalg.norm(np.cross(axes[:, in_plane[0]], axes[:, in_plane[1]])))
        per_slice = self.to_ras(mask).sum(axis=(0, 1))
        tumour_slices = [int(z) for z in np.flatnonzero(per_slice)]
        largest = int(np.argmax(per_slice)) if tumour_slices else None
        return VolumeSummary(
            shape=tuple(int(s) for s in mask.shape),
            voxel_mm=tuple(float(v) for v in np.linalg.norm(axes, axis=0)),
            slices=int(per_slice.size),
            tumour_voxels=int(mask.sum()),
            tumour_volume_ml=tumour_volume_mm3(self, mask) / 1000.0,
            tumour_slices=tumour_slices,
            largest_cross_section_mm2=float(per_slice.max()) * pixel_mm2 if tumour_slices else 0.0,
            largest_cross_section_slice=largest,
        )

    def mask_nifti_bytes(self, mask: np.ndarray, note: str | None = None) -> bytes:
        """The mask as a gzipped NIfTI-1/2 file: the source's affine; for a NIfTI source its
        header too (codes, units, orientation), with a uint8 data type. ``note`` goes into its
        description (e.g. that the volume is outside the models' intended use)."""
        import nibabel

        if self.header is not None:
            header = self.header.copy()
            header.set_data_dtype(np.uint8)
            image_class = nibabel.Nifti2Image if isinstance(header, nibabel.Nifti2Header) else nibabel.Nifti1Image
            image = image_class(mask, self.affine, header=header)
            image.header.set_slope_inter(1.0, 0.0)
        else:
            image = nibabel.Nifti1Image(mask, self.affine)
            image.set_qform(self.affine, code=1)  # scanner coordinates
            image.set_sform(self.affine, code=1)
            image.header.set_xyzt_units("mm")
        image.header["cal_min"], image.header["cal_max"] = 0, 1
        image.header["descrip"] = f"brainscan tumour mask{', ' + note if note else ''}".encode()[:79]
        return gzip.compress(image.to_bytes(), compresslevel=6)

    def write_mask(self, path: Path, mask: np.ndarray, note: str | None = None) -> None:
        write_bytes_atomic(path, self.mask_nifti_bytes(mask, note))


def tumour_volume_mm3(volume: Volume, mask: np.ndarray) -> float:
    """The tumour's volume in mm³: mask voxels times ``Volume.voxel_mm3``. The one place it is
    computed: predict's table and JSON, the summary beside the NIfTI mask and the DICOM SR."""
    return float(np.count_nonzero(mask)) * volume.voxel_mm3


def check_size(path: Path, shape: tuple[int, ...], what: str = "volume") -> None:
    """Refuse, from the header alone, a volume that would not fit the limits: too many voxels
    to hold, or slices the server would refuse (contract.MAX_IMAGE_PIXELS)."""
    voxels = int(np.prod([max(int(n), 0) for n in shape], dtype=np.int64))
    if voxels > contract.MAX_VOLUME_VOXELS:
        raise VolumeError(
            f"{path}: a {what} of {'x'.join(map(str, shape))} = {voxels} voxels; the limit is "
            f"{contract.MAX_VOLUME_VOXELS} (split it, or raise brainscan.contract.MAX_VOLUME_VOXELS)"
        )
    sides = sorted((int(n) for n in shape[:3]), reverse=True)[:2]
    if len(sides) == 2 and (sides[0] > contract.MAX_IMAGE_SIDE or sides[0] * sides[1] > contract.MAX_IMAGE_PIXELS):
        raise VolumeError(
            f"{path}: slices up to {sides[0]}x{sides[1]} pixels; the server takes at most "
            f"{contract.MAX_IMAGE_PIXELS} pixels and {contract.MAX_IMAGE_SIDE} per side"
        )


def read_nifti(path: Path) -> Volume:
    import nibabel

    try:
        image = nibabel.load(str(path))
    except Exception as exc:  # nibabel raises many types for a broken file
        raise VolumeError(f"{path}: not a readable NIfTI volume ({exc})") from None
    check_size(path, tuple(image.shape))  # from the header, before the voxels are read
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable NIfTI volume ({exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: a {data.ndim}-D image of shape {data.shape}; brainscan takes one 3-D volume")
    if not np.isfinite(image.affine).all() or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{path}: the affine is singular; cannot tell which way is axial")
    return Volume(path, InputKind.NIFTI, data, np.asarray(image.affine, dtype=np.float64), image.header)
