"""The model repository in object storage, run here: a real S3-compatible server (moto in
server mode) on loopback, `brainscan export upload` into it, `brainscan serve --repository
s3://…` from it, and an answer checked against a lesion drawn by hand. Credentials travel in
the standard AWS variables only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BRAINSCAN, encode, serve_command
from known_networks import write_threshold_segmenter
from PIL import Image

from brainscan.serving import Ports, free_port
from brainscan.storage import S3Location, StorageError, parse_s3

pytestmark = pytest.mark.server

MOTO = Path(sys.executable).parent / "moto_server"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "brainscan-test",
    "AWS_SECRET_ACCESS_KEY": "brainscan-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("s3://models/brainscan", S3Location(None, "models", "brainscan")),
        ("s3://models", S3Location(None, "models", "")),
        ("s3://http://127.0.0.1:9000/models/a/b/", S3Location("http://127.0.0.1:9000", "models", "a/b")),
        ("s3://https://minio.storage:9000/models/x", S3Location("https://minio.storage:9000", "models", "x")),
        ("s3://127.0.0.1:9000/models/x", S3Location("http://127.0.0.1:9000", "models", "x")),
    ],
)
def test_the_s3_forms_triton_reads(uri, expected):
    assert parse_s3(uri) == expected
    assert parse_s3(expected.uri) == expected  # written back in a form Triton takes


@pytest.mark.parametrize("uri", ["s3://", "s3://http://127.0.0.1:9000/", "/models/x"])
def test_an_s3_location_without_a_bucket_is_named(uri):
    with pytest.raises(StorageError, match="no bucket|not an s3:// location"):
        parse_s3(uri)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, with one empty bucket 'models'; yields its endpoint."""
    if not MOTO.exists():
        pytest.fail("moto_server is missing: `make venv` installs the dev extra (moto[server])")
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="models")
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(f"moto_server did not start:\n{log.read_text(errors='replace')}") from None
                time.sleep(0.3)
        yield endpoint, client
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def with_credentials(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **CREDENTIALS, **extra}


def brainscan(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([BRAINSCAN, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def square_repository(tmp_path_factory, ungated_classifier) -> Path:
    """A local repository whose segmenter marks the bright half of the intensity range, beside
    the session server's classifier."""
    from brainscan.export.repository import write_repository

    root = tmp_path_factory.mktemp("square")
    segmenter = write_threshold_segmenter(root / "segmenter.onnx")
    return write_repository(root / "model_repository", "local", ungated_classifier, segmenter)


def test_a_repository_uploaded_to_s3_is_served_from_there_and_answers(s3, square_repository, server, tmp_path):
    endpoint, client = s3
    uri = f"s3://{endpoint}/models/brainscan"
    env = with_credentials()

    uploaded = brainscan("export", "upload", square_repository, uri, env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="models", Prefix="brainscan/")["Contents"]}
    local = {
        f"brainscan/{p.relative_to(square_repository).as_posix()}"
        for p in square_repository.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert keys == local
    for name in ("segmenter/1/model.onnx", "segmenter/config.pbtxt", "preprocess/1/model.py"):
        body = client.get_object(Bucket="models", Key=f"brainscan/{name}")["Body"].read()
        assert body == (square_repository / name).read_bytes()

    # a bright square drawn by hand on a dark head: the mask must be that square
    pixels = np.full((128, 128), 40, np.uint8)
    pixels[32:64, 48:96] = 230
    images = tmp_path / "images"
    images.mkdir()
    (images / "square.png").write_bytes(encode(pixels, "PNG"))

    ports = Ports.free()
    grpc = ports.grpc
    # Triton's own form without a scheme (host:port is read as http)
    served_from = f"s3://{endpoint.removeprefix('http://')}/models/brainscan"
    process = subprocess.Popen(
        serve_command(served_from, ports, tmp_path / "tritonserver.log"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        waited = brainscan("health", "--url", f"127.0.0.1:{grpc}", "--wait", "120", env=env)
        assert waited.returncode == 0, waited.stdout + waited.stderr
        out = tmp_path / "out"
        result = brainscan("predict", images, "--url", f"127.0.0.1:{grpc}", "--out", out, "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        # the same demo classifier served from disk by the session's server gives the same probability
        from_disk = brainscan("predict", images, "--url", server.grpc_url, "--format", "json", env=env)
        assert from_disk.returncode == 0, from_disk.stderr
        assert json.loads(result.stdout)["probability"] == json.loads(from_disk.stdout)["probability"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    mask = np.asarray(Image.open(out / "square.mask.png")) > 0
    truth = np.zeros_like(mask)
    truth[32:64, 48:96] = True
    overlap = (mask & truth).sum() / (mask | truth).sum()
    assert overlap > 0.9, f"IoU with the drawn square {overlap:.3f}"


def test_an_s3_repository_is_checked_before_the_server_starts(s3, square_repository, tmp_path):
    endpoint, client = s3
    env = with_credentials()
    # nothing there
    result = brainscan("serve", "--repository", f"s3://{endpoint}/models/nothing-here", env=env)
    assert result.returncode == 1 and "holds no objects" in result.stderr and "export upload" in result.stderr
    # a network missing: named by its place in the bucket, not a temporary folder
    broken = Path(shutil.copytree(square_repository, tmp_path / "broken"))
    (broken / "classifier" / "1" / "model.onnx").unlink()
    assert brainscan("export", "upload", broken, f"s3://{endpoint}/models/broken", env=env).returncode == 1
    for path in broken.rglob("*"):  # put it there anyway, as another tool might
        if path.is_file():
            client.upload_file(str(path), "models", f"broken/{path.relative_to(broken).as_posix()}")
    result = brainscan("serve", "--repository", f"s3://{endpoint}/models/broken", env=env)
    assert result.returncode == 1
    assert f"s3://{endpoint}/models/broken/classifier" in result.stderr and "model.onnx is missing" in result.stderr
    assert "/tmp/" not in result.stderr


def test_missing_credentials_and_an_unreachable_endpoint_are_named(square_repository):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = "/nonexistent"
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no asking 169.254.169.254 for credentials either
    result = brainscan("export", "upload", square_repository, "s3://models/brainscan", env=env)
    assert result.returncode == 1 and "AWS_ACCESS_KEY_ID" in result.stderr and "Traceback" not in result.stderr
    result = brainscan(
        "export",
        "upload",
        square_repository,
        f"s3://http://127.0.0.1:{port}/models/x",
        env=with_credentials(),
        timeout=120,
    )
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_the_doctor_checks_engines_in_a_bucket_without_downloading_them(
    s3, tmp_path, onnx_models, validation, fp16_models
):
    """What the Kubernetes init step runs: engine records read from the bucket, plans only listed."""
    import trt_standin

    from brainscan.export.repository import write_repository
    from brainscan.export.tensorrt import build_repository_engines

    endpoint, client = s3
    repository = write_repository(tmp_path / "trt", "tensorrt", onnx_models["classifier"], onnx_models["segmenter"])
    build_repository_engines(repository, validation, toolkit=trt_standin.CpuToolkit("11.3.0.99"), log=lambda _: None)
    uri = f"s3://{endpoint}/models/tensorrt"
    env = with_credentials()
    assert brainscan("export", "upload", repository, uri, env=env).returncode == 0
    result = brainscan(
        "doctor", "--repository", uri, "--tensorrt-version", "11.3.0", "--compute-capability", "8.9", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{uri}: no mismatch found" in result.stdout
    assert result.stdout.count("built with 11.3.0.99, target has 11.3.0 (given)") == 2
    client.delete_object(Bucket="models", Key="tensorrt/segmenter/1/model.sm89.plan")
    result = brainscan(
        "doctor", "--repository", uri, "--tensorrt-version", "11.3.0", "--compute-capability", "8.9", env=env
    )
    assert result.returncode == 1
    assert f"{uri}/segmenter/1/model.sm89.plan is missing: build it" in result.stdout


def test_engines_built_on_two_gpu_kinds_land_in_one_bucket_repository(
    s3, tmp_path, onnx_models, validation, fp16_models, monkeypatch
):
    """What the engine-build Job does, once per GPU kind: configs from the bucket, engines
    built (by the CPU stand-in), plans and records uploaded, the config entry merged into the
    bucket's current config; the second kind keeps the first kind's entry."""
    import trt_standin

    from brainscan.export.gpu import Gpu
    from brainscan.export.repository import read_config, write_repository
    from brainscan.export.tensorrt import build_into_bucket, build_repository_engines

    endpoint, client = s3
    uri = f"s3://{endpoint}/models/fleet"
    repository = write_repository(tmp_path / "trt", "tensorrt", onnx_models["classifier"], onnx_models["segmenter"])
    env = with_credentials()
    uploaded = brainscan("export", "upload", repository, uri, env=env)  # configs only: engines come next
    assert uploaded.returncode == 0 and "it has no engines yet" in uploaded.stdout, uploaded.stderr
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for gpu in (Gpu("Stand-in L4", "8.9"), Gpu("Stand-in H100", "9.0")):
        toolkit = trt_standin.CpuToolkit("11.3.0.99", gpu=gpu)
        build_into_bucket(
            uri,
            lambda local, toolkit=toolkit: build_repository_engines(
                local, validation, toolkit=toolkit, log=lambda _: None
            ),
            gpu.compute_capability,
            log=lambda _: None,
        )
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="models", Prefix="fleet/")["Contents"]}
    for network in ("classifier", "segmenter"):
        for name in ("model.sm89.plan", "model.sm89.json", "model.sm90.plan", "model.sm90.json"):
            assert f"fleet/{network}/1/{name}" in keys
        text = client.get_object(Bucket="models", Key=f"fleet/{network}/config.pbtxt")["Body"].read().decode()
        (tmp_path / "config.pbtxt").write_text(text)
        assert dict(read_config(tmp_path / "config.pbtxt").cc_model_filenames) == {
            "8.9": "model.sm89.plan",
            "9.0": "model.sm90.plan",
        }
    for capability in ("8.9", "9.0"):
        result = brainscan(
            "doctor", "--repository", uri, "--tensorrt-version", "11.3", "--compute-capability", capability, env=env
        )
        assert result.returncode == 0, result.stdout
