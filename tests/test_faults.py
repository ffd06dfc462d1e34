"""Faults a deployment meets, against real servers on loopback: a python stub killed the way
the OOM killer kills it (the watchdog restarts the server, the run loses nothing), `brainscan
serve` killed or hung up on (nothing outlives it, the next one starts), and the watchdog's
own rules (what restarts, what is only load, when it gives up)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BRAINSCAN, encode, predict_until, serve_command
from test_cli import run
from test_preprocessing import brain_like

from brainscan.serving import Ports, ServerError, Watchdog, free_port
from brainscan.triton_errors import classify

pytestmark = pytest.mark.server


def processes(*fragments: str) -> list[int]:
    """Pids of processes whose command line holds every fragment."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(fragment in cmdline for fragment in fragments):
            found.append(int(pid))
    return found


class Serve:
    """`brainscan serve` as a subprocess on a private copy of a repository and free ports;
    ends it (by pid) whatever happens in the test."""

    def __init__(self, repository: Path, folder: Path, *options: str, ports: tuple[int, int, int] | None = None):
        self.repository = Path(shutil.copytree(repository, folder / "repository")).resolve()
        self.grpc, self.http, self.metrics = ports or (free_port(), free_port(), free_port())
        self.log = folder / "tritonserver.log"
        self.command = serve_command(self.repository, Ports(self.grpc, self.http, self.metrics), self.log, *options)
        self.process: subprocess.Popen | None = None

    def start(self) -> Serve:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run("health", "--url", f"127.0.0.1:{self.grpc}", "--wait", "120").returncode == 0, self.stop()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr

    def server_processes(self) -> list[int]:
        return processes("tritonserver", f"--grpc-port={self.grpc}") + processes(
            "triton_python_backend_stub", str(self.repository)
        )


def slices(folder: Path, count: int) -> Path:
    folder.mkdir()
    for k in range(count):
        (folder / f"slice_{k:03d}.png").write_bytes(encode(brain_like(192, 192, seed=k), "PNG"))
    return folder


def test_a_killed_stub_is_restarted_by_the_watchdog_and_the_run_loses_nothing(local_repository, tmp_path):
    serve = Serve(local_repository, tmp_path, "--watchdog-interval", "1").start()
    try:
        inputs, out = slices(tmp_path / "slices", 300), tmp_path / "out"
        client = predict_until(out, 5, inputs, url=f"127.0.0.1:{serve.grpc}", concurrency=2)
        (stub,) = processes("triton_python_backend_stub", str(serve.repository / "preprocess"))
        os.kill(stub, signal.SIGKILL)  # what the OOM killer does
        assert client.poll() is None, "the run finished before the stub died: make it longer"
        stdout, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr
        reported = [json.loads(line)["file"] for line in stdout.splitlines()]
        assert sorted(reported) == sorted(str(p) for p in inputs.iterdir())  # each input once, none lost
        assert len(list(out.glob("*.mask.png"))) == len(list(out.glob("*.overlay.png"))) == 300
        assert json.loads((out / "failures.json").read_text())["failures"] == []
        assert run("health", "--url", f"127.0.0.1:{serve.grpc}").returncode == 0
    finally:
        log = serve.stop()
    assert "watchdog: restarting tritonserver" in log and "is not healthy" in log
    assert "ready again after" in log


def test_a_killed_serve_takes_its_server_along_and_the_next_serve_starts(local_repository, tmp_path):
    serve = Serve(local_repository, tmp_path).start()
    try:
        assert serve.server_processes()
        serve.process.kill()  # SIGKILL: no handler runs
        deadline = time.monotonic() + 15
        while serve.server_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not serve.server_processes()  # tritonserver and its stubs are gone, ports free
    finally:
        serve.stop()
        for pid in serve.server_processes():  # (only if the test failed)
            os.kill(pid, signal.SIGKILL)
    (tmp_path / "again").mkdir()
    again = Serve(local_repository, tmp_path / "again", ports=(serve.grpc, serve.http, serve.metrics))
    try:
        again.start()
    finally:
        log = again.stop()
    assert "stopped" in log


def test_a_hangup_stops_serve_cleanly(local_repository, tmp_path):
    serve = Serve(local_repository, tmp_path).start()
    log = serve.stop(signal.SIGHUP)  # the SSH session that ran it went away
    assert serve.process.returncode == 0 and "stopped" in log
    deadline = time.monotonic() + 10
    while serve.server_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not serve.server_processes()


# --- the watchdog's rules, on a server whose answers are scripted ----------------------------


class ScriptedServer:
    """Answers the watchdog's probes from a list; counts restarts."""

    def __init__(self, answers: list[str | None]):
        self.answers, self.restarts = list(answers), 0
        self.process = subprocess.Popen(["sleep", "60"])

    def probe(self, timeout: float) -> str | None:
        return self.answers.pop(0) if self.answers else None

    def restart(self) -> None:
        self.restarts += 1

    def log_report(self) -> str:
        return "(log)"


@pytest.mark.parametrize(
    "message,kind",
    [
        (None, "ok"),
        ("[500] in ensemble 'brainscan', Stub process 'preprocess_0_0' is not healthy.", "fatal"),
        ("in ensemble 'brainscan', Exceeds maximum queue size", "busy"),
        ("timed out", "timeout"),
        ("[Errno 111] Connection refused", "unreachable"),  # the watchdog counts it as an error
        ("the probe image came back with a mask of shape (1, 2)", "error"),
    ],
)
def test_probe_answers_are_classified(message, kind):
    assert classify(message) == kind


def test_a_dead_stub_restarts_at_once_but_load_never_does():
    stub = "Stub process 'preprocess_0_0' is not healthy."
    queue = "Exceeds maximum queue size"
    server = ScriptedServer(
        [stub, None, queue, queue, queue, queue, queue, queue, queue, "refused", None, "refused", "refused"]
    )
    try:
        watchdog = Watchdog(server, interval=0.01, failures=2, log=lambda _: None)
        watchdog.run(stop=lambda: not server.answers)
    finally:
        server.process.kill()
    # one restart for the dead stub, none for the load, one for two refusals in a row
    assert server.restarts == 2


def test_a_crash_loop_gives_up_so_an_outer_supervisor_takes_over():
    stub = "Stub process 'preprocess_0_0' is not healthy."
    server = ScriptedServer([stub] * 10)
    try:
        with pytest.raises(ServerError, match=r"failed 4 times within .* giving up"):
            Watchdog(server, interval=0.01, max_restarts=3, log=lambda _: None).run(stop=lambda: not server.answers)
    finally:
        server.process.kill()
    assert server.restarts == 3


# --- the client: any input's failure is that input's, never the run's ---------------------------


def test_malformed_dicoms_beside_a_good_image_end_the_run_with_the_good_one_done(server, tmp_path):
    """Both files hung `brainscan predict` before (its input preparation died): now each is
    one failure with its reason, and the PNG beside them is answered."""
    import pydicom
    from pydicom.sequence import Sequence
    from test_volumes import twelve_bit_slices
    from volume_files import write_dicom_series, write_multiframe_dicom

    folder = tmp_path / "in"
    (folder / "enhanced").mkdir(parents=True)
    write_multiframe_dicom(folder / "enhanced" / "frames.dcm", twelve_bit_slices(count=3))
    ds = pydicom.dcmread(str(folder / "enhanced" / "frames.dcm"))
    ds.SharedFunctionalGroupsSequence = Sequence([])
    ds.save_as(str(folder / "enhanced" / "frames.dcm"))
    write_dicom_series(folder / "slope", twelve_bit_slices(count=3))
    first = sorted((folder / "slope").iterdir())[0]
    ds = pydicom.dcmread(str(first))
    ds.RescaleSlope = [1, 2]
    ds.save_as(str(first))
    (folder / "good.png").write_bytes(encode(brain_like(), "PNG"))
    result = run(
        "predict", folder, "--url", server.grpc_url, "--out", tmp_path / "out", "--format", "json", timeout=120
    )
    assert result.returncode == 1, result.stderr
    done = [json.loads(line) for line in result.stdout.splitlines() if "probability" in line]
    assert [Path(r["file"]).name for r in done] == ["good.png"]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())["failures"]
    reasons = " | ".join(f["error"] for f in failures)
    assert (
        len(failures) == 2
        and "ImageOrientationPatient is missing" in reasons
        and "RescaleSlope must hold one number" in reasons
    )
    assert all(f["status"] == "READ" for f in failures)


def test_an_unexpected_error_while_reading_fails_that_input_only(server, tmp_path, monkeypatch):
    import asyncio

    from brainscan.client.batch import engine as batch
    from brainscan.client.imaging.files import collect_inputs
    from brainscan.client.triton.inference import Connection

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(encode(brain_like(seed=ord(name)), "PNG"))
    real = batch._prepare

    def flaky(job, *args):
        if job.input.path.name == "b.png":
            raise KeyError("a bug in a reader")
        real(job, *args)

    monkeypatch.setattr(batch, "_prepare", flaky)
    inputs, _, _ = collect_inputs([tmp_path])
    outcomes = asyncio.run(
        asyncio.wait_for(
            batch.run_inputs(inputs, Connection(server.grpc_url), batch.RunOptions(), report=lambda _: None), 60
        )
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].status == "READ" and "cannot read it (KeyError: 'a bug in a reader')" in outcomes[1].error


def test_a_full_disk_under_out_fails_the_inputs_cleanly(server, tmp_path):
    """Writes past a file-size limit fail like a full disk (EFBIG instead of ENOSPC): every
    input is reported with the reason, the exit code is 1 and no temporary file is left."""
    import resource

    inputs = slices(tmp_path / "in", 4)
    out = tmp_path / "out"
    out.mkdir()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(
        [BRAINSCAN, "predict", str(inputs), "--url", server.grpc_url, "--out", str(out), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert result.returncode == 1
    assert result.stdout.count("cannot write the outputs: File too large") == 4
    assert "Traceback" not in result.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written temporary file


def test_ports_handed_out_are_never_repeated_and_stay_clear_of_the_ephemeral_range():
    from brainscan.serving.ports import _ephemeral_range

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert max(ports) < _ephemeral_range()[0]  # no outgoing connection can take one before its server binds it


@pytest.mark.server
def test_a_server_whose_chosen_port_was_taken_meanwhile_starts_on_others(local_repository, tmp_path):
    """The race free_port cannot close alone: between choosing and binding, someone else
    binds the port. A server whose ports it chose itself (Ports.free) picks others."""
    import socket

    from brainscan.serving import Ports, TritonServer

    ports = Ports.free()
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", ports.grpc))
        thief.listen()
        with TritonServer(local_repository, ports=ports, log_file=tmp_path / "log") as server:
            assert server.ports.grpc != ports.grpc
            assert server.probe() is None


def test_a_failing_test_leaves_no_process_behind(pytester):
    """conftest ends what a test body started, passed or failed (here: a test that starts a
    process and then fails)."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    marker = pytester.path / "started.pid"
    pytester.makepyfile(f"""
import subprocess
def test_fails_with_a_child_running():
    child = subprocess.Popen(["sleep", "300"])
    open({str(marker)!r}, "w").write(str(child.pid))
    assert False
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_the_tests_cannot_reach_the_network():
    import socket

    with pytest.raises(OSError, match="may not reach the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed
    with socket.socket() as listener:  # loopback stays open
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        socket.create_connection(listener.getsockname(), timeout=5).close()
