"""One phantom patient as the MR series a scanner would send: its axial slices (the dataset's
TIFFs, in slice order) as MR Image Storage instances that share a study, a series and a Frame
of Reference, with positions 5 mm apart along the axial normal. It gives the DICOM path of
the kit (SEG and SR out, a PACS in and out) an input without a scanner."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from brainscan.errors import DataError

PIXEL_SPACING_MM = 0.9375  # a 240 mm field of view on the 256 x 256 canvas
SLICE_STEP_MM = 5.0


def patient_slices(folder: Path) -> list[Path]:
    """The patient's image TIFFs (not masks), in slice order (<patient>_<k>.tif)."""
    found = [p for p in Path(folder).glob("*.tif") if not p.stem.endswith("_mask")]
    number = re.compile(r"_(\d+)$")
    ordered = sorted((int(m.group(1)), p) for p in found if (m := number.search(p.stem)))
    if not ordered:
        raise DataError(f"{folder}: no <patient>_<k>.tif slices in it")
    return [p for _, p in ordered]


def write_phantom_series(folder: Path, out: Path) -> list[Path]:
    """Write the patient's slices under OUT as NNNN.dcm; returns the files written."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    slices = patient_slices(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(folder).name
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k, path in enumerate(slices):
        pixels = np.asarray(Image.open(path).convert("L"), np.uint8)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        target = out / f"{k + 1:04d}.dcm"
        ds = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"PHANTOM^{name}", name, "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "", "", ""
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "", "", "brainscan phantom"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 1, "phantom FLAIR"
        ds.Modality, ds.Manufacturer, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = (
            "MR",
            "brainscan",
            frame,
            "",
        )
        ds.InstanceNumber, ds.ImageType, ds.BodyPartExamined = k + 1, ["ORIGINAL", "PRIMARY", "M", "NONE"], "BRAIN"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 90, 9000, 1, 3
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        half = PIXEL_SPACING_MM * pixels.shape[0] / 2
        ds.ImagePositionPatient = [-half, -half, k * SLICE_STEP_MM]
        ds.PixelSpacing, ds.SliceThickness = [PIXEL_SPACING_MM, PIXEL_SPACING_MM], SLICE_STEP_MM
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(target), enforce_file_format=True)
        files.append(target)
    return files
