"""The FP16 accuracy gate: FP16 outputs (an FP16 ONNX graph on CPU, or a TensorRT engine
on the GPU) against FP32 (ONNX Runtime on the FP32 ONNX) and against ground truth, on real
validation slices, with explicit tolerances.

FP16 U-Nets are known to fail quietly: overflow gives NaN or saturates the mask head so
every mask comes out black. Each check below catches one of those ways; the report prints
every value next to its limit, and ``passed`` is False as soon as one limit is exceeded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainscan import contract
from brainscan.export.compare import compare_output, text_table
from brainscan.metrics import dice, segmentation_metrics


@dataclass(frozen=True)
class Tolerances:
    """Limits of the gate. The defaults leave room for FP16 rounding (about 1e-3 relative)
    and none for a changed answer on a clear case."""

    classifier_max_abs_diff: float = 0.02  # tumour probability, FP16 vs FP32
    classifier_min_agreement: float = 0.99  # share of slices with the same decision
    segmenter_min_dice_vs_fp32: float = 0.97  # mean Dice of FP16 masks against FP32 masks
    segmenter_max_dice_drop: float = 0.02  # mean Dice against ground truth, FP32 minus FP16
    segmenter_max_emptied: int = 0  # slices where FP32 finds tumour and FP16 an empty mask


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: str  # e.g. "<= 0.02"; "" for a value shown for information only
    passed: bool


def _at_most(name: str, value: float, limit: float) -> Check:
    return Check(name, value, f"<= {limit:g}", bool(np.isfinite(value) and value <= limit))


def _at_least(name: str, value: float, limit: float) -> Check:
    return Check(name, value, f">= {limit:g}", bool(np.isfinite(value) and value >= limit))


def _info(name: str, value: float) -> Check:
    return Check(name, value, "", True)


@dataclass(frozen=True)
class GateReport:
    network: str
    samples: int
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        """The verdict and every check's value and limit, for the JSON records."""
        return {"passed": self.passed, "samples": self.samples,
                "checks": {c.name: {"value": float(c.value), "limit": c.limit} for c in self.checks}}

    def table(self) -> str:
        rows = [("check", "value", "limit", "verdict")]
        for c in self.checks:
            value = f"{c.value:.4g}" if isinstance(c.value, float) else str(c.value)
            rows.append((c.name, value, c.limit or "(info)", "ok" if c.passed else "FAIL"))
        verdict = "passed" if self.passed else "FAILED"
        return f"FP16 gate, {self.network}, {self.samples} validation slices: {verdict}\n{text_table(rows)}"


def _non_finite(array: np.ndarray) -> int:
    return int((~np.isfinite(np.asarray(array, np.float64))).sum())


def check_classifier(fp32: np.ndarray, fp16: np.ndarray, tolerances: Tolerances = Tolerances()) -> GateReport:
    """Tumour probabilities [N, 1] of the FP32 reference and the FP16 engine."""
    fp32, fp16 = np.asarray(fp32, np.float64).reshape(-1), np.asarray(fp16, np.float64).reshape(-1)
    comparison = compare_output(contract.CLASSIFIER_OUTPUT, fp32, fp16, tolerances.classifier_max_abs_diff,
                                contract.DECISION_THRESHOLD)
    agreement = 1.0 - comparison.decisions_differ / max(comparison.decisions, 1)
    checks = (
        _at_most("non-finite outputs (NaN/Inf)", _non_finite(fp16), 0),
        _at_most("max |probability diff|", comparison.max_abs_diff, tolerances.classifier_max_abs_diff),
        _at_least("decision agreement", agreement, tolerances.classifier_min_agreement),
        _info("mean |probability diff|", comparison.mean_abs_diff),
    )
    return GateReport(contract.CLASSIFIER, len(fp32), checks)


def check_segmenter(
    fp32: np.ndarray, fp16: np.ndarray, truth: np.ndarray | None = None, tolerances: Tolerances = Tolerances()
) -> GateReport:
    """Mask probabilities [N, H, W(, 1)] of the FP32 reference and the FP16 engine, and the
    ground-truth masks (0/1) at the same size when the dataset has them."""
    fp32 = np.asarray(fp32, np.float64).reshape(len(fp32), -1)
    fp16 = np.asarray(fp16, np.float64).reshape(len(fp16), -1)
    if fp32.shape != fp16.shape:
        raise ValueError(f"FP32 and FP16 outputs differ in shape: {fp32.shape} vs {fp16.shape}")
    mask32 = fp32 > contract.MASK_THRESHOLD
    mask16 = fp16 > contract.MASK_THRESHOLD  # NaN compares False: a NaN map is an empty mask
    found32, found16 = mask32.any(axis=1), mask16.any(axis=1)
    either = found32 | found16
    dice_vs_fp32 = float(np.mean([dice(a, b) for a, b in zip(mask16[either], mask32[either])])) if either.any() else 1.0
    checks = [
        _at_most("non-finite outputs (NaN/Inf)", _non_finite(fp16), 0),
        _at_most("masks emptied by FP16", int(np.sum(found32 & ~found16)), tolerances.segmenter_max_emptied),
        _at_least("mean Dice FP16 vs FP32 masks", dice_vs_fp32, tolerances.segmenter_min_dice_vs_fp32),
        _info("max |probability diff|", float(np.nan_to_num(np.abs(fp32 - fp16), nan=np.inf).max(initial=0.0))),
    ]
    if truth is not None:
        truth = np.asarray(truth, bool).reshape(len(truth), -1)
        d32 = segmentation_metrics(mask32, truth)["dice_tumour_slices"]
        d16 = segmentation_metrics(mask16, truth)["dice_tumour_slices"]
        if np.isfinite(d32):
            checks += [
                _info("mean Dice vs truth, FP32", d32),
                _info("mean Dice vs truth, FP16", d16),
                _at_most("Dice drop vs truth (FP32 - FP16)", d32 - d16, tolerances.segmenter_max_dice_drop),
            ]
    return GateReport(contract.SEGMENTER, len(fp32), tuple(checks))


def check_network(network: str, fp32: np.ndarray, fp16: np.ndarray, truth: np.ndarray | None,
                  tolerances: Tolerances = Tolerances()) -> GateReport:
    """The gate of ``network`` (classifier or segmenter) on its FP32 and FP16 outputs."""
    if network == contract.CLASSIFIER:
        return check_classifier(fp32, fp16, tolerances)
    return check_segmenter(fp32, fp16, truth, tolerances)


class GateFailedError(RuntimeError):
    """Some FP16 network is outside the tolerances; nothing was written. The message holds
    every network's table and what to do about it."""

    def __init__(self, reports: list[GateReport], remedy: str):
        names = ", ".join(r.network for r in reports if not r.passed)
        super().__init__("\n\n".join(r.table() for r in reports)
                         + f"\n\nthe FP16 {names} is outside the tolerances; nothing was written. {remedy}")
        self.reports = reports
