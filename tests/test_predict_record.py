"""predict's record as one type: the JSON a user's script reads, field by field."""

from __future__ import annotations

import json

from brainscan.client.batch.predict_record import NOT_ANALYSED, PredictRecord
from brainscan.client.imaging.volumes import VolumeSummary
from brainscan.layout import InputKind

USE = {"accepted": True, "reasons": [], "score": 0.1, "threshold": 0.5}


def test_a_refusal_keeps_a_null_probability_and_leaves_out_what_was_not_measured():
    record = PredictRecord("a.png", InputKind.IMAGE, None, NOT_ANALYSED, intended_use={**USE, "accepted": False})
    assert list(json.loads(json.dumps(record.as_dict()))) == ["file", "kind", "probability", "label", "intended_use"]
    assert record.as_dict()["probability"] is None and record.as_dict()["kind"] == "image"
    assert not record.analysed


def test_an_empty_mask_keeps_its_zero_area_and_an_empty_volume_its_null_largest_slice():
    image = PredictRecord(
        "b.png", InputKind.IMAGE, 0.01, "no tumour", area_pixels=0, area_fraction=0.0, intended_use=USE
    )
    assert image.as_dict()["area_pixels"] == 0 and image.as_dict()["area_fraction"] == 0.0
    assert "outside_intended_use" not in image.as_dict() and "segmented_slices" not in image.as_dict()
    empty = VolumeSummary((4, 4, 3), (1.0, 1.0, 2.0), 3, 0, 0.0, [], 0.0, None)
    volume = PredictRecord(
        "s",
        InputKind.DICOM,
        0.02,
        "no tumour",
        area_pixels=0,
        volume=empty,
        segmented_slices=0,
        study="1.2",
        series="1.2.3",
    )
    found = volume.as_dict()
    assert (
        found["largest_cross_section_slice"] is None and found["tumour_slices"] == 0 and found["segmented_slices"] == 0
    )
    keys = list(found)  # the volume's fields where they always stood: after the area, before the slices' figures
    assert keys[:6] == ["file", "kind", "probability", "label", "area_pixels", "shape"]
    assert keys.index("largest_cross_section_slice") < keys.index("segmented_slices") < keys.index("study")
