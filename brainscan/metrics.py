"""Numpy metrics shared by training's evaluation, the export checks and the client's
``--evaluate``: one definition of Dice, IoU and friends."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def segmentation_metrics(pred, truth) -> dict[str, float]:
    """Binary masks, one per slice ([N, ...] arrays, or sequences of masks of any sizes) ->
    Dice and IoU (mean over slices with tumour, and over all pixels), sensitivity,
    specificity and pixel accuracy over all pixels."""
    pred = [np.asarray(p, bool).reshape(-1) for p in pred]
    truth = [np.asarray(t, bool).reshape(-1) for t in truth]
    tp = float(sum(np.logical_and(p, t).sum() for p, t in zip(pred, truth)))
    tn = float(sum(np.logical_and(~p, ~t).sum() for p, t in zip(pred, truth)))
    fp = float(sum(np.logical_and(p, ~t).sum() for p, t in zip(pred, truth)))
    fn = float(sum(np.logical_and(~p, t).sum() for p, t in zip(pred, truth)))
    has_tumour = [t.any() for t in truth]
    per_slice_dice = [dice(p, t) for p, t, h in zip(pred, truth, has_tumour) if h]
    per_slice_iou = [iou(p, t) for p, t, h in zip(pred, truth, has_tumour) if h]
    empty = [not p.any() for p, h in zip(pred, has_tumour) if not h]
    return {
        "dice_tumour_slices": float(np.mean(per_slice_dice)) if per_slice_dice else float("nan"),
        "iou_tumour_slices": float(np.mean(per_slice_iou)) if per_slice_iou else float("nan"),
        "dice_global": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "iou_global": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "pixel_accuracy": (tp + tn) / (tp + tn + fp + fn),
        "empty_slices_predicted_empty": float(np.mean(empty)) if empty else float("nan"),
        "slices": int(len(truth)),
        "tumour_slices": int(sum(has_tumour)),
    }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def classification_metrics(probability: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Probabilities and 0/1 labels -> accuracy, sensitivity, specificity, ROC AUC."""
    probability, labels = np.asarray(probability, float).ravel(), np.asarray(labels, bool).ravel()
    predicted = probability > threshold
    tp = float(np.sum(predicted & labels))
    tn = float(np.sum(~predicted & ~labels))
    fp = float(np.sum(predicted & ~labels))
    fn = float(np.sum(~predicted & labels))
    return {
        "accuracy": (tp + tn) / len(labels) if len(labels) else float("nan"),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "roc_auc": roc_auc(probability, labels),
        "images": int(len(labels)),
        "positives": int(labels.sum()),
    }
