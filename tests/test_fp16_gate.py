"""The FP16 accuracy gate's verdicts on prepared outputs: what FP16 rounding does (passes)
and the ways FP16 engines are known to fail (NaN, black masks, drift)."""

from __future__ import annotations

import numpy as np
import pytest

from brainscan.export.gate import Tolerances, check_classifier, check_segmenter

RNG = np.random.default_rng(0)


def _probabilities(n=64):
    # clear cases on both sides of 0.5, as a trained classifier gives
    return np.where(np.arange(n) % 2 == 0, RNG.uniform(0.75, 0.99, n), RNG.uniform(0.01, 0.25, n)).astype(np.float32)[
        :, None
    ]


def _mask_probabilities(n=16, size=64):
    yy, xx = np.mgrid[:size, :size]
    maps = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        if i % 4 == 3:  # a slice without tumour
            continue
        cy, cx, r = 20 + i, 30, 6 + i % 5
        maps[i, ..., 0] = 1 / (1 + np.exp(-(r - np.hypot(yy - cy, xx - cx)) * 2))
    return maps


def _failed(report) -> set[str]:
    return {c.name for c in report.failures}


def test_fp16_rounding_passes():
    fp32 = _probabilities()
    fp16 = fp32.astype(np.float16).astype(np.float32) + RNG.normal(0, 2e-3, fp32.shape).astype(np.float32)
    report = check_classifier(fp32, fp16)
    assert report.passed, report.table()
    maps = _mask_probabilities()
    truth = maps > 0.5
    report = check_segmenter(maps, maps.astype(np.float16).astype(np.float32) + 1e-3, truth)
    assert report.passed, report.table()


def test_nan_outputs_fail():
    fp32 = _probabilities()
    fp16 = fp32.copy()
    fp16[3] = np.nan
    assert "non-finite outputs (NaN/Inf)" in _failed(check_classifier(fp32, fp16))
    maps = _mask_probabilities()
    broken = maps.copy()
    broken[0] = np.nan
    failed = _failed(check_segmenter(maps, broken))
    assert {"non-finite outputs (NaN/Inf)", "masks emptied by FP16"} <= failed


def test_black_masks_fail():
    maps = _mask_probabilities()
    black = np.zeros_like(maps)  # a saturated FP16 mask head: every mask empty
    report = check_segmenter(maps, black, maps > 0.5)
    assert {"masks emptied by FP16", "mean Dice FP16 vs FP32 masks", "Dice drop vs truth (FP32 - FP16)"} <= _failed(
        report
    )
    emptied = next(c for c in report.checks if c.name == "masks emptied by FP16")
    assert emptied.value == 12  # every slice that had a tumour


def test_small_drift_passes_and_large_drift_fails():
    fp32 = _probabilities()
    assert check_classifier(fp32, fp32 + 0.015).passed  # inside 0.02, no decision changes
    large = check_classifier(fp32, np.clip(fp32 + 0.3, 0, 1))
    assert {"max |probability diff|", "decision agreement, clear cases"} <= _failed(large)
    maps = _mask_probabilities()
    shifted = np.roll(maps, 4, axis=2)  # masks drift by 4 pixels
    assert "mean Dice FP16 vs FP32 masks" in _failed(check_segmenter(maps, shifted))
    assert check_segmenter(maps, np.clip(maps + 0.01, 0, 1)).passed


def test_a_borderline_slice_may_cross_the_threshold_a_clear_one_may_not():
    fp32 = _probabilities()
    fp32[5] = 0.505  # within 0.02 of the threshold: FP16 rounding may move it across
    borderline = fp32.copy()
    borderline[5] = 0.497
    report = check_classifier(fp32, borderline)
    assert report.passed, report.table()
    assert next(c for c in report.checks if c.name.startswith("decisions changed within")).value == 1
    clear = fp32.copy()
    clear[0] = 1.0 - clear[0]  # a confident tumour read as a confident no-tumour
    assert "decision agreement, clear cases" in _failed(check_classifier(fp32, clear))


def test_tolerances_are_the_ones_given():
    fp32 = _probabilities()
    assert not check_classifier(fp32, fp32 + 0.015, Tolerances(classifier_max_abs_diff=0.01)).passed
    maps = _mask_probabilities()
    shifted = np.roll(maps, 1, axis=2)
    assert check_segmenter(maps, shifted, tolerances=Tolerances(segmenter_min_dice_vs_fp32=0.5)).passed


def test_the_table_shows_every_value_next_to_its_limit():
    maps = _mask_probabilities()
    table = check_segmenter(maps, np.zeros_like(maps), maps > 0.5).table()
    assert table.splitlines()[0] == "FP16 gate, segmenter, 16 validation slices: FAILED"
    for text in ("masks emptied by FP16", "<= 0", "mean Dice FP16 vs FP32 masks", ">= 0.97", "FAIL", "(info)"):
        assert text in table


def test_shapes_must_match():
    with pytest.raises(ValueError, match="slice 0: FP32 and FP16 outputs differ in size"):
        check_segmenter(np.zeros((2, 8, 8, 1)), np.zeros((2, 4, 4, 1)))


def test_served_masks_of_different_sizes_are_judged_slice_by_slice():
    """The served segmenter gives 0/1 masks at each image's own size."""
    big, small = np.zeros((40, 60), np.uint8), np.zeros((20, 20), np.uint8)
    big[10:20, 10:30], small[5:10, 5:10] = 1, 1
    assert check_segmenter([big, small], [big, small], [big, small]).passed
    report = check_segmenter([big, small], [big, np.zeros_like(small)], [big, small])
    assert {"masks emptied by FP16", "mean Dice FP16 vs FP32 masks"} <= _failed(report)
