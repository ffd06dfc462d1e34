"""The pixel gate: an out-of-distribution score for every image, computed by the served
classifier graph itself (ONNX nodes after the network, so a GPU computes it inside the
TensorRT engine with no Python), fitted at export on the training slices and limited on the
validation slices.

The score is the larger of two parts, each 1 at its limit, which the largest value on the
validation slices sets with a margin (``MARGIN``):

- **distance**: the squared Mahalanobis distance, per feature, of the image's pooled
  features (each channel's mean at the five MobileNet stages the classifier runs) to the
  training slices' (their mean, and their covariance with Ledoit-Wolf shrinkage), as a share
  of its limit (the validation maximum plus ``MARGIN`` of it);
- **sideways**: a linear probe on the first stage's features averaged over the image's four
  quadrants, fitted on the training slices against the same slices turned a quarter turn, in
  units of its spread over the training slices, 1 at its limit (the validation maximum plus
  ``MARGIN`` of that spread). Training covers flips and small rotations, so a quarter-turned
  slice is the one in-plane change the distance does not see: its pooled features are nearly
  those of an upright one.

Both scales are fixed by the training slices, not by how alike the few validation slices
happen to be, so FP16 rounding of the features moves the score by about as much as it moves
the features.

An image whose score is at most 1 (``THRESHOLD``) is inside the intended use. Why these two:
they were compared with the maximum probability, the energy score, other pooled features
and image-space statistics by AUROC against out-of-distribution sets
(benchmarks/results/2026-12-04-gate/report.md).

Every node is named under ``GATE_PREFIX``; the FP16 conversion keeps them in FP32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainscan import contract
from brainscan.intended_use import PixelGate
from brainscan.preprocessing_graph import GraphBuilder

GATE_PREFIX = "gate/"
# the MobileNet (v1) stages whose activations the gate pools, in order: the classifier's head
# scores the fifth (models.CLASSIFIER_TAPS at stride 8), so all five are in every classifier
TAP_LAYERS = tuple(f"conv_pw_{i}_relu" for i in range(1, 6))
# What the network graph gives the gate, pooled inside the network (Keras layers, so the
# converted graph pools in its own channel-first layout instead of turning whole activation
# maps to channels-last first, which cost a third of the classifier's CPU throughput): each
# stage's channel means, then the first stage's channel means per quadrant.
STAGE_MEANS = tuple(f"gate_mean_{i}" for i in range(1, 6))
QUADRANT_MEANS = "gate_quadrants"
TAP_OUTPUTS = (*STAGE_MEANS, QUADRANT_MEANS)
FEATURES = f"{GATE_PREFIX}features"  # [N, D]: the stages' channel means, concatenated
QUADRANTS = f"{GATE_PREFIX}quadrants"  # [N, 4 C1]: the first stage's channel means per quadrant
THRESHOLD = 1.0
MARGIN = 0.05
PROBE_C = 0.1  # inverse L2 strength of the sideways probe (logistic regression, standardised features)
METHOD = (
    "larger of (Mahalanobis distance of the classifier's pooled features to the training slices', "
    "sideways probe on its first-stage quadrant features), 1 at each one's validation limit"
)


class GateFitError(ValueError):
    """The gate cannot be fitted on the slices given (too few); the message says why."""


def has_taps(graph) -> bool:
    """Whether a network's graph (before its gate) gives the taps as outputs."""
    return [o.name for o in graph.output][1:] == list(TAP_OUTPUTS)


def add_pooling(b: GraphBuilder) -> tuple[str, str]:
    """FEATURES and QUADRANTS from the network's pooled outputs (``TAP_OUTPUTS``)."""
    features = b.op("Concat", *STAGE_MEANS, axis=1, output=FEATURES)
    return features, b.op("Identity", QUADRANT_MEANS, output=QUADRANTS)


def keras_taps(classifier) -> list:
    """The Keras tensors of ``TAP_OUTPUTS`` on a classifier's layers (``TAP_LAYERS``): the
    stages' global average pools, and the first stage's average over each quadrant."""
    import keras

    maps = [classifier.get_layer(name).output for name in TAP_LAYERS]
    means = [keras.layers.GlobalAveragePooling2D(name=name)(m) for name, m in zip(STAGE_MEANS, maps)]
    height, width = (int(d) for d in maps[0].shape[1:3])
    half = keras.layers.AveragePooling2D(pool_size=(height // 2, width // 2), name="gate_quadrant_pool")(maps[0])
    return [*means, keras.layers.Flatten(name=QUADRANT_MEANS)(half)]


@dataclass(frozen=True)
class GateFit:
    """What the fit found: the distance's statistics and the probe, each part's limit (and the
    probe's spread), and the record intended use keeps."""

    mean: np.ndarray  # [D]
    whitening: np.ndarray  # [D, D]: ||(f - mean) @ whitening||^2 is the squared Mahalanobis distance
    distance_limit: float
    probe_weights: np.ndarray  # [4 C1]
    probe_bias: float
    sideways_limit: float
    sideways_spread: float
    record: PixelGate | None = None

    def distance(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) @ self.whitening
        return (z * z).sum(axis=1) / self.mean.size

    def sideways(self, quadrants: np.ndarray) -> np.ndarray:
        return np.asarray(quadrants, np.float64) @ self.probe_weights + self.probe_bias

    def score(self, features: np.ndarray, quadrants: np.ndarray) -> np.ndarray:
        """The served score, computed in numpy (what the graph computes, in float64)."""
        distance = self.distance(features) / self.distance_limit
        side = 1.0 + (self.sideways(quadrants) - self.sideways_limit) / self.sideways_spread
        return np.maximum(distance, side)


# the fitted constants, as named initializers of the served graph (``gate_of`` reads them back)
_CONSTANTS = ("mean", "whitening", "distance_limit", "probe_weights", "probe_bias", "sideways_limit", "sideways_spread")


def add_score(b: GraphBuilder, features: str, quadrants: str, fit: GateFit) -> str:
    """Nodes from FEATURES and QUADRANTS to OOD_SCORE ([N, 1]) with the fitted constants."""
    z = b.op("MatMul", b.op("Sub", features, b.const(fit.mean, name="mean")), b.const(fit.whitening, name="whitening"))
    # a sum over the features as a product with ones: TensorRT-friendly, no axes input
    squared = b.op("MatMul", b.op("Mul", z, z), b.const(np.full((fit.mean.size, 1), 1.0 / fit.mean.size)))
    distance = b.op("Div", squared, b.const(fit.distance_limit, name="distance_limit"))
    weights = b.const(fit.probe_weights[:, None], name="probe_weights")
    side = b.op("Add", b.op("MatMul", quadrants, weights), b.const([fit.probe_bias], name="probe_bias"))
    above = b.op("Sub", side, b.const(fit.sideways_limit, name="sideways_limit"))
    side = b.op("Add", b.op("Div", above, b.const(fit.sideways_spread, name="sideways_spread")), b.const(1.0))
    return b.op("Max", distance, side, output=contract.OOD_SCORE)


def gate_of(model) -> GateFit | None:
    """The fitted gate a served classifier graph computes (its named constants), or None."""
    from onnx import numpy_helper

    found = {
        t.name[len(GATE_PREFIX) :]: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name.startswith(GATE_PREFIX) and t.name[len(GATE_PREFIX) :] in _CONSTANTS
    }
    if set(found) != set(_CONSTANTS):
        return None

    def scalar(name: str) -> float:
        return float(np.asarray(found[name]).reshape(-1)[0])

    return GateFit(
        found["mean"],
        found["whitening"],
        scalar("distance_limit"),
        np.asarray(found["probe_weights"]).reshape(-1),
        scalar("probe_bias"),
        scalar("sideways_limit"),
        scalar("sideways_spread"),
    )


def add_no_gate(b: GraphBuilder, probability: str) -> str:
    """OOD_SCORE for a classifier without a fitted gate: zeros ([N, 1]), so the served contract
    is the same; its intended use then declares no pixel gate and clients check none."""
    return b.op("ConstantOfShape", b.op("Shape", probability), output=contract.OOD_SCORE, value=_zero())


def _zero():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, np.float32), "zero")


def quarter_turns(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each image turned a quarter turn, alternately left and right."""
    return [np.ascontiguousarray(np.rot90(image, 1 if k % 2 else 3)) for k, image in enumerate(images)]


def fit_gate(
    features: np.ndarray,
    quadrants: np.ndarray,
    turned_quadrants: np.ndarray,
    val_features: np.ndarray,
    val_quadrants: np.ndarray,
) -> GateFit:
    """Fit the gate: the training slices' ``features`` and ``quadrants``, the quadrants of
    the same slices turned (``quarter_turns``), and the validation slices' features and
    quadrants, which set each part's limit."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    if len(features) < 3 or len(val_features) < 1:
        raise GateFitError(
            f"the pixel gate needs at least 3 training slices and 1 validation slice, got {len(features)} and "
            f"{len(val_features)}"
        )
    features = np.asarray(features, np.float64)
    covariance = LedoitWolf().fit(features)
    precision = np.linalg.inv(covariance.covariance_)
    whitening = np.linalg.cholesky((precision + precision.T) / 2)
    x = np.concatenate([quadrants, turned_quadrants]).astype(np.float64)
    y = np.r_[np.zeros(len(quadrants)), np.ones(len(turned_quadrants))]
    centre, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    probe = LogisticRegression(C=PROBE_C, max_iter=5000).fit((x - centre) / scale, y)
    weights = probe.coef_[0] / scale
    bias = float(probe.intercept_[0] - np.sum(probe.coef_[0] * centre / scale))
    fit = GateFit(covariance.location_, whitening, 1.0, weights, bias, 0.0, 1.0)
    spread = max(float(np.std(fit.sideways(quadrants))), 1e-6)
    fit = GateFit(
        covariance.location_.astype(np.float32),
        whitening.astype(np.float32),
        float(np.max(fit.distance(val_features))) * (1.0 + MARGIN),
        weights.astype(np.float32),
        bias,
        float(np.max(fit.sideways(val_quadrants))) + MARGIN * spread,
        spread,
    )
    scores = fit.score(val_features, val_quadrants)
    record = PixelGate(
        method=METHOD,
        threshold=THRESHOLD,
        fitted_on=len(features),
        validation_slices=len(val_features),
        validation_accepted=float(np.mean(scores <= THRESHOLD)),
        validation_scores={
            "median": round(float(np.median(scores)), 4),
            "p99": round(float(np.percentile(scores, 99)), 4),
            "max": round(float(np.max(scores)), 4),
        },
    )
    return dataclasses.replace(fit, record=record)
