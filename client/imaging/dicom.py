"""DICOM series in: files grouped by series, checked from their headers before any pixel is
read (size, deflated payloads), and a series turned into a ``Volume`` whose affine comes
from the DICOM geometry (slices sorted along their normal, whatever order they arrive in)
and which remembers the file and frame of every slice, so results can point back at them
(``brainscan.client.imaging.dicom_results``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.client.imaging.volumes import Volume, VolumeError, check_size
from brainscan.layout import DICOM_MARKER, DICOM_PREAMBLE, InputKind
from brainscan.series_header import SeriesHeader

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the ``DICM`` marker of a Part-10 file (series often have no suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_PREAMBLE)
            return handle.read(len(DICOM_MARKER)) == DICOM_MARKER
    except OSError:
        return False


@dataclass
class DicomSeries:
    """The files of one series (one SeriesInstanceUID), as found on disk."""

    uid: str
    files: list[Path]
    description: str
    number: str
    folder: Path
    copies: list[Path] = field(default_factory=list)  # files repeating an instance already in the series
    study: str = ""  # StudyInstanceUID
    modality: str = ""
    # what the intended-use rules read, from the headers (before any pixel is decoded)
    image_types: set[str] = field(default_factory=set)
    orientation: tuple[float, ...] | None = None
    body_part: str = ""
    pixel_spacing: tuple[float, float] | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 0

    def header(self) -> SeriesHeader:
        """The series' headers as the intended-use rules read them."""
        return SeriesHeader(
            self.modality,
            frozenset(self.image_types),
            self.orientation,
            self.body_part,
            self.frames,
            self.pixel_spacing,
            self.rows,
            self.columns,
        )

    def _add_header(self, ds) -> None:
        self.image_types.update(str(v).strip().upper() for v in (ds.get("ImageType") or []) if str(v).strip())
        self.frames += int(getattr(ds, "NumberOfFrames", 1) or 1)
        self.rows = self.rows or int(getattr(ds, "Rows", 0) or 0)
        self.columns = self.columns or int(getattr(ds, "Columns", 0) or 0)
        self.body_part = self.body_part or str(getattr(ds, "BodyPartExamined", "") or "")
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        frame = _first_item(ds, "PerFrameFunctionalGroupsSequence")
        if self.orientation is None:
            found = ds.get("ImageOrientationPatient") or _nested(
                (frame, shared), "PlaneOrientationSequence", "ImageOrientationPatient"
            )
            self.orientation = _numbers(found, 6)
        if self.pixel_spacing is None:
            found = ds.get("PixelSpacing") or _nested((frame, shared), "PixelMeasuresSequence", "PixelSpacing")
            self.pixel_spacing = _numbers(found, 2)  # type: ignore[assignment]


def _nested(groups, sequence: str, keyword: str):
    """``keyword`` inside the first item of ``sequence`` of the first of ``groups`` that has it
    (an enhanced multi-frame file's per-frame, then shared, functional groups)."""
    for group in groups:
        inner = _first_item(group, sequence) if group is not None else None
        if inner is not None and keyword in inner:
            return inner[keyword].value
    return None


def _numbers(value, n: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n else None


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _check_deflated(path: Path) -> None:
    """pydicom inflates a deflated file whole, even to read its header: measure the inflated
    size first, in bounded steps, and refuse a file that would inflate past the limit."""
    import zlib

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        meta = pydicom.filereader.read_file_meta_info(str(path))
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return  # no readable file meta: not deflated as far as pydicom is concerned either
    if str(getattr(meta, "TransferSyntaxUID", "")) != DEFLATED:
        return
    data = Path(path).read_bytes()
    marker_end = DICOM_PREAMBLE + len(DICOM_MARKER)
    offset = marker_end if data[DICOM_PREAMBLE:marker_end] == DICOM_MARKER else 0
    group_end = _meta_group_end(data[offset:])
    if not group_end:
        raise VolumeError(f"{path}: a deflated DICOM file without a file meta group length: refused unread")
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0  # raw deflate after group 0002 (PS3.5 A.5)
    stream = memoryview(data)[offset + group_end :]
    for start in range(0, len(stream), 1 << 20):
        pending = bytes(stream[start : start + (1 << 20)])
        while pending:
            size += len(inflater.decompress(pending, 1 << 24))
            if size > contract.MAX_INFLATED_DICOM_BYTES:
                raise VolumeError(
                    f"{path}: a deflated DICOM file of {len(data) >> 10} KB that inflates past "
                    f"{contract.MAX_INFLATED_DICOM_BYTES >> 20} MB: refused before reading it"
                )
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
            series[uid] = DicomSeries(
                uid,
                [],
                str(getattr(ds, "SeriesDescription", "") or ""),
                str(getattr(ds, "SeriesNumber", "") or ""),
                path.parent,
                study=str(getattr(ds, "StudyInstanceUID", "") or ""),
                modality=str(getattr(ds, "Modality", "") or ""),
            )
        series[uid].files.append(path)
        series[uid]._add_header(ds)
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


@dataclass(frozen=True)
class Frame:
    """One image plane of a series, with its geometry and where it came from."""

    pixels: np.ndarray  # rows x columns, rescaled values
    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray  # ImageOrientationPatient: row direction, then column direction
    spacing: np.ndarray  # PixelSpacing: between rows, between columns
    path: Path
    number: int = 1  # its frame number in the file (1-based)


def _frames(path: Path) -> list[Frame]:
    """Every frame of one file."""
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
        hint = (
            f" ({syntax}: pylibjpeg-libjpeg/-openjpeg decode most compressed syntaxes; gdcm the rest)" if syntax else ""
        )
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
            geometry.append(
                (
                    _nested((item, shared), "PlanePositionSequence", "ImagePositionPatient"),
                    _nested((item, shared), "PlaneOrientationSequence", "ImageOrientationPatient"),
                    _nested((item, shared), "PixelMeasuresSequence", "PixelSpacing"),
                )
            )
        if len(geometry) != frames:
            raise VolumeError(f"{path}: multi-frame file without per-frame geometry")
    return [
        Frame(
            pixels,
            _float_list(position, 3, "ImagePositionPatient", path),
            _float_list(orientation, 6, "ImageOrientationPatient", path),
            _float_list(spacing, 2, "PixelSpacing", path),
            path,
            number,
        )
        for number, (pixels, (position, orientation, spacing)) in enumerate(zip(values, geometry), start=1)
    ]


def _checked_frames(series: DicomSeries) -> list:
    """The series' frames, once their sizes are within bounds (read from the headers first),
    all of one orientation and one size."""
    headers = [_header(path) for path in series.files]
    check_size(
        series.folder,
        (
            max(int(getattr(h, "Columns", 0) or 0) for h in headers),
            max(int(getattr(h, "Rows", 0) or 0) for h in headers),
            sum(int(getattr(h, "NumberOfFrames", 1) or 1) for h in headers),
        ),
        "DICOM series",
    )
    frames = [frame for path in series.files for frame in _frames(path)]
    orientations = {tuple(np.round(f.orientation, 4)) for f in frames}
    if len(orientations) > 1:
        raise VolumeError(
            f"{series.folder}: series {series.number or series.uid} mixes {len(orientations)} slice orientations "
            "(a localizer?); pass one volume per series"
        )
    shapes = {f.pixels.shape for f in frames}
    if len(shapes) > 1:
        raise VolumeError(
            f"{series.folder}: the slices of series {series.number or series.uid} differ in size: {sorted(shapes)}"
        )
    return frames


def _slice_step(series: DicomSeries, frames: list, normal: np.ndarray, notes: list[str]) -> tuple[np.ndarray, float]:
    """The step from one slice to the next (a vector, mm) and the median spacing, from the
    frames sorted along ``normal``; uneven spacing is noted, slices on one position refused."""
    if len(frames) == 1:
        ds = _header(series.files[0])
        thickness = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
        return normal * thickness, thickness
    steps = np.diff([float(np.dot(f.position, normal)) for f in frames])
    if (steps < 1e-4).any():
        raise VolumeError(
            f"{series.folder}: {int((steps < 1e-4).sum()) + 1} slices share a position (several "
            "echoes or acquisitions in one series?); pass them as separate series"
        )
    if steps.max() - steps.min() > 0.01 * steps.mean():
        notes.append(
            f"series {series.number or series.uid}: uneven slice spacing {steps.min():.3g}-"
            f"{steps.max():.3g} mm (a missing slice?); the NIfTI mask uses the mean, the DICOM SEG "
            "each slice's own position, the tumour volume the median spacing"
        )
    return (frames[-1].position - frames[0].position) / (len(frames) - 1), float(np.median(steps))


def read_dicom_series(series: DicomSeries) -> Volume:
    """One series -> a volume with the DICOM geometry turned into a RAS+ affine."""
    frames = _checked_frames(series)
    row_cos, col_cos = frames[0].orientation[:3], frames[0].orientation[3:]
    normal = np.cross(row_cos, col_cos)
    frames.sort(key=lambda f: float(np.dot(f.position, normal)))
    notes = [f"{len(series.copies)} duplicate file(s) of the same instances ignored"] if series.copies else []
    slice_step, spacing = _slice_step(series, frames, normal, notes)
    row_spacing, col_spacing = frames[0].spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # along a row: the column index grows
    lps[:3, 1] = col_cos * row_spacing  # down a column: the row index grows
    lps[:3, 2] = slice_step
    lps[:3, 3] = frames[0].position
    # voxel [i, j, k] = pixel (row j, column i) of slice k
    data = np.stack([f.pixels.T for f in frames], axis=2)
    return Volume(
        series.folder,
        InputKind.DICOM,
        data,
        LPS_TO_RAS @ lps,
        None,
        notes,
        sources=[(f.path, f.number) for f in frames],
        slice_spacing=spacing,
    )
