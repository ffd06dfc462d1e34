"""The shared metric definitions."""

import numpy as np
import pytest

from brainscan.metrics import classification_metrics, dice, iou, roc_auc, segmentation_metrics


def test_dice_and_iou_of_known_overlaps():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 pixels
    b[:, 2:7] = True  # 50 pixels, 30 shared
    assert dice(a, b) == pytest.approx(0.6)
    assert iou(a, b) == pytest.approx(30 / 70)
    assert dice(a, a) == 1.0 and dice(np.zeros(4), np.zeros(4)) == 1.0
    assert dice(a, ~a) == 0.0


def test_segmentation_metrics_report_tumour_slices_separately():
    truth = np.zeros((3, 8, 8), bool)
    truth[0, :4] = True
    pred = truth.copy()
    pred[2, 0, 0] = True  # a false positive on an empty slice
    m = segmentation_metrics(pred, truth)
    assert m["dice_tumour_slices"] == 1.0 and m["tumour_slices"] == 1
    assert m["empty_slices_predicted_empty"] == 0.5
    assert m["specificity"] < 1.0 and m["sensitivity"] == 1.0


def test_roc_auc_and_classification_metrics():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    m = classification_metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    assert m["accuracy"] == 0.5 and m["sensitivity"] == 0.5 and m["specificity"] == 0.5
