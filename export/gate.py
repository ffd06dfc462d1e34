"""The FP16 accuracy gate: FP16 outputs (an FP16 ONNX graph on CPU, or a TensorRT engine
on the GPU) against FP32 (ONNX Runtime on the FP32 ONNX) and against ground truth, on real
validation slices, with explicit tolerances.

FP16 U-Nets are known to fail quietly: overflow gives NaN or saturates the mask head so
every mask comes out black. Each check below catches one of those ways; the report prints
every value next to its limit, and ``passed`` is False as soon as one limit is exceeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from brainscan import contract
from brainscan.errors import BrainscanError
from brainscan.export.limits import FP16_MAX_PROB_DIFF, FP16_MIN_MASK_DICE
from brainscan.export.pixel_gate import THRESHOLD as OOD_THRESHOLD
from brainscan.metrics import dice, segmentation_metrics
from brainscan.tables import text_table


@dataclass(frozen=True)
class Tolerances:
    """Limits of the gate. The defaults leave room for FP16 rounding (about 1e-3 relative)
    and none for a changed answer on a clear case."""

    classifier_max_abs_diff: float = FP16_MAX_PROB_DIFF  # tumour probability, FP16 vs FP32
    classifier_min_agreement: float = 0.99  # share of slices with the same decision
    segmenter_min_dice_vs_fp32: float = FP16_MIN_MASK_DICE  # mean Dice of FP16 masks against FP32 masks
    segmenter_max_dice_drop: float = 0.02  # mean Dice against ground truth, FP32 minus FP16
    segmenter_max_emptied: int = 0  # slices where FP32 finds tumour and FP16 an empty mask


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: str  # e.g. "<= 0.02"; "" for a value shown for information only
    passed: bool


def at_most(name: str, value: float, limit: float) -> Check:
    return Check(name, value, f"<= {limit:g}", bool(np.isfinite(value) and value <= limit))


def at_least(name: str, value: float, limit: float) -> Check:
    return Check(name, value, f">= {limit:g}", bool(np.isfinite(value) and value >= limit))


def info(name: str, value: float) -> Check:
    return Check(name, value, "", True)


@dataclass(frozen=True)
class GateReport:
    network: str
    samples: int
    checks: tuple[Check, ...]
    gate: str = "FP16 gate"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def value(self, name: str) -> float:
        """The value of the check called ``name``."""
        return next(c.value for c in self.checks if c.name == name)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        """The verdict and every check's value and limit, for the JSON records."""
        return {
            "passed": self.passed,
            "samples": self.samples,
            "checks": {c.name: {"value": float(c.value), "limit": c.limit} for c in self.checks},
        }

    def table(self) -> str:
        rows = [("check", "value", "limit", "verdict")]
        for c in self.checks:
            value = f"{c.value:.4g}" if isinstance(c.value, float) else str(c.value)
            rows.append((c.name, value, c.limit or "(info)", "ok" if c.passed else "FAIL"))
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.gate}, {self.network}, {self.samples} validation slices: {verdict}\n{text_table(rows)}"


class OutputsDifferError(BrainscanError, ValueError):
    """The FP16 graph or engine answers with other shapes or counts than the FP32 reference:
    not the same network (a wrong file, or a broken build); nothing is compared, nothing written."""


class Difference(NamedTuple):
    """A candidate run's outputs against the reference's, element by element."""

    max_abs_diff: float
    mean_abs_diff: float
    decisions_differ: int  # elements on the other side of the threshold
    decisions: int
    nan_count: int


def output_difference(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> Difference:
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise OutputsDifferError(f"the outputs' shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(np.nan_to_num(reference - candidate, nan=np.inf))
    finite = np.isfinite(diff)
    return Difference(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff[finite].mean()) if finite.any() else float("inf"),
        decisions_differ=int(np.sum((reference > threshold) != (candidate > threshold))),
        decisions=int(reference.size),
        nan_count=int(np.isnan(candidate).sum()),
    )


def _non_finite(array: np.ndarray) -> int:
    return int((~np.isfinite(np.asarray(array, np.float64))).sum())


def check_classifier(
    fp32: np.ndarray,
    fp16: np.ndarray,
    tolerances: Tolerances = Tolerances(),
    scores32: np.ndarray | None = None,
    scores16: np.ndarray | None = None,
) -> GateReport:
    """Tumour probabilities [N, 1] of the FP32 reference and the FP16 engine. Decisions must
    agree on the clear cases: a slice whose FP32 probability lies within the allowed
    probability difference of the threshold may cross it under FP16 rounding (it is counted,
    for information), one further away may not. With the out-of-distribution scores of both
    (the pixel gate), no slice may change between accepted and refused."""
    fp32, fp16 = np.asarray(fp32, np.float64).reshape(-1), np.asarray(fp16, np.float64).reshape(-1)
    comparison = output_difference(fp32, fp16, contract.DECISION_THRESHOLD)
    clear = np.abs(fp32 - contract.DECISION_THRESHOLD) > tolerances.classifier_max_abs_diff
    changed = (fp32 > contract.DECISION_THRESHOLD) != (fp16 > contract.DECISION_THRESHOLD)
    agreement = 1.0 - np.sum(changed & clear) / max(int(clear.sum()), 1)
    checks = [
        at_most("non-finite outputs (NaN/Inf)", _non_finite(fp16), 0),
        at_most("max |probability diff|", comparison.max_abs_diff, tolerances.classifier_max_abs_diff),
        at_least("decision agreement, clear cases", agreement, tolerances.classifier_min_agreement),
        info(
            f"decisions changed within {tolerances.classifier_max_abs_diff:g} of the threshold",
            float(np.sum(changed & ~clear)),
        ),
        info("mean |probability diff|", comparison.mean_abs_diff),
    ]
    if scores32 is not None and scores16 is not None:
        s32, s16 = np.asarray(scores32, np.float64).reshape(-1), np.asarray(scores16, np.float64).reshape(-1)
        scores = output_difference(s32, s16, OOD_THRESHOLD)
        checks += [
            at_most("non-finite OOD scores", _non_finite(s16), 0),
            at_most("accept/refuse decisions changed (OOD score)", scores.decisions_differ, 0),
            info("max |OOD score diff|", scores.max_abs_diff),
        ]
    return GateReport(contract.CLASSIFIER, len(fp32), tuple(checks))


def check_segmenter(
    fp32: Sequence[np.ndarray],
    fp16: Sequence[np.ndarray],
    truth: Sequence[np.ndarray] | None = None,
    tolerances: Tolerances = Tolerances(),
) -> GateReport:
    """The segmenter's outputs per slice, of the FP32 reference and of the FP16 graph or
    engine: masks (0/1) or probabilities, any size, the same for both; and the ground-truth
    masks (0/1) at that size when the dataset has them."""
    if len(fp32) != len(fp16):
        raise OutputsDifferError(f"{len(fp32)} FP32 outputs but {len(fp16)} FP16 ones")
    fp32 = [np.asarray(a, np.float64).reshape(-1) for a in fp32]
    fp16 = [np.asarray(a, np.float64).reshape(-1) for a in fp16]
    for i, (a, b) in enumerate(zip(fp32, fp16)):
        if a.shape != b.shape:
            raise OutputsDifferError(f"slice {i}: FP32 and FP16 outputs differ in size: {a.size} vs {b.size}")
    mask32 = [a > contract.MASK_THRESHOLD for a in fp32]
    mask16 = [b > contract.MASK_THRESHOLD for b in fp16]  # NaN compares False: a NaN map is an empty mask
    found32, found16 = np.array([m.any() for m in mask32]), np.array([m.any() for m in mask16])
    either = found32 | found16
    dices = [dice(b, a) for a, b, keep in zip(mask32, mask16, either) if keep]
    differ = [np.nan_to_num(np.abs(a - b), nan=np.inf).max(initial=0.0) for a, b in zip(fp32, fp16)]
    checks = [
        at_most("non-finite outputs (NaN/Inf)", sum(_non_finite(b) for b in fp16), 0),
        at_most("masks emptied by FP16", int(np.sum(found32 & ~found16)), tolerances.segmenter_max_emptied),
        at_least(
            "mean Dice FP16 vs FP32 masks",
            float(np.mean(dices)) if dices else 1.0,
            tolerances.segmenter_min_dice_vs_fp32,
        ),
        info("max |output diff|", float(max(differ, default=0.0))),
    ]
    if truth is not None:
        truth = [np.asarray(t, bool).reshape(-1) for t in truth]
        d32 = segmentation_metrics(mask32, truth)["dice_tumour_slices"]
        d16 = segmentation_metrics(mask16, truth)["dice_tumour_slices"]
        if np.isfinite(d32):
            checks += [
                info("mean Dice vs truth, FP32", d32),
                info("mean Dice vs truth, FP16", d16),
                at_most("Dice drop vs truth (FP32 - FP16)", d32 - d16, tolerances.segmenter_max_dice_drop),
            ]
    return GateReport(contract.SEGMENTER, len(fp32), tuple(checks))


def check_network(
    network: str,
    fp32: Mapping[str, Sequence[np.ndarray]],
    fp16: Mapping[str, Sequence[np.ndarray]],
    truth: Sequence[np.ndarray] | None,
    tolerances: Tolerances = Tolerances(),
) -> GateReport:
    """The gate of ``network`` (classifier or segmenter) on its FP32 and FP16 outputs, each by
    output name with one value per slice: the decision output, and the classifier's
    out-of-distribution score when both graphs give it."""
    decision = contract.NETWORK_OUTPUT_SPEC[network].name
    if network == contract.CLASSIFIER:

        def flat(outputs):
            return np.concatenate([np.reshape(a, -1) for a in outputs])

        scored = contract.OOD_SCORE in fp32 and contract.OOD_SCORE in fp16
        return check_classifier(
            flat(fp32[decision]),
            flat(fp16[decision]),
            tolerances,
            flat(fp32[contract.OOD_SCORE]) if scored else None,
            flat(fp16[contract.OOD_SCORE]) if scored else None,
        )
    return check_segmenter(fp32[decision], fp16[decision], truth, tolerances)


class GateFailedError(BrainscanError, RuntimeError):
    """Some FP16 network is outside the tolerances; nothing was written. The message holds
    every network's table and what to do about it."""

    def __init__(self, reports: list[GateReport], remedy: str):
        names = ", ".join(r.network for r in reports if not r.passed)
        super().__init__(
            "\n\n".join(r.table() for r in reports)
            + f"\n\nthe FP16 {names} is outside the tolerances; nothing was written. {remedy}"
        )
        self.reports = reports
