"""Real ONNX networks whose answers are known without training: their probability and mask
follow from an image's brightness, so the tests can work every answer out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_threshold_segmenter(path: Path, size: int = 64, detour: float | None = None) -> Path:
    """A real ONNX segmenter whose answer is known without training: probability rises
    with brightness (sigmoid((mean over channels - 128) / 10)), so the mask is the bright
    half of each slice's intensity range. It makes geometry tests exact where the tiny
    trained segmenter finds nothing. With ``detour``, the mean is multiplied by it and
    divided back (nodes ``detour_up``/``detour_down``): the same answer in FP32, but an
    intermediate that overflows FP16 (max 65504) once mean x detour does."""
    from onnx import TensorProto, helper

    from brainscan import contract
    from brainscan.export.onnx import save_graph

    nodes = [helper.make_node("ReduceMean", [contract.SEGMENTER_INPUT], ["mean"], axes=[3], keepdims=1, name="mean")]
    constants = [
        helper.make_tensor("middle", TensorProto.FLOAT, [], [128.0]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [0.1]),
    ]
    level = "mean"
    if detour is not None:
        nodes += [
            helper.make_node("Mul", ["mean", "detour"], ["detoured"], name="detour_up"),
            helper.make_node("Div", ["detoured", "detour"], ["level"], name="detour_down"),
        ]
        constants.append(helper.make_tensor("detour", TensorProto.FLOAT, [], [detour]))
        level = "level"
    nodes += [
        helper.make_node("Sub", [level, "middle"], ["centred"], name="centre"),
        helper.make_node("Mul", ["centred", "gain"], ["logit"], name="scale"),
        helper.make_node("Sigmoid", ["logit"], [contract.SEGMENTER_OUTPUT], name="probability"),
    ]
    graph = helper.make_graph(
        nodes,
        "threshold_segmenter",
        [helper.make_tensor_value_info(contract.SEGMENTER_INPUT, TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info(contract.SEGMENTER_OUTPUT, TensorProto.FLOAT, ["N", size, size, 1])],
        constants,
    )
    return save_graph(graph, path)


def write_threshold_classifier(path: Path, size: int = 96) -> Path:
    """A real ONNX classifier whose answer is known without training: the tumour
    probability is sigmoid((mean of the input - 128) / 10), so after the per-image stretch
    to 0..255 an image of two levels whose bright part covers a fraction f of the pixels
    gets sigmoid((255 f - 128) / 10): tumour above f = 0.502."""
    from onnx import TensorProto, helper

    from brainscan import contract
    from brainscan.export.onnx import save_graph

    nodes = [
        helper.make_node("ReduceMean", [contract.CLASSIFIER_INPUT], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis"], ["level"]),
        helper.make_node("Sub", ["level", "middle"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [contract.CLASSIFIER_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "threshold_classifier",
        [helper.make_tensor_value_info(contract.CLASSIFIER_INPUT, TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info(contract.CLASSIFIER_OUTPUT, TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("middle", TensorProto.FLOAT, [], [128.0]),
            helper.make_tensor("gain", TensorProto.FLOAT, [], [0.1]),
        ],
    )
    return save_graph(graph, path)


def hand_probability(bright_fraction: float) -> float:
    """What the threshold classifier answers for a two-level image, computed by hand."""
    return float(1.0 / (1.0 + np.exp(-(255.0 * bright_fraction - 128.0) / 10.0)))
