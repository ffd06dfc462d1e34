"""Precision in the ONNX graph: ``model.fp16.onnx`` beside ``model.onnx``, FP16 weights and
compute with FP32 inputs and outputs, checked on CPU before it is written.

TensorRT 11 builds only strongly typed networks (weak typing was deprecated in 10.12): the
builder no longer picks FP16 kernels on request, it runs each tensor in the type the graph
gives it. So reduced precision is decided here, once, as a graph transform that this
machine can check, and every runtime (TensorRT engines, ONNX Runtime's TensorRT provider)
serves the same FP16 graph.

The conversion is onnxconverter-common's float16 converter: pure Python on top of onnx,
numpy and protobuf, which the kit already has. NVIDIA's ModelOpt AutoCast chooses
precisions by measuring on a GPU and pulls torch, onnxruntime-gpu and cupy, which would not
install in the kit's CPU environment; for these two convolutional networks a fixed graph
transform with a block list and an accuracy gate is enough.

What ONNX Runtime on CPU shows of an FP16 graph: its CPU provider has few FP16 kernels and
runs the others in FP32 behind casts it inserts, and it removes the pairs of those casts
between two such nodes, so run as is, an FP16 graph is FP32 arithmetic on FP16-rounded
weights. ``storage_view`` makes the rounding explicit instead: every tensor a node writes
in FP16 goes through a real FP32->FP16->FP32 cast pair (ONNX Runtime keeps casts that lose
precision), so overflow to Inf, NaN from Inf-Inf, saturated heads and FP16 rounding drift
all show in the gate. What it cannot show is how TensorRT's kernels compute inside a layer
(accumulator width, tactic choice, fusions that keep intermediates in higher precision):
the same gate runs again on the built engine (``brainscan export tensorrt``).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np

from brainscan.atomic import write_bytes_atomic
from brainscan.digest import sha256_file
from brainscan.errors import BrainscanError
from brainscan.export.gate import GateFailedError, GateReport, Tolerances, check_network
from brainscan.export.pixel_gate import GATE_PREFIX, gate_of
from brainscan.export.records import Fp16Record
from brainscan.export.served_graph import added_nodes, is_served, network_of, network_only, serving_model
from brainscan.export.validation import NetworkInputs, run_onnx_outputs
from brainscan.preprocessing_graph import MASK_PREFIX, PREPROCESS_PREFIX

FP16_SUFFIX = ".fp16.onnx"
OP_PREFIX = "op:"
REMEDY = (
    "Keep the nodes that overflow or drift in FP32 with --keep-fp32 PATTERN (a node-name glob, or op:TYPE "
    "such as op:Sigmoid; `brainscan export fp16 RUN --list-nodes` prints the names) and convert again."
)
# Names of what storage_view adds around each FP16 tensor.
_RAW, _HALF = "__fp32_raw", "__fp16_stored"
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


class PrecisionError(BrainscanError, ValueError):
    """The graph cannot be converted as asked (a pattern matching nothing, an FP16 graph that
    ONNX's strict type inference rejects, unsupported control flow); the message says which."""


def fp16_path(onnx: Path) -> Path:
    """Where the FP16 graph of ``onnx`` lives: ``model.onnx`` -> ``model.fp16.onnx``."""
    onnx = Path(onnx)
    return onnx.with_name(onnx.name.removesuffix(".onnx") + FP16_SUFFIX)


def graph_nodes(model) -> list[tuple[str, str]]:
    """(name, op type) of every node, in graph order."""
    return [(node.name, node.op_type) for node in model.graph.node]


def resolve_block_list(model, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes that ``patterns`` keep in FP32: node-name globs, or ``op:TYPE``. A
    pattern that matches no node is an error, so a typo cannot pass silently."""
    nodes = graph_nodes(model)
    kept: list[str] = []
    for pattern in patterns:
        if pattern.startswith(OP_PREFIX):
            hits = [name for name, op in nodes if op == pattern[len(OP_PREFIX) :]]
        else:
            hits = [name for name, _ in nodes if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            ops = sorted({op for _, op in nodes})
            raise PrecisionError(
                f"--keep-fp32 {pattern!r} matches no node (op types here: {', '.join(ops)}; "
                "--list-nodes prints every name)"
            )
        kept += [name for name in hits if name not in kept]
    return kept


def convert_to_fp16(model, keep_fp32: tuple[str, ...] = ()):
    """The FP16 graph of ``model`` (a served graph, or a bare network): the network converted
    (FP16 initializers and compute, FP32 at its input and output), the nodes that
    ``keep_fp32`` names (and the converter's own list of ops without FP16 support) in FP32;
    then, for a served graph, the preprocessing and the mask head put around it again in FP32
    (16-bit pixel values overflow FP16), and the classifier's pixel gate in FP32 on its taps.
    The converter is given the network alone: handed the whole served graph it casts the
    graph input to FP16 before the preprocessing, and a Cast
    to float inside it to FP16, whatever its block list says. The graph's inputs and outputs
    keep their types, so the served contract and the Triton configs do not change. Returns
    (fp16 model, names of the nodes kept in FP32 on request)."""
    import onnx
    from onnxconverter_common import float16

    network = network_only(model)
    kept = resolve_block_list(network, keep_fp32)
    with warnings.catch_warnings():
        # it warns once per weight it clamps to +-1e-7 (tiny values FP16 cannot hold)
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(network, keep_io_types=True, node_block_list=kept or None)
    for tensor in [*converted.graph.input, *converted.graph.output]:
        if tensor.type.tensor_type.elem_type != _FLOAT:
            raise PrecisionError(f"{tensor.name} is not FP32 after the conversion")
    if is_served(model):
        # the classifier's pixel gate is put back in FP32 on the FP16 network's taps: its
        # distance sums hundreds of squared terms, and no accept/refuse decision may move
        converted = serving_model(converted, gate=gate_of(model))
        del converted.metadata_props[:]
        converted.metadata_props.extend(model.metadata_props)  # the intended use goes with the graph
    try:  # TensorRT's strongly typed parser needs every type to agree with ONNX's inference
        onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise PrecisionError(
            f"the FP16 graph fails ONNX's strict type inference, which TensorRT's strongly typed "
            f"parser relies on: {exc}"
        ) from None
    return converted, kept


def _tensor_types(model) -> dict[str, int]:
    """Element type of every tensor of ``model`` (after ONNX shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _lift_attribute(attribute) -> None:
    from onnx import AttributeProto, numpy_helper

    if attribute.type == AttributeProto.GRAPH or attribute.type == AttributeProto.GRAPHS:
        raise PrecisionError("control flow (If/Loop/Scan) is not supported by the FP16 storage view")
    if attribute.type == AttributeProto.TENSOR and attribute.t.data_type == _FLOAT16:
        attribute.t.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32), attribute.t.name)
        )
    if attribute.type == AttributeProto.INT and attribute.name in ("to", "dtype") and attribute.i == _FLOAT16:
        attribute.i = _FLOAT


def storage_view(fp16_model):
    """``fp16_model`` as ONNX Runtime's CPU provider must run it to show FP16: the same
    graph in FP32 arithmetic, where FP16 weights keep their FP16 values and every tensor a
    node writes in FP16 is rounded (and overflows) through an explicit FP32->FP16->FP32
    cast pair. See the module docstring for what this does and does not show."""
    import onnx
    from onnx import helper, numpy_helper

    types = _tensor_types(fp16_model)
    view = onnx.ModelProto()
    view.CopyFrom(fp16_model)
    graph = view.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == _FLOAT16:
            graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
            )
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            _lift_attribute(attribute)
        stored = [name for name in node.output if name and types.get(name) == _FLOAT16]
        node.output[:] = [name + _RAW if name in stored else name for name in node.output]
        nodes.append(node)
        for name in stored:
            nodes.append(
                helper.make_node("Cast", [name + _RAW], [name + _HALF], to=_FLOAT16, name=f"{name}/fp16_store")
            )
            nodes.append(helper.make_node("Cast", [name + _HALF], [name], to=_FLOAT, name=f"{name}/fp16_load"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return view


TF32_MANTISSA_BITS = 10  # TensorFloat-32: FP32's 8-bit exponent, a 10-bit mantissa


def tf32_view(model, prefixes: tuple[str, ...] = (PREPROCESS_PREFIX, MASK_PREFIX, GATE_PREFIX)):
    """``model`` as a GPU runs it when it lets TensorRT compute FP32 matrix products in TF32
    (its default; ONNX Runtime's TensorRT provider, which the onnxruntime flavour uses on a
    GPU, has no switch for it in Triton's onnxruntime_backend): both inputs of every MatMul of
    the nodes named under ``prefixes`` (the FP32 steps around the networks) rounded to the
    nearest TF32 value on CPU, the products then computed in FP32. TensorRT's TF32 kernels
    accumulate in FP32, so the inputs' rounding is what TF32 changes."""
    import onnx
    from onnx import helper, numpy_helper

    view = onnx.ModelProto()
    view.CopyFrom(model)
    graph = view.graph
    constants = {
        "tf32/ln2": np.log(2.0),
        "tf32/bits": float(TF32_MANTISSA_BITS),
        "tf32/two": 2.0,
        "tf32/zero": 0.0,
    }
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items())
    nodes, rounded = [], 0

    def tf32(name: str) -> str:
        """Nodes rounding ``name`` to the nearest TF32 value: step = 2^(floor(log2 |x|) - 10)."""
        nonlocal rounded
        rounded += 1
        p = f"tf32/{rounded}/"
        for op, inputs, output in (
            ("Abs", [name], "abs"),
            ("Log", [p + "abs"], "log"),
            ("Div", [p + "log", "tf32/ln2"], "log2"),
            ("Floor", [p + "log2"], "exp"),
            ("Sub", [p + "exp", "tf32/bits"], "e"),
            ("Pow", ["tf32/two", p + "e"], "step"),
            ("Div", [name, p + "step"], "scaled"),
            ("Round", [p + "scaled"], "whole"),
            ("Mul", [p + "whole", p + "step"], "value"),
            ("Equal", [p + "abs", "tf32/zero"], "is_zero"),
            ("Where", [p + "is_zero", "tf32/zero", p + "value"], "out"),
        ):
            nodes.append(helper.make_node(op, inputs, [p + output], name=p + output))
        return p + "out"

    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith(prefixes):
            node.input[:] = [tf32(name) for name in node.input]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return view


def fp16_share(fp16_model) -> tuple[int, int]:
    """(nodes that write FP16, nodes that write floating-point tensors) of the network: how
    much of it computes in FP16 (the preprocessing and the mask head stay FP32 by design)."""
    types = _tensor_types(fp16_model)
    added = set(added_nodes(fp16_model))
    floating = [
        n
        for n in fp16_model.graph.node
        if n.op_type != "Cast" and n.name not in added and any(types.get(o) in (_FLOAT, _FLOAT16) for o in n.output)
    ]
    return sum(any(types.get(o) == _FLOAT16 for o in n.output) for n in floating), len(floating)


def run_fp16(fp16_model, images: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The FP16 graph's outputs on each of ``images``, by name, FP16 storage included
    (``storage_view``)."""
    return run_onnx_outputs(storage_view(fp16_model).SerializeToString(), images)


@dataclass(frozen=True)
class Fp16Result:
    network: str
    report: GateReport
    path: Path
    kept_fp32: list[str]
    fp16_nodes: int
    float_nodes: int

    def summary(self) -> str:
        kept = f"; kept in FP32 on request: {', '.join(self.kept_fp32)}" if self.kept_fp32 else ""
        return f"{self.network}: {self.fp16_nodes} of {self.float_nodes} nodes compute in FP16{kept}"


def export_fp16(
    onnx_path: Path,
    inputs: NetworkInputs,
    keep_fp32: tuple[str, ...] = (),
    tolerances: Tolerances = Tolerances(),
    out: Path | None = None,
) -> Fp16Result:
    """Convert the served graph ``onnx_path`` to FP16, gate the FP16 graph against the FP32
    one on CPU (``inputs``: real validation slices), and only if the gate passes write it
    (default beside the source, ``model.fp16.onnx``) with a ``model.fp16.json`` record. Raises
    GateFailedError, writing nothing, when FP16 is outside the tolerances."""
    import onnx

    onnx_path = Path(onnx_path)
    model = serving_model(onnx.load(str(onnx_path)))
    network = network_of(model)
    converted, kept = convert_to_fp16(model, keep_fp32)
    report = check_network(
        network,
        run_onnx_outputs(model.SerializeToString(), inputs.images),
        run_fp16(converted, inputs.images),
        inputs.truth,
        tolerances,
    )
    if not report.passed:
        raise GateFailedError([report], REMEDY)
    target = Path(out) if out else fp16_path(onnx_path)
    serialized = converted.SerializeToString()
    write_bytes_atomic(target, serialized)
    fp16_nodes, float_nodes = fp16_share(converted)
    Fp16Record(
        network=network,
        source_onnx=onnx_path.name,
        source_sha256=sha256_file(onnx_path),
        fp16_onnx=target.name,
        fp16_sha256=sha256_file(target),
        converter=f"onnxconverter-common {package_version('onnxconverter-common')}",
        keep_fp32=list(keep_fp32),
        fp32_nodes=kept,
        fp16_nodes=fp16_nodes,
        float_nodes=float_nodes,
        gate=report.as_dict(),
    ).write(Fp16Record.path_for(target))
    return Fp16Result(network, report, target, kept, fp16_nodes, float_nodes)
