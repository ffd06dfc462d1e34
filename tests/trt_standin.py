"""A recording stand-in for the parts of the TensorRT 10 Python API that brainscan uses.

It is not TensorRT: it records what the builder is asked to do (flags, memory limits,
profiles, timing caches, per-layer precisions) so tests can check those requests, and
"runs" an engine by running its source ONNX with ONNX Runtime (optionally perturbed),
so the orchestration around the build (chunking by the profile's maximum batch, the FP16
gate, what gets written) runs for real. The network it parses is built from the real
ONNX graph: one layer per ONNX node, with the node's name.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

float32, float16, int32, int64 = "float32", "float16", "int32", "int64"
_NP = {float32: np.float32, float16: np.float16, int32: np.int32, int64: np.int64}


class LayerType(enum.Enum):
    CONVOLUTION = 1
    DECONVOLUTION = 2
    ACTIVATION = 3
    ELEMENTWISE = 4
    CONCATENATION = 5
    SHUFFLE = 6
    PADDING = 7
    SHAPE = 8
    UNARY = 9


_OP_TYPES = {"Conv": LayerType.CONVOLUTION, "ConvTranspose": LayerType.DECONVOLUTION, "Relu": LayerType.ACTIVATION,
             "Clip": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION, "Add": LayerType.ELEMENTWISE,
             "Mul": LayerType.ELEMENTWISE, "Concat": LayerType.CONCATENATION, "Transpose": LayerType.SHUFFLE,
             "Reshape": LayerType.SHUFFLE, "Pad": LayerType.PADDING, "Shape": LayerType.SHAPE}


class Logger:
    WARNING = 2

    def __init__(self, level=WARNING):
        self.level = level


class BuilderFlag(enum.Enum):
    FP16 = 1
    OBEY_PRECISION_CONSTRAINTS = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 1


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


def nptype(dtype):
    return _NP[dtype]


class Tensor:
    def __init__(self, name, shape, dtype=float32):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Layer:
    def __init__(self, name, kind, output_dtypes):
        self.name, self.type = name, kind
        self._outputs = [Tensor(f"{name}:{i}", (), d) for i, d in enumerate(output_dtypes)]
        self.precision = None
        self.output_types = {}

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class Network:
    def __init__(self, flags):
        self.flags = flags
        self.inputs, self.layers, self.source = [], [], None

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, index):
        return self.inputs[index]

    def get_layer(self, index):
        return self.layers[index]


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, index):
        return self.errors[index]

    def parse_from_file(self, path):
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # what TensorRT's parser reports for a file that is not ONNX
            self.errors.append(f"ModelImporter: failed to parse the ONNX model: {type(exc).__name__}")
            return False
        for tensor in model.graph.input:
            dims = [d.dim_value if d.dim_value else -1 for d in tensor.type.tensor_type.shape.dim]
            self.network.inputs.append(Tensor(tensor.name, dims))
        for node in model.graph.node:
            kind = _OP_TYPES.get(node.op_type, LayerType.UNARY)
            dtypes = [int64 if kind is LayerType.SHAPE else float32 for _ in node.output]
            self.network.layers.append(Layer(node.name, kind, dtypes))
        self.network.source = str(path)
        return True


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own argument names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class TimingCache:
    def __init__(self, content: bytes):
        self.content = content

    def serialize(self):
        return self.content + b"|timed"


class BuilderConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles = set(), {}, []
        self.cache_given = None
        self.cache = None
        self.ignore_mismatch = None

    def set_flag(self, flag):
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, content):
        self.cache_given = bytes(content)
        return TimingCache(bytes(content))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache, self.ignore_mismatch = cache, ignore_mismatch
        return True

    def get_timing_cache(self):
        return self.cache


class Builder:
    """Records every build in ``Builder.builds`` (network, config) for the tests."""

    builds: list = []
    fail_build = False

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags):
        return Network(flags)

    def create_builder_config(self):
        return BuilderConfig()

    def create_optimization_profile(self):
        return Profile()

    def build_serialized_network(self, network, config):
        Builder.builds.append(SimpleNamespace(network=network, config=config))
        if Builder.fail_build:
            return None
        (name, shapes), = config.profiles[0].shapes.items()
        return json.dumps({"onnx": network.source, "input": name, "shapes": shapes}).encode()


# --- "running" an engine: ONNX Runtime on the source ONNX, plus an optional perturbation
perturb = None  # callable(outputs) -> outputs, set by a test to imitate FP16 trouble
executed_batches: list[int] = []


class Engine:
    def __init__(self, plan: bytes):
        import onnxruntime as ort

        self.meta = json.loads(plan)
        self.session = ort.InferenceSession(self.meta["onnx"], providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    num_io_tensors = 2

    def get_tensor_name(self, index):
        return [self.meta["input"], self.output][index]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.meta["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return float32

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self.meta["shapes"]]

    def create_execution_context(self):
        return Context(self)


class Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            raise ValueError(f"shape {shape} outside the profile {low}..{high}")
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self.shapes[self.engine.meta["input"]][0]
        return (batch, *self.engine.session.get_outputs()[0].shape[1:])

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        memory = FakeCuda.memory
        name_in = self.engine.meta["input"]
        batch = memory[self.addresses[name_in]]
        executed_batches.append(len(batch))
        out = self.engine.session.run(None, {name_in: batch})[0]
        memory[self.addresses[self.engine.output]] = perturb(out) if perturb else out
        return True


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, plan):
        return Engine(plan)


class FakeCuda:
    """Stands in for brainscan.export.cuda.CudaRuntime: 'device memory' is a dict."""

    memory: dict = {}

    def __init__(self):
        self.next, self.freed = 1, 0

    def device_count(self):
        return 1

    def device_name(self, device=0):
        return "Stand-in GPU"

    def compute_capability(self, device=0):
        return "8.9"

    def malloc(self, nbytes):
        self.next += 1
        return self.next

    def free(self, pointer):
        FakeCuda.memory.pop(pointer, None)
        self.freed += 1

    def to_device(self, pointer, array):
        FakeCuda.memory[pointer] = np.array(array)

    def from_device(self, pointer, shape, dtype):
        return np.asarray(FakeCuda.memory[pointer], dtype).reshape(shape)

    def stream_create(self):
        return 7

    def stream_synchronize(self, stream):
        pass

    def stream_destroy(self, stream):
        pass


def module(version: str = "10.7.0.23") -> SimpleNamespace:
    """A fresh stand-in ``tensorrt`` module."""
    global perturb
    perturb = None
    Builder.builds, Builder.fail_build = [], False
    executed_batches.clear()
    FakeCuda.memory = {}
    names = ["Logger", "Builder", "OnnxParser", "BuilderFlag", "MemoryPoolType", "LayerType", "TensorIOMode",
             "Runtime", "nptype", "float32", "float16", "int32", "int64"]
    return SimpleNamespace(__version__=version, **{n: globals()[n] for n in names})


def set_perturbation(function) -> None:
    global perturb
    perturb = function


def source_of(plan_path: Path) -> str:
    return json.loads(Path(plan_path).read_bytes())["onnx"]
