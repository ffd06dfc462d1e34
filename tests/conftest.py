"""Shared fixtures: a small phantom dataset, tiny trained networks exported to ONNX, a
`local` model repository and a real tritonserver on loopback (all built once per session)."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest_plugins = ["pytester"]  # tests of this conftest's own process clean-up

# Tests never read or write the user's artifacts/ (what `make demo` built): every default
# path of the CLI points into a folder of this test session instead. The GPU test, which
# builds engines of the demo's networks on purpose, reads DEMO_ARTIFACTS.

from brainscan import contract  # noqa: E402

DEMO_ARTIFACTS = contract.artifacts_dir().resolve()
os.environ[contract.ARTIFACTS_ENV] = tempfile.mkdtemp(prefix="brainscan-test-artifacts-")
atexit.register(shutil.rmtree, os.environ[contract.ARTIFACTS_ENV], ignore_errors=True)


# Every process a test body starts ends with the test, passed or failed: the processes it
# launched (subprocess.Popen while the test runs, not its fixtures') that are still running
# are killed by pid, with their process group when they lead one (tritonserver and its
# stubs). At the end of the session, any descendant still alive is killed and named.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    import signal
    import subprocess

    started: list[subprocess.Popen] = []
    original = subprocess.Popen.__init__

    def tracking(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)

    subprocess.Popen.__init__ = tracking
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original
        for process in started:
            if process.poll() is None:
                try:
                    if os.getpgid(process.pid) == process.pid:
                        os.killpg(process.pid, signal.SIGKILL)
                    else:
                        process.kill()
                except ProcessLookupError:
                    pass
                process.wait()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def pytest_sessionfinish(session, exitstatus):
    import signal

    left = _descendants(os.getpid())
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"\nkilled {len(left)} process(es) the tests left running: {left}")


# No test reaches the network: this process may connect to loopback addresses and Unix
# sockets only (subprocesses are given loopback endpoints; perf_analyzer is fetched by
# `make test` before pytest starts).
def _loopback_only(connect):
    import ipaddress
    import socket

    def guarded(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                local = False
            if not local:
                raise OSError(f"the tests may not reach the network ({host}:{address[1]})")
        return connect(self, address, *args)

    return guarded


def pytest_configure(config):
    import socket

    socket.socket.connect = _loopback_only(socket.socket.connect)
    socket.socket.connect_ex = _loopback_only(socket.socket.connect_ex)


# the admin key of the session's server: Triton's administrative APIs (repository, shared memory,
# logging, trace) need it, which tests/test_security.py checks; statistics do not
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

    train(
        TrainConfig(
            task=task,
            data=str(data),
            out=str(out),
            size=TINY_SIZES[task],
            epochs=2,
            batch_size=8,
            alpha=0.35,
            seed=3,
            steps_per_epoch=2,
        )
    )
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory, phantom_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {task: _train_tiny(task, phantom_dir, root / task) for task in ("classifier", "segmenter")}


@pytest.fixture(scope="session")
def onnx_models(runs) -> dict[str, Path]:
    """The tiny networks' served graphs, written by the real `export onnx` step (the
    classifier's with its pixel gate fitted on the run's training slices)."""
    from brainscan.export.onnx import export_run

    return {task: export_run(run, samples=4)[0] for task, run in runs.items()}


@pytest.fixture(scope="session")
def validation(runs, onnx_models):
    """Each tiny network's validation slices (and masks), as the FP16 gate takes them."""
    from brainscan.export.validation import validation_inputs

    return {name: validation_inputs(name, onnx_models[name]) for name in runs}


@pytest.fixture(scope="session")
def fp16_models(validation) -> dict[str, Path]:
    """The FP16 graphs of the tiny networks (model.fp16.onnx beside each model.onnx), written
    by the real `export fp16` step after its CPU gate."""
    from brainscan.export.fp16 import export_fp16

    return {name: export_fp16(given.onnx, given).path for name, given in validation.items()}


def without_gate(served: Path, out: Path) -> Path:
    """The served classifier graph of ``served`` with its pixel gate taken out: its network,
    wrapped again, answers a score of zeros and declares no pixel gate (as a network a user
    exports without a training run does)."""
    import onnx

    from brainscan.export.served_graph import network_only, serving_model

    onnx.save(serving_model(network_only(onnx.load(str(served)))), str(out))
    return out


@pytest.fixture(scope="session")
def ungated_classifier(tmp_path_factory, onnx_models) -> Path:
    """The tiny classifier without its pixel gate (``without_gate``): fitted on 24 training
    slices of a 2-epoch network, the gate refuses some phantom slices and every hand-made
    image, which the tests of serving, faults and clients send for their known answers. The
    gate itself is tested on ``gated_repository``."""
    return without_gate(onnx_models["classifier"], tmp_path_factory.mktemp("ungated") / "classifier.onnx")


@pytest.fixture(scope="session")
def local_repository(tmp_path_factory, ungated_classifier, onnx_models) -> Path:
    """The tiny networks, the classifier without its pixel gate (``ungated_classifier``)."""
    from brainscan.export.repository import write_repository

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    return write_repository(out, "local", ungated_classifier, onnx_models["segmenter"])


@pytest.fixture(scope="session")
def gated_repository(tmp_path_factory, onnx_models) -> Path:
    """The tiny networks as `brainscan export onnx` serves them: the classifier with the pixel
    gate fitted on its training slices, and its intended use declared."""
    from brainscan.export.repository import write_repository

    out = tmp_path_factory.mktemp("gated") / "model_repository"
    return write_repository(out, "local", onnx_models["classifier"], onnx_models["segmenter"])


def _serve(repository: Path, tmp_path_factory, name: str, **options):
    from brainscan.serving import Ports, TritonServer

    log = tmp_path_factory.mktemp(name) / "tritonserver.log"
    return TritonServer(repository, ports=Ports.free(), log_file=log, **options)


@pytest.fixture(scope="session")
def server(local_repository, tmp_path_factory):
    with _serve(local_repository, tmp_path_factory, "server", admin_key=ADMIN_KEY) as running:
        yield running


@pytest.fixture(scope="session")
def gated_server(gated_repository, tmp_path_factory):
    """A real server of the tiny networks with their pixel gate (``gated_repository``)."""
    with _serve(gated_repository, tmp_path_factory, "gated") as running:
        yield running


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def phantom_slices(root: Path, count: int = 4) -> list[Path]:
    from brainscan.train.datasets import find_kaggle3m

    return [s.image for s in find_kaggle3m(root)][:count]


@pytest.fixture(scope="session")
def bright_networks(tmp_path_factory) -> dict[str, Path]:
    """Both networks with answers computable from the image (brightness thresholds), at the
    production input sizes."""
    from known_networks import write_threshold_classifier, write_threshold_segmenter

    root = tmp_path_factory.mktemp("bright-networks")
    return {
        "classifier": write_threshold_classifier(root / "classifier.onnx", contract.CLASSIFIER_SIZE),
        "segmenter": write_threshold_segmenter(root / "segmenter.onnx", contract.SEGMENTER_SIZE),
    }


@pytest.fixture(scope="session")
def bright_server(tmp_path_factory, bright_networks):
    """A second real server whose networks are ``write_threshold_classifier`` and
    ``write_threshold_segmenter``: every answer it gives can be worked out by hand."""
    from brainscan.export.repository import write_repository

    root = tmp_path_factory.mktemp("bright")
    repository = write_repository(
        root / "model_repository", "local", bright_networks["classifier"], bright_networks["segmenter"]
    )
    with _serve(repository, tmp_path_factory, "bright-server") as running:
        yield running


def metrics_after_one_request(server) -> str:
    """A real Triton's Prometheus text after one image went through the ensemble."""
    import urllib.request

    import tritonclient.http as httpclient

    from brainscan.probe import probe_image

    client = httpclient.InferenceServerClient(server.http_url)
    image = httpclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[probe_image()]], dtype=np.object_))
    client.infer(contract.ENSEMBLE, [image])
    client.close()
    return urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics", timeout=10).read().decode()


BRAINSCAN = str(Path(sys.executable).with_name("brainscan"))


def cli_args(*arguments, **options) -> list[str]:
    """Command-line words as a user types them: ``arguments`` in order, then each option as
    ``--name value`` (underscores in the name as hyphens; True gives the flag alone)."""
    words = [str(argument) for argument in arguments]
    for name, value in options.items():
        words += [f"--{name.replace('_', '-')}", *([] if value is True else [str(value)])]
    return words


def port_args(ports) -> list[str]:
    """--grpc-port, --http-port and --metrics-port (serve's and tritonserver's own) of a Ports."""
    return cli_args(grpc_port=ports.grpc, http_port=ports.http, metrics_port=ports.metrics)


def predict_until(out: Path, masks: int, *arguments, **options) -> subprocess.Popen:
    """`brainscan predict ARGUMENTS --out OUT --format json OPTIONS` started in the background;
    returns once it has written ``masks`` masks, has ended, or after 120 s."""
    command = [BRAINSCAN, "predict", *cli_args(*arguments, out=out, format="json", **options)]
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.mask.png"))) < masks and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return client


def serve_command(repository, ports, log: Path, *options: str) -> list[str]:
    """`brainscan serve` on ``ports`` (a brainscan.serving.Ports), its log in ``log``."""
    return [BRAINSCAN, "serve", *cli_args(repository=repository, log_file=log), *port_args(ports), *options]


def start_serve(repository: Path, grpc: int, log: Path, **popen) -> subprocess.Popen:
    """`brainscan serve` as a user starts it, on loopback: gRPC on ``grpc``, HTTP and metrics
    on free ports, tritonserver's log in ``log``."""
    from brainscan.serving import Ports, free_port

    return subprocess.Popen(serve_command(repository, Ports(grpc, free_port(), free_port()), log), text=True, **popen)


@pytest.fixture
def pacs(tmp_path):
    """A real Orthanc of this test's own, no users (test files that need another override it)."""
    from orthanc import Orthanc

    orthanc = Orthanc(tmp_path / "orthanc").start()
    yield orthanc
    orthanc.stop()
