"""Strongly typed TensorRT engines from the FP16 ONNX graphs, for the ``tensorrt`` repository.

Precision is in the graph (``brainscan export fp16`` writes ``model.fp16.onnx``, the served
graph: the preprocessing and the mask head in FP32 around the FP16 network): TensorRT 11
builds only strongly typed networks, and on 10.12-10.x the network is created with the
STRONGLY_TYPED flag, so every layer runs in the type the graph gives it and no weak-typing
API (builder precision flags, per-layer precisions) is used. Per network: parse the FP16
ONNX, check its input and output against the model config, add ONE optimization profile
spanning batch 1 … the config's ``max_batch_size`` of images 1 x 1 … its largest side,
limit the workspace, reuse a timing cache, build; then run the engine on real validation
slices (decoded, at their own size) and pass the FP16 gate against the FP32 served ONNX
before anything is written. A plan runs only on GPUs of the compute capability it was built on, so
each lands in the network's version folder named after it (``model.sm89.plan``) with its
record beside it (``model.sm89.json``: TensorRT version, GPU, ONNX hash, profile), and the
config's ``cc_model_filenames`` gains that entry, keeping the others: building on each GPU
kind in turn gives one repository that a mixed fleet serves, each server loading the plan of
its GPU. ``brainscan doctor`` checks every listed engine against its server.

The GPU-only part is small and not ours where it can be avoided: Polygraphy's loaders parse,
configure and build, its TrtRunner runs the engine (device buffers, shapes and streams are
its job). The TensorRT objects this module touches itself are annotated with the bindings'
types, and ``make test`` type-checks them against ``tensorrt-stubs`` (the 10.x surface, and
the 11.x surface without weak typing). ``tensorrt`` and ``polygraphy`` are imported lazily:
everything else here runs, and is tested, on machines without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.digest import sha256_file
from brainscan.export.fp16 import fp16_path
from brainscan.export.gate import GateFailedError, GateReport, Tolerances, check_network
from brainscan.export.gpu import Gpu, build_gpu
from brainscan.export.limits import WORKSPACE_MIB
from brainscan.export.model_configs import gpu_tag
from brainscan.export.profiles import Profile, profile_from_config
from brainscan.export.records import EngineRecord, Fp16Record
from brainscan.export.repository import VERSION, RepositoryError, list_engine, plan_files, plan_name, read_config
from brainscan.export.served_graph import DECLARED_PARAMETERS, by_shape, declared_parameters
from brainscan.export.tensorrt_version import (
    REMEDY,
    EngineBuildError,
    import_tensorrt,
    needs_strongly_typed_flag,
)
from brainscan.export.validation import NetworkInputs, run_onnx_outputs

if TYPE_CHECKING:
    import tensorrt


@dataclass(frozen=True)
class BuildSettings:
    workspace_mib: int = WORKSPACE_MIB
    timing_cache: Path | None = None  # read before, written after every build; one per TensorRT version and GPU


@dataclass(frozen=True)
class BuildRequest:
    """Everything one engine build needs, decided on the CPU before TensorRT is touched."""

    network: str
    onnx: Path  # the FP16 graph
    profile: Profile
    workspace_bytes: int
    strongly_typed_flag: bool
    timing_cache: Path | None


def timing_cache_file(cache: Path, trt_version: str, gpu: Gpu) -> Path:
    """Timings hold for one TensorRT version and one GPU kind: one file per pair."""
    cache = Path(cache)
    return cache.with_name(f"{cache.stem}-trt{trt_version}-{gpu_tag(gpu.compute_capability)}{cache.suffix}")


def build_request(
    network: str, fp32_onnx: Path, profile: Profile, settings: BuildSettings, trt_version: str, gpu: Gpu
) -> BuildRequest:
    """The build of ``network`` from the FP16 graph beside ``fp32_onnx``."""
    fp16 = fp16_path(fp32_onnx)
    if not fp16.exists():
        raise EngineBuildError(
            f"{fp16} is missing: precision lives in the ONNX graph, so write it first with "
            f"`brainscan export fp16 {Path(fp32_onnx).parent}` (make demo does)"
        )
    cache = timing_cache_file(settings.timing_cache, trt_version, gpu) if settings.timing_cache else None
    return BuildRequest(
        network, fp16, profile, settings.workspace_mib << 20, needs_strongly_typed_flag(trt_version), cache
    )


# --- GPU-only: TensorRT through Polygraphy (type-checked against tensorrt-stubs) -----------


def check_parsed_network(network: tensorrt.INetworkDefinition, request: BuildRequest) -> None:
    """The parsed network must take and give what the Triton config declares: one FP32
    input of any image size, and the network's one output in its served type (FP32
    probability, UINT8 mask)."""
    import tensorrt as trt

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [request.profile.input]:
        raise EngineBuildError(
            f"{request.onnx} has inputs {[t.name for t in inputs]}; the model config expects "
            f"[{request.profile.input!r}] (write the served graph with `brainscan export onnx` "
            "and `export fp16`)"
        )
    dims: tuple[int, ...] = tuple(inputs[0].shape[:])
    if len(dims) != len(request.profile.max) or any(d != -1 for d in dims):
        raise EngineBuildError(
            f"{request.onnx} takes {list(dims)}; the model config takes any batch and image size ([-1, -1, -1, -1])"
        )
    expected = contract.NETWORK_OUTPUTS[request.network]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    if [t.name for t in outputs] != [spec.name for spec in expected]:
        raise EngineBuildError(
            f"{request.onnx} gives {[t.name for t in outputs]}; the model config expects "
            f"{[spec.name for spec in expected]} (an FP16 graph from before the pixel gate: export the run again)"
        )
    wanted = {"TYPE_FP32": trt.DataType.FLOAT, "TYPE_UINT8": trt.DataType.UINT8}
    declared_types = [(inputs[0], contract.PIXELS_SPEC.triton_dtype)]
    declared_types += [(tensor, spec.triton_dtype) for tensor, spec in zip(outputs, expected)]
    for tensor, declared in declared_types:
        if tensor.dtype != wanted[declared]:
            raise EngineBuildError(
                f"{request.onnx}: {tensor.name} is {tensor.dtype}, but the model config declares "
                f"{declared} (an FP16 graph keeps its inputs and outputs in their own types)"
            )


def check_config(config: tensorrt.IBuilderConfig, request: BuildRequest) -> None:
    """Polygraphy sets these without looking at what TensorRT answered: read them back."""
    import tensorrt as trt

    if config.num_optimization_profiles != 1:
        raise EngineBuildError(
            f"the builder config has {config.num_optimization_profiles} optimization profiles, not 1"
        )
    workspace = config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
    if workspace != request.workspace_bytes:
        raise EngineBuildError(f"TensorRT set the workspace limit to {workspace} bytes, not {request.workspace_bytes}")
    if request.timing_cache and config.get_timing_cache() is None:
        raise EngineBuildError(
            f"TensorRT refused the timing cache {request.timing_cache} (damaged, or from another "
            "TensorRT or GPU): delete it, or give another file with --timing-cache"
        )


def build_engine(request: BuildRequest) -> bytes:
    """One serialized engine (needs TensorRT and a GPU)."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as ShapeProfile
    from polygraphy.exception import PolygraphyException

    cache = str(request.timing_cache) if request.timing_cache else None
    if request.timing_cache:
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        builder, network, parser = NetworkFromOnnxPath(str(request.onnx), strongly_typed=request.strongly_typed_flag)()
        check_parsed_network(network, request)
        shapes = ShapeProfile().add(
            request.profile.input, min=request.profile.min, opt=request.profile.opt, max=request.profile.max
        )
        config = CreateConfig(
            profiles=[shapes],
            load_timing_cache=cache,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: request.workspace_bytes},
        )(builder, network)
        check_config(config, request)
        serialized = EngineBytesFromNetwork((builder, network, parser), config=config, save_timing_cache=cache)()
    except PolygraphyException as exc:
        raise EngineBuildError(
            f"TensorRT could not build the {request.network} engine from {request.onnx}: {exc} "
            "(TensorRT's log above says more)"
        ) from None
    return bytes(memoryview(serialized))


def run_engine(plan: bytes, input_name: str, images: list[np.ndarray], max_batch: int) -> dict[str, list[np.ndarray]]:
    """The engine's outputs for each of ``images`` (decoded, [H, W, C]), by output name, run
    in batches of one shape and at most the profile's maximum batch (needs TensorRT and a GPU)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.exception import PolygraphyException

    outputs: dict[str, list] = {}
    try:
        with TrtRunner(EngineFromBytes(plan)) as runner:
            for indices in by_shape(images).values():
                for start in range(0, len(indices), max_batch):
                    chunk = indices[start : start + max_batch]
                    batch = np.ascontiguousarray(np.stack([images[i] for i in chunk]), np.float32)
                    for name, array in runner.infer({input_name: batch}).items():
                        found = outputs.setdefault(name, [None] * len(images))
                        for i, value in zip(chunk, np.asarray(array)):
                            found[i] = value
    except PolygraphyException as exc:
        raise EngineBuildError(f"the engine built for {input_name} did not run: {exc}") from None
    return outputs


class Toolkit(Protocol):
    """What building engines needs from the machine: TensorRT's version, the GPU, a build
    and a run. ``TensorRT`` is the real one; tests give one that runs the FP16 graph on CPU."""

    version: str

    def gpu(self) -> Gpu: ...

    def build(self, request: BuildRequest) -> bytes: ...

    def run(
        self, plan: bytes, input_name: str, images: list[np.ndarray], max_batch: int
    ) -> dict[str, list[np.ndarray]]: ...


class TensorRT:
    """TensorRT on this machine's GPU."""

    def __init__(self) -> None:
        self.version = str(import_tensorrt().__version__)

    def gpu(self) -> Gpu:
        return build_gpu()

    def build(self, request: BuildRequest) -> bytes:
        return build_engine(request)

    def run(
        self, plan: bytes, input_name: str, images: list[np.ndarray], max_batch: int
    ) -> dict[str, list[np.ndarray]]:
        return run_engine(plan, input_name, images, max_batch)


# --- the flow around the build, the same with any toolkit ----------------------------------


def engine_record(
    request: BuildRequest, trt_version: str, gpu: Gpu, given: NetworkInputs, seconds: float, gate: GateReport
) -> EngineRecord:
    """What an engine's record holds: enough to tell whether the plan still fits a server."""
    fp16 = Fp16Record.read(Fp16Record.path_for(request.onnx))
    return EngineRecord(
        network=request.network,
        tensorrt_version=trt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        onnx_file=str(request.onnx),
        onnx_sha256=sha256_file(request.onnx),
        fp32_onnx_sha256=sha256_file(given.onnx),
        fp32_nodes=fp16.fp32_nodes if fp16 else [],
        profile=request.profile.as_dict(),
        workspace_mib=request.workspace_bytes >> 20,
        build_seconds=round(seconds, 1),
        gate=gate.as_dict(),
    )


def network_profile(repository: Path, network: str, opt_batch: int | None = None) -> Profile:
    """The profile of ``network`` from the repository's config; refuses other flavours."""
    config = read_config(Path(repository) / network / "config.pbtxt")
    if config.platform != "tensorrt_plan":
        raise RepositoryError(
            f"{repository}/{network} is not a tensorrt_plan model (platform {config.platform or config.backend!r}): "
            "write the tensorrt flavour with `brainscan export repository --flavour tensorrt --repository DIR`"
        )
    return profile_from_config(config, opt_batch)


def build_repository_engines(
    repository: Path,
    inputs: dict[str, NetworkInputs],
    settings: BuildSettings = BuildSettings(),
    tolerances: Tolerances = Tolerances(),
    opt_batch: int | None = None,
    toolkit: Toolkit | None = None,
    log: Callable[[str], None] = print,
) -> list[GateReport]:
    """Build, gate and (only if every network passes) write the engines of ``repository``.
    ``inputs`` name each network's FP32 ONNX (its FP16 graph sits beside it)."""
    toolkit = toolkit or TensorRT()
    gpu = toolkit.gpu()
    log(f"TensorRT {toolkit.version} on {gpu.name} (compute capability {gpu.compute_capability})")
    requests = {}
    for network, given in inputs.items():
        profile = network_profile(repository, network, opt_batch)
        requests[network] = build_request(network, given.onnx, profile, settings, toolkit.version, gpu)
    reports, built = [], {}
    for network, request in requests.items():
        given, profile = inputs[network], request.profile
        log(
            f"{network}: building from {request.onnx} (strongly typed), optimization profile min/opt/max batch "
            f"{profile.min[0]}/{profile.opt[0]}/{profile.max[0]}, images {list(profile.min[1:])} … "
            f"{list(profile.max[1:])} (tuned for {list(profile.opt[1:])})"
        )
        started = time.perf_counter()
        plan = toolkit.build(request)
        seconds = time.perf_counter() - started
        fp16 = toolkit.run(plan, profile.input, given.images, profile.max_batch)
        report = check_network(network, run_onnx_outputs(given.onnx, given.images), fp16, given.truth, tolerances)
        log(report.table())
        reports.append(report)
        built[network] = (plan, engine_record(request, toolkit.version, gpu, given, seconds, report))
    if not all(r.passed for r in reports):
        raise GateFailedError(reports, REMEDY)
    name = plan_name(gpu.compute_capability)
    for network, (plan, record) in built.items():
        version_dir = Path(repository) / network / VERSION
        # plan and record first, the config last: a server never reads a config naming a missing plan
        write_bytes_atomic(version_dir / name, plan)
        record.write(version_dir / EngineRecord.name_for(name))
        config_path = Path(repository) / network / "config.pbtxt"
        declared = declared_parameters(requests[network].onnx)  # the classifier graph's intended use
        list_engine(config_path, gpu.compute_capability, name, record.description(), declared)
        others = sorted(cc for cc in plan_files(read_config(config_path)) if cc != gpu.compute_capability)
        log(
            f"wrote {version_dir / name} ({len(plan) / 1e6:.1f} MB, built in {record.build_seconds:.0f} s) for "
            f"compute capability {gpu.compute_capability}"
            + (f"; engines for {', '.join(others)} kept" if others else "")
        )
    return reports


def build_into_bucket(
    uri: str, build: Callable[[Path], object], compute_capability: str, log: Callable[[str], None] = print
) -> None:
    """Build engines for a repository in object storage: ``build`` runs on a local copy of
    its configs; the new plans and records are uploaded, then each network's config is read
    from the bucket again and gains this GPU's entry, so entries that other GPU kinds' builds
    added meanwhile are kept (run builds of several kinds one after another: two that finish
    within the same moment may still overwrite each other's entry, which `brainscan doctor`
    then names)."""
    import shutil
    import tempfile

    from brainscan import storage

    def is_config(relative: str) -> bool:
        return relative.endswith("config.pbtxt")

    name = plan_name(compute_capability)
    new_files = {
        f"{network}/{VERSION}/{file}" for network in contract.NETWORKS for file in (name, EngineRecord.name_for(name))
    }
    work = Path(tempfile.mkdtemp(prefix="brainscan-engines-"))
    try:
        storage.download(uri, work / "built", only=is_config)
        build(work / "built")
        storage.upload(work / "built", uri, only=new_files.__contains__)
        configs = {f"{network}/config.pbtxt" for network in contract.NETWORKS}
        fresh = storage.download(uri, work / "fresh", only=configs.__contains__)
        for network in contract.NETWORKS:
            record = EngineRecord.of_plan(work / "built" / network / VERSION, name)
            if record is None:  # the build above writes one beside every plan
                raise EngineBuildError(f"{network}: the build left no record beside {name}")
            built = read_config(work / "built" / network / "config.pbtxt")
            list_engine(
                fresh / network / "config.pbtxt",
                compute_capability,
                name,
                record.description(),
                {key: built.parameters[key].string_value for key in DECLARED_PARAMETERS if key in built.parameters},
            )
        storage.upload(fresh, uri, only=is_config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"published the {compute_capability} engines and their config entries to {uri}")
