"""Shared fixtures: a small phantom dataset, tiny trained networks exported to ONNX, a
`local` model repository and a real tritonserver on loopback (all built once per session)."""
from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests never read or write the user's artifacts/ (what `make demo` built): every default
# path of the CLI points into a folder of this test session instead. The GPU test, which
# builds engines of the demo's networks on purpose, reads DEMO_ARTIFACTS.
from brainscan import contract  # noqa: E402

DEMO_ARTIFACTS = contract.artifacts_dir().resolve()
os.environ[contract.ARTIFACTS_ENV] = tempfile.mkdtemp(prefix="brainscan-test-artifacts-")
atexit.register(shutil.rmtree, os.environ[contract.ARTIFACTS_ENV], ignore_errors=True)

# the admin key of the session's server (its statistics are an admin API)
ADMIN_KEY = "test-admin-key-" + os.urandom(12).hex()

# different sizes, so the two-size path of preprocess and the writer is exercised
TINY_SIZES = {"classifier": 96, "segmenter": 64}


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from brainscan.train.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, patients=6, seed=11, slices_per_patient=6, tumour_fraction=0.8)
    return root


def _train_tiny(task: str, data: Path, out: Path) -> Path:
    from brainscan.train.training import TrainConfig, train

    train(TrainConfig(task=task, data=str(data), out=str(out), size=TINY_SIZES[task], epochs=2, batch_size=8,
                      alpha=0.35, seed=3, steps_per_epoch=2))
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory, phantom_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {task: _train_tiny(task, phantom_dir, root / task) for task in ("classifier", "segmenter")}


@pytest.fixture(scope="session")
def onnx_models(runs) -> dict[str, Path]:
    from brainscan.export.onnx import export_onnx
    from brainscan.train import datasets
    from brainscan.train.training import load_model, load_run, split_samples

    out = {}
    for task, run in runs.items():
        config = load_run(run)
        images = datasets.load_images(split_samples(config)["val"][:8], config.image_size)
        export_onnx(load_model(run / "model.keras"), run / "model.onnx", images)
        out[task] = run / "model.onnx"
    return out


@pytest.fixture(scope="session")
def validation(runs, onnx_models):
    """Each tiny network's validation slices (and masks), as the FP16 gate takes them."""
    from brainscan import contract
    from brainscan.export.validation import NetworkInputs
    from brainscan.train import datasets
    from brainscan.train.training import load_run, split_samples

    out = {}
    for name, run in runs.items():
        config = load_run(run)
        samples = split_samples(config)["val"]
        truth = datasets.load_masks(samples, config.image_size) if name == contract.SEGMENTER else None
        out[name] = NetworkInputs(onnx_models[name], datasets.load_images(samples, config.image_size), truth)
    return out


@pytest.fixture(scope="session")
def fp16_models(validation) -> dict[str, Path]:
    """The FP16 graphs of the tiny networks (model.fp16.onnx beside each model.onnx), written
    by the real `export fp16` step after its CPU gate."""
    from brainscan.export.precision import export_fp16

    return {name: export_fp16(given.onnx, given).path for name, given in validation.items()}


@pytest.fixture(scope="session")
def local_repository(tmp_path_factory, onnx_models) -> Path:
    from brainscan.export.repository import write_repository

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    return write_repository(out, "local", onnx_models["classifier"], onnx_models["segmenter"])


@pytest.fixture(scope="session")
def server(local_repository, tmp_path_factory):
    from brainscan.server import Ports, TritonServer, free_port

    ports = Ports(free_port(), free_port(), free_port())
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with TritonServer(local_repository, ports=ports, log_file=log, admin_key=ADMIN_KEY) as running:
        yield running


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def phantom_slices(root: Path, count: int = 4) -> list[Path]:
    from brainscan.train.datasets import find_kaggle3m

    return [s.image for s in find_kaggle3m(root)][:count]


def write_threshold_segmenter(path: Path, size: int = 64, detour: float | None = None) -> Path:
    """A real ONNX segmenter whose answer is known without training: probability rises
    with brightness (sigmoid((mean over channels - 128) / 10)), so the mask is the bright
    half of each slice's intensity range. It makes geometry tests exact where the tiny
    trained segmenter finds nothing. With ``detour``, the mean is multiplied by it and
    divided back (nodes ``detour_up``/``detour_down``): the same answer in FP32, but an
    intermediate that overflows FP16 (max 65504) once mean x detour does."""
    import onnx
    from onnx import TensorProto, helper

    from brainscan import contract

    nodes = [helper.make_node("ReduceMean", [contract.SEGMENTER_INPUT], ["mean"], axes=[3], keepdims=1, name="mean")]
    constants = [helper.make_tensor("middle", TensorProto.FLOAT, [], [128.0]), helper.make_tensor("gain", TensorProto.FLOAT, [], [0.1])]
    level = "mean"
    if detour is not None:
        nodes += [helper.make_node("Mul", ["mean", "detour"], ["detoured"], name="detour_up"),
                  helper.make_node("Div", ["detoured", "detour"], ["level"], name="detour_down")]
        constants.append(helper.make_tensor("detour", TensorProto.FLOAT, [], [detour]))
        level = "level"
    nodes += [helper.make_node("Sub", [level, "middle"], ["centred"], name="centre"),
              helper.make_node("Mul", ["centred", "gain"], ["logit"], name="scale"),
              helper.make_node("Sigmoid", ["logit"], [contract.SEGMENTER_OUTPUT], name="probability")]
    graph = helper.make_graph(
        nodes, "threshold_segmenter",
        [helper.make_tensor_value_info(contract.SEGMENTER_INPUT, TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info(contract.SEGMENTER_OUTPUT, TensorProto.FLOAT, ["N", size, size, 1])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def bright_server(tmp_path_factory, onnx_models):
    """A second real server whose segmenter is ``write_threshold_segmenter``."""
    from brainscan.export.repository import write_repository
    from brainscan.server import Ports, TritonServer, free_port

    root = tmp_path_factory.mktemp("bright")
    segmenter = write_threshold_segmenter(root / "segmenter.onnx")
    repository = write_repository(root / "model_repository", "local", onnx_models["classifier"], segmenter)
    ports = Ports(free_port(), free_port(), free_port())
    with TritonServer(repository, ports=ports, log_file=root / "tritonserver.log") as running:
        yield running
