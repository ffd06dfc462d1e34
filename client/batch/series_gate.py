"""The segmenter gated by the classifier on a series' slices: which slices it runs on."""

from __future__ import annotations

import numpy as np

from brainscan import contract


class SeriesGate:
    """Which slices of a series the segmenter runs on: those the classifier does not rule out
    (a probability of at least ``rule_out``) and ``margin`` slices on each side of them,
    decided as the classifier's answers arrive, in any order, so that the segmenter's
    requests start before the last of the classifier's is answered."""

    def __init__(self, slices: int, rule_out: float, margin: int = contract.SEGMENTER_MARGIN) -> None:
        self.rule_out, self.margin = rule_out, margin
        self.answers: list[tuple[float, float] | None] = [None] * slices
        self.known, self.above, self.decided = (np.zeros(slices, bool) for _ in range(3))
        self.chosen: list[int] = []
        self.ready: list[int] = []  # chosen, not yet sent

    def add(self, slices: range, answers: list[tuple[float, float]]) -> None:
        """The classifier's (probability, score) of ``slices``."""
        for k, answer in zip(slices, answers, strict=True):
            self.answers[k], self.known[k], self.above[k] = answer, True, answer[0] >= self.rule_out
        m, n = self.margin, len(self.answers)
        for k in range(max(0, slices.start - m), min(n, slices.stop + m)):  # the only slices it can settle
            low, high = max(0, k - m), min(n, k + m + 1)
            if self.decided[k]:
                continue
            if self.above[low:high].any():
                self.decided[k] = True
                self.chosen.append(k)
                self.ready.append(k)
            elif self.known[low:high].all():
                self.decided[k] = True

    def take(self, size: int, final: bool) -> list[int] | None:
        """Up to ``size`` chosen slices not yet sent: only a full request until ``final``."""
        if len(self.ready) < size and not (final and self.ready):
            return None
        part, self.ready = self.ready[:size], self.ready[size:]
        return part


def slices_to_segment(
    probabilities: list[float], rule_out: float, margin: int = contract.SEGMENTER_MARGIN
) -> list[int]:
    """The slices of a series the segmenter runs on (``SeriesGate``), given every probability."""
    gate = SeriesGate(len(probabilities), rule_out, margin)
    gate.add(range(len(probabilities)), [(float(p), 0.0) for p in probabilities])
    return sorted(gate.chosen)
