"""What a server started by brainscan exposes: Triton's administrative APIs refused without
the admin key (HTTP and gRPC) while inference, health, metadata and statistics (which
perf_analyzer reads) work; the key read from a file only; HTTP and metrics kept on loopback
when gRPC is TLS."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ADMIN_KEY
from test_cli import run

from brainscan import contract
from brainscan.serving import GrpcTls, Ports, ServerError, TritonServer, read_admin_key

ADMIN_CALLS = [  # one per restricted API group, with the method Triton's HTTP endpoint takes
    ("POST", "/v2/repository/index"),  # model-repository: would list, load and unload models
    ("GET", "/v2/systemsharedmemory/status"),  # shared-memory: register host memory regions
    ("POST", "/v2/logging"),  # logging: turn verbose logging on, redirect the log
    ("GET", "/v2/trace/setting"),  # trace
]


def _http(server, method: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}",
        method=method,
        headers=headers or {},
        data=b"{}" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.server
@pytest.mark.parametrize("method,path", ADMIN_CALLS)
def test_administrative_apis_need_the_admin_key(server, method, path):
    status, body = _http(server, method, path)
    assert status == 403 and b"restricted" in body
    wrong, _ = _http(server, method, path, {contract.ADMIN_HEADER: "not-the-key-0123456789"})
    assert wrong == 403
    allowed, _ = _http(server, method, path, {contract.ADMIN_HEADER: ADMIN_KEY})
    assert allowed == 200


@pytest.mark.server
def test_inference_health_metadata_and_config_stay_open(server):
    import tritonclient.grpc as grpcclient

    from brainscan.probe import probe_image

    for path in (
        "/v2/health/ready",
        f"/v2/models/{contract.ENSEMBLE}",
        f"/v2/models/{contract.ENSEMBLE}/config",
        "/v2/models/stats",
    ):  # read-only counters, as on the metrics port; perf_analyzer needs them
        assert _http(server, "GET", path)[0] == 200, path
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        image = grpcclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[probe_image()]], dtype=np.object_))
        assert client.infer(contract.ENSEMBLE, [image]).as_numpy(contract.MASK) is not None
        stats = client.get_inference_statistics(contract.ENSEMBLE, as_json=True)  # no header, as perf_analyzer asks
        assert int(stats["model_stats"][0]["inference_count"]) > 0
        with pytest.raises(Exception, match="restricted"):
            client.get_model_repository_index()
        index = client.get_model_repository_index(headers={contract.GRPC_ADMIN_HEADER: ADMIN_KEY})
        assert {m.name for m in index.models} == {*contract.ENSEMBLES, *contract.COMPOSING_MODELS}
    finally:
        client.close()


def test_without_a_key_the_admin_apis_get_one_nobody_knows(tmp_path):
    server = TritonServer(tmp_path, ports=Ports(1, 2, 3))
    other = TritonServer(tmp_path, ports=Ports(1, 2, 3))
    assert not server.admin_enabled and len(server.admin_key) >= 32 and server.admin_key != other.admin_key
    (http_flag,) = [f for f in server.command(tmp_path) if f.startswith("--http-restricted-api=")]
    assert (
        http_flag == f"--http-restricted-api={','.join(contract.ADMIN_APIS)}:{contract.ADMIN_HEADER}={server.admin_key}"
    )
    assert any(f.startswith("--grpc-restricted-protocol=") for f in server.command(tmp_path))


def test_the_admin_key_comes_from_a_file_and_must_be_long(tmp_path):
    key = tmp_path / "admin-key"
    key.write_text("  correct-horse-battery-staple\n")
    assert read_admin_key(key) == "correct-horse-battery-staple"
    key.write_text("short")
    with pytest.raises(ServerError, match="at least 16 characters"):
        read_admin_key(key)
    with pytest.raises(ServerError, match="cannot read the admin key file"):
        read_admin_key(tmp_path / "missing")
    result = run("serve", "--repository", tmp_path, "--admin-key-file", key)
    assert result.returncode == 1 and "at least 16 characters" in result.stderr


def test_with_grpc_tls_http_and_metrics_stay_on_loopback(tmp_path):
    """HTTP can infer too and has no TLS of its own: exposing gRPC with TLS must not expose
    it (nor the metrics) in plain text on the same host."""
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    tls = GrpcTls(tmp_path / "cert.pem", tmp_path / "key.pem")
    command = TritonServer(tmp_path, host="0.0.0.0", grpc_tls=tls).command(tmp_path)
    assert "--grpc-address=0.0.0.0" in command
    assert "--http-address=127.0.0.1" in command and "--metrics-address=127.0.0.1" in command
    chosen = TritonServer(tmp_path, host="0.0.0.0", grpc_tls=tls, metrics_host="10.1.2.3").command(tmp_path)
    assert "--metrics-address=10.1.2.3" in chosen  # an explicit choice (e.g. a Prometheus scrape address)
    plain = TritonServer(tmp_path, host="127.0.0.1").command(Path("/b"))
    assert "--http-address=127.0.0.1" in plain and "--metrics-address=127.0.0.1" in plain


def test_the_embedded_server_exposes_grpc_only_and_another_binary_all_three(tmp_path):
    """The embedded Triton 2.51 predates the 25.07 fixes of its HTTP server (chunked-encoding
    crash): on a non-loopback --host only gRPC follows; the NGC image's server is current."""
    embedded = TritonServer(tmp_path, host="0.0.0.0").command(tmp_path)
    assert "--grpc-address=0.0.0.0" in embedded
    assert "--http-address=127.0.0.1" in embedded and "--metrics-address=127.0.0.1" in embedded
    ngc = TritonServer(tmp_path, host="0.0.0.0", binary=tmp_path / "tritonserver").command(tmp_path)
    assert "--http-address=0.0.0.0" in ngc and "--metrics-address=0.0.0.0" in ngc
    asked = TritonServer(tmp_path, host="0.0.0.0", http_host="0.0.0.0").command(tmp_path)
    assert "--http-address=0.0.0.0" in asked  # an explicit choice


# --- the web page -------------------------------------------------------------------------------


def test_the_page_is_not_exposed_without_a_login(tmp_path):
    result = run("ui", "--host", "0.0.0.0", "--port", "1")
    assert result.returncode == 1 and "exposes the page to the network: give a login with --auth-file" in result.stderr
    weak = tmp_path / "auth"
    weak.write_text("alice:short\n")
    result = run("ui", "--host", "0.0.0.0", "--auth-file", weak)
    assert result.returncode == 1 and "password of at least 8 characters" in result.stderr


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "brainscan-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_the_page_asks_for_a_login_bounds_uploads_and_leaves_no_scan_behind(tmp_path):
    import http.cookiejar
    import os
    import signal
    import subprocess
    import time

    pytest.importorskip("gradio", reason="the web page needs the ui extra (make venv installs it)")
    from brainscan.serving import free_port

    (tmp_path / "auth").write_text("# the operators\nalice:correct-horse\n")
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))  # where the page's private cache goes
    page = subprocess.Popen(
        [
            str(Path(__import__("sys").executable).parent / "brainscan"),
            "ui",
            "--port",
            str(port),
            "--auth-file",
            str(tmp_path / "auth"),
            "--max-upload-mb",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except OSError:
                assert page.poll() is None and time.monotonic() < deadline, page.communicate()
                time.sleep(0.5)
        assert _status(base + "/config") == 401  # nothing but the login form without a login
        body, kind = _multipart("scan.png", bytes(1000))
        assert _status(base + "/gradio_api/upload", body, kind) == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(base + "/login", data=b"username=alice&password=correct-horse", timeout=10)
        assert opener.open(base + "/config", timeout=10).status == 200
        big, kind = _multipart("big.png", bytes(2 << 20))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(urllib.request.Request(base + "/gradio_api/upload", data=big, headers={"Content-Type": kind}))
        assert refused.value.code == 413
        cached = [p for p in tmp_path.iterdir() if p.name.startswith("brainscan-ui-")]
        assert len(cached) == 1 and cached[0].stat().st_mode & 0o077 == 0  # private to the page's user
    finally:
        page.send_signal(signal.SIGTERM)
        page.communicate(timeout=30)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("brainscan-ui-")]  # removed when the page stops


def _status(url: str, data: bytes | None = None, kind: str | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": kind} if kind else {})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_uploaded_scan_is_deleted_once_analysed_even_when_it_fails(tmp_path):
    pytest.importorskip("gradio", reason="the web page needs the ui extra (make venv installs it)")
    from brainscan.client.triton.inference import Connection
    from brainscan.client.ui import analyse_and_forget
    from brainscan.serving import free_port

    upload = tmp_path / "scan.png"
    upload.write_bytes(b"not an image at all")
    text, overlay, mask = analyse_and_forget(Connection(f"127.0.0.1:{free_port()}", retries=0), str(upload))
    assert text.startswith("Error:") and overlay is None and mask is None
    assert not upload.exists()


def test_metrics_follow_the_http_address_unless_told_otherwise(tmp_path):
    """A second server on 127.0.0.2 (its HTTP there) once bound its metrics on 127.0.0.1, where
    the first server's metrics port already was."""
    server = TritonServer(tmp_path, http_host="127.0.0.2")
    assert server.metrics_host == "127.0.0.2"
    assert "--metrics-address=127.0.0.2" in server.command(tmp_path)
    assert TritonServer(tmp_path, http_host="127.0.0.2", metrics_host="127.0.0.3").metrics_host == "127.0.0.3"
