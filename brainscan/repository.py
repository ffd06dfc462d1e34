"""A Triton model repository as the server side reads it: its configs parsed, its flavour, and
the check that it holds the served contract's models, their tensors and their files. The
export writes repositories (``brainscan.export.repository``); the server and ``doctor``
check them here, without the export's dependencies."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from brainscan import contract
from brainscan.contract import PLAN_FILE, Flavour
from brainscan.errors import BrainscanError

VERSION = "1"
WEIGHT_FILES = {Flavour.LOCAL: "model.onnx", Flavour.ONNXRUNTIME: "model.onnx", Flavour.TENSORRT: PLAN_FILE}


class RepositoryError(BrainscanError, ValueError):
    """A model repository is missing, incomplete or inconsistent; the message lists why."""


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path} is not a valid Triton model config: {exc}") from None


def plan_files(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """The engines a tensorrt_plan config names, by compute capability (Triton's
    ``cc_model_filenames``: each server loads the one of its GPU). A config that lists none
    has one plan for whatever GPU loads it, under the key ''."""
    listed = dict(config.cc_model_filenames)
    return listed or {"": config.default_model_filename or WEIGHT_FILES[Flavour.TENSORRT]}


def flavour_of(configs: dict[str, model_config_pb2.ModelConfig]) -> Flavour:
    classifier = configs[contract.CLASSIFIER]
    if classifier.platform == "tensorrt_plan":
        return Flavour.TENSORRT
    if classifier.platform == "onnxruntime_onnx":
        return Flavour.ONNXRUNTIME
    return Flavour.LOCAL


def validate_repository(
    path: Path, require_weights: bool = False, ensembles: tuple[str, ...] = contract.ENSEMBLES
) -> dict[str, model_config_pb2.ModelConfig]:
    """Check that ``path`` holds the ``ensembles`` (the contract's two) and their three models, that every config
    parses, that the ensemble's steps name real tensors of real models, and (with
    ``require_weights``) that each model's files are present. Raises RepositoryError."""
    path = Path(path)
    if not path.is_dir():
        raise RepositoryError(
            f"model repository {path} does not exist: build it with `make demo` or "
            "`brainscan export repository --repository DIR`"
        )
    problems: list[str] = []
    configs: dict[str, model_config_pb2.ModelConfig] = {}
    for name in (*ensembles, *contract.COMPOSING_MODELS):
        config_path = path / name / "config.pbtxt"
        if not config_path.exists():
            problems.append(f"{name}: {config_path} is missing")
            continue
        try:
            configs[name] = read_config(config_path)
        except RepositoryError as exc:
            problems.append(str(exc))
    steps = [step for name in ensembles if name in configs for step in configs[name].ensemble_scheduling.step]
    if not problems:
        for step in steps:
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
                needed += (
                    sorted(set(plan_files(config).values())) if flavour is Flavour.TENSORRT else [WEIGHT_FILES[flavour]]
                )
            if name in ensembles and not version.is_dir():
                problems.append(f"{name}: version folder {version} is missing")
            problems += [f"{name}: {version / f} is missing" for f in needed if not (version / f).exists()]
    if problems:
        raise RepositoryError(f"model repository {path} is incomplete:\n  " + "\n  ".join(problems))
    return configs
