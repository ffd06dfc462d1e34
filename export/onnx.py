"""Keras -> ONNX with tf2onnx (dynamic batch) and the parity check against Keras, then the
served graph (the preprocessing and mask head around the network, ``export.serving``) and
its parity gate against the reference preprocessing; only a graph that passes both is
written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.errors import BrainscanError
from brainscan.export.gate import GateReport, at_most, info, output_difference
from brainscan.onnx_runtime import cpu_session

OPSET = 17
PARITY_ATOL = 1e-4


class ParityError(BrainscanError, RuntimeError):
    """ONNX Runtime disagrees with Keras beyond the tolerance, or the served graph with the
    reference preprocessing; the message holds the table."""

    def __init__(self, report):
        super().__init__(f"ONNX export does not match its reference:\n{report.table()}")
        self.report = report


def _rename_output(model_proto, old: str, new: str) -> None:
    if old == new:
        return
    for node in model_proto.graph.node:
        node.output[:] = [new if x == old else x for x in node.output]
        node.input[:] = [new if x == old else x for x in node.input]
    for output in model_proto.graph.output:
        if output.name == old:
            output.name = new


def keras_to_onnx(model, opset: int = OPSET):
    """Convert a Keras model to an ONNX ModelProto whose input and output names are the
    Keras layer names (the contract's), with a dynamic batch dimension."""
    import tensorflow as tf
    import tf2onnx

    keras_input = model.inputs[0]
    input_name = model.layers[0].name
    signature = [tf.TensorSpec((None, *keras_input.shape[1:]), tf.float32, name=input_name)]
    model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    output_name = model.layers[-1].name
    if len(model_proto.graph.output) != 1:
        raise ParityError(f"expected one output, the ONNX graph has {len(model_proto.graph.output)}")
    _rename_output(model_proto, model_proto.graph.output[0].name, output_name)
    return model_proto


def save_graph(graph, path: Path, opset: int = 13) -> Path:
    """Write a hand-built ONNX graph (tests, benchmarks) as a checked model."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def compare_onnx_keras(
    model, onnx_model: bytes, images: np.ndarray, atol: float = PARITY_ATOL, threshold: float | None = None
) -> GateReport:
    """Run Keras and ONNX Runtime on the same images and compare the outputs: every value
    next to its limit, as the other gates report."""
    session = cpu_session(onnx_model)
    input_name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    expected = np.asarray(model.predict(images, batch_size=16, verbose=0))
    actual = session.run([output], {input_name: images.astype(np.float32)})[0]
    if threshold is None:
        threshold = contract.DECISION_THRESHOLD if output == contract.CLASSIFIER_OUTPUT else contract.MASK_THRESHOLD
    difference = output_difference(expected, actual, threshold)
    checks = (
        at_most("non-finite outputs (NaN)", difference.nan_count, 0),
        at_most("max |diff|", difference.max_abs_diff, atol),
        at_most(f"decisions differ (> {threshold:g})", difference.decisions_differ, 0),
        info("mean |diff|", difference.mean_abs_diff),
    )
    return GateReport(output, len(images), checks, gate="ONNX Runtime vs Keras")


def export_onnx(model, out: Path, images: list[np.ndarray], atol: float = PARITY_ATOL, opset: int = OPSET):
    """Convert, check the network against Keras and the served graph against the reference
    preprocessing on ``images`` (decoded validation slices, any sizes; resampled to
    ``serving.PARITY_SIZES`` for the second check), and only then write the served graph to
    ``out`` (atomically). Returns both reports. Raises ParityError, leaving no file, when
    either check fails."""
    from brainscan.export.serving import check_parity, resampled, serving_model
    from brainscan.preprocessing import to_model_input

    model_proto = keras_to_onnx(model, opset)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    tensors = np.stack([to_model_input(image, size) for image in images])
    network = compare_onnx_keras(model, model_proto.SerializeToString(), tensors, atol)
    if not network.passed:
        raise ParityError(network)
    served = serving_model(model_proto)
    parity = check_parity(model_proto, served, resampled(images))
    if not parity.passed:
        raise ParityError(parity)
    write_bytes_atomic(Path(out), served.SerializeToString())
    return network, parity
