"""What the DICOM tests share: series written by hand with a known off-centre lesion, the
truth to compare with, dciodvfy, the SEG read back onto its sources, the SR's content, and
the privacy check."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import BRAINSCAN
from volume_files import PATIENT_ID, PATIENT_NAME

ROOT = Path(__file__).resolve().parents[1]
DCIODVFY = shutil.which("dciodvfy")
USER, PASSWORD = "brainscan", "correct-horse-battery-staple"
SHAPE = (96, 112)  # rows, columns of the hand-made slices
LESION = (slice(18, 42), slice(66, 98))  # rows, columns: off-centre, top right
LESION_SLICES = (3, 4, 5)


def lesion_images(slices: int = 8) -> list[np.ndarray]:
    """Dark slices (no tumour for the bright-threshold networks), a bright box on some."""
    images = []
    for k in range(slices):
        image = np.full(SHAPE, 300, np.uint16)
        if k in LESION_SLICES:
            image[LESION] = 1500
        images.append(image)
    return images


def truth(k: int) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    if k in LESION_SLICES:
        mask[LESION] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def brainscan(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BRAINSCAN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def dciodvfy_errors(path: Path) -> list[str]:
    if DCIODVFY is None:
        pytest.skip(reason="needs dicom3tools' dciodvfy (apt-get install dicom3tools; .ci/run installs it)")
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def assert_private(*texts: str) -> None:
    for text in texts:
        for secret in (PATIENT_NAME, PATIENT_ID, "Doe", PASSWORD):
            assert secret not in text, f"{secret!r} appears in output"


def check_seg_on_sources(seg_path: Path, written: list) -> None:
    """The SEG, read back with highdicom, against the hand-made lesion of each source slice."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    sources = [ds for ds in written if ds is not None]
    frames = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in sources], segment_numbers=[1])
    for ds, frame in zip(sources, frames[..., 0].astype(bool)):
        k = written.index(ds)
        if k in LESION_SLICES:
            assert dice(frame, truth(k)) > 0.9, (k, dice(frame, truth(k)))
        else:
            assert not frame.any(), k
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [float(v) for v in sources[0].ImageOrientationPatient])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for item in seg.PerFrameFunctionalGroupsSequence:  # every frame sits where its source slice is
        # and names its segment itself: dwv 0.36 draws no mask when that is only shared (docs/pacs.md)
        assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in by_uid[source].ImagePositionPatient], atol=1e-4
        )
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SNOMED CT Neoplasm
    assert (
        segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    )  # Morphologically Abnormal Structure


def sr_content(sr_path: Path) -> dict:
    """Finding, probability and volume read from the SR's content tree."""
    found = {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                found[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                found[name] = item.ConceptCodeSequence[0].CodeMeaning
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(str(sr_path)).ContentSequence)
    return found


# Series outside an MR-axial-brain intended use, each as another scanner or step writes it:
# name -> (what volume_files.write_mr_series is given, attributes set on every file, the code)
REFUSED_SERIES = {
    "ct": ({}, {"Modality": "CT"}, "modality"),
    "localizer": ({}, {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "image-type"),
    "sagittal": ({"row_direction": (0.0, 1.0, 0.0), "column_direction": (0.0, 0.0, -1.0)}, {}, "plane"),
    "chest": ({}, {"BodyPartExamined": "CHEST"}, "body-part"),
    "derived": ({}, {"ImageType": ["DERIVED", "SECONDARY"]}, "image-type"),
}


def write_refused_series(folder: Path, name: str, number: int, study: str | None = None) -> list:
    """One of REFUSED_SERIES under ``folder``: its datasets, as written."""
    from volume_files import write_mr_series

    geometry, attributes, _ = REFUSED_SERIES[name]
    written = write_mr_series(folder, lesion_images(5), number=number, study=study, **geometry)
    for ds in written:
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(ds.filename, enforce_file_format=True)
    return written
