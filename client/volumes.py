"""MRI volumes in and out: NIfTI files and DICOM series are cut into axial slices, each sent
as a lossless 16-bit PNG (the volume's full dynamic range, not an 8-bit squeeze), and the
answers are put back into a mask volume on the source's own voxel grid, affine and header.

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

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DICOM_MAGIC_OFFSET = 128
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A volume that cannot be read or sliced; the message names the file and the problem."""


def axial_image(ras_volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a volume in RAS+ voxel order as an image: anterior up."""
    return np.ascontiguousarray(np.rot90(ras_volume[:, :, z]))


def axial_mask_to_ras(mask: np.ndarray) -> np.ndarray:
    """The inverse of ``axial_image`` for one slice."""
    return np.rot90(mask, -1)


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the ``DICM`` marker of a Part-10 file (series often have no suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


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


@dataclass
class Volume:
    """One 3-D scan: intensities in the source's voxel order and its voxel -> RAS+ mm affine."""

    source: Path
    kind: str  # "nifti" or "dicom"
    data: np.ndarray
    affine: np.ndarray
    header: object | None = None  # the NIfTI header of a NIfTI source
    notes: list[str] = field(default_factory=list)

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

    def axial_png_slices(self) -> list[bytes]:
        """Every axial slice, inferior -> superior, as a 16-bit PNG."""
        ras = self.to_ras(to_uint16(self.data))
        return [encode_png16(axial_image(ras, z)) for z in range(ras.shape[2])]

    def mask_volume(self, masks: list[np.ndarray]) -> np.ndarray:
        """Axial mask images (as ``axial_png_slices`` ordered them) -> uint8 0/1 volume in
        the source's voxel order, on the source's grid."""
        ras = np.stack([axial_mask_to_ras(m) for m in masks], axis=2)
        volume = self.from_ras(ras).astype(np.uint8)
        if volume.shape != self.data.shape:
            raise VolumeError(f"mask volume {volume.shape} does not match the source {self.data.shape}")
        return volume

    def summary(self, mask: np.ndarray) -> VolumeSummary:
        axes = self.affine[:3, :3]
        voxel_mm3 = abs(float(np.linalg.det(axes)))
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
            tumour_volume_ml=float(mask.sum()) * voxel_mm3 / 1000.0,
            tumour_slices=tumour_slices,
            largest_cross_section_mm2=float(per_slice.max()) * pixel_mm2 if tumour_slices else 0.0,
            largest_cross_section_slice=largest,
        )

    def mask_nifti_bytes(self, mask: np.ndarray) -> bytes:
        """The mask as a gzipped NIfTI-1/2 file: the source's affine; for a NIfTI source its
        header too (codes, units, orientation), with a uint8 data type."""
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
        image.header["descrip"] = b"brainscan tumour mask"
        return gzip.compress(image.to_bytes(), compresslevel=6)

    def write_mask(self, path: Path, mask: np.ndarray) -> None:
        write_bytes_atomic(path, self.mask_nifti_bytes(mask))


def check_size(path: Path, shape: tuple[int, ...], what: str = "volume") -> None:
    """Refuse, from the header alone, a volume that would not fit the limits: too many voxels
    to hold, or slices the server would refuse (contract.MAX_IMAGE_PIXELS)."""
    voxels = int(np.prod([max(int(n), 0) for n in shape], dtype=np.int64))
    if voxels > contract.MAX_VOLUME_VOXELS:
        raise VolumeError(f"{path}: a {what} of {'x'.join(map(str, shape))} = {voxels} voxels; the limit is "
                          f"{contract.MAX_VOLUME_VOXELS} (split it, or raise brainscan.contract.MAX_VOLUME_VOXELS)")
    sides = sorted((int(n) for n in shape[:3]), reverse=True)[:2]
    if len(sides) == 2 and (sides[0] > contract.MAX_IMAGE_SIDE or sides[0] * sides[1] > contract.MAX_IMAGE_PIXELS):
        raise VolumeError(f"{path}: slices up to {sides[0]}x{sides[1]} pixels; the server takes at most "
                          f"{contract.MAX_IMAGE_PIXELS} pixels and {contract.MAX_IMAGE_SIDE} per side")


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
    return Volume(path, "nifti", data, np.asarray(image.affine, dtype=np.float64), image.header)


# --- DICOM -----------------------------------------------------------------------------


@dataclass
class DicomSeries:
    """The files of one series (one SeriesInstanceUID), as found on disk."""

    uid: str
    files: list[Path]
    description: str
    number: str
    folder: Path
    copies: list[Path] = field(default_factory=list)  # files repeating an instance already in the series


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _check_deflated(path: Path) -> None:
    """pydicom inflates a deflated file whole, even to read its header: measure the inflated
    size first, in bounded steps, and refuse a file that would inflate past the limit."""
    import zlib

    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(str(path))
    except Exception:
        return  # no readable file meta: not deflated as far as pydicom is concerned either
    if str(getattr(meta, "TransferSyntaxUID", "")) != DEFLATED:
        return
    data = Path(path).read_bytes()
    offset = 132 if data[128:132] == b"DICM" else 0
    group_end = _meta_group_end(data[offset:])
    if not group_end:
        raise VolumeError(f"{path}: a deflated DICOM file without a file meta group length: refused unread")
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0  # raw deflate after group 0002 (PS3.5 A.5)
    stream = memoryview(data)[offset + group_end:]
    for start in range(0, len(stream), 1 << 20):
        pending = bytes(stream[start:start + (1 << 20)])
        while pending:
            size += len(inflater.decompress(pending, 1 << 24))
            if size > contract.MAX_INFLATED_DICOM_BYTES:
                raise VolumeError(f"{path}: a deflated DICOM file of {len(data) >> 10} KB that inflates past "
                                  f"{contract.MAX_INFLATED_DICOM_BYTES >> 20} MB: refused before reading it")
            pending = inflater.unconsumed_tail


def _meta_group_end(data: bytes) -> int:
    """Length of the file meta group (0002) from its group-length element, or 0."""
    import struct

    if data[:4] != b"\x02\x00\x00\x00" or data[4:6] != b"UL":
        return 0
    (length,) = struct.unpack("<I", data[8:12])
    return 12 + length


def _header(path: Path):
    import pydicom

    _check_deflated(path)
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)  # force: files without preamble
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable DICOM file ({exc})") from None


def group_series(files: list[Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """DICOM files -> (series in order of first appearance, unreadable files, files that
    are not image slices: DICOMDIR, reports, structure sets), the last two with the reason."""
    series: dict[str, DicomSeries] = {}
    rejected: list[tuple[Path, str]] = []
    ignored: list[tuple[Path, str]] = []
    instances: dict[str, str] = {}  # SOPInstanceUID -> SeriesInstanceUID
    for path in files:
        try:
            ds = _header(path)
        except VolumeError as exc:
            rejected.append((path, str(exc)))
            continue
        if "Rows" not in ds or "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
            ignored.append((path, f"{path}: a DICOM file without image geometry (not an MR/CT image slice)"))
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or f"no-uid:{path.parent}")
        instance = str(getattr(ds, "SOPInstanceUID", "") or "")
        if instance and instance in instances:  # the same slice twice (a copied folder): read once
            series[instances[instance]].copies.append(path)
            continue
        if instance:
            instances[instance] = uid
        if uid not in series:
            series[uid] = DicomSeries(uid, [], str(getattr(ds, "SeriesDescription", "") or ""),
                                      str(getattr(ds, "SeriesNumber", "") or ""), path.parent)
        series[uid].files.append(path)
    return list(series.values()), rejected, ignored


def _float_list(value, n: int, what: str, path: Path) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.array([])
    if array.size != n:
        raise VolumeError(f"{path}: {what} is missing or malformed")
    return array


def _single(ds, keyword: str, default: float, path: Path) -> float:
    """A numeric element that must hold one value (RescaleSlope, RescaleIntercept)."""
    value = ds.get(keyword)  # by keyword: the element's value
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        shown = "\\".join(str(v) for v in value) if not isinstance(value, str) and hasattr(value, "__iter__") else value
        raise VolumeError(f"{path}: {keyword} must hold one number, it holds {shown}") from None


def _first_item(ds, keyword: str):
    """The first item of a sequence, or None when the sequence is absent or empty."""
    sequence = ds.get(keyword)  # by keyword: the Sequence itself
    return sequence[0] if sequence else None


def _frames(path: Path):
    """(pixels, position, orientation, spacing) of every frame of one file."""
    import pydicom

    header = _header(path)
    rows, columns = int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)
    check_size(path, (columns, rows, int(getattr(header, "NumberOfFrames", 1) or 1)), "DICOM file")
    ds = None
    try:
        ds = pydicom.dcmread(str(path), force=True)
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "")
        hint = f" ({syntax}: pylibjpeg-libjpeg/-openjpeg decode most compressed syntaxes; gdcm the rest)" if syntax else ""
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VolumeError(f"{path}: cannot decode the pixel data: {first_line}{hint}") from None
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{path}: colour DICOM ({ds.PhotometricInterpretation}); MR slices are greyscale")
    slope = _single(ds, "RescaleSlope", 1.0, path) or 1.0
    intercept = _single(ds, "RescaleIntercept", 0.0, path)
    values = pixels.astype(np.float64) * slope + intercept if (slope, intercept) != (1.0, 0.0) else pixels
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        values = values.max() - values
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1:
        values = values[None]
        geometry = [(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), ds.get("PixelSpacing"))]
    else:  # enhanced multi-frame: geometry per frame, or shared
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        geometry = []
        for item in ds.get("PerFrameFunctionalGroupsSequence", []):
            def find(keyword, seq):
                for group in (item, shared):
                    inner = _first_item(group, seq) if group is not None else None
                    if inner is not None and keyword in inner:
                        return inner[keyword].value
                return None

            geometry.append((find("ImagePositionPatient", "PlanePositionSequence"),
                             find("ImageOrientationPatient", "PlaneOrientationSequence"),
                             find("PixelSpacing", "PixelMeasuresSequence")))
        if len(geometry) != frames:
            raise VolumeError(f"{path}: multi-frame file without per-frame geometry")
    out = []
    for frame, (position, orientation, spacing) in zip(values, geometry):
        out.append((frame, _float_list(position, 3, "ImagePositionPatient", path),
                    _float_list(orientation, 6, "ImageOrientationPatient", path),
                    _float_list(spacing, 2, "PixelSpacing", path)))
    return out


def read_dicom_series(series: DicomSeries) -> Volume:
    """One series -> a volume with the DICOM geometry turned into a RAS+ affine."""
    headers = [_header(path) for path in series.files]
    check_size(series.folder, (max(int(getattr(h, "Columns", 0) or 0) for h in headers),
                               max(int(getattr(h, "Rows", 0) or 0) for h in headers),
                               sum(int(getattr(h, "NumberOfFrames", 1) or 1) for h in headers)), "DICOM series")
    frames = [frame for path in series.files for frame in _frames(path)]
    where = series.folder
    orientations = {tuple(np.round(f[2], 4)) for f in frames}
    if len(orientations) > 1:
        raise VolumeError(f"{where}: series {series.number or series.uid} mixes {len(orientations)} slice orientations "
                          "(a localizer?); pass one volume per series")
    shapes = {f[0].shape for f in frames}
    if len(shapes) > 1:
        raise VolumeError(f"{where}: the slices of series {series.number or series.uid} differ in size: {sorted(shapes)}")
    row_cos, col_cos = frames[0][2][:3], frames[0][2][3:]
    normal = np.cross(row_cos, col_cos)
    frames.sort(key=lambda f: float(np.dot(f[1], normal)))
    positions = np.array([float(np.dot(f[1], normal)) for f in frames])
    notes = [f"{len(series.copies)} duplicate file(s) of the same instances ignored"] if series.copies else []
    if len(frames) > 1:
        steps = np.diff(positions)
        if (steps < 1e-4).any():
            raise VolumeError(f"{where}: {int((steps < 1e-4).sum()) + 1} slices share a position (several "
                              "echoes or acquisitions in one series?); pass them as separate series")
        if steps.max() - steps.min() > 0.01 * steps.mean():
            notes.append(f"uneven slice spacing {steps.min():.3g}-{steps.max():.3g} mm; the mean is used")
        slice_step = (frames[-1][1] - frames[0][1]) / (len(frames) - 1)
    else:
        ds = _header(series.files[0])
        thickness = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
        slice_step = normal * thickness
    row_spacing, col_spacing = frames[0][3]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # along a row: the column index grows
    lps[:3, 1] = col_cos * row_spacing  # down a column: the row index grows
    lps[:3, 2] = slice_step
    lps[:3, 3] = frames[0][1]
    # voxel [i, j, k] = pixel (row j, column i) of slice k
    data = np.stack([f[0].T for f in frames], axis=2)
    return Volume(where, "dicom", data, LPS_TO_RAS @ lps, None, notes)
