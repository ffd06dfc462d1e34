"""Choosing the classifier's operating point on validation patients."""
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
