"""Resize and intensity scaling as ONNX graphs: the ONE definition of how a decoded image
becomes a network's input, and of how the segmenter's probabilities become the mask at the
image's own size.

Training runs these graphs with ONNX Runtime (``brainscan.preprocessing.to_model_input``),
and the served networks carry them in front of and behind their own layers
(``brainscan.export.served_graph``), so on a GPU TensorRT runs them and the only Python left on a
request's path decodes the file.

Resizing multiplies the image by two small weight matrices, built inside the graph from the
image's own height and width (any size, no rebuild):

- shrinking on both axes: area averaging, each output pixel the mean of the input area it
  covers, a pixel cut by its edge counting by the share inside (OpenCV's INTER_AREA);
- otherwise: linear interpolation at half-pixel centres, clamped at the edges (OpenCV's
  INTER_LINEAR).

Then the intensities are stretched per image (lowest -> 0, highest -> 255; a constant image,
or one that varies by less than ``CONSTANT_RANGE`` of its level, gives zeros) and a grey image
is repeated into three channels. The mask head resizes the probabilities linearly to the
image's size and keeps the pixels above ``contract.MASK_THRESHOLD``.

Every op is one that ONNX-TensorRT parses (Shape, Slice, Range, MatMul, Min/Max, Where,
ReduceMin/ReduceMax with constant axes, Concat, a Reshape to a constant shape that fixes the
network's input channels, Cast from float to UINT8 at the output). The nodes are
named under ``PREPROCESS_PREFIX`` and ``MASK_PREFIX`` so that the FP16 conversion keeps them
in FP32: a 16-bit pixel value overflows FP16 (largest 65504). ``onnx`` is imported lazily:
only training, export and the benchmarks build graphs.
"""

from __future__ import annotations

import functools

import numpy as np

from brainscan import contract
from brainscan.onnx_runtime import cpu_session

PREPROCESS_PREFIX = "preprocess/"
MASK_PREFIX = "mask/"
OPSET = contract.ONNX_OPSET
SIZE = "size"  # input of the stand-alone mask model: INT64 [2], the image's height and width
# The CPU flavours' resize: the rows' product in this many bands (``_banded_resize``).
CPU_RESIZE_BLOCKS = 16
# A resized image whose range is below this share of its level is constant (the resize's
# float rounding is about 1e-7 of the level per tap; a real image varies by far more).
CONSTANT_RANGE = 1e-5


class GraphBuilder:
    """Nodes and constants of one subgraph, every name under ``prefix``."""

    def __init__(self, prefix: str, opset: int = OPSET):
        self.prefix, self.opset = prefix, opset
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}{what}_{self._count}"

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        """A constant; ``name`` (under the prefix) names it, for constants read back later."""
        from onnx import numpy_helper

        name = f"{self.prefix}{name}" if name else self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        from onnx import helper

        name = self._name(op_type)
        out = output or name
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attributes))
        return out

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """``x`` split along axis 0 into parts of ``sizes``: one node, a name a part."""
        from onnx import helper

        name = self._name("Split")
        outputs = [f"{name}_{k}" for k in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.const(sizes, np.int64)], outputs, name=name, axis=0))
        return outputs

    def reduce(self, op_type: str, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op(op_type, x, self.const(axes, np.int64), keepdims=1)
        return self.op(op_type, x, axes=axes, keepdims=1)


def _dim(b: GraphBuilder, shape: str, axis: int) -> str:
    """One dimension of a shape tensor, INT64 [1]."""
    return b.op("Slice", shape, b.const([axis], np.int64), b.const([axis + 1], np.int64))


def _float(b: GraphBuilder, dim: str) -> str:
    """An INT64 [1] dimension as a FLOAT scalar."""
    return b.op("Cast", b.op("Squeeze", dim, b.const([0], np.int64)), to=1)  # TensorProto.FLOAT


def _weights(b: GraphBuilder, source: str, target: str, area: str) -> str:
    """The [target, source] matrix that resizes one axis of length ``source`` to ``target``
    (FLOAT scalars): area weights where ``area`` (BOOL scalar) holds, else linear ones.

    Positions are kept as whole numbers until one final division (input pixel i spans
    [i * target, (i + 1) * target) and output pixel j spans [j * source, (j + 1) * source), in
    units of 1 / (source * target) of the axis), so they are exact in FP32 for the sizes
    served (products below 2^24) and each row of weights sums to 1 within a rounding."""
    zero, one, two = b.const(0.0), b.const(1.0), b.const(2.0)
    i = b.op("Unsqueeze", b.op("Range", zero, source, one), b.const([0], np.int64))  # [1, source]
    j = b.op("Unsqueeze", b.op("Range", zero, target, one), b.const([1], np.int64))  # [target, 1]
    # area: the overlap of input pixel i with output pixel j, over the output pixel's width
    in_start = b.op("Mul", i, target)
    out_start = b.op("Mul", j, source)
    overlap = b.op(
        "Relu",
        b.op(
            "Sub",
            b.op("Min", b.op("Add", in_start, target), b.op("Add", out_start, source)),
            b.op("Max", in_start, out_start),
        ),
    )
    area_weights = b.op("Div", overlap, source)
    # linear: a tent around the output pixel's centre in input coordinates, (j + 0.5) *
    # source / target - 0.5, clamped to the image; everything times 2 * target
    twice_target = b.op("Mul", two, target)
    centre = b.op("Sub", b.op("Mul", b.op("Add", b.op("Mul", two, j), one), source), target)
    centre = b.op("Min", b.op("Max", centre, zero), b.op("Mul", twice_target, b.op("Sub", source, one)))
    distance = b.op("Abs", b.op("Sub", b.op("Mul", twice_target, i), centre))
    linear_weights = b.op("Div", b.op("Relu", b.op("Sub", twice_target, distance)), twice_target)
    return b.op("Where", area, area_weights, linear_weights)


def _resize(b: GraphBuilder, x: str, height: str, height_f: str, width_f: str, area: str | None) -> str:
    """[N, H, W, C] -> [N, height, width, C], with ``height`` as INT64 [1] and as a FLOAT
    scalar, ``width`` as a FLOAT scalar; area weights when ``area`` (None: when shrinking
    on both axes)."""
    shape = b.op("Shape", x)
    n, h_in, w_in, c = (_dim(b, shape, axis) for axis in range(4))
    h_in_f, w_in_f = _float(b, h_in), _float(b, w_in)
    if area is None:
        area = b.op("And", b.op("GreaterOrEqual", h_in_f, height_f), b.op("GreaterOrEqual", w_in_f, width_f))
    rows = _weights(b, h_in_f, height_f, area)  # [height, H]
    columns = _weights(b, w_in_f, width_f, area)  # [width, W]
    flat = b.op("Reshape", x, b.op("Concat", n, h_in, b.const([-1], np.int64), axis=0))  # [N, H, W*C]
    resized = b.op("MatMul", rows, flat)  # [N, height, W*C]: one product per image
    resized = b.op("Reshape", resized, b.op("Concat", n, height, w_in, c, axis=0))  # [N, height, W, C]
    # the columns with channels first, so the second product is one matrix product, not
    # height x C vector products (on CPU 15-28 % faster; the same on a GPU)
    resized = b.op("Transpose", resized, perm=[0, 3, 1, 2])  # [N, C, height, W]
    resized = b.op("MatMul", resized, b.op("Transpose", columns, perm=[1, 0]))  # [N, C, height, width]
    return b.op("Transpose", resized, perm=[0, 2, 3, 1])  # [N, height, width, C]


def _bands(b: GraphBuilder, x: str, weights: str, source: str, target, blocks: int, left: bool) -> str:
    """``weights`` [T, S] (an axis of length ``source``, a FLOAT scalar, resized to ``target``:
    an int, or a FLOAT scalar known only at run time) applied to ``x`` as ``blocks`` products,
    each of a band of output rows with the band of input rows they read: from the left along
    axis -2 of ``x`` [..., S, K] (-> [..., T, K]), or from the right along its last axis
    ([..., K, S] -> [..., K, T]). An output row, of either kind of weights, reads only the
    input rows within one row of its own span, so every weight outside its band is zero and
    the sums are the same; every band's bounds are computed at once."""
    if isinstance(target, int):
        edges = np.linspace(0, target, min(blocks, target) + 1).round()
        starts, ends = b.const(edges[:-1].astype(np.float32)), b.const(edges[1:].astype(np.float32))
        target_f, count = b.const(float(target)), len(edges) - 1
    else:  # bands of (nearly) equal shares of a size known at run time; a band may be empty
        edges = b.op("Floor", b.op("Mul", b.const(np.arange(blocks + 1, dtype=np.float32) / blocks), target))
        starts = b.op("Slice", edges, b.const([0], np.int64), b.const([blocks], np.int64))
        ends = b.op("Slice", edges, b.const([1], np.int64), b.const([blocks + 1], np.int64))
        target_f, count = target, blocks
    step = b.op("Div", source, target_f)
    lows = b.op("Floor", b.op("Sub", b.op("Mul", starts, step), b.const(1.0)))
    highs = b.op("Ceil", b.op("Add", b.op("Mul", ends, step), b.const(1.0)))
    lows = b.op("Cast", b.op("Max", lows, b.const(0.0)), to=7)  # INT64 [bands]
    highs = b.op("Cast", b.op("Min", highs, source), to=7)
    firsts, lasts = b.op("Cast", starts, to=7), b.op("Cast", ends, to=7)
    oriented = weights if left else b.op("Transpose", weights, perm=[1, 0])  # [S, T] from the right
    out_axis, in_axis = (0, 1) if left else (1, 0)

    # every band's bounds split out at once (a few nodes, not a few per band): the weights'
    # [first, low] to [last, high], the input's low to high
    def interleaved(a: str, c: str) -> str:  # [a0, c0, a1, c1, ...]
        column = b.const([1], np.int64)
        pairs = b.op("Concat", b.op("Unsqueeze", a, column), b.op("Unsqueeze", c, column), axis=1)
        return b.op("Reshape", pairs, b.const([-1], np.int64))

    begin, end = interleaved(firsts, lows), interleaved(lasts, highs)
    begins, ends_, low_k, high_k = (
        b.split(v, [width] * count) for v, width in ((begin, 2), (end, 2), (lows, 1), (highs, 1))
    )
    band_axes, input_axis = b.const([out_axis, in_axis], np.int64), b.const([-2 if left else -1], np.int64)
    products = []
    for k in range(count):
        band = b.op("Slice", oriented, begins[k], ends_[k], band_axes)
        part = b.op("Slice", x, low_k[k], high_k[k], input_axis)
        products.append(b.op("MatMul", band, part) if left else b.op("MatMul", part, band))
    return b.op("Concat", *products, axis=-2 if left else -1)


def _banded_resize(b: GraphBuilder, x: str, size: tuple[int, int], blocks: int, channels: int = 0) -> str:
    """``_resize`` to a fixed ``size`` as a CPU computes it fastest: the rows' product on the
    image as it lies ([N, H, W·C]), then the columns' on the far smaller result with the
    channels before the columns, each in ``blocks`` bands (``_bands``: the same weights and
    sums, without multiplying the zeros). A GPU runs the two large products best (``_resize``)."""
    shape = b.op("Shape", x)
    n, h_in, w_in, c = (_dim(b, shape, axis) for axis in range(4))
    h_in_f, w_in_f = _float(b, h_in), _float(b, w_in)
    height_f, width_f = b.const(float(size[0])), b.const(float(size[1]))
    area = b.op("And", b.op("GreaterOrEqual", h_in_f, height_f), b.op("GreaterOrEqual", w_in_f, width_f))
    rows, columns = _weights(b, h_in_f, height_f, area), _weights(b, w_in_f, width_f, area)
    flat = b.op("Reshape", x, b.op("Concat", n, h_in, b.const([-1], np.int64), axis=0))  # [N, H, W*C]
    resized = _bands(b, flat, rows, h_in_f, size[0], blocks, left=True)  # [N, height, W*C]
    resized = b.op("Reshape", resized, b.op("Concat", n, b.const([size[0]], np.int64), w_in, c, axis=0))
    resized = b.op("Transpose", resized, perm=[0, 1, 3, 2])  # [N, height, C, W]
    resized = _bands(b, resized, columns, w_in_f, size[1], blocks, left=False)  # [N, height, C, width]
    if channels:  # grey repeated there, whole rows at a time (along the last axis ONNX Runtime is slow)
        resized = b.op("Expand", resized, b.const([1, 1, channels, 1], np.int64))
    return b.op("Transpose", resized, perm=[0, 1, 3, 2])  # [N, height, width, C]


def _to_size(b: GraphBuilder, x: str, size: tuple[int, int], blocks: int = 0, channels: int = 0) -> str:
    """``x`` resized to the fixed ``size``, area or linear as the module says: one product per
    axis, or with ``blocks`` banded products (``_banded_resize``, which also repeats one
    channel into ``channels``)."""
    if blocks:
        return _banded_resize(b, x, size, blocks, channels)
    return _resize(b, x, b.const([size[0]], np.int64), b.const(float(size[0])), b.const(float(size[1])), None)


def add_preprocessing(b: GraphBuilder, pixels: str, size: tuple[int, int], output: str, blocks: int = 0) -> str:
    """Nodes taking ``pixels`` (FLOAT [N, H, W, C], C 1 or 3, any H and W) to ``output``,
    the network input (FLOAT [N, size[0], size[1], 3], 0..255); ``blocks``: the resize's
    products in that many bands (the CPU flavours')."""
    resized = _to_size(b, pixels, size, blocks, contract.CHANNELS)  # the CPU's: 3 channels already
    low = b.reduce("ReduceMin", resized, [1, 2, 3])
    high = b.reduce("ReduceMax", resized, [1, 2, 3])
    span = b.op("Sub", high, low)
    # an image whose range is within float rounding of its level is constant: zeros, not
    # rounding noise stretched to 0..255. The input's own range decides it first, exactly
    # (no arithmetic touches it): a GPU that runs the resize's products in TF32 (10-bit
    # mantissa; TensorRT's default) rounds far more than CONSTANT_RANGE
    level = b.op("Max", b.op("Abs", high), b.op("Abs", low))
    varies = b.op("Greater", span, b.op("Mul", level, b.const(CONSTANT_RANGE)))
    given = b.op(
        "Greater",
        b.op("Sub", b.reduce("ReduceMax", pixels, [1, 2, 3]), b.reduce("ReduceMin", pixels, [1, 2, 3])),
        b.const(0.0),
    )
    zero = b.const(0.0)
    scale = b.op("Div", b.const(255.0), b.op("Max", span, b.const(1e-30)))
    scale = b.op("Where", b.op("And", given, varies), scale, zero)
    stretched = b.op("Mul", b.op("Sub", resized, low), scale)
    if blocks:  # a CPU: three channels from the resize
        three = stretched
    else:  # TensorRT: grey into 3 channels, 3 kept, by plain copies
        tripled = b.op("Concat", stretched, stretched, stretched, axis=3)
        three = b.op(
            "Slice", tripled, b.const([0], np.int64), b.const([contract.CHANNELS], np.int64), b.const([3], np.int64)
        )
    # the network's input shape from constants alone: the channel count, min(3, 3 C) or max(C, 3),
    # depends on the input's C, and a TensorRT build needs a convolution's input channels
    # fixed (onnx-tensorrt #495); the Reshape's target names them
    shape = b.const([-1, size[0], size[1], contract.CHANNELS], np.int64)
    return b.op("Reshape", three, shape, output=output)


def add_resize(b: GraphBuilder, x: str, size: tuple[int, int], output: str, blocks: int = 0) -> str:
    """``x`` (FLOAT [N, H, W, C]) resized to ``size`` as above, without scaling: ``output``."""
    return b.op("Identity", _to_size(b, x, size, blocks), output=output)


def add_mask_head(b: GraphBuilder, probability: str, size: str, output: str, blocks: int = 0) -> str:
    """Nodes taking the segmenter's ``probability`` (FLOAT [N, h, w, 1]) and the image's
    height and width (``size``, INT64 [2]) to ``output``, the mask (UINT8 [N, H, W] of 0/1);
    ``blocks``: the linear resize's products in that many bands (the CPU flavours')."""
    height, width = _dim(b, size, 0), _dim(b, size, 1)
    height_f, width_f = _float(b, height), _float(b, width)
    linear = b.const(False, np.bool_)
    if blocks:
        plane = b.op("Squeeze", probability, b.const([3], np.int64))  # [N, h, w]
        shape = b.op("Shape", plane)
        h_f, w_f = _float(b, _dim(b, shape, 1)), _float(b, _dim(b, shape, 2))
        rows, columns = _weights(b, h_f, height_f, linear), _weights(b, w_f, width_f, linear)
        resized = _bands(b, plane, rows, h_f, height_f, blocks, left=True)  # [N, H, w]
        resized = _bands(b, resized, columns, w_f, width_f, blocks, left=False)  # [N, H, W]
    else:
        resized = _resize(b, probability, height, height_f, width_f, linear)  # [N, H, W, 1]
        resized = b.op("Squeeze", resized, b.const([3], np.int64))
    above = b.op("Greater", resized, b.const(contract.MASK_THRESHOLD))
    # to UINT8 from a float, never from BOOL: TensorRT's headers (NvInferRuntimeBase.h, kUINT8)
    # list no conversion from kBOOL to kUINT8
    ones = b.op("Where", above, b.const(1.0), b.const(0.0))
    return b.op("Cast", ones, to=2, output=output)  # TensorProto.UINT8


def image_size(b: GraphBuilder, pixels: str) -> str:
    """INT64 [2]: the height and width of ``pixels`` [N, H, W, C]."""
    return b.op("Slice", b.op("Shape", pixels), b.const([1], np.int64), b.const([3], np.int64))


def _model(b: GraphBuilder, inputs: list, outputs: list):
    import onnx
    from onnx import helper

    graph = helper.make_graph(b.nodes, b.prefix.strip("/") or "graph", inputs, outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def preprocessing_model(size: tuple[int, int], blocks: int = 0):
    """PIXELS (FLOAT [N, H, W, C]) -> the network input at ``size`` (FLOAT [N, h, w, 3]);
    ``blocks``: as the CPU flavours build it (``add_preprocessing``)."""
    from onnx import TensorProto, helper

    b = GraphBuilder(PREPROCESS_PREFIX)
    add_preprocessing(b, contract.PIXELS, size, "model_input", blocks)
    return _model(
        b,
        [helper.make_tensor_value_info(contract.PIXELS, TensorProto.FLOAT, ["N", "H", "W", "C"])],
        [helper.make_tensor_value_info("model_input", TensorProto.FLOAT, ["N", size[0], size[1], 3])],
    )


def resize_model(size: tuple[int, int], blocks: int = 0):
    """PIXELS (FLOAT [N, H, W, C]) -> the same resized to ``size``, values as they are."""
    from onnx import TensorProto, helper

    b = GraphBuilder(PREPROCESS_PREFIX)
    add_resize(b, contract.PIXELS, size, "resized", blocks)
    return _model(
        b,
        [helper.make_tensor_value_info(contract.PIXELS, TensorProto.FLOAT, ["N", "H", "W", "C"])],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["N", size[0], size[1], "C"])],
    )


def mask_model(blocks: int = 0):
    """mask_probability (FLOAT [N, h, w, 1]) and SIZE (INT64 [2]) -> MASK (UINT8 [N, H, W])."""
    from onnx import TensorProto, helper

    b = GraphBuilder(MASK_PREFIX)
    add_mask_head(b, contract.SEGMENTER_OUTPUT, SIZE, contract.MASK, blocks)
    return _model(
        b,
        [
            helper.make_tensor_value_info(contract.SEGMENTER_OUTPUT, TensorProto.FLOAT, ["N", "h", "w", 1]),
            helper.make_tensor_value_info(SIZE, TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info(contract.MASK, TensorProto.UINT8, ["N", "H", "W"])],
    )


def _session(model):
    # called in loops by training and tests: one core each
    return cpu_session(model, threads=1, inter_op_threads=1)


@functools.lru_cache(maxsize=8)
def preprocessing_session(size: tuple[int, int]):
    return _session(preprocessing_model(size))


@functools.lru_cache(maxsize=8)
def resize_session(size: tuple[int, int]):
    return _session(resize_model(size))


@functools.lru_cache(maxsize=1)
def mask_session():
    return _session(mask_model())
