"""Triton model configs of the ensemble and its models, built from the contract as dicts and
parsed into Triton's own ModelConfig protobuf (which rejects unknown fields and wrong enum
values); and the engines a tensorrt config lists, one plan per GPU kind."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.contract import ENGINE_PARAMETER_PREFIX, MAX_SIDE_PARAMETER, Device, Flavour, TensorSpec
from brainscan.export.profiles import OPT_IMAGE, ProfileError, image_profile
from brainscan.export.repository_spec import (
    ORT_TRT_CACHE,
    VERSION,
    WARMUP_FOLDER,
    WARMUP_IMAGE,
    WARMUP_SIZE,
    RepositoryError,
    RepositorySpec,
)
from brainscan.probe import probe_image
from brainscan.repository import plan_files, read_config  # noqa: F401 (re-exported)


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
    inputs, outputs = [contract.PIXELS_SPEC], list(contract.NETWORK_OUTPUTS[name])
    side = {MAX_SIDE_PARAMETER: spec.max_image_side}
    if spec.flavour is Flavour.LOCAL:
        runner = {"intra_op_threads": spec.ort_threads, contract.RESIZE_PARAMETER: spec.local_resize}
        return _python_model(name, inputs, outputs, spec, {**runner, **side})
    config = {
        "name": name,
        "max_batch_size": spec.max_batch_size,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
        "dynamic_batching": _dynamic_batching(spec.queue_delay_us, spec),
        "parameters": _parameters(side),
    }
    if spec.flavour is Flavour.TENSORRT:
        config["platform"] = "tensorrt_plan"
        config["instance_group"] = [{"kind": "KIND_GPU", "count": spec.count(name)}]
        config["optimization"] = {"cuda": {"graphs": True, "graph_spec": _graph_specs(spec.max_batch_size)}}
    elif spec.device is Device.GPU:
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


def warmup_files() -> dict[str, bytes]:
    return {f"{contract.PREPROCESS}/{WARMUP_FOLDER}/{WARMUP_IMAGE}": contract.serialized_string(probe_image())}


def model_configs(spec: RepositorySpec) -> dict[str, dict]:
    """The five model configs (ModelConfig's JSON form), keyed by model name: the two
    ensembles (encoded files, and pixels) and their three models."""
    ensemble = {
        "name": contract.ENSEMBLE,
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": _tensors([contract.IMAGE_SPEC]),
        "output": _tensors(list(contract.ENSEMBLE_OUTPUTS)),
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
                        "output_map": {output.name: output.name for output in outputs},
                    }
                    for network, outputs in contract.NETWORK_OUTPUTS.items()
                ),
            ]
        },
    }
    pixels_ensemble = {  # the same outputs, PIXELS in, and the networks alone
        **ensemble,
        "name": contract.PIXELS_ENSEMBLE,
        "input": _tensors([contract.PIXELS_SPEC]),
        "ensemble_scheduling": {"step": ensemble["ensemble_scheduling"]["step"][1:]},
    }
    configs = {
        contract.ENSEMBLE: ensemble,
        contract.PIXELS_ENSEMBLE: pixels_ensemble,
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


def gpu_tag(compute_capability: str) -> str:
    """How files and parameters name one GPU kind: sm89 for compute capability 8.9."""
    return f"sm{compute_capability.replace('.', '')}"


def plan_name(compute_capability: str) -> str:
    """The engine file of one GPU kind: model.sm89.plan for compute capability 8.9."""
    return f"model.{gpu_tag(compute_capability)}.plan"


def engine_parameter(compute_capability: str) -> str:
    """The config parameter describing the engine of one GPU kind: what a client reads to
    say which engine answered (``engine_sm89`` for compute capability 8.9)."""
    return ENGINE_PARAMETER_PREFIX + gpu_tag(compute_capability).removeprefix("sm")


def list_engine(
    config_path: Path,
    compute_capability: str,
    plan: str,
    description: str = "",
    parameters: dict[str, str] | None = None,
) -> None:
    """Add (or replace) ``compute_capability -> plan`` in a config's cc_model_filenames, and
    the engine's description (TensorRT version, GPU, source ONNX digest) in its parameters,
    keeping every other entry, so one repository serves a fleet of several GPU kinds; and set
    the ``parameters`` its graph declares (the classifier's intended use)."""
    config = read_config(config_path)
    config.cc_model_filenames[compute_capability] = plan
    if description:
        config.parameters[engine_parameter(compute_capability)].string_value = description
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    write_bytes_atomic(config_path, text_format.MessageToString(config).encode())


def listed_engines(out: Path, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The engines an existing tensorrt config lists whose plans are still there, and their
    description parameters: rewriting the configs must not forget the engines already built
    for other GPU kinds."""
    path = out / name / "config.pbtxt"
    if not path.exists():
        return {}, {}
    try:
        config = read_config(path)
    except RepositoryError as exc:  # rewriting it would forget the engines it lists for other GPUs
        raise RepositoryError(
            f"{exc}; the repository is not rewritten, since that would drop the engines this config lists "
            "for other GPU kinds: mend the file, or remove it to list only the engines built now"
        ) from None
    listed = {cc: plan for cc, plan in config.cc_model_filenames.items() if (out / name / VERSION / plan).exists()}
    described = {
        engine_parameter(cc): config.parameters[engine_parameter(cc)].string_value
        for cc in listed
        if engine_parameter(cc) in config.parameters
    }
    for key in (contract.INTENDED_USE_PARAMETER, contract.SEGMENTER_RULE_OUT_PARAMETER):
        if listed and key in config.parameters:  # declared by the engines' graph
            described[key] = config.parameters[key].string_value
    return listed, described
