"""Choosing the classifier's operating point on validation patients, and the same seed giving
the same network."""

import io
from pathlib import Path

import numpy as np

from brainscan.train.training import choose_threshold


def test_threshold_lands_in_the_middle_of_the_gap_between_the_classes():
    negatives = np.array([0.1, 0.3, 0.55, 0.62, 0.70])  # tumour-free slices drifting up
    positives = np.array([0.82, 0.9, 0.97, 0.99])
    probability = np.concatenate([negatives, positives])
    labels = np.array([0] * 5 + [1] * 4)
    threshold = choose_threshold(probability, labels)
    assert 0.70 < threshold < 0.82
    assert abs(threshold - 0.76) < 0.03  # the plateau's middle, not one of its edges


def test_one_stray_slice_does_not_drag_the_threshold():
    rng = np.random.default_rng(0)
    negatives = rng.uniform(0.0, 0.4, 200)
    positives = rng.uniform(0.6, 1.0, 200)
    probability = np.concatenate([negatives, positives, [0.95]])  # one mislabelled-looking negative
    labels = np.array([0] * 200 + [1] * 200 + [0])
    assert 0.4 < choose_threshold(probability, labels) < 0.6


def test_calibration_moves_the_served_half_to_the_chosen_threshold():
    """calibrate_classifier shifts the bias of the layer `cell_logits` so that the served
    decision p > 0.5 becomes the chosen p > t. A one-layer Keras network with that layer
    gives probabilities set by hand; after calibration the decisions must be the labels and
    each probability sigmoid(logit(p) - logit(t)), worked out here."""
    import keras

    from brainscan.train.training import calibrate_classifier, predict

    before = np.array([0.1, 0.3, 0.55, 0.62, 0.70, 0.82, 0.9, 0.97, 0.99])
    labels = np.array([0] * 5 + [1] * 4)
    logit = np.log(before / (1 - before))
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(keras.layers.Dense(1, name="cell_logits")(inputs)))
    model.get_layer("cell_logits").set_weights([np.array([[1.0], [0.0]]), np.array([0.0])])
    images = np.stack([logit, np.zeros_like(logit)], axis=1).astype(np.float32)
    np.testing.assert_allclose(predict(model, images).ravel(), before, atol=1e-5)

    threshold = calibrate_classifier(model, images, labels)
    assert 0.70 < threshold < 0.82  # between the classes (the test above pins where)
    after = predict(model, images).ravel()
    assert ((after > 0.5) == labels.astype(bool)).all()  # 0.55, 0.62 and 0.70 are now "no tumour"
    expected = 1 / (1 + np.exp(-(logit - np.log(threshold / (1 - threshold)))))
    np.testing.assert_allclose(after, expected, atol=1e-5)


def _weights(run: Path) -> dict[str, np.ndarray]:
    import zipfile

    import h5py

    with zipfile.ZipFile(run / "model.keras") as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5:
        found: dict[str, np.ndarray] = {}
        h5.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def test_the_same_seed_trains_the_same_network(runs, phantom_dir, tmp_path):
    """`--seed`'s promise: the tiny segmenter (its U-Net's upsampling and skips included), trained
    again with the same data and seed, has every weight equal to the first run's, bit for bit
    (threaded CPU kernels gave different weights before op determinism was turned on)."""
    from conftest import _train_tiny

    first, again = _weights(runs["segmenter"]), _weights(_train_tiny("segmenter", phantom_dir, tmp_path / "again"))
    assert len(first) > 50 and first.keys() == again.keys()
    assert all(np.array_equal(first[name], again[name]) for name in first)
