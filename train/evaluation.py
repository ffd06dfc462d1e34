"""The served models judged through a running server, as `make demo` prints them
(`brainscan evaluate`): the intended-use gate's acceptance of the held-out test patients and
of a phantom cohort generated with a new seed, its refusal of each out-of-distribution set
with the AUROC of the score against the test split, its acceptance of the test slices in
other encodings, and accuracy and Dice on the slices it accepts beside those on all of them.
They are figures, not pass/fail checks: the report says what each was measured on.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainscan.metrics import classification_metrics, dice, roc_auc
from brainscan.tables import text_table

NEW_SEED_OFFSET = 1_000  # the new cohort's seed: the data's seed plus this
NEW_COHORT_PATIENTS = 20
# the targets, printed beside each figure with whether it was met (not enforced: the
# figures are the result, and the report says which were missed)
TARGETS = {"test": 0.99, "new-seed": 0.97, "refused": 0.95}


@dataclass
class Answered:
    """The server's answers for one set of images."""

    name: str
    kind: str  # "in-distribution", "out-of-distribution", "encoding"
    scores: np.ndarray
    probabilities: np.ndarray
    masks: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] | None = None  # ground-truth masks, where the set has them


async def _answer(connection, named: dict[str, list[bytes]], concurrency: int = 4) -> dict[str, list]:
    """Every image of every set through the ensemble, ``concurrency`` requests in flight."""
    from brainscan.client.triton.inference import AsyncBrainscanClient

    gate = asyncio.Semaphore(concurrency)
    async with AsyncBrainscanClient(connection) as client:
        await client.check_ready()

        async def one(data: bytes):
            async with gate:
                return await client.infer(data)

        found = {}
        for name, images in named.items():
            found[name] = await asyncio.gather(*(one(data) for data in images))
        use = await client.intended_use()
    return {"answers": found, "use": use}


def _truth_of(masks: list[np.ndarray]) -> list[np.ndarray]:
    return [(m.max(axis=2) if m.ndim == 3 else m) > 0 for m in masks]


def collect(connection, data: Path, seed: int = 0, set_size: int = 48, new_patients: int = NEW_COHORT_PATIENTS):
    """Build the sets and send them through the server: the test split of ``data`` (split
    by ``seed`` as training did), a new phantom cohort, the out-of-distribution sets and the
    encodings (``brainscan.train.ood``). Returns (the answered sets, the intended use)."""
    from brainscan.preprocessing import decode_image
    from brainscan.train import datasets, ood
    from brainscan.train.phantom import render_patients

    samples = datasets.find_samples(Path(data))
    test = datasets.select(samples, datasets.split_patients([s.patient for s in samples], seed)["test"])
    test_files = [s.image.read_bytes() for s in test]
    test_truth = datasets.load_truth(test) if all(s.mask is not None for s in test) else None
    cohort = list(render_patients(seed + NEW_SEED_OFFSET, new_patients))
    sets = ood.build_sets([decode_image(b) for b in test_files], seed, set_size)
    named = {"test": test_files, "new-seed": [ood.encode(image) for _, _, image, _ in cohort]}
    named.update({name: [s.data for s in samples] for name, samples in sets.items()})
    found = asyncio.run(_answer(connection, named))
    truths = {"test": test_truth, "new-seed": _truth_of([mask for *_, mask in cohort])}
    kinds = {"test": "in-distribution", "new-seed": "in-distribution"}
    kinds.update({name: "out-of-distribution" for name in ood.OUT_OF_DISTRIBUTION})
    kinds.update({name: "encoding" for name in ood.ENCODINGS})
    answered = []
    for name, answers in found["answers"].items():
        answered.append(
            Answered(
                name,
                kinds[name],
                np.array([a.score if a.score is not None else np.nan for a in answers], float),
                np.array([a.probability for a in answers], float),
                [a.mask for a in answers],
                truths.get(name),
            )
        )
    return answered, found["use"]


def _quality(answered: Answered, keep: np.ndarray) -> dict:
    """Accuracy over the slices kept, and mean Dice over those with a tumour."""
    truth = answered.truth or []
    chosen = [i for i in range(len(truth)) if keep[i]]
    if not chosen:
        return {"slices": 0}
    labels = [bool(truth[i].any()) for i in chosen]
    accuracy = classification_metrics(answered.probabilities[chosen], labels)["accuracy"]
    dices = [dice(answered.masks[i], truth[i]) for i in chosen if truth[i].any()]
    return {
        "slices": len(chosen),
        "accuracy": round(float(accuracy), 4),
        "dice": round(float(np.mean(dices)), 4) if dices else None,
    }


def _goal(name: str, kind: str) -> tuple[str, float | None]:
    """The figure a set is judged by ("accepted" or "refused") and its target, if it has one."""
    if kind == "out-of-distribution":
        return "refused", TARGETS["refused"]
    return "accepted", TARGETS.get(name)


def figures(answered: list[Answered], threshold: float | None) -> dict:
    """Acceptance, refusal and AUROC per set; accuracy and Dice, all and accepted."""
    limit = np.inf if threshold is None else threshold
    test = next(a for a in answered if a.name == "test")
    out: dict = {"threshold": threshold, "sets": {}}
    for a in answered:
        accepted = np.isfinite(a.scores) & (a.scores <= limit)
        row: dict = {"kind": a.kind, "images": len(a.scores), "accepted": round(float(accepted.mean()), 4)}
        if a.kind == "out-of-distribution":
            labels = np.r_[np.zeros(len(test.scores)), np.ones(len(a.scores))]
            row["refused"] = round(1.0 - row["accepted"], 4)
            row["auroc"] = round(roc_auc(np.nan_to_num(np.r_[test.scores, a.scores], nan=np.inf), labels), 4)
        measure, goal = _goal(a.name, a.kind)
        if goal is not None:
            row["target_met"] = bool(row[measure] >= goal)
        if a.truth is not None:
            row["all"] = _quality(a, np.ones(len(a.scores), bool))
            row["inside"] = _quality(a, accepted)
        out["sets"][a.name] = row
    return out


def table(result: dict) -> str:
    """The figures as make demo prints them."""
    rows = [("set", "kind", "images", "accepted", "refused", "AUROC", "target", "met")]
    for name, row in result["sets"].items():
        measure, goal = _goal(name, row["kind"])
        target = measure if goal is None else f"{measure} >= {goal:.0%}"
        rows.append(
            (
                name,
                row["kind"],
                str(row["images"]),
                f"{row['accepted']:.1%}",
                f"{row['refused']:.1%}" if "refused" in row else "",
                f"{row['auroc']:.3f}" if "auroc" in row else "",
                target,
                {True: "yes", False: "NO"}.get(row.get("target_met"), ""),
            )
        )
    lines = [f"Intended-use gate through the server (refused above an OOD score of {result['threshold']}):"]
    lines.append(text_table(rows))
    missed = [name for name, row in result["sets"].items() if row.get("target_met") is False]
    if missed:
        lines.append(f"below target: {', '.join(missed)} (figures of this run's networks; see docs/intended-use.md)")
    quality = [("set", "slices (all)", "accuracy (all)", "Dice (all)", "slices accepted", "accuracy", "Dice")]
    for name, row in result["sets"].items():
        if "all" in row:
            every, inside = row["all"], row["inside"]
            quality.append(
                (
                    name,
                    str(every["slices"]),
                    str(every.get("accuracy", "")),
                    str(every.get("dice", "")),
                    str(inside["slices"]),
                    str(inside.get("accuracy", "")),
                    str(inside.get("dice", "")),
                )
            )
    lines += ["", "Accuracy and mean Dice (tumour slices), on all slices and on those the gate accepts:"]
    lines.append(text_table(quality))
    return "\n".join(lines)


def write_report(result: dict, use, out: Path) -> list[Path]:
    """report.md (the tables and the intended use) and report.json under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**result, "intended_use": use.as_dict()}, indent=1) + "\n")
    text = [
        "# The served models: intended-use gate and accuracy",
        "",
        "Measured through a running server by `brainscan evaluate` (docs/intended-use.md).",
        "",
        "```",
        table(result),
        "```",
        "",
        "## The intended use the server declares",
        "",
        *[f"- {line}" for line in use.describe()],
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return [out / "report.md", out / "report.json"]
