"""The fixed sets of values of the data and train commands (light: --help lists them
without importing Keras)."""

from __future__ import annotations

from dataclasses import dataclass

from brainscan import contract
from brainscan.contract import Choice


class Split(Choice):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Look(Choice):
    """What the phantom's slices look like (``phantom.render_slice``)."""

    MR = "mr"  # T1-weighted MR
    CT = "ct"  # head CT in a brain window


class Architecture(Choice):
    MOBILENETV2_UNET = "mobilenetv2-unet"  # the U-Net with a MobileNetV2 encoder
    UNET = "unet"  # the plain U-Net


class Weights(Choice):
    IMAGENET = "imagenet"  # downloads
    NONE = "none"


@dataclass(frozen=True)
class TaskDefaults:
    """A task's training defaults: `brainscan train TASK` shows them and TrainConfig fills
    them in, from this one place."""

    size: int
    epochs: int
    alpha: float  # MobileNet width
    ema: bool
    batch_size: int = 16
    learning_rate: float = 1e-3


DEFAULTS = {
    contract.CLASSIFIER: TaskDefaults(size=contract.CLASSIFIER_SIZE, epochs=16, alpha=1.0, ema=True),
    contract.SEGMENTER: TaskDefaults(size=contract.SEGMENTER_SIZE, epochs=12, alpha=0.5, ema=False),
}
