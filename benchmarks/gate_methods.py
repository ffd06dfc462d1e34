"""How the pixel gate's method was chosen: candidate out-of-distribution scores of one trained
classifier compared by AUROC against the test split, on the sets of ``brainscan.train.ood``,
and by what each refuses and accepts at a limit set on the validation slices
(`brainscan bench gate`, benchmarks/results/*-gate/).

Every candidate is computed from what the served classifier graph gives (ONNX Runtime on
CPU): the probability, and the pooled features and quadrant features its gate reads.

- served: the gate as served (``pixel_gate``): the larger of the two parts below;
- distance: Mahalanobis distance of the five stages' pooled features alone;
- distance, last stage: the same on the last stage's pooled features only;
- sideways: the quarter-turn probe alone;
- maximum probability: 1 - max(p, 1 - p), the classic baseline;
- energy: -log(1 + e^logit), the energy score of the two-class logits (0, logit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan.metrics import roc_auc
from brainscan.tables import text_table

METHODS = ("served", "distance", "distance, last stage", "sideways", "maximum probability", "energy")


@dataclass
class Pooled:
    probability: np.ndarray
    features: np.ndarray
    quadrants: np.ndarray


def _pooled(session, images) -> Pooled:
    from brainscan.export.pixel_gate import FEATURES, QUADRANTS
    from brainscan.export.served_graph import run_outputs
    from brainscan.preprocessing import pixels

    out = run_outputs(session, [pixels(i) for i in images])
    return Pooled(
        np.concatenate(out["TUMOR_PROBABILITY"]).astype(float), np.stack(out[FEATURES]), np.stack(out[QUADRANTS])
    )


def _last_stage_width(network) -> int:
    from onnx import shape_inference

    from brainscan.export.pixel_gate import STAGE_MEANS

    graph = shape_inference.infer_shapes(network).graph
    shape = next(o for o in [*graph.output, *graph.value_info] if o.name == STAGE_MEANS[-1])
    return int(shape.type.tensor_type.shape.dim[-1].dim_value)


def collect(run: Path, seed_offset: int = 1_000, patients: int = 20, set_size: int = 48) -> dict[str, Pooled]:
    """The classifier of a training run (its served graph, RUN/model.onnx) on the run's train,
    validation and test slices, the training slices turned a quarter turn, a new phantom
    cohort and the sets of ``brainscan.train.ood``."""
    import onnx

    from brainscan.export.pixel_gate import quarter_turns
    from brainscan.export.served_graph import POOLED, network_only, serving_model
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing import decode_image
    from brainscan.train import datasets, ood
    from brainscan.train.phantom import render_patients
    from brainscan.train.training import load_run, split_samples

    config = load_run(run)
    network = network_only(onnx.load(str(Path(run) / "model.onnx")))
    session = cpu_session(serving_model(network, gate=POOLED).SerializeToString())
    parts = {name: datasets.decode_images(samples) for name, samples in split_samples(config).items()}
    found = {name: _pooled(session, images) for name, images in parts.items()}
    found["train turned"] = _pooled(session, quarter_turns(parts["train"]))
    cohort = [image for _, _, image, _ in render_patients(config.seed + seed_offset, patients)]
    found["new-seed"] = _pooled(session, cohort)
    for name, samples in ood.build_sets(parts["test"], config.seed, set_size).items():
        found[name] = _pooled(session, [decode_image(s.data) for s in samples])
    found["_width"] = _last_stage_width(network)  # type: ignore[assignment]
    return found


def scores(found: dict) -> dict[str, dict[str, np.ndarray]]:
    """Each method's score of every set, fitted on the training slices; each method's limit is
    its largest validation score (the served gate's: its own margin), the score divided by it."""
    from sklearn.covariance import LedoitWolf

    from brainscan.export.pixel_gate import fit_gate

    train, val = found["train"], found["val"]
    fit = fit_gate(train.features, train.quadrants, found["train turned"].quadrants, val.features, val.quadrants)
    width = found["_width"]
    last = LedoitWolf().fit(train.features[:, -width:])
    sets = {k: v for k, v in found.items() if not k.startswith("_") and k != "train turned"}

    def logit(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    raw = {
        "served": lambda s: fit.score(s.features, s.quadrants),
        "distance": lambda s: fit.distance(s.features),
        "distance, last stage": lambda s: last.mahalanobis(s.features[:, -width:]),
        "sideways": lambda s: fit.sideways(s.quadrants),
        "maximum probability": lambda s: 1.0 - np.maximum(s.probability, 1.0 - s.probability),
        "energy": lambda s: -np.logaddexp(0.0, logit(s.probability)),
    }
    out = {}
    for method, score in raw.items():
        values = {name: np.asarray(score(s), float) for name, s in sets.items()}
        if method != "served":  # the others: refused above their largest validation score
            top = float(np.max(values["val"]))
            values = {name: v - top + 1.0 for name, v in values.items()}
        out[method] = values
    return out


def figures(scored: dict[str, dict[str, np.ndarray]]) -> dict:
    """AUROC against the test split and the share refused, per method and set."""
    from brainscan.train.ood import ENCODINGS, OUT_OF_DISTRIBUTION

    result: dict = {}
    for method, values in scored.items():
        test = values["test"]
        row = {"accepted": {k: round(float(np.mean(values[k] <= 1.0)), 4) for k in ("test", "new-seed", *ENCODINGS)}}
        row["auroc"] = {
            k: round(roc_auc(np.r_[test, values[k]], np.r_[np.zeros(len(test)), np.ones(len(values[k]))]), 4)
            for k in OUT_OF_DISTRIBUTION
        }
        row["refused"] = {k: round(float(np.mean(values[k] > 1.0)), 4) for k in OUT_OF_DISTRIBUTION}
        result[method] = row
    return result


def report(result: dict, run: Path) -> str:
    from brainscan.train.ood import OUT_OF_DISTRIBUTION

    auroc = [("method", *OUT_OF_DISTRIBUTION)]
    refused = [("method", *OUT_OF_DISTRIBUTION, "test", "new-seed", "encodings")]
    for method, row in result.items():
        auroc.append((method, *(f"{row['auroc'][k]:.3f}" for k in OUT_OF_DISTRIBUTION)))
        encodings = min(v for k, v in row["accepted"].items() if k not in ("test", "new-seed"))
        refused.append(
            (
                method,
                *(f"{row['refused'][k]:.0%}" for k in OUT_OF_DISTRIBUTION),
                f"{row['accepted']['test']:.1%}",
                f"{row['accepted']['new-seed']:.1%}",
                f"{encodings:.0%}",
            )
        )
    return "\n".join(
        [
            "# Choosing the pixel gate",
            "",
            f"The classifier of `{run}`, each candidate fitted on its training slices and limited at its largest "
            "validation score (`brainscan bench gate`; the method: `benchmarks/gate_methods.py`).",
            "",
            "AUROC of each score, test split against each out-of-distribution set:",
            "",
            "```",
            text_table(auroc),
            "```",
            "",
            "Refused at the limit (out-of-distribution sets), and accepted (test split, a cohort with a new seed, "
            "and the least accepted of the 16-bit PNG, JPEG and resized copies of test slices):",
            "",
            "```",
            text_table(refused),
            "```",
            "",
        ]
    )


def run_comparison(run: Path, out: Path) -> tuple[str, list[Path]]:
    result = figures(scores(collect(run)))
    text = report(result, run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return text, [out / "report.md", out / "results.json"]
