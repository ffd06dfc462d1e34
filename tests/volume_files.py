"""Real NIfTI files and DICOM series written by the tests, from known axial images and
known geometry, so where every voxel must land is known in advance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainscan.client.imaging.volumes import axial_mask_to_ras


def ras_from_axial(images: list[np.ndarray]) -> np.ndarray:
    """The RAS+ volume whose axial slices (as brainscan cuts them) are ``images``."""
    return np.stack([axial_mask_to_ras(image) for image in images], axis=2)


def write_nifti(
    path: Path,
    images: list[np.ndarray],
    spacing=(0.9, 0.8, 3.0),
    origin=(-90.0, -110.0, -40.0),
    dtype=np.int16,
    slope: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI whose voxel axes are stored (S, R, A), not RAS: axis 0 runs along the
    slices. Returns (source data, affine)."""
    import nibabel

    path.parent.mkdir(parents=True, exist_ok=True)
    ras = ras_from_axial(images)
    source = np.transpose(ras, (2, 0, 1)).astype(dtype)  # source[k, i, j] = ras[i, j, k]
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2] = spacing[2], spacing[0], spacing[1]
    affine[:3, 3], affine[3, 3] = origin, 1.0
    image = nibabel.Nifti1Image(source, affine)
    image.header.set_slope_inter(slope, 0.0)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, str(path))
    return source, affine


def axial_dicom_pixels(image: np.ndarray) -> np.ndarray:
    """The pixel array an axial DICOM slice (rows posterior-ward, columns towards the
    patient's left) must hold for brainscan to cut ``image`` out of it."""
    return np.fliplr(image)


def write_dicom_series(
    folder: Path,
    images: list[np.ndarray],
    pixel_spacing=(0.9, 0.8),
    thickness=3.0,
    origin=(-100.0, -120.0, -30.0),
    description="T1 axial",
    number=3,
    rescale=(1.0, 0.0),
    shuffle_seed: int | None = 0,
    suffix: str = ".dcm",
) -> np.ndarray:
    """An axial MR series, one file per slice, file names in shuffled order. Returns the
    RAS+ affine that the geometry implies."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = list(range(len(images)))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    slope, intercept = rescale
    for position, k in enumerate(order):
        pixels = axial_dicom_pixels(images[k])
        stored = np.rint((pixels.astype(np.float64) - intercept) / slope).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{position:04d}{suffix}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "PHANTOM", "Phantom^Test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, number, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * thickness]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    row_spacing, column_spacing = pixel_spacing
    lps = np.array(
        [
            [column_spacing, 0, 0, origin[0]],
            [0, row_spacing, 0, origin[1]],
            [0, 0, thickness, origin[2]],
            [0, 0, 0, 1],
        ]
    )
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_multiframe_dicom(
    path: Path, images: list[np.ndarray], pixel_spacing=(0.9, 0.8), thickness=3.0, origin=(-100.0, -120.0, -30.0)
) -> np.ndarray:
    """An enhanced (multi-frame) MR file: one file, geometry in the functional groups.
    Returns the RAS+ affine it implies (the same as ``write_dicom_series``')."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    enhanced_mr = "1.2.840.10008.5.1.4.1.1.4.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = enhanced_mr, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = enhanced_mr, meta.MediaStorageSOPInstanceUID, "MR"
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SeriesNumber = generate_uid(), generate_uid(), 7
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = list(pixel_spacing), thickness
    shared = Dataset()
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(len(images)):
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * thickness]
        group.PlanePositionSequence = Sequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stack = np.stack([axial_dicom_pixels(i) for i in images]).astype(np.uint16)
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = len(images), stack.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stack.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    lps = np.array(
        [
            [pixel_spacing[1], 0, 0, origin[0]],
            [0, pixel_spacing[0], 0, origin[1]],
            [0, 0, thickness, origin[2]],
            [0, 0, 0, 1],
        ]
    )
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


PATIENT_NAME, PATIENT_ID = "Doe^Jane^Q", "PAT-20931-X"  # what must never appear in logs or messages


def write_mr_series(
    folder: Path,
    images: list[np.ndarray],
    row_direction=(1.0, 0.0, 0.0),
    column_direction=(0.0, 1.0, 0.0),
    origin=(-100.0, -120.0, -30.0),
    pixel_spacing=(0.9, 0.8),
    thickness=3.0,
    reverse: bool = False,
    skip: tuple[int, ...] = (),
    study: str | None = None,
    number: int = 4,
    description: str = "T2 FLAIR",
) -> list:
    """An MR series as a scanner writes it, every patient and study attribute filled in:
    slice k's pixel array is ``images[k]`` as stored (rows down the column direction), its
    position origin + k * thickness along the normal (row x column). ``reverse`` numbers and
    writes the instances from the last position to the first; ``skip`` leaves slices out
    (a missing slice). Returns the datasets written, in slice order (k), None for a skipped one."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(row_direction, float), np.asarray(column_direction, float)
    normal = np.cross(row, column)
    study, series, frame = study or generate_uid(), generate_uid(), generate_uid()
    order = list(range(len(images)))[::-1] if reverse else list(range(len(images)))
    written: list = [None] * len(images)
    for instance, k in enumerate(order, start=1):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{instance:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "19700101", "F"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20261130", "101500", "42"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "ACC42", "Ref^Doctor", "MR brain"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, number, description
        ds.Modality, ds.Manufacturer, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = "MR", "phantom", frame, ""
        ds.InstanceNumber, ds.ImageType = instance, ["ORIGINAL", "PRIMARY", "M"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 90, 9000, 1, 3
        ds.ImageOrientationPatient = [*map(float, row), *map(float, column)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * thickness * normal]
        ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), thickness
        stored = np.asarray(images[k], np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored.tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
        written[k] = ds
    return written
