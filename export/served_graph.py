"""The served graphs: each network with the preprocessing in front of its layers and, for the
segmenter, the mask head behind them, and the gate that holds them to the OpenCV
preprocessing the kit used before the graphs took it over.

A served graph takes ``PIXELS`` (FP32 [N, H, W, C], the decoded image at its own size) and
gives the ensemble's outputs directly: ``TUMOR_PROBABILITY`` (classifier) or ``MASK`` (UINT8
[N, H, W], segmenter). So the ensemble is preprocess (decode, in Python) -> classifier and
segmenter, and on a GPU the resize, the intensity stretch and the mask's way back to the
image's size run in the TensorRT engines. The nodes added here are named under
``brainscan.preprocessing_graph``'s prefixes, which the FP16 conversion keeps in FP32.

The parity gate runs real validation slices, resampled to several sizes, through the served
graph and through the reference path (OpenCV's INTER_AREA / INTER_LINEAR resize and the same
stretch, the network alone, OpenCV's linear mask resize), and requires the same decisions
and masks (mean Dice against the reference's). ``brainscan export onnx`` writes a served
graph only when it passes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from brainscan import contract, opencv_path
from brainscan.errors import BrainscanError
from brainscan.export.gate import Check, GateReport, at_least, at_most, info
from brainscan.export.pixel_gate import (
    FEATURES,
    GATE_PREFIX,
    QUADRANTS,
    TAP_OUTPUTS,
    add_no_gate,
    add_pooling,
    add_score,
    gate_of,
    has_taps,
)
from brainscan.intended_use import ONNX_METADATA_KEY, IntendedUse
from brainscan.metrics import dice
from brainscan.onnx_runtime import cpu_session
from brainscan.preprocessing_graph import (
    CPU_RESIZE_BLOCKS,
    MASK_PREFIX,
    PREPROCESS_PREFIX,
    GraphBuilder,
    add_mask_head,
    add_preprocessing,
    image_size,
)

# the image sizes the parity gate resamples each validation slice to (height, width)
PARITY_SIZES = ((256, 256), (512, 512), (240, 240), (150, 220))
MIN_PARITY_DICE = 0.99
MAX_DECISIONS_CHANGED = 0


class ServingGraphError(BrainscanError, ValueError):
    """A graph that is neither one of the kit's networks nor a served graph; the message says why."""


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _outputs(model) -> list[str]:
    return [o.name for o in model.graph.output]


def network_of(model) -> str:
    """classifier or segmenter: from a served graph's outputs, or a network's input name."""
    inputs = [i.name for i in model.graph.input]
    outputs = _outputs(model)
    if inputs == [contract.PIXELS] and outputs:
        if outputs[0] == contract.TUMOR_PROBABILITY and outputs[1:] in (
            [],
            [contract.OOD_SCORE],
            [FEATURES, QUADRANTS],
        ):
            return contract.CLASSIFIER
        if outputs == [contract.MASK]:
            return contract.SEGMENTER
    for network, name in contract.NETWORK_INPUT.items():
        if inputs == [name]:
            return network
    raise ServingGraphError(
        f"the graph has inputs {inputs} and outputs {outputs}: expected a served graph "
        f"([{contract.PIXELS!r}] -> {contract.TUMOR_PROBABILITY!r} and {contract.OOD_SCORE!r}, or {contract.MASK!r}) "
        f"or a network taking {contract.CLASSIFIER_INPUT!r} or {contract.SEGMENTER_INPUT!r}"
    )


def is_served(model) -> bool:
    return [i.name for i in model.graph.input] == [contract.PIXELS]


def network_size(model) -> tuple[int, int]:
    """The (height, width) a network takes: from its input, or from a served graph's preprocessing."""
    if is_served(model):
        network = network_of(model)
        for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
            if value.name == contract.NETWORK_INPUT[network]:
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                return dims[1], dims[2]
        raise ServingGraphError(f"the served {network} graph does not record its network's input shape")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:3]) or dims[3] != contract.CHANNELS:
        raise ServingGraphError(
            f"the network input {model.graph.input[0].name} has shape {dims}, expected "
            f"[batch, height, width, {contract.CHANNELS}]"
        )
    return dims[1], dims[2]


POOLED = "pooled"  # serving_model's gate for the fit: the pooled features as outputs, no score yet


def _classifier_head(b: GraphBuilder, graph, gate) -> list:
    """The classifier's outputs after its network: the probability, then the score: the gate
    (``pixel_gate``) pooled from the network's taps and scored with ``gate``; or zeros without
    a fitted gate. With ``gate`` POOLED, the pooled features instead of the score."""
    from onnx import TensorProto, helper

    outputs = {o.name: o for o in graph.output}
    probability = outputs[contract.TUMOR_PROBABILITY]
    if contract.OOD_SCORE in outputs:  # a network taken out of a served graph: its gate comes with it
        return [probability, outputs[contract.OOD_SCORE]]
    score = helper.make_tensor_value_info(contract.OOD_SCORE, TensorProto.FLOAT, ["N", 1])
    if not has_taps(graph) or gate is None:
        add_no_gate(b, contract.TUMOR_PROBABILITY)
        return [probability, score]
    features, quadrants = add_pooling(b)
    if gate is POOLED:  # what the fit runs on
        pooled = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", None]) for name in (FEATURES, QUADRANTS)]
        return [probability, *pooled]
    add_score(b, features, quadrants, gate)
    return [probability, score]


def _with_score(model, network: str, gate):
    """A served graph as it is, or with the classifier's out-of-distribution score added:
    computed from its pooled features with ``gate``, or zeros for an earlier kit's graph."""
    import onnx
    from onnx import TensorProto, helper

    outputs = _outputs(model)
    if network == contract.SEGMENTER or outputs[1:] == [contract.OOD_SCORE]:
        return model
    served = onnx.ModelProto()
    served.CopyFrom(model)
    b = GraphBuilder(GATE_PREFIX, _opset(model))
    if FEATURES in outputs:
        if gate is None or gate is POOLED:
            return model
        add_score(b, FEATURES, QUADRANTS, gate)
    else:  # a served classifier of an earlier version of the kit, without its score
        add_no_gate(b, contract.TUMOR_PROBABILITY)
    served.graph.node.extend(b.nodes)
    served.graph.initializer.extend(b.initializers)
    del served.graph.output[1:]
    served.graph.output.append(helper.make_tensor_value_info(contract.OOD_SCORE, TensorProto.FLOAT, ["N", 1]))
    onnx.checker.check_model(served, full_check=True)
    return served


def serving_model(model, gate=None, blocks: int = 0):
    """The served graph of a network (ONNX ModelProto taking ``classifier_input`` or
    ``segmenter_input``): preprocessing in front; behind the segmenter the mask head, behind
    the classifier its out-of-distribution score (``pixel_gate``: computed from the network's
    taps with ``gate``, a GateFit; zeros without one, and its intended use then declares no
    pixel gate; with ``gate`` POOLED, the pooled features the fit runs on); ``blocks``: the
    resize's products in bands (``preprocessing_graph.CPU_RESIZE_BLOCKS``, the CPU flavours'). A
    served graph is returned as it is, or with its score added."""
    import onnx
    from onnx import TensorProto, helper

    network = network_of(model)
    if is_served(model):
        return _with_score(model, network, gate)
    size = network_size(model)
    opset = _opset(model)
    if not opset >= 13:
        raise ServingGraphError(f"the {network} graph uses opset {opset}; the served graph needs 13 or newer")
    served = onnx.ModelProto()
    served.CopyFrom(model)
    graph = served.graph
    network_input = graph.input[0]
    pre = GraphBuilder(PREPROCESS_PREFIX, opset)
    add_preprocessing(pre, contract.PIXELS, size, network_input.name, blocks)
    head = GraphBuilder(MASK_PREFIX if network == contract.SEGMENTER else GATE_PREFIX, opset)
    if network == contract.SEGMENTER:
        add_mask_head(head, graph.output[0].name, image_size(head, contract.PIXELS), contract.MASK, blocks)
        outputs = [helper.make_tensor_value_info(contract.MASK, TensorProto.UINT8, ["N", "H", "W"])]
    else:
        outputs = _classifier_head(head, graph, gate)
    nodes = [*pre.nodes, *graph.node, *head.nodes]
    initializers = [*pre.initializers, *head.initializers]
    # shapes inferred for the bare network (a converter may leave stale ones, e.g. an FP16
    # type for its output, which becomes an inner tensor here) go; the network's input shape
    # stays on record (network_size reads it back)
    del graph.value_info[:]
    graph.value_info.append(network_input)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(contract.PIXELS, TensorProto.FLOAT, ["N", "H", "W", "C"]))
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(served, full_check=True)
    return served


def for_cpu(served):
    """A served graph as the CPU flavours serve it: the same graph with its resize's products in
    bands (``CPU_RESIZE_BLOCKS``), the same answers within float rounding, about twice as
    fast on a CPU at 256 and 512 pixels. A graph that takes PIXELS without resizing them to a
    network's input (the benchmarks' free networks) is returned as it is."""
    produced = {name for node in served.graph.node for name in node.output}
    if contract.NETWORK_INPUT[network_of(served)] not in produced:
        return served
    rebuilt = serving_model(network_only(served), gate=gate_of(served), blocks=CPU_RESIZE_BLOCKS)
    del rebuilt.metadata_props[:]
    rebuilt.metadata_props.extend(served.metadata_props)
    return rebuilt


def network_only(model):
    """The network inside a served graph (its input to its decision output and, for a
    classifier with a pixel gate, the taps the gate pools: ``serving_model(network,
    gate=gate_of(served))`` puts it back); a network is returned as it is."""
    import onnx.utils

    if not is_served(model):
        return model
    network = network_of(model)
    outputs = [contract.SEGMENTER_OUTPUT]
    if network == contract.CLASSIFIER:  # the network gives the taps its pixel gate pools, if it has one
        produced = {name for node in model.graph.node for name in node.output}
        outputs = [contract.TUMOR_PROBABILITY, *(TAP_OUTPUTS if set(TAP_OUTPUTS) <= produced else ())]
    inferred = onnx.shape_inference.infer_shapes(model)
    return _outputs_apart(onnx.utils.Extractor(inferred).extract_model([contract.NETWORK_INPUT[network]], outputs))


def _outputs_apart(model):
    """Each graph output that nodes inside also read becomes a tensor of its own (an Identity
    of the inner one): the FP16 converter casts an output to FP32 in place, and a node
    reading it would then get FP32 beside its FP16 weights."""
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    read = {name for node in model.graph.node for name in node.input}
    for name in sorted(outputs & read):
        inner = f"{name}/inner"
        for node in model.graph.node:
            node.output[:] = [inner if x == name else x for x in node.output]
            node.input[:] = [inner if x == name else x for x in node.input]
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}/output"))
    return model


# config parameters that a served graph declares about itself (model config is not an admin
# API: clients read them)
DECLARED_PARAMETERS = (contract.INTENDED_USE_PARAMETER, contract.SEGMENTER_RULE_OUT_PARAMETER)
RULE_OUT_KEY = "brainscan.segmenter_rule_out"  # its metadata key in the served classifier graph


def declared_parameters(model) -> dict[str, str]:
    """The config parameters a served graph (a ModelProto or an ONNX file) declares: for the
    classifier, its intended use (the JSON in its metadata; the kit's defaults, with no pixel
    gate, when it carries none); nothing for the segmenter."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    if network_of(model) != contract.CLASSIFIER:
        return {}
    metadata = {p.key: p.value for p in model.metadata_props}
    declared = metadata.get(ONNX_METADATA_KEY)
    use = IntendedUse.from_json(declared, "the intended use in the classifier graph") if declared else IntendedUse()
    found = {contract.INTENDED_USE_PARAMETER: use.to_json()}
    if RULE_OUT_KEY in metadata:  # the probability under which a series' segmenter skips a slice
        found[contract.SEGMENTER_RULE_OUT_PARAMETER] = metadata[RULE_OUT_KEY]
    return found


def added_nodes(model) -> list[str]:
    """Names of the nodes the served graph adds to the network (kept in FP32 by ``export fp16``)."""
    return [n.name for n in model.graph.node if n.name.startswith((PREPROCESS_PREFIX, MASK_PREFIX, GATE_PREFIX))]


def by_shape(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    """Indices of ``images`` grouped by shape: one batch per group."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[tuple(image.shape)].append(index)
    return groups


def run_outputs(session, images: Sequence[np.ndarray], max_batch: int = 16) -> dict[str, list[np.ndarray]]:
    """Every output of a graph for each of ``images`` (one image each: PIXELS [H, W, C] for a
    served graph), by output name, run in batches of one shape."""
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    out: dict[str, list] = {n: [None] * len(images) for n in names}
    for indices in by_shape(images).values():
        for start in range(0, len(indices), max_batch):
            chunk = indices[start : start + max_batch]
            results = session.run(names, {name: np.stack([images[i] for i in chunk]).astype(np.float32)})
            for output, result in zip(names, results):
                for i, value in zip(chunk, result):
                    out[output][i] = value
    return out


def run_served(session, images: Sequence[np.ndarray], max_batch: int = 16) -> list[np.ndarray]:
    """A graph's first output (its decision: the probability or the mask) for each of ``images``."""
    return run_outputs(session, images, max_batch)[session.get_outputs()[0].name]


def resampled(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] = PARITY_SIZES) -> list[np.ndarray]:
    """Each image resampled (bicubic, clipped to its type's range) to each of ``sizes``: new
    source images of other sizes with the content of real slices."""
    import cv2

    out = []
    for size in sizes:
        for image in images:
            resized = cv2.resize(image.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
            if np.issubdtype(image.dtype, np.integer):
                limits = np.iinfo(image.dtype)
                resized = np.clip(np.rint(resized), limits.min, limits.max)
            out.append(resized.astype(image.dtype))
    return out


def check_parity(network_model, served_model, images: Sequence[np.ndarray]) -> GateReport:
    """The served graph against the reference path on decoded ``images`` (any sizes)."""
    from brainscan.preprocessing import pixels

    network = network_of(served_model)
    size = network_size(network_model)
    net = cpu_session(network_model.SerializeToString())
    served = cpu_session(served_model.SerializeToString())
    candidate = run_served(served, [pixels(image) for image in images])
    reference = []
    first = [net.get_outputs()[0].name]  # the decision output (a classifier's gate taps follow it)
    for image in images:
        (output,) = net.run(first, {net.get_inputs()[0].name: opencv_path.model_input(image, size)[None]})
        reference.append(output[0] if network == contract.CLASSIFIER else opencv_path.mask(output[0], image.shape[:2]))
    shapes = sorted({f"{i.shape[0]}x{i.shape[1]}" for i in images})
    if network == contract.CLASSIFIER:
        ref, got = np.concatenate(reference).astype(np.float64), np.concatenate(candidate).astype(np.float64)
        changed = int(np.sum((ref > contract.DECISION_THRESHOLD) != (got > contract.DECISION_THRESHOLD)))
        checks: tuple[Check, ...] = (
            at_most("decisions changed", changed, MAX_DECISIONS_CHANGED),
            info("max |probability diff|", float(np.max(np.abs(ref - got), initial=0.0))),
        )
    else:
        found = [(r.any(), c.any()) for r, c in zip(reference, candidate)]
        changed = sum(a != b for a, b in found)
        either = [dice(c, r) for (a, b), r, c in zip(found, reference, candidate) if a or b]
        checks = (
            at_most("decisions changed (tumour found or not)", changed, MAX_DECISIONS_CHANGED),
            at_least("mean Dice vs the reference masks", float(np.mean(either)) if either else 1.0, MIN_PARITY_DICE),
            info("pixels differing", float(sum(int((r != c).sum()) for r, c in zip(reference, candidate)))),
        )
    return GateReport(network, len(images), checks, gate=f"Preprocessing parity (graph vs OpenCV, {', '.join(shapes)})")
