"""Write and check Triton model repositories: one ensemble contract, three flavours.

| flavour       | classifier / segmenter (the served graphs, ``export.serving``) |
|---------------|---------------------------------------------------------|
| tensorrt      | tensorrt_plan FP16 engines, KIND_GPU (production)       |
| onnxruntime   | onnxruntime_onnx: KIND_CPU, or KIND_GPU with the TensorRT |
|               | execution provider on the FP16 graph (engine cache on)  |
| local         | python backend running ONNX Runtime (embedded default) |

The ensemble is ``preprocess`` (python: check and decode the file) -> ``classifier`` and
``segmenter``, which take the decoded pixels at the image's own size and resize, scale and
(segmenter) threshold inside their graphs; ``preprocess`` and the ensemble are the same in
all three flavours. Configs are built from the contract as dicts, parsed into Triton's own
ModelConfig protobuf (which rejects unknown fields and wrong enum values) and written as text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.client.perf import serialized_string
from brainscan.contract import (
    ENGINE_PARAMETER_PREFIX,
    MAX_SIDE_PARAMETER,
    MODEL_SHA256_PARAMETER,
    PLAN_FILE,
    Flavour,
    TensorSpec,
)
from brainscan.errors import BrainscanError
from brainscan.export.profiles import OPT_IMAGE, ProfileError, image_profile
from brainscan.probe import probe_image

FLAVOURS = tuple(f.value for f in Flavour)
VERSION = "1"
PLACEHOLDER = ".gitkeep"  # keeps a version folder whose weights are build outputs in git
# python-model sources in brainscan.export.triton_models -> model.py of these models
PYTHON_SOURCES = {contract.PREPROCESS: "preprocess.py"}
ONNX_RUNNER_SOURCE = "onnx_runner.py"
WEIGHT_FILES = {Flavour.LOCAL: "model.onnx", Flavour.ONNXRUNTIME: "model.onnx", Flavour.TENSORRT: PLAN_FILE}
DEVICES = ("cpu", "gpu")
# How long the dynamic batcher may hold a request to grow a batch: for the networks, per
# flavour; preprocess is the same python model in every flavour. With 0
# the batcher still batches whatever queued while a model was busy, and an idle server
# adds no wait: on 2 CPU cores, 500 µs on each of the steps cost 1.5 ms of p50 at
# concurrency 1 and no throughput (benchmarks/results/, tuning table).
QUEUE_DELAY_US = {"local": 0, "onnxruntime": 500, "tensorrt": 100}
PYTHON_QUEUE_DELAY_US = 0
# Model instances per flavour unless given. The segmenter is the local flavour's bottleneck
# (~4x the classifier's FLOPs); a second instance lets it run beside the other steps:
# +16 % throughput on 2 cores. More ONNX Runtime threads per instance oversubscribe the cores.
DEFAULT_INSTANCES = {"local": {contract.SEGMENTER: 2}, "onnxruntime": {}, "tensorrt": {}}
# On a GPU the networks are not the bound: the one python step, which decodes the file, is
# (benchmarks/results/*-ceiling: CPU ms per image of each step with free networks), while
# one GPU runs both networks at thousands of images/s. So the GPU flavours run 4 preprocess
# processes, which the Kubernetes GPU overlay gives the cores for; `--instances MODEL=N`
# sizes them otherwise.
GPU_PYTHON_INSTANCES = {contract.PREPROCESS: 4}
# Every model's queue is bounded (contract.MAX_QUEUE_SIZE, contract.QUEUE_TIMEOUT_MS): a flood
# then costs fast refusals, not unbounded memory and minutes of latency for everyone.
# Warm-up (model_warmup): Triton runs these samples on every instance before the model is
# ready, so the first real requests do not pay the cold path (ONNX Runtime's and TensorRT's
# first runs, CUDA graph capture, python imports). preprocess gets a real PNG slice (the
# watchdog's probe image) in Triton's serialized string form; the networks a zero 256 x 256
# grey image at batch 1 and the maximum. Triton runs none for ensembles. A failing sample
# stops the model from loading.
WARMUP_FOLDER = "warmup"  # Triton's name: <model>/warmup/<input_data_file>
WARMUP_IMAGE = "image"
WARMUP_SIZE = OPT_IMAGE[:2]
# Where the onnxruntime flavour's TensorRT execution provider keeps its engines inside the
# Triton container: docker/compose.yaml mounts a volume exactly here, and each model's
# cache is ONE level below it, because the provider creates only the last folder of its
# cache path (std::filesystem::create_directory), and a fresh volume is empty.
ORT_TRT_CACHE = "/var/cache/brainscan/ort-trt"


class RepositoryError(BrainscanError, ValueError):
    """A model repository is missing, incomplete or inconsistent; the message lists why."""


@dataclass
class RepositorySpec:
    """What varies between generated repositories."""

    flavour: str = "local"
    max_batch_size: int = contract.MAX_BATCH_SIZE
    queue_delay_us: int | None = None  # the networks'; None: the flavour's default (QUEUE_DELAY_US)
    python_queue_delay_us: int = PYTHON_QUEUE_DELAY_US  # preprocess
    max_queue_size: int = contract.MAX_QUEUE_SIZE  # per model
    queue_timeout_ms: int = contract.QUEUE_TIMEOUT_MS
    ort_threads: int = 1
    instances: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"  # onnxruntime flavour only: cpu, or gpu (TensorRT execution provider, FP16)
    opt_batch: int | None = None  # optimum batch of the TensorRT profile (default: max_batch_size)
    workspace_mib: int = 1024  # TensorRT workspace of the onnxruntime flavour on GPU
    max_image_side: int | None = None  # None: contract.GPU_MAX_IMAGE_SIDE on a GPU, else contract.MAX_IMAGE_SIDE

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise RepositoryError(f"unknown flavour {self.flavour!r}: choose one of {', '.join(FLAVOURS)}")
        if self.max_batch_size < 1:
            raise RepositoryError("max_batch_size must be at least 1")
        if self.max_queue_size < 1 or self.queue_timeout_ms < 1:
            raise RepositoryError("the queue size and the queue timeout must be at least 1")
        if self.device not in DEVICES:
            raise RepositoryError(f"unknown device {self.device!r}: choose cpu or gpu")
        if self.device == "gpu" and self.flavour != "onnxruntime":
            raise RepositoryError(
                f"--device applies to the onnxruntime flavour; {self.flavour} always runs on "
                + ("the GPU" if self.flavour == "tensorrt" else "the CPU")
            )
        unknown = sorted(set(self.instances) - set(contract.COMPOSING_MODELS))
        if unknown:
            raise RepositoryError(
                f"instances given for unknown model(s) {unknown}: models are {', '.join(contract.COMPOSING_MODELS)}"
            )
        if any(int(n) < 1 for n in self.instances.values()):
            raise RepositoryError("instance counts must be at least 1")
        if self.queue_delay_us is None:
            self.queue_delay_us = QUEUE_DELAY_US[self.flavour]
        if self.max_image_side is None:
            self.max_image_side = contract.GPU_MAX_IMAGE_SIDE if self.on_gpu else contract.MAX_IMAGE_SIDE
        if not max(OPT_IMAGE[:2]) <= self.max_image_side <= contract.MAX_IMAGE_SIDE:
            raise RepositoryError(
                f"the largest image side must be between {max(OPT_IMAGE[:2])} and "
                f"{contract.MAX_IMAGE_SIDE}, got {self.max_image_side}"
            )

    @property
    def on_gpu(self) -> bool:
        return self.flavour == "tensorrt" or self.device == "gpu"

    def count(self, model: str) -> int:
        defaults = {**(GPU_PYTHON_INSTANCES if self.on_gpu else {}), **DEFAULT_INSTANCES[self.flavour]}
        return int(self.instances.get(model, defaults.get(model, 1)))


def _tensors(specs: list[TensorSpec]) -> list[dict]:
    return [{"name": s.name, "data_type": s.triton_dtype, "dims": list(s.dims)} for s in specs]


def _dynamic_batching(delay_us: int, spec: RepositorySpec) -> dict:
    return {
        "max_queue_delay_microseconds": delay_us,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": spec.queue_timeout_ms * 1000,
            "allow_timeout_override": True,
            "max_queue_size": spec.max_queue_size,
        },
    }


def _parameters(values: dict) -> dict:
    return {k: {"string_value": str(v)} for k, v in values.items()}


def _python_model(name: str, inputs, outputs, spec: RepositorySpec, parameters: dict) -> dict:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
        "instance_group": [{"kind": "KIND_CPU", "count": spec.count(name)}],
        "dynamic_batching": _dynamic_batching(
            spec.queue_delay_us if name in contract.NETWORKS else spec.python_queue_delay_us, spec
        ),
        "parameters": _parameters(parameters),
    }


def _network(name: str, spec: RepositorySpec) -> dict:
    inputs, outputs = [contract.PIXELS_SPEC], [contract.NETWORK_OUTPUT_SPEC[name]]
    side = {MAX_SIDE_PARAMETER: spec.max_image_side}
    if spec.flavour == "local":
        return _python_model(name, inputs, outputs, spec, {"intra_op_threads": spec.ort_threads, **side})
    config = {
        "name": name,
        "max_batch_size": spec.max_batch_size,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
        "dynamic_batching": _dynamic_batching(spec.queue_delay_us, spec),
        "parameters": _parameters(side),
    }
    if spec.flavour == "tensorrt":
        config["platform"] = "tensorrt_plan"
        config["instance_group"] = [{"kind": "KIND_GPU", "count": spec.count(name)}]
        config["optimization"] = {"cuda": {"graphs": True, "graph_spec": _graph_specs(spec.max_batch_size)}}
    elif spec.device == "gpu":
        config["platform"] = "onnxruntime_onnx"
        config["instance_group"] = [{"kind": "KIND_GPU", "count": spec.count(name)}]
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [_ort_tensorrt(name, spec)]}}
    else:
        config["platform"] = "onnxruntime_onnx"
        config["instance_group"] = [{"kind": "KIND_CPU", "count": spec.count(name)}]
        config["parameters"].update(
            _parameters({"intra_op_thread_count": spec.ort_threads, "inter_op_thread_count": 1})
        )
    return config


def _graph_specs(max_batch_size: int) -> list[dict]:
    """One CUDA graph per batch size 1 … max_batch_size of OPT_IMAGE images. Triton captures
    an engine's kernel launches once per listed shape and replays them, which removes most of
    the per-request CPU launch cost; another shape runs without a graph (an inexact match,
    graph_lower_bound, would pad the image and change what the resize sees). Without
    graph_spec, Triton's tensorrt backend captures only a few batch sizes (instance_state.cc,
    InitializeGraphSpecs), so the batches in between, the common case under moderate load,
    would miss them. Each graph costs a capture at model load and some device memory per
    instance: negligible for these small networks at the default maximum of 8."""
    return [
        {"batch_size": size, "input": {contract.PIXELS: {"dim": list(OPT_IMAGE)}}}
        for size in range(1, max_batch_size + 1)
    ]


def _ort_tensorrt(name: str, spec: RepositorySpec) -> dict:
    """ONNX Runtime's TensorRT execution provider on the FP16 graph, with its engine and
    timing caches on and the same profile as the tensorrt flavour's engines (so no shape
    forces a rebuild). No precision_mode: the precision is the graph's (FP16 compute, FP32 I/O),
    and TensorRT 11 builds strongly typed networks only, so a builder precision flag would
    mean nothing there. The timing cache is written beside the engines: without
    trt_timing_cache_path the provider writes it to the working directory, /models in the
    container, which is read-only (onnxruntime_backend passes trt_timing_cache_path through,
    src/onnxruntime.cc; the provider creates that folder as it does the engine cache's)."""
    try:
        profile = image_profile(contract.PIXELS, spec.max_batch_size, spec.max_image_side, spec.opt_batch)
    except ProfileError as exc:
        raise RepositoryError(str(exc)) from None

    def shapes(dims: tuple[int, ...]) -> str:
        return f"{contract.PIXELS}:{'x'.join(str(d) for d in dims)}"

    cache = f"{ORT_TRT_CACHE}/{name}"
    return {
        "name": "tensorrt",
        "parameters": {
            "max_workspace_size_bytes": str(spec.workspace_mib << 20),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": shapes(profile.min),
            "trt_profile_opt_shapes": shapes(profile.opt),
            "trt_profile_max_shapes": shapes(profile.max),
        },
    }


def _warmup(configs: dict[str, dict], max_batch_size: int) -> None:
    """Add the warm-up samples (see WARMUP_FOLDER) to the composing models' configs."""
    image = {"data_type": contract.IMAGE_SPEC.triton_dtype, "dims": [1], "input_data_file": WARMUP_IMAGE}
    configs[contract.PREPROCESS]["model_warmup"] = [
        {"name": "a PNG slice", "batch_size": 1, "inputs": {contract.IMAGE: image}}
    ]
    zeros = {"data_type": contract.PIXELS_SPEC.triton_dtype, "dims": [*WARMUP_SIZE, 1], "zero_data": True}
    for network in contract.NETWORKS:
        configs[network]["model_warmup"] = [
            {
                "name": f"a {WARMUP_SIZE[0]} x {WARMUP_SIZE[1]} grey image, batch {size}",
                "batch_size": size,
                "inputs": {contract.PIXELS: zeros},
            }
            for size in sorted({1, max_batch_size})
        ]


def _warmup_files() -> dict[str, bytes]:
    return {f"{contract.PREPROCESS}/{WARMUP_FOLDER}/{WARMUP_IMAGE}": serialized_string(probe_image())}


def model_configs(spec: RepositorySpec) -> dict[str, dict]:
    """The four model configs (ModelConfig's JSON form), keyed by model name."""
    ensemble = {
        "name": contract.ENSEMBLE,
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": _tensors([contract.IMAGE_SPEC]),
        "output": _tensors([contract.TUMOR_PROBABILITY_SPEC, contract.MASK_SPEC]),
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": contract.PREPROCESS,
                    "model_version": -1,
                    "input_map": {contract.IMAGE: contract.IMAGE},
                    "output_map": {contract.PIXELS: contract.PIXELS},
                },
                *(
                    {
                        "model_name": network,
                        "model_version": -1,
                        "input_map": {contract.PIXELS: contract.PIXELS},
                        "output_map": {output.name: output.name},
                    }
                    for network, output in contract.NETWORK_OUTPUT_SPEC.items()
                ),
            ]
        },
    }
    configs = {
        contract.ENSEMBLE: ensemble,
        contract.PREPROCESS: _python_model(
            contract.PREPROCESS,
            [contract.IMAGE_SPEC],
            [contract.PIXELS_SPEC],
            spec,
            {MAX_SIDE_PARAMETER: spec.max_image_side},
        ),
        **{network: _network(network, spec) for network in contract.NETWORKS},
    }
    _warmup(configs, spec.max_batch_size)
    return configs


def to_model_config(config: dict) -> model_config_pb2.ModelConfig:
    """Parse a config dict into Triton's ModelConfig; unknown fields or values raise."""
    try:
        return json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise RepositoryError(f"invalid config for {config.get('name')}: {exc}") from None


def render_config(config: dict) -> str:
    """ModelConfig text (config.pbtxt) for a config dict."""
    return text_format.MessageToString(to_model_config(config))


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path} is not a valid Triton model config: {exc}") from None


def plan_name(compute_capability: str) -> str:
    """The engine file of one GPU kind: model.sm89.plan for compute capability 8.9."""
    return f"model.sm{compute_capability.replace('.', '')}.plan"


def plan_files(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """The engines a tensorrt_plan config names, by compute capability (Triton's
    ``cc_model_filenames``: each server loads the one of its GPU). A config that lists none
    has one plan for whatever GPU loads it, under the key ''."""
    listed = dict(config.cc_model_filenames)
    return listed or {"": config.default_model_filename or WEIGHT_FILES["tensorrt"]}


def engine_parameter(compute_capability: str) -> str:
    """The config parameter describing the engine of one GPU kind: what a client reads to
    say which engine answered (``engine_sm89`` for compute capability 8.9)."""
    return f"{ENGINE_PARAMETER_PREFIX}{compute_capability.replace('.', '')}"


def list_engine(config_path: Path, compute_capability: str, plan: str, description: str = "") -> None:
    """Add (or replace) ``compute_capability -> plan`` in a config's cc_model_filenames, and
    the engine's description (TensorRT version, GPU, source ONNX digest) in its parameters,
    keeping every other entry, so one repository serves a fleet of several GPU kinds."""
    config = read_config(config_path)
    config.cc_model_filenames[compute_capability] = plan
    if description:
        config.parameters[engine_parameter(compute_capability)].string_value = description
    write_bytes_atomic(config_path, text_format.MessageToString(config).encode())


def _listed_engines(out: Path, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The engines an existing tensorrt config lists whose plans are still there, and their
    description parameters: rewriting the configs must not forget the engines already built
    for other GPU kinds."""
    path = out / name / "config.pbtxt"
    if not path.exists():
        return {}, {}
    try:
        config = read_config(path)
    except RepositoryError:
        return {}, {}
    listed = {cc: plan for cc, plan in config.cc_model_filenames.items() if (out / name / VERSION / plan).exists()}
    described = {
        engine_parameter(cc): config.parameters[engine_parameter(cc)].string_value
        for cc in listed
        if engine_parameter(cc) in config.parameters
    }
    return listed, described


def _python_source(name: str) -> bytes:
    return resources.files("brainscan.export.triton_models").joinpath(name).read_bytes()


def repository_files(spec: RepositorySpec) -> dict[str, bytes]:
    """Every file of the repository except the network weights, by relative path."""
    files: dict[str, bytes] = {}
    for name, config in model_configs(spec).items():
        files[f"{name}/config.pbtxt"] = render_config(config).encode()
        files[f"{name}/{VERSION}/{PLACEHOLDER}"] = b""
    for name, source in PYTHON_SOURCES.items():
        files[f"{name}/{VERSION}/model.py"] = _python_source(source)
    files.update(_warmup_files())
    if spec.flavour == "local":
        for name in contract.NETWORKS:
            files[f"{name}/{VERSION}/model.py"] = _python_source(ONNX_RUNNER_SOURCE)
    return files


def served_graph(path: Path, network: str) -> bytes:
    """The served graph of ``network`` from ``path``: as it is when it is one (what
    ``brainscan export onnx`` and ``export fp16`` write), else the network wrapped
    (``export.serving``)."""
    import onnx

    from brainscan.export.serving import ServingGraphError, network_of, serving_model

    try:
        model = serving_model(onnx.load(str(path)))
        found = network_of(model)
    except (
        ServingGraphError,
        onnx.checker.ValidationError,
        onnx.onnx_cpp2py_export.shape_inference.InferenceError,
    ) as exc:
        raise RepositoryError(f"{path}: {exc}") from None
    if found != network:
        raise RepositoryError(f"{path} is the {found}, given as the {network}")
    return model.SerializeToString()


def write_repository(
    out: Path,
    flavour: str = "local",
    classifier_onnx: Path | None = None,
    segmenter_onnx: Path | None = None,
    **options,
) -> Path:
    """Write a repository of ``flavour`` to ``out``. With ONNX files (the FP32 served graphs,
    or bare networks, which get wrapped), the local and onnxruntime flavours serve them as
    the networks' weights; the onnxruntime flavour on a GPU serves the FP16 graph beside each
    instead (``model.fp16.onnx``, written by ``brainscan export fp16``)."""
    out = Path(out)
    gpu = options.get("device") == "gpu"
    sources = {contract.CLASSIFIER: classifier_onnx, contract.SEGMENTER: segmenter_onnx}
    if flavour == "onnxruntime" and gpu:
        from brainscan.export.precision import fp16_path

        sources = {name: fp16_path(path) if path else None for name, path in sources.items()}
        missing = [str(path) for path in sources.values() if path and not path.exists()]
        if missing:
            raise RepositoryError(
                f"the onnxruntime flavour on a GPU serves the FP16 graphs, and {', '.join(missing)} "
                "is missing: write it with `brainscan export fp16 RUN` (make demo does)"
            )
    spec = RepositorySpec(flavour=flavour, **options)
    files = repository_files(spec)
    if flavour in ("local", "onnxruntime"):
        for name, source in sources.items():
            if source:
                graph = served_graph(source, name)
                files[f"{name}/{VERSION}/{WEIGHT_FILES[flavour]}"] = graph
                # the served graph's digest, for clients to name what answered (DICOM SR, audit)
                config = to_model_config(model_configs(spec)[name])
                config.parameters[MODEL_SHA256_PARAMETER].string_value = hashlib.sha256(graph).hexdigest()
                files[f"{name}/config.pbtxt"] = text_format.MessageToString(config).encode()
    if flavour == "tensorrt":
        for name in contract.NETWORKS:
            listed, described = _listed_engines(out, name)
            if listed:
                config = to_model_config(model_configs(spec)[name])
                config.cc_model_filenames.update(listed)
                for key, value in described.items():
                    config.parameters[key].string_value = value
                files[f"{name}/config.pbtxt"] = text_format.MessageToString(config).encode()
    for relative, content in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return out


def flavour_of(configs: dict[str, model_config_pb2.ModelConfig]) -> Flavour:
    classifier = configs[contract.CLASSIFIER]
    if classifier.platform == "tensorrt_plan":
        return Flavour.TENSORRT
    if classifier.platform == "onnxruntime_onnx":
        return Flavour.ONNXRUNTIME
    return Flavour.LOCAL


def validate_repository(path: Path, require_weights: bool = False) -> dict[str, model_config_pb2.ModelConfig]:
    """Check that ``path`` holds the ensemble and its four models, that every config
    parses, that the ensemble's steps name real tensors of real models, and (with
    ``require_weights``) that each model's files are present. Raises RepositoryError."""
    path = Path(path)
    if not path.is_dir():
        raise RepositoryError(
            f"model repository {path} does not exist: build it with `make demo` or "
            "`brainscan export repository --out DIR`"
        )
    problems: list[str] = []
    configs: dict[str, model_config_pb2.ModelConfig] = {}
    for name in (contract.ENSEMBLE, *contract.COMPOSING_MODELS):
        config_path = path / name / "config.pbtxt"
        if not config_path.exists():
            problems.append(f"{name}: {config_path} is missing")
            continue
        try:
            configs[name] = read_config(config_path)
        except RepositoryError as exc:
            problems.append(str(exc))
    if not problems:
        for step in configs[contract.ENSEMBLE].ensemble_scheduling.step:
            extra = path / step.model_name / "config.pbtxt"
            if step.model_name not in configs and extra.exists():  # a model beyond the contract's (benchmarks)
                configs[step.model_name] = read_config(extra)
            model = configs.get(step.model_name)
            if model is None:
                problems.append(f"ensemble step names unknown model {step.model_name}")
                continue
            inputs = {t.name for t in model.input}
            outputs = {t.name for t in model.output}
            problems += [f"{step.model_name} has no input {k}" for k in step.input_map if k not in inputs]
            problems += [f"{step.model_name} has no output {k}" for k in step.output_map if k not in outputs]
    if not problems and require_weights:
        flavour = flavour_of(configs)
        for name, config in configs.items():
            version = path / name / VERSION
            needed = []
            if config.backend == "python":
                needed.append("model.py")
            if name in contract.NETWORKS:
                needed += sorted(set(plan_files(config).values())) if flavour == "tensorrt" else [WEIGHT_FILES[flavour]]
            if name == contract.ENSEMBLE and not version.is_dir():
                problems.append(f"{name}: version folder {version} is missing")
            problems += [f"{name}: {version / f} is missing" for f in needed if not (version / f).exists()]
    if problems:
        raise RepositoryError(f"model repository {path} is incomplete:\n  " + "\n  ".join(problems))
    return configs
