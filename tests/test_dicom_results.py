"""DICOM SEG and SR written with highdicom by `brainscan predict`, from a real Triton: valid
for dciodvfy, their frames on the right source slices of series written by hand (shuffled,
reversed, oblique, with a slice missing); a series without tumour; bad series and objects
named while the others finish; no patient name or ID in any output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import (
    LESION_SLICES,
    SHAPE,
    assert_private,
    brainscan,
    check_seg_on_sources,
    dciodvfy_errors,
    lesion_images,
    sr_content,
    truth,
)
from known_networks import hand_probability
from volume_files import write_mr_series

pytestmark = pytest.mark.server


# --- the objects themselves ------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["axial", "reversed", "oblique", "missing-slice"])
def test_the_seg_frames_lie_on_their_source_slices_and_both_objects_are_valid(bright_server, tmp_path, geometry):
    options = {
        "axial": {},
        "reversed": {"reverse": True},
        # tilted 20 degrees about the patient's left-right axis: neither rows nor columns are axial
        "oblique": {"column_direction": (0.0, np.cos(np.radians(20)), np.sin(np.radians(20)))},
        "missing-slice": {"skip": (6,)},
    }[geometry]
    written = write_mr_series(tmp_path / "series", lesion_images(), **options)
    result = brainscan(
        "predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    seg_path, sr_path = (Path(p) for p in record["outputs"] if p.endswith((".seg.dcm", ".sr.dcm")))
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    check_seg_on_sources(seg_path, written)
    content = sr_content(sr_path)
    # by hand: the bright-threshold classifier's probability for the brightest slice, whose
    # bright part covers this share of it (far below the half it takes to say "tumour")
    expected_probability = hand_probability(truth(LESION_SLICES[0]).mean())
    assert content["Probability"] == pytest.approx(expected_probability, rel=0.5, abs=1e-6)
    assert content["Finding"] == "Absent" and record["label"] == "no tumour"
    voxel_mm3 = 0.9 * 0.8 * 3.0
    expected = sum(truth(k).sum() for k in LESION_SLICES) * voxel_mm3
    assert abs(content["Volume"] - expected) / expected < 0.1, (content["Volume"], expected)
    if geometry == "missing-slice":
        assert any("uneven slice spacing" in note for note in record["notes"])
    assert_private(result.stdout, result.stderr, (tmp_path / "out" / "audit.jsonl").read_text())


def test_a_series_without_tumour_gets_an_empty_seg_and_an_absent_finding(bright_server, tmp_path):
    images = [np.full(SHAPE, 300, np.uint16) for _ in range(4)]
    write_mr_series(tmp_path / "series", images)
    result = brainscan(
        "predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    sr_path = next(Path(p) for p in record["outputs"] if p.endswith(".sr.dcm"))
    seg_path = next(Path(p) for p in record["outputs"] if p.endswith(".seg.dcm"))
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    content = sr_content(sr_path)
    assert content["Finding"] == "Absent" and content["Volume"] == 0.0
    # provenance: the SHA-256 of each graph the server loaded, hashed here from the repository's
    # files, is in the SR's algorithm fields
    texts = [e.value for e in pydicom.dcmread(str(sr_path)).iterall() if e.keyword == "TextValue"]
    for network in ("classifier", "segmenter"):
        served = hashlib.sha256((bright_server.repository / network / "1" / "model.onnx").read_bytes()).hexdigest()
        assert any(network in text and served in text for text in texts), texts


def test_bad_series_and_objects_are_named_and_the_others_finish(bright_server, tmp_path):
    root = tmp_path / "inbox"
    good = write_mr_series(root / "good", lesion_images(6))
    mixed = write_mr_series(root / "mixed", lesion_images(4), number=5)
    tilted = pydicom.dcmread(root / "mixed" / "0002.dcm")
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a localizer among the axial slices
    tilted.save_as(root / "mixed" / "0002.dcm")
    write_mr_series(root / "truncated", lesion_images(4), number=6)
    broken = root / "truncated" / "0003.dcm"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    report = pydicom.dcmread(root / "good" / "0001.dcm", stop_before_pixels=True)
    report.SOPClassUID, report.Modality = "1.2.840.10008.5.1.4.1.1.88.22", "SR"  # an SR beside the images
    del report.Rows
    report.save_as(root / "report.dcm")
    result = brainscan("predict", root, "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json")
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    errors = " | ".join(r.get("error", "") for r in records)
    assert f"series {mixed[0].SeriesNumber} mixes 2 slice orientations" in errors
    assert "0003.dcm: cannot decode the pixel data" in errors
    assert "ignored 1 DICOM file(s) that are not image slices" in result.stderr
    done = [r for r in records if r.get("outputs")]
    assert [r["series"] for r in done] == [str(good[0].SeriesInstanceUID)]  # the good series finished, once
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert len(failures["failures"]) == 2
    assert_private(result.stdout, result.stderr, json.dumps(failures))
