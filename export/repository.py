"""Write and check Triton model repositories: one ensemble contract, three flavours.

| flavour       | classifier / segmenter (the served graphs, ``export.served_graph``) |
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
from importlib import resources
from pathlib import Path

from google.protobuf import text_format

from brainscan import contract
from brainscan.contract import MODEL_SHA256_PARAMETER, Device, Flavour
from brainscan.export.model_configs import (
    engine_parameter,
    list_engine,
    listed_engines,
    model_configs,
    plan_files,
    plan_name,
    read_config,
    render_config,
    to_model_config,
    warmup_files,
)
from brainscan.export.repository_spec import (
    DEFAULT_INSTANCES,
    FLAVOURS,
    ONNX_RUNNER_SOURCE,
    ORT_TRT_CACHE,
    PLACEHOLDER,
    PYTHON_QUEUE_DELAY_US,
    PYTHON_SOURCES,
    QUEUE_DELAY_US,
    VERSION,
    WARMUP_FOLDER,
    WARMUP_IMAGE,
    WEIGHT_FILES,
    RepositoryError,
    RepositorySpec,
)
from brainscan.repository import flavour_of, validate_repository  # noqa: F401 (re-exported)

# Re-exported: the repository's API, wherever each part lives (repository_spec: options and
# defaults; model_configs: the configs and the engines they list).
__all__ = [
    "DEFAULT_INSTANCES",
    "FLAVOURS",
    "ONNX_RUNNER_SOURCE",
    "ORT_TRT_CACHE",
    "PYTHON_QUEUE_DELAY_US",
    "QUEUE_DELAY_US",
    "VERSION",
    "WARMUP_FOLDER",
    "WARMUP_IMAGE",
    "WEIGHT_FILES",
    "Flavour",
    "RepositoryError",
    "RepositorySpec",
    "engine_parameter",
    "flavour_of",
    "list_engine",
    "model_configs",
    "plan_files",
    "plan_name",
    "read_config",
    "render_config",
    "repository_files",
    "served_graph",
    "to_model_config",
    "validate_repository",
    "write_repository",
]


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
    files.update(warmup_files())
    if spec.flavour is Flavour.LOCAL:
        for name in contract.NETWORKS:
            files[f"{name}/{VERSION}/model.py"] = _python_source(ONNX_RUNNER_SOURCE)
    return files


def served_graph(path: Path, network: str, cpu: bool = False) -> tuple[bytes, dict[str, str]]:
    """The served graph of ``network`` from ``path``: as it is when it is one (what
    ``brainscan export onnx`` and ``export fp16`` write), else the network wrapped
    (``export.served_graph``), with ``cpu`` as the CPU flavours serve it (``served_graph.for_cpu``); and
    the config parameters it declares (the classifier's intended use)."""
    import onnx

    from brainscan.export.served_graph import ServingGraphError, declared_parameters, for_cpu, network_of, serving_model
    from brainscan.intended_use import IntendedUseError

    try:
        model = serving_model(onnx.load(str(path)))
        model = for_cpu(model) if cpu else model
        found = network_of(model)
        declared = declared_parameters(model)
    except (
        ServingGraphError,
        IntendedUseError,
        onnx.checker.ValidationError,
        onnx.onnx_cpp2py_export.shape_inference.InferenceError,
    ) as exc:
        raise RepositoryError(f"{path}: {exc}") from None
    if found != network:
        raise RepositoryError(f"{path} is the {found}, given as the {network}")
    return model.SerializeToString(), declared


def write_repository(
    out: Path,
    flavour: Flavour | str = Flavour.LOCAL,
    classifier_onnx: Path | None = None,
    segmenter_onnx: Path | None = None,
    **options,
) -> Path:
    """Write a repository of ``flavour`` to ``out``. With ONNX files (the FP32 served graphs,
    or bare networks, which get wrapped), the local and onnxruntime flavours serve them as
    the networks' weights; the onnxruntime flavour on a GPU serves the FP16 graph beside each
    instead (``model.fp16.onnx``, written by ``brainscan export fp16``)."""
    out = Path(out)
    spec = RepositorySpec(flavour=flavour, **options)
    sources = {contract.CLASSIFIER: classifier_onnx, contract.SEGMENTER: segmenter_onnx}
    if spec.flavour is Flavour.ONNXRUNTIME and spec.device is Device.GPU:
        from brainscan.export.fp16 import fp16_path

        sources = {name: fp16_path(path) if path else None for name, path in sources.items()}
        missing = [str(path) for path in sources.values() if path and not path.exists()]
        if missing:
            raise RepositoryError(
                f"the onnxruntime flavour on a GPU serves the FP16 graphs, and {', '.join(missing)} "
                "is missing: write it with `brainscan export fp16 RUN` (make demo does)"
            )
    files = repository_files(spec)
    if spec.flavour in (Flavour.LOCAL, Flavour.ONNXRUNTIME):
        for name, source in sources.items():
            if source:
                graph, declared = served_graph(source, name, cpu=not spec.on_gpu)
                files[f"{name}/{VERSION}/{WEIGHT_FILES[spec.flavour]}"] = graph
                # the served graph's digest, for clients to name what answered (DICOM SR, audit)
                config = to_model_config(model_configs(spec)[name])
                config.parameters[MODEL_SHA256_PARAMETER].string_value = hashlib.sha256(graph).hexdigest()
                for key, value in declared.items():  # the classifier's intended use, for clients
                    config.parameters[key].string_value = value
                files[f"{name}/config.pbtxt"] = text_format.MessageToString(config).encode()
    if spec.flavour is Flavour.TENSORRT:
        for name in contract.NETWORKS:
            listed, described = listed_engines(out, name)
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
