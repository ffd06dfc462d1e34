"""Keras -> ONNX with tf2onnx (dynamic batch) and the parity check against Keras, then the
served graph (the preprocessing and mask head around the network, ``export.served_graph``) and
its parity gate against the reference preprocessing; only a graph that passes both is
written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.dataset_card import DatasetCard, from_training
from brainscan.errors import BrainscanError
from brainscan.export.gate import GateReport, at_most, info, output_difference
from brainscan.export.limits import OPSET, PARITY_ATOL
from brainscan.export.served_graph import RULE_OUT_KEY, ServingGraphError
from brainscan.intended_use import INTENDED_USE_FILE, ONNX_METADATA_KEY
from brainscan.onnx_runtime import cpu_session


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
    names = list(model.output_names)
    if len(model_proto.graph.output) != len(names):
        raise ServingGraphError(f"expected {len(names)} outputs, the ONNX graph has {len(model_proto.graph.output)}")
    for output, name in zip(list(model_proto.graph.output), names):
        _rename_output(model_proto, output.name, name)
    return model_proto


def with_gate_taps(classifier):
    """The classifier with what its pixel gate reads as further outputs: its stages'
    activations pooled (``pixel_gate.keras_taps``, named ``pixel_gate.TAP_OUTPUTS``); the
    classifier as it is when it lacks those stages (its served graph then has no fitted gate)."""
    import keras

    from brainscan.export.pixel_gate import TAP_LAYERS, keras_taps

    if not set(TAP_LAYERS) <= {layer.name for layer in classifier.layers}:
        return classifier
    return keras.Model(classifier.input, [classifier.output, *keras_taps(classifier)], name=classifier.name)


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
    output = session.get_outputs()[0].name  # the network's decision output (the gate's taps follow it)
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


@dataclass
class GateData:
    """What the classifier's pixel gate is fitted on: the run's training and validation slices
    (decoded, at their own sizes), and the dataset's card (what the slices are); with the
    validation slices' labels (1: tumour), the segmenter's rule-out threshold is set too."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    card: DatasetCard | None = None
    val_labels: list[int] | None = None


def rule_out_threshold(probabilities: np.ndarray, labels) -> float | None:
    """The probability under which the classifier rules a slice's tumour out, so a series'
    segmenter skips it: half the lowest probability of a slice with a tumour, at most
    ``contract.SEGMENTER_RULE_OUT_CAP``; None without a tumour slice to set it on."""
    tumour = np.asarray(probabilities, float).reshape(-1)[np.asarray(labels, bool).reshape(-1)]
    if not tumour.size:
        return None
    return float(min(contract.SEGMENTER_RULE_OUT_CAP, 0.5 * float(tumour.min())))


def fit_pixel_gate(network_model, data: GateData):
    """The pixel gate of a classifier whose network graph gives the gate's taps: the served
    graph with the pooled features as outputs runs on the training slices, the same slices
    turned a quarter turn, and the validation slices (``pixel_gate.fit_gate``)."""
    from brainscan.export.pixel_gate import FEATURES, QUADRANTS, fit_gate, quarter_turns
    from brainscan.export.served_graph import POOLED, run_outputs, serving_model
    from brainscan.preprocessing import pixels

    session = cpu_session(serving_model(network_model, gate=POOLED).SerializeToString())

    def pooled(images):
        outputs = run_outputs(session, [pixels(image) for image in images])
        return np.stack(outputs[FEATURES]), np.stack(outputs[QUADRANTS])

    features, quadrants = pooled(data.train)
    _, turned = pooled(quarter_turns(data.train))
    val_features, val_quadrants = pooled(data.val)
    return fit_gate(features, quadrants, turned, val_features, val_quadrants)


def export_onnx(
    model,
    out: Path,
    images: list[np.ndarray],
    atol: float = PARITY_ATOL,
    opset: int = OPSET,
    gate_data: GateData | None = None,
):
    """Convert, check the network against Keras and the served graph against the reference
    preprocessing on ``images`` (decoded validation slices, any sizes; resampled to
    ``serving.PARITY_SIZES`` for the second check), and only then write the served graph to
    ``out`` (atomically). For a classifier with ``gate_data``, the pixel gate is fitted and
    computed in the served graph, and the models' intended use (``brainscan.intended_use``)
    goes into its metadata and, as JSON, beside it (``intended_use.json``). Returns the
    reports and the intended use (None for the segmenter). Raises ParityError, leaving no
    file, when either check fails."""
    from brainscan.export.pixel_gate import has_taps
    from brainscan.export.served_graph import check_parity, network_of, resampled, serving_model
    from brainscan.preprocessing import to_model_input

    is_classifier = contract.CLASSIFIER_INPUT in [layer.name for layer in model.layers[:1]]
    model_proto = keras_to_onnx(with_gate_taps(model) if is_classifier and gate_data else model, opset)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    tensors = np.stack([to_model_input(image, size) for image in images])
    network = compare_onnx_keras(model, model_proto.SerializeToString(), tensors, atol)
    if not network.passed:
        raise ParityError(network)
    use = None
    if network_of(model_proto) == contract.CLASSIFIER:
        gate = fit_pixel_gate(model_proto, gate_data) if gate_data and has_taps(model_proto.graph) else None
        sides = [image.shape[:2] for image in gate_data.train] if gate_data else []
        use = from_training(gate_data.card if gate_data else None, sides, gate.record if gate else None, len(sides))
        served = serving_model(model_proto, gate=gate)
        served.metadata_props.add(key=ONNX_METADATA_KEY, value=use.to_json())
        if gate_data and gate_data.val_labels is not None:
            from brainscan.export.served_graph import run_served
            from brainscan.preprocessing import pixels

            answers = run_served(cpu_session(served.SerializeToString()), [pixels(i) for i in gate_data.val])
            rule_out = rule_out_threshold(np.concatenate(answers), gate_data.val_labels)
            if rule_out is not None:
                served.metadata_props.add(key=RULE_OUT_KEY, value=f"{rule_out:.6g}")
    else:
        served = serving_model(model_proto)
    parity = check_parity(model_proto, served, resampled(images))
    if not parity.passed:
        raise ParityError(parity)
    write_bytes_atomic(Path(out), served.SerializeToString())
    if use is not None:
        use.write(Path(out).with_name(INTENDED_USE_FILE))
    return network, parity, use


def export_run(run: Path, out: Path | None = None, samples: int = 32, atol: float = PARITY_ATOL, opset: int = OPSET):
    """`brainscan export onnx RUN`: the run's network to its served graph (``export_onnx``),
    checked on its first ``samples`` validation slices; a classifier's pixel gate is fitted
    on the run's training slices and limited on all its validation slices."""
    from brainscan.train import datasets
    from brainscan.train.training import load_model, load_run, split_samples

    config = load_run(run)
    parts = split_samples(config)
    val = datasets.decode_images(parts["val"])
    gate_data = None
    if config.task == contract.CLASSIFIER:
        labels = [int(label) for label in datasets.load_labels(parts["val"])]
        gate_data = GateData(datasets.decode_images(parts["train"]), val, DatasetCard.read(Path(config.data)), labels)
    target = Path(out) if out else Path(run) / "model.onnx"
    model = load_model(Path(run) / "model.keras")
    return target, export_onnx(model, target, val[:samples], atol=atol, opset=opset, gate_data=gate_data)
