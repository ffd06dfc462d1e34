"""The fixed sets of values of the data and train commands (light: --help lists them
without importing Keras)."""

from __future__ import annotations

from brainscan.contract import Choice


class Split(Choice):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Architecture(Choice):
    MOBILENETV2_UNET = "mobilenetv2-unet"  # the U-Net with a MobileNetV2 encoder
    UNET = "unet"  # the plain U-Net


class Weights(Choice):
    IMAGENET = "imagenet"  # downloads
    NONE = "none"
