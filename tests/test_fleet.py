"""Past one machine, run here: one `brainscan predict` spread round-robin over two real
servers (on 127.0.0.1 and 127.0.0.2, the same port), surviving one of them stopping; the
connection forms a user gives (a list, a DNS name) and the ones refused."""

from __future__ import annotations

import json

import pytest
from conftest import encode, predict_until
from test_cli import run
from test_preprocessing import brain_like

from brainscan import contract
from brainscan.client.triton.inference import Connection

pytestmark = pytest.mark.server


def test_the_forms_of_url_a_user_gives():
    one = Connection("127.0.0.1:9001")
    assert not one.balanced and one.grpc_target == "127.0.0.1:9001"
    two = Connection("127.0.0.1:9001, 127.0.0.2:9001")
    assert two.balanced and two.servers == ["127.0.0.1:9001", "127.0.0.2:9001"]
    assert two.grpc_target == "ipv4:127.0.0.1:9001,127.0.0.2:9001"
    assert Connection("localhost:9001,127.0.0.2:9002").grpc_target == "ipv4:127.0.0.1:9001,127.0.0.2:9002"
    name = Connection("dns:///brainscan-grpc.serving.svc.cluster.local:8001")
    assert name.balanced and name.grpc_target == "dns:///brainscan-grpc.serving.svc.cluster.local:8001"
    with pytest.raises(ValueError, match="needs --protocol grpc"):
        Connection("127.0.0.1:8000,127.0.0.2:8000", protocol="http")
    with pytest.raises(ValueError, match="is not host:port"):
        Connection("127.0.0.1:8001,127.0.0.2")
    with pytest.raises(ValueError, match="without a scheme"):
        Connection("http://127.0.0.1:8000")


@pytest.fixture
def two_servers(local_repository, tmp_path):
    from brainscan.serving import Ports, TritonServer, free_port

    port = free_port()
    servers = [
        TritonServer(
            local_repository,
            host=host,
            ports=Ports(port, free_port(host), free_port(host)),
            log_file=tmp_path / f"{host}.log",
        )
        for host in ("127.0.0.1", "127.0.0.2")
    ]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready()
        yield servers, port
    finally:
        for server in servers:
            server.stop()


def _answered(server, port: int) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"{server.host}:{port}")
    try:
        stats = client.get_inference_statistics(contract.ENSEMBLE, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def test_one_run_is_spread_over_two_servers_and_survives_one_stopping(two_servers, tmp_path):
    servers, port = two_servers
    url = f"127.0.0.1:{port},127.0.0.2:{port}"
    health = run("health", "--url", url)
    assert health.returncode == 0 and health.stdout.count("ready=True") == 2, health.stdout
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(240):
        (folder / f"slice_{k:03d}.png").write_bytes(encode(brain_like(160, 160, seed=k), "PNG"))
    out = tmp_path / "out"
    client = predict_until(out, 60, folder, url=url, concurrency=4)
    shares = [_answered(s, port) for s in servers]
    print(f"answered by 127.0.0.1 and 127.0.0.2 after {sum(shares)} outputs: {shares}")
    assert all(share > 10 for share in shares), shares  # both took their part of the run
    servers[1].stop()  # one replica goes away mid-run
    assert client.poll() is None, "the run finished before the replica stopped: make it longer"
    stdout, stderr = client.communicate(timeout=300)
    assert client.returncode == 0, stderr
    reported = [json.loads(line)["file"] for line in stdout.splitlines()]
    assert sorted(reported) == sorted(str(p) for p in folder.iterdir())  # each input once, none lost
    assert len(list(out.glob("*.mask.png"))) == 240
    print(f"after 127.0.0.2 stopped, 127.0.0.1 answered {_answered(servers[0], port) - shares[0]} more")
    assert _answered(servers[0], port) > shares[0]  # the rest went to the replica still up
