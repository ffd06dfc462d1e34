"""The `brainscan` command as a user runs it: predict, health and serve against real
servers, with exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BRAINSCAN, encode, serve_command, start_serve
from PIL import Image
from test_preprocessing import brain_like

from brainscan import contract
from brainscan.serving import Ports, free_port


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([BRAINSCAN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def stub_processes(repository: Path) -> list[int]:
    """Python-backend stubs still alive for models of ``repository``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in cmdline and str(repository) in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.server
def test_predict_a_folder_writes_masks_and_red_overlays_and_scores_against_ground_truth(server, phantom_dir, tmp_path):
    patient = sorted(p for p in phantom_dir.iterdir())[0]
    result = run("predict", patient, "--url", server.grpc_url, "--out", tmp_path, "--evaluate")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if patient.name in line]
    assert len(rows) == 6  # the six slices, not their *_mask.tif ground truth
    assert "accuracy" in result.stdout and "images/s" in result.stdout
    stem = f"{patient.name}_1"
    mask = np.asarray(Image.open(tmp_path / f"{stem}.mask.png"))
    overlay = np.asarray(Image.open(tmp_path / f"{stem}.overlay.png"))
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (256, 256, 3)
    # (where the overlay is red is checked against a lesion drawn by hand in test_answers.py:
    # this session's tiny network finds no tumour, so its masks are empty)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.server
def test_a_bad_file_is_reported_the_others_finish_and_the_exit_code_says_so(server, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode(brain_like(), "PNG"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    also_good = tmp_path / "z_last.tif"
    also_good.write_bytes(encode(brain_like(64, 48), "TIFF"))
    out = tmp_path / "out"
    result = run("predict", tmp_path, "--url", server.grpc_url, "--out", out, "--json")
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(r["file"]).name: r for r in records}
    assert set(by_name) == {"good.png", "broken.jpg", "z_last.tif"}
    assert "error" in by_name["broken.jpg"] and "JPEG" in by_name["broken.jpg"]["error"]
    assert by_name["z_last.tif"]["height"] == 64 and by_name["z_last.tif"]["width"] == 48
    assert 0 <= by_name["good.png"]["probability"] <= 1
    assert (out / "good.mask.png").exists() and (out / "z_last.overlay.png").exists()
    assert not (out / "broken.mask.png").exists()


def test_predict_without_a_server_says_so_in_one_line(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(encode(brain_like(), "PNG"))
    result = run("predict", image, "--url", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert result.returncode == 3
    assert "no Triton server reachable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.server
def test_health_lists_every_model(server):
    result = run("health", "--url", server.grpc_url)
    assert result.returncode == 0
    for name in ("brainscan", "preprocess", "classifier", "segmenter"):
        assert name in result.stdout


def test_serve_refuses_a_missing_repository_clearly(tmp_path):
    result = run("serve", "--repository", tmp_path / "nothing")
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_serve_names_an_incomplete_repository(tmp_path):
    from brainscan.export.repository import write_repository

    write_repository(tmp_path, "local")  # configs, but no ONNX networks
    result = run("serve", "--repository", tmp_path)
    assert result.returncode == 1 and "model.onnx is missing" in result.stderr


@pytest.mark.parametrize("flavour", ["tensorrt", "onnxruntime"])
def test_serve_explains_that_gpu_flavours_run_in_the_triton_container(flavour, tmp_path):
    repository = Path(__file__).resolve().parent.parent / "model_repository"  # the committed tensorrt flavour
    if flavour == "onnxruntime":
        from brainscan.export.repository import write_repository

        repository = write_repository(tmp_path, "onnxruntime")
    result = run("serve", "--repository", repository)
    assert result.returncode == 1
    assert f"is the {flavour} flavour" in result.stderr
    assert "docker compose -f docker/compose.yaml up -d triton" in result.stderr
    assert "--flavour local" in result.stderr


def test_serve_says_when_a_port_is_taken(local_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "serve",
            "--repository",
            local_repository,
            "--grpc-port",
            port,
            "--http-port",
            free_port(),
            "--metrics-port",
            free_port(),
        )
    assert result.returncode == 1
    assert f"port {port} (gRPC)" in result.stderr and "already in use" in result.stderr


def _private_shm_works() -> bool:
    """Whether this user may mount a tmpfs of its own (an unprivileged user and mount namespace)."""
    probe = (
        subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"], capture_output=True, timeout=30
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.server
def test_serve_says_why_the_models_did_not_load_when_dev_shm_is_too_small(local_repository, tmp_path):
    """Docker's 64 MB /dev/shm, shrunk further: every python backend instance needs 1 MB of
    it. The reason is in Triton's error lines, far above the option table that ends its log;
    serve must print those, not the table."""
    if not _private_shm_works():
        pytest.skip(reason="no unprivileged user and mount namespaces here (unshare -rm), so no private /dev/shm")
    log = tmp_path / "triton.log"
    serve = serve_command(local_repository, Ports.free(), log, "--timeout", "120")
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=512k tmpfs /dev/shm && exec "$@"', "sh", *serve],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "before it was ready" in result.stderr and "Triton's errors:" in result.stderr
    assert f"failed to load '{contract.PREPROCESS}' version 1" in result.stderr
    assert "Unable to initialize shared memory key" in result.stderr and "No space left on device" in result.stderr
    assert "strict_readiness" not in result.stderr  # the option table is not what the user reads
    assert f"(the whole log: {log})" in result.stderr


@pytest.mark.server
def test_serve_stops_cleanly_on_sigterm_leaving_no_stub_behind(local_repository, tmp_path):
    # a private copy, so the stubs of the session's server do not count
    repository = Path(shutil.copytree(local_repository, tmp_path / "repository")).resolve()
    grpc = free_port()
    process = start_serve(repository, grpc, tmp_path / "log", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert run("health", "--url", f"127.0.0.1:{grpc}", "--wait", "120").returncode == 0
        assert stub_processes(repository)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "stopped" in stderr
    deadline = time.monotonic() + 10
    while stub_processes(repository) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stub_processes(repository)


@pytest.mark.parametrize(
    "options,message",
    [
        (["--url", "grpc://127.0.0.1:8001"], "without a scheme"),
        (["--root-certificates", "/nonexistent/ca.pem"], "does not exist"),
        (["--private-key", __file__], "both the client key and the client certificate chain"),
        (["--protocol", "smtp"], "'smtp' is not one of 'grpc', 'http'"),
        (["--format", "xml"], "'xml' is not one of 'table', 'json', 'csv'"),
        (["--skip-existing"], "needs --out"),
    ],
)
def test_bad_connection_and_output_options_are_usage_errors_that_say_why(options, message, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(encode(brain_like(), "PNG"))
    result = run("predict", image, *options)
    text = " ".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # Typer's error box
    assert result.returncode == 2 and message in text, result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["export", "repository", "--flavour", "x"], "'x' is not one of 'local', 'onnxruntime', 'tensorrt'"),
        (["export", "repository", "--device", "tpu"], "'tpu' is not one of 'cpu', 'gpu'"),
        (["export", "repository", "--instances", "preprocess"], "write MODEL=N"),
        (["data", "split", "--data", ".", "--part", "x"], "'x' is not one of 'train', 'val', 'test'"),
        (["train", "segmenter", "--architecture", "x"], "'x' is not one of 'mobilenetv2-unet', 'unet'"),
        (["health", "--url", "grpc://127.0.0.1:8001"], "without a scheme"),
    ],
)
def test_every_bad_option_value_exits_2_naming_the_choices(args, message, tmp_path):
    """README, 'Exit codes': 2 is a bad option or argument, whatever the command."""
    result = subprocess.run([BRAINSCAN, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    text = " ".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    assert result.returncode == 2 and message in text, result.stderr


def test_connection_options_come_from_the_environment(tmp_path):
    """Each connection option has its variable; the option, when given, wins."""
    port = free_port()
    env = {**os.environ, "BRAINSCAN_URL": f"127.0.0.1:{port}", "BRAINSCAN_PROTOCOL": "http"}
    result = subprocess.run([BRAINSCAN, "health", "--format", "json"], capture_output=True, text=True, env=env)
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["server"] == f"http://127.0.0.1:{port}"  # both variables were read
    env["BRAINSCAN_ROOT_CERTIFICATES"] = str(tmp_path / "missing-ca.pem")
    result = subprocess.run([BRAINSCAN, "health"], capture_output=True, text=True, env=env)
    # the error box wraps the message wherever the temporary path's length puts the edge
    text = "".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    assert result.returncode == 2 and "missing-ca.pemdoesnotexist" in text, result.stderr
    env = {**os.environ, "BRAINSCAN_PROTOCOL": "smtp"}
    result = subprocess.run(
        [BRAINSCAN, "health", "-i", "grpc", "-u", f"127.0.0.1:{port}"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 3, result.stderr  # -i grpc overrides the variable's bad value


def test_a_repeated_url_asks_every_server(tmp_path):
    """`--url A --url B` is A and B (it used to be B alone, silently)."""
    ports = [free_port(), free_port()]
    result = run("health", "--format", "json", *[f"-u127.0.0.1:{p}" for p in ports])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["server"] for r in records] == [f"grpc://127.0.0.1:{p}" for p in ports]
    assert result.returncode == 3 and all(r["exit_code"] == 3 and "no Triton server" in r["error"] for r in records)


def test_a_user_error_is_one_line_unless_debug_is_asked(tmp_path):
    plain = run("serve", "--repository", tmp_path / "nothing")
    assert plain.returncode == 1 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = run("--debug", "serve", "--repository", tmp_path / "nothing")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ServerError" in debug.stderr
    env = {**os.environ, "BRAINSCAN_DEBUG": "1"}
    result = subprocess.run(
        [BRAINSCAN, "serve", "--repository", str(tmp_path / "nothing")], capture_output=True, text=True, env=env
    )
    assert "Traceback" in result.stderr


def test_serve_names_tls_options_that_do_not_go_together(tmp_path):
    """A key without its certificate is a usage error (exit 2), before any server starts."""
    key = tmp_path / "server.key"
    key.write_text("not used")
    result = run("serve", "--repository", tmp_path, "--tls-key", key)
    assert result.returncode == 2, result.stderr
    assert "gRPC TLS needs --tls-certificate and --tls-key" in result.stderr
