"""Framework-neutral accuracy comparison of two runs of a network: a result object with
explicit tolerances, per-output verdicts and a readable table (never a bare boolean)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputComparison:
    """One output of the network compared between a reference and a candidate run."""

    name: str
    max_abs_diff: float
    mean_abs_diff: float
    atol: float
    decisions_differ: int
    decisions: int
    threshold: float
    nan_count: int

    @property
    def passed(self) -> bool:
        return self.nan_count == 0 and self.max_abs_diff <= self.atol and self.decisions_differ == 0


@dataclass(frozen=True)
class ComparisonReport:
    reference: str
    candidate: str
    samples: int
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def table(self) -> str:
        header = f"{self.candidate} vs {self.reference} on {self.samples} samples"
        rows = [("output", "max |diff|", "mean |diff|", "atol", "decisions differ", "NaN", "verdict")]
        for o in self.outputs:
            rows.append(
                (
                    o.name,
                    f"{o.max_abs_diff:.3g}",
                    f"{o.mean_abs_diff:.3g}",
                    f"{o.atol:.3g}",
                    f"{o.decisions_differ}/{o.decisions} (>{o.threshold})",
                    str(o.nan_count),
                    "ok" if o.passed else "FAIL",
                )
            )
        return "\n".join([header, text_table(rows)])


def text_table(rows: list[tuple[str, ...]], rule: bool = True) -> str:
    """Rows of strings (the first is the header) as aligned columns, with a dashed rule
    under the header unless ``rule`` is False."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_output(
    name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, threshold: float
) -> OutputComparison:
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: shapes differ, {reference.shape} vs {candidate.shape}")
    nan = int(np.isnan(candidate).sum())
    diff = np.abs(np.nan_to_num(reference - candidate, nan=np.inf))
    return OutputComparison(
        name=name,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff[np.isfinite(diff)].mean()) if np.isfinite(diff).any() else float("inf"),
        atol=atol,
        decisions_differ=int(np.sum((reference > threshold) != (candidate > threshold))),
        decisions=int(reference.size),
        threshold=threshold,
        nan_count=nan,
    )
