"""What a server started by brainscan exposes: Triton's administrative APIs refused without
the admin key (HTTP and gRPC) while inference, health and metadata work; the key read from a
file only; HTTP and metrics kept on loopback when gRPC is TLS."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from brainscan import contract
from brainscan.server import GrpcTls, Ports, ServerError, TritonServer, read_admin_key
from conftest import ADMIN_KEY
from test_cli import run

ADMIN_CALLS = [  # one per restricted API group, with the method Triton's HTTP endpoint takes
    ("POST", "/v2/repository/index"),  # model-repository: would list, load and unload models
    ("GET", "/v2/systemsharedmemory/status"),  # shared-memory: register host memory regions
    ("POST", "/v2/logging"),  # logging: turn verbose logging on, redirect the log
    ("GET", "/v2/trace/setting"),  # trace
    ("GET", "/v2/models/stats"),  # statistics
]


def _http(server, method: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", method=method, headers=headers or {},
                                     data=b"{}" if method == "POST" else None)
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

    from brainscan.server import probe_image

    for path in ("/v2/health/ready", f"/v2/models/{contract.ENSEMBLE}", f"/v2/models/{contract.ENSEMBLE}/config"):
        assert _http(server, "GET", path)[0] == 200, path
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        image = grpcclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[probe_image()]], dtype=np.object_))
        assert client.infer(contract.ENSEMBLE, [image]).as_numpy(contract.MASK) is not None
        with pytest.raises(Exception, match="restricted"):
            client.get_model_repository_index()
        index = client.get_model_repository_index(headers={contract.GRPC_ADMIN_HEADER: ADMIN_KEY})
        assert {m.name for m in index.models} == {contract.ENSEMBLE, *contract.COMPOSING_MODELS}
    finally:
        client.close()


def test_without_a_key_the_admin_apis_get_one_nobody_knows(tmp_path):
    server = TritonServer(tmp_path, ports=Ports(1, 2, 3))
    other = TritonServer(tmp_path, ports=Ports(1, 2, 3))
    assert not server.admin_enabled and len(server.admin_key) >= 32 and server.admin_key != other.admin_key
    (http_flag,) = [f for f in server.command(tmp_path) if f.startswith("--http-restricted-api=")]
    assert http_flag == f"--http-restricted-api={','.join(contract.ADMIN_APIS)}:{contract.ADMIN_HEADER}={server.admin_key}"
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
