"""The two networks, as pure builders: ``build_x(input_shape, ...) -> keras.Model``.

Input and output layers carry the contract's tensor names, which become the ONNX,
TensorRT and Triton names. Both models take pixels in 0..255 (the shared preprocessing's
output) and normalise in-graph to MobileNet's -1..1.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from brainscan import contract
from brainscan.errors import BrainscanError, UsageError
from brainscan.train.choices import Weights

WEIGHTS = tuple(w.value for w in Weights)
# Starting probabilities of the output layers (focal-loss-style prior initialisation).
TUMOUR_PIXEL_PRIOR = 0.02
TUMOUR_CELL_PRIOR = 0.02
# MobileNetV2 layers whose activations feed the decoder, from stride 2 to stride 16.
_SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
_BOTTLENECK = "block_16_project"


class WeightsUnavailableError(BrainscanError, RuntimeError):
    """ImageNet weights could not be obtained (no internet and nothing in the Keras cache)."""


def _backbone(factory, name: str, input_tensor, weights: str, alpha: float):
    if weights not in WEIGHTS:
        raise UsageError(f"weights must be one of {WEIGHTS}, not {weights!r}")
    try:
        return factory(
            input_tensor=input_tensor,
            include_top=False,
            weights=None if weights == "none" else "imagenet",
            alpha=alpha,
        )
    except Exception as exc:  # keras raises plain Exception for a failed download
        if weights == "imagenet" and ("URL" in str(exc) or "fetch" in str(exc) or isinstance(exc, OSError)):
            raise WeightsUnavailableError(
                f"could not download ImageNet weights for {name} ({exc.__class__.__name__}); "
                "use --weights none, or put the weights file in ~/.keras/models on a machine "
                "without internet"
            ) from None
        raise


def _relax_batchnorm(model: keras.Model, momentum: float = 0.9) -> None:
    """Keras' MobileNets use BN momentum 0.999: moving statistics would need thousands of
    steps to settle, far more than a short CPU training, and inference would use stale
    statistics. 0.9 settles within a few dozen steps."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


TUMOUR_MAP = "tumour_map"  # training-only output of the classifier
# MobileNet (v1) activations the classifier's head can score, by stride.
CLASSIFIER_TAPS = {8: "conv_pw_5_relu", 16: "conv_pw_11_relu", 32: "conv_pw_13_relu"}


def build_classifier(
    input_shape: tuple[int, int, int] = (contract.CLASSIFIER_SIZE, contract.CLASSIFIER_SIZE, 3),
    weights: str = "none",
    alpha: float = 1.0,
    dropout: float = 0.2,
    head_stride: int = 8,
) -> keras.Model:
    """MobileNet (v1) backbone + a small head: a 1x1 convolution scores every cell of the
    backbone's grid at ``head_stride`` for tumour, and the image's probability is the
    sigmoid of the highest score. A tumour is local: the max keeps a small one from being
    averaged away, and the per-cell scores can be supervised with masks (classifier_trainer).

    Trained from scratch on a few hundred phantom slices, scoring at stride 8 (the first
    five MobileNet blocks) generalised to unseen patients (validation ROC AUC 0.96 after 10
    epochs) where stride 16 and 32 memorised the training patients (AUC 0.74 and 0.76);
    with ImageNet weights the deeper strides are worth trying."""
    inputs = keras.Input(input_shape, name=contract.CLASSIFIER_INPUT)
    scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    backbone = _backbone(keras.applications.MobileNet, "MobileNet", scaled, weights, alpha)
    if head_stride not in CLASSIFIER_TAPS:
        raise UsageError(f"head_stride must be one of {sorted(CLASSIFIER_TAPS)}")
    features = backbone.get_layer(CLASSIFIER_TAPS[head_stride]).output
    x = layers.Dropout(dropout, name="dropout")(features)
    logits = layers.Conv2D(1, 1, bias_initializer=_prior(TUMOUR_CELL_PRIOR), name="cell_logits")(x)
    top = layers.GlobalMaxPooling2D(name="max_cell")(logits)
    outputs = layers.Activation("sigmoid", name=contract.CLASSIFIER_OUTPUT)(top)
    model = keras.Model(inputs, outputs, name="classifier")
    _relax_batchnorm(model)
    return model


def classifier_trainer(classifier: keras.Model) -> keras.Model:
    """The same layers with the per-cell tumour map as a second output, for training with
    masks; the served classifier stays single-output."""
    tumour_map = layers.Activation("sigmoid", name=TUMOUR_MAP)(classifier.get_layer("cell_logits").output)
    return keras.Model(
        classifier.input,
        {contract.CLASSIFIER_OUTPUT: classifier.output, TUMOUR_MAP: tumour_map},
        name="classifier_trainer",
    )


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _up_block(x, skip, filters: int, name: str):
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _conv_block(x, filters, name)


def _prior(probability: float):
    """Bias initialiser whose sigmoid is ``probability``."""
    return keras.initializers.Constant(math.log(probability / (1 - probability)))


def _mask_head(x):
    """1x1 sigmoid convolution whose bias starts at the tumour-pixel prior (about 2 %):
    training starts from "mostly background" instead of 0.5 everywhere, which shortens
    the first epochs where an imbalanced segmenter learns nothing."""
    return layers.Conv2D(
        1, 1, activation="sigmoid", bias_initializer=_prior(TUMOUR_PIXEL_PRIOR), name=contract.SEGMENTER_OUTPUT
    )(x)


def build_segmenter(
    input_shape: tuple[int, int, int] = (contract.SEGMENTER_SIZE, contract.SEGMENTER_SIZE, 3),
    weights: str = "none",
    alpha: float = 1.0,
    decoder_filters: tuple[int, ...] = (128, 64, 48, 32, 16),
    freeze_encoder: bool = False,
) -> keras.Model:
    """U-Net whose encoder is MobileNetV2, with skip connections at strides 2, 4, 8 and 16."""
    if len(decoder_filters) != 5:
        raise UsageError("decoder_filters needs five widths, from stride 16 up to full size")
    inputs = keras.Input(input_shape, name=contract.SEGMENTER_INPUT)
    scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    encoder = _backbone(keras.applications.MobileNetV2, "MobileNetV2", scaled, weights, alpha)
    encoder.trainable = not freeze_encoder
    skips = [encoder.get_layer(name).output for name in _SKIPS]
    x = encoder.get_layer(_BOTTLENECK).output
    for i, (skip, filters) in enumerate(zip(reversed(skips), decoder_filters[:4])):
        x = _up_block(x, skip, filters, f"decoder{i}")
    x = _up_block(x, None, decoder_filters[4], "decoder4")
    outputs = _mask_head(x)
    model = keras.Model(inputs, outputs, name="segmenter")
    _relax_batchnorm(model)
    return model


def build_unet(
    input_shape: tuple[int, int, int] = (contract.SEGMENTER_SIZE, contract.SEGMENTER_SIZE, 3),
    base_filters: int = 16,
    depth: int = 4,
) -> keras.Model:
    """The plain U-Net of the first seed project (no pretrained encoder)."""
    inputs = keras.Input(input_shape, name=contract.SEGMENTER_INPUT)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"encoder{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"encoder{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, "bridge")
    for level in reversed(range(depth)):
        x = _up_block(x, skips[level], base_filters * 2**level, f"decoder{level}")
    outputs = _mask_head(x)
    model = keras.Model(inputs, outputs, name="segmenter")
    _relax_batchnorm(model)
    return model
