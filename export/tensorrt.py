"""ONNX -> FP16 TensorRT engines (TensorRT 10 Python API) for the `tensorrt` repository.

For each network: parse the ONNX with ``OnnxParser`` into an explicit-batch network, set
FP16 and a workspace limit, add ONE optimization profile spanning batch 1 … the model
config's ``max_batch_size``, reuse a timing cache across builds, build; then run the
engine on real validation slices and pass the FP16 gate (``brainscan.export.fp16``)
before anything is written. ``model.plan`` lands in the network's version folder with
``engine.json`` beside it (TensorRT version, GPU, compute capability, ONNX hash, profile)
so ``brainscan doctor`` can tell when an engine no longer fits its server.

``tensorrt`` is imported lazily: everything here is importable (and testable with a
stand-in module) on machines without it.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.export.fp16 import GateReport, Tolerances, check_classifier, check_segmenter
from brainscan.export.profiles import Profile, profile_from_config
from brainscan.export.repository import VERSION, RepositoryError, onnx_input_size, read_config

REQUIRED_MAJOR = 10
PLAN = "model.plan"
RECORD = "engine.json"
RECORD_FORMAT = 1
NETWORKS = (contract.CLASSIFIER, contract.SEGMENTER)
EXPORT_COMMAND = "docker compose -f docker/compose.yaml run --rm export"
CONTAINER_HINT = f"build engines in the export container on a GPU host: `{EXPORT_COMMAND}` (README, 'On a GPU host')"


class TensorRTUnavailableError(RuntimeError):
    """The ``tensorrt`` module is missing or too old."""


class EngineBuildError(RuntimeError):
    """Parsing or building failed; the message carries TensorRT's own errors."""


class GateFailedError(RuntimeError):
    """An engine exceeded the FP16 tolerances; nothing was written."""

    def __init__(self, reports: list[GateReport]):
        failed = [r for r in reports if not r.passed]
        names = ", ".join(r.network for r in failed)
        super().__init__(
            "\n\n".join(r.table() for r in reports)
            + f"\n\nthe FP16 engine of {names} is outside the tolerances; nothing was written. Keep the "
            "sensitive layers in FP32 with --keep-fp32 PATTERN (layer names or type:KIND, e.g. "
            "--keep-fp32 'type:ACTIVATION' or the mask head's layers; `--list-layers` prints them) and build again."
        )
        self.reports = reports


def import_tensorrt():
    """The ``tensorrt`` module (TensorRT 10+), or TensorRTUnavailableError in one sentence."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailableError(f"TensorRT is not installed in this environment: {CONTAINER_HINT}.") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < REQUIRED_MAJOR:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} is installed but brainscan builds with TensorRT {REQUIRED_MAJOR}+: {CONTAINER_HINT}."
        )
    return trt


@dataclass
class BuildSettings:
    fp16: bool = True
    workspace_mib: int = 1024
    timing_cache: Path | None = None  # read before, written after every build
    keep_fp32: tuple[str, ...] = ()  # layer-name globs, or type:KIND (a trt.LayerType name)


@dataclass
class BuiltEngine:
    plan: bytes
    fp32_layers: list[str] = field(default_factory=list)
    build_seconds: float = 0.0


def _matches(layer, pattern: str) -> bool:
    if pattern.startswith("type:"):
        return layer.type.name.upper() == pattern[5:].upper()
    return fnmatch.fnmatchcase(layer.name, pattern)


def _floating_outputs(trt, layer) -> list[int]:
    return [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)]


def layer_names(network) -> list[tuple[str, str]]:
    """(name, type) of every layer, in network order."""
    return [(network.get_layer(i).name, network.get_layer(i).type.name) for i in range(network.num_layers)]


def keep_in_fp32(trt, network, patterns: tuple[str, ...]) -> list[str]:
    """Pin the floating-point layers matching ``patterns`` (and their outputs) to FP32.
    A pattern that matches no layer is an error: a typo must not pass silently."""
    kept = []
    for pattern in patterns:
        hits = [network.get_layer(i) for i in range(network.num_layers) if _matches(network.get_layer(i), pattern)]
        if not hits:
            sample = ", ".join(name for name, _ in layer_names(network)[-8:])
            raise EngineBuildError(f"--keep-fp32 {pattern!r} matches no layer (last layers: {sample})")
        for layer in hits:
            outputs = _floating_outputs(trt, layer)
            if not outputs or layer.name in kept:
                continue
            layer.precision = trt.float32
            for j in outputs:
                layer.set_output_type(j, trt.float32)
            kept.append(layer.name)
    return kept


def parse_onnx(trt, builder, logger, onnx_path: Path):
    """An explicit-batch network from an ONNX file (TensorRT 10 networks are always
    explicit-batch, so no creation flag is needed)."""
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors or 'no detail given'}")
    return network, parser


def build_engine(trt, onnx_path: Path, profile: Profile, settings: BuildSettings = BuildSettings(), logger=None) -> BuiltEngine:
    """Build one serialized engine. ``trt`` is the tensorrt module (a stand-in in tests)."""
    started = time.perf_counter()
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, onnx_path)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [profile.input]:
        raise EngineBuildError(f"{onnx_path} has inputs {[t.name for t in inputs]}; the model config expects [{profile.input!r}]")
    onnx_dims = tuple(inputs[0].shape)[1:]
    if onnx_dims != profile.max[1:]:
        raise EngineBuildError(f"{onnx_path} takes {list(onnx_dims)} per image; the model config says {list(profile.max[1:])}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    kept = keep_in_fp32(trt, network, settings.keep_fp32)
    if kept:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    optimization = builder.create_optimization_profile()
    optimization.set_shape(profile.input, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimization)

    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    if cache_path:
        write_bytes_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuiltEngine(bytes(memoryview(serialized)), kept, time.perf_counter() - started)


class EngineRunner:
    """Runs a serialized engine on host arrays (used by the FP16 gate), in chunks of at
    most the profile's maximum batch."""

    def __init__(self, trt, plan: bytes, cuda, logger=None):
        self.trt, self.cuda = trt, cuda
        self.runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine it just built")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise EngineBuildError(f"expected one input and one output, the engine has {self.inputs} and {self.outputs}")
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])
        self.stream = cuda.stream_create()

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        trt, cuda, context = self.trt, self.cuda, self.context
        (name_in,), (name_out,) = self.inputs, self.outputs
        chunk = np.ascontiguousarray(chunk, dtype=trt.nptype(self.engine.get_tensor_dtype(name_in)))
        context.set_input_shape(name_in, chunk.shape)
        out_shape = tuple(context.get_tensor_shape(name_out))
        out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name_out)))
        device_in = cuda.malloc(chunk.nbytes)
        device_out = cuda.malloc(int(np.prod(out_shape)) * out_dtype.itemsize)
        try:
            cuda.to_device(device_in, chunk)
            context.set_tensor_address(name_in, device_in)
            context.set_tensor_address(name_out, device_out)
            if not context.execute_async_v3(self.stream):
                raise EngineBuildError("TensorRT execution failed (execute_async_v3 returned False)")
            cuda.stream_synchronize(self.stream)
            return cuda.from_device(device_out, out_shape, out_dtype)
        finally:
            cuda.free(device_in)
            cuda.free(device_out)

    def run(self, batch: np.ndarray) -> np.ndarray:
        parts = [self._run_chunk(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(parts).astype(np.float32)

    def close(self) -> None:
        self.cuda.stream_destroy(self.stream)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_record(network: str, trt_version: str, gpu: dict, onnx_path: Path, profile: Profile,
                  settings: BuildSettings, built: BuiltEngine, gate: GateReport) -> dict:
    """What engine.json holds: enough to tell whether the plan still fits a server."""
    return {
        "format": RECORD_FORMAT,
        "network": network,
        "tensorrt_version": trt_version,
        "gpu_name": gpu["gpu_name"],
        "compute_capability": gpu["compute_capability"],
        "onnx_file": str(onnx_path),
        "onnx_sha256": sha256(onnx_path),
        "profile": profile.as_dict(),
        "precision": "fp16" if settings.fp16 else "fp32",
        "fp32_layers": built.fp32_layers,
        "workspace_mib": settings.workspace_mib,
        "build_seconds": round(built.build_seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gate": {"passed": gate.passed, "samples": gate.samples,
                 "checks": {c.name: {"value": float(c.value), "limit": c.limit} for c in gate.checks}},
    }


def read_record(version_dir: Path) -> dict | None:
    path = Path(version_dir) / RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text())


@dataclass
class NetworkInputs:
    """What the build of one network needs: its ONNX and real validation data at the
    network's input size (ground-truth masks for the segmenter when the data has them)."""

    onnx: Path
    images: np.ndarray
    truth: np.ndarray | None = None


def network_profile(repository: Path, network: str, opt_batch: int | None = None) -> Profile:
    """The profile of ``network`` from the repository's config; refuses other flavours."""
    config = read_config(Path(repository) / network / "config.pbtxt")
    if config.platform != "tensorrt_plan":
        raise RepositoryError(
            f"{repository}/{network} is not a tensorrt_plan model (platform {config.platform or config.backend!r}): "
            "write the tensorrt flavour with `brainscan export repository --flavour tensorrt --out DIR`"
        )
    return profile_from_config(config, opt_batch)


def check_onnx_matches(repository: Path, network: str, onnx: Path, profile: Profile) -> None:
    size = onnx_input_size(onnx, profile.input)
    if tuple(size) != profile.max[1:3]:
        raise RepositoryError(
            f"{onnx} takes {size[0]}x{size[1]} images but {repository}/{network}/config.pbtxt says "
            f"{profile.max[1]}x{profile.max[2]}: regenerate the configs with `brainscan export repository "
            f"--flavour tensorrt --out {repository} --classifier … --segmenter …`"
        )


def reference_outputs(onnx: Path, images: np.ndarray) -> np.ndarray:
    """FP32 reference: ONNX Runtime on CPU, the same ONNX the engine was built from."""
    from brainscan.export.onnx import onnx_session

    session = onnx_session(onnx)
    return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]


def gate(network: str, fp32: np.ndarray, fp16: np.ndarray, truth: np.ndarray | None, tolerances: Tolerances) -> GateReport:
    if network == contract.CLASSIFIER:
        return check_classifier(fp32, fp16, tolerances)
    return check_segmenter(fp32, fp16, truth, tolerances)


def build_repository_engines(
    repository: Path,
    inputs: dict[str, NetworkInputs],
    settings: BuildSettings,
    tolerances: Tolerances = Tolerances(),
    opt_batch: int | None = None,
    trt=None,
    cuda=None,
    log=print,
) -> list[GateReport]:
    """Build, gate and (only if every network passes) write the engines of ``repository``."""
    from brainscan.export.cuda import CudaRuntime, gpu_description

    trt = trt or import_tensorrt()
    cuda = cuda or CudaRuntime()
    gpu = gpu_description(cuda)
    if settings.timing_cache is not None:  # timings hold only for one TensorRT version and GPU
        cache = Path(settings.timing_cache)
        settings = replace(settings, timing_cache=cache.with_name(
            f"{cache.stem}-trt{trt.__version__}-sm{gpu['compute_capability']}{cache.suffix}"))
    log(f"TensorRT {trt.__version__} on {gpu['gpu_name']} (compute capability {gpu['compute_capability']})")
    profiles = {}
    for network, given in inputs.items():
        profiles[network] = network_profile(repository, network, opt_batch)
        check_onnx_matches(repository, network, given.onnx, profiles[network])
    results, reports = {}, []
    for network, given in inputs.items():
        profile = profiles[network]
        log(f"{network}: building from {given.onnx}, batch profile min/opt/max "
            f"{profile.min[0]}/{profile.opt[0]}/{profile.max[0]} of {list(profile.max[1:])}")
        built = build_engine(trt, given.onnx, profile, settings)
        runner = EngineRunner(trt, built.plan, cuda)
        try:
            fp16 = runner.run(given.images)
        finally:
            runner.close()
        report = gate(network, reference_outputs(given.onnx, given.images), fp16, given.truth, tolerances)
        log(report.table())
        reports.append(report)
        results[network] = (built, report)
    if not all(r.passed for r in reports):
        raise GateFailedError(reports)
    for network, (built, report) in results.items():
        version_dir = Path(repository) / network / VERSION
        record = engine_record(network, str(trt.__version__), gpu, inputs[network].onnx, profiles[network],
                               settings, built, report)
        write_bytes_atomic(version_dir / PLAN, built.plan)
        write_bytes_atomic(version_dir / RECORD, (json.dumps(record, indent=2) + "\n").encode())
        log(f"wrote {version_dir / PLAN} ({len(built.plan) / 1e6:.1f} MB, built in {built.build_seconds:.0f} s)")
    return reports
