"""Training losses and metrics for Keras (the numpy evaluation metrics are in brainscan.metrics)."""

from __future__ import annotations

import keras
from keras import ops

SMOOTH = 1.0


@keras.saving.register_keras_serializable(package="brainscan")
def dice_coefficient(y_true, y_pred):
    """Soft Dice over each whole batch."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    return (2.0 * intersection + SMOOTH) / (ops.sum(y_true) + ops.sum(y_pred) + SMOOTH)


@keras.saving.register_keras_serializable(package="brainscan")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy + (1 - soft Dice): BCE gives smooth gradients everywhere, Dice
    keeps the small tumour class from being drowned by background pixels."""
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + 1.0 - dice_coefficient(y_true, y_pred)
