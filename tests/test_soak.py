"""`make soak`: load, long-run and fault runs against servers started here on loopback, each
with a pass criterion; the figures go to benchmarks/results/<date>-soak/soak.md and
soak.json. Not part of `make test` (marker `soak`, deselected by default): they take
minutes. They run on the demo's networks (BRAINSCAN_SOAK_REPOSITORY, BRAINSCAN_SOAK_DATA).

- flood: 60 s at concurrency 64 mixing images at the pixel limit, normal slices and broken
  files; normal requests must be answered or refused within seconds (never stall), the
  server's memory must stay bounded, and latency must come back within seconds after.
- long run: 10 000 requests; the server's memory may not grow by 10 % after warm-up.
- faults: one `brainscan predict` run of 1500 slices while a python stub is killed twice and
  then `brainscan serve` itself is killed and started again: no input lost or written
  twice, no process left behind.
- hostile files under an address-space limit (prlimit): malformed DICOMs, a deflate bomb,
  a NIfTI claiming billions of voxels, odd images; each is one clear failure and the good
  files beside them finish.

Everything runs on 127.0.0.1, is bounded in count and time, and ends only the processes it
started, by pid.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytest
from test_faults import processes

from brainscan import contract

pytestmark = [pytest.mark.soak, pytest.mark.server]
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Check:
    name: str
    value: str
    criterion: str
    passed: bool


@dataclass
class SoakReport:
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def add(self, name: str, value: str, criterion: str, passed: bool) -> None:
        self.checks.append(Check(name, value, criterion, bool(passed)))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def markdown(self) -> str:
        rows = [("run", "measured", "criterion", "verdict")]
        rows += [(c.name, c.value, c.criterion, "pass" if c.passed else "FAIL") for c in self.checks]
        md = ["| " + " | ".join(r) + " |" for r in rows]
        md.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(
            [
                "# Soak and fault runs",
                "",
                *md,
                "",
                "Figures:",
                "",
                "```json",
                json.dumps(self.figures, indent=2),
                "```",
                "",
            ]
        )


# --- inputs ---------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def normal_images(files: list[Path], count: int = 32) -> list[bytes]:
    return [f.read_bytes() for f in files[:count]]


def huge_image() -> bytes:
    """A slice at the pixel limit (4096 x 4096), textured so it is not trivially compressible."""
    side = int(contract.MAX_IMAGE_PIXELS**0.5)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    return _png(((np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 120).astype(np.uint8))


def broken_images() -> list[bytes]:
    good = _png(np.full((64, 64), 100, np.uint8))
    return [b"", b"not an image", good[: len(good) // 2], b"8BPS\x00\x01" + bytes(20)]


# --- the server's footprint ------------------------------------------------------------------


def session_rss(leader: int) -> int:
    """Resident bytes of every process in the session of ``leader`` (tritonserver + stubs)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader:  # session id
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


# --- load ----------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # normal, huge, broken
    started: float
    seconds: float
    outcome: str  # ok, refused (UNAVAILABLE: queue full / timed out), invalid, error


async def _one(client, kind: str, data: bytes, timeout: float) -> Result:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    image = aioclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    started = time.monotonic()
    try:
        await client.infer(contract.ENSEMBLE, [image], client_timeout=timeout)
        outcome = "ok"
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        outcome = (
            "invalid"
            if "INVALID_ARGUMENT" in status
            else "refused"
            if "UNAVAILABLE" in status or "maximum queue size" in str(exc).lower()
            else "timeout"
            if "DEADLINE" in status
            else "error"
        )
    return Result(kind, started, time.monotonic() - started, outcome)


async def load(
    url: str, seconds: float, concurrency: int, mix: list[tuple[str, bytes]], timeout: float = 60.0
) -> list[Result]:
    """``concurrency`` workers send from ``mix`` round-robin for ``seconds``."""
    import tritonclient.grpc.aio as aioclient

    limit = 2**31 - 1
    client = aioclient.InferenceServerClient(
        url, channel_args=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    )
    results: list[Result] = []
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        k = offset
        while time.monotonic() < deadline:
            kind, data = mix[k % len(mix)]
            results.append(await _one(client, kind, data, timeout))
            k += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        await client.close()
    return results


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- the runs ------------------------------------------------------------------------------


def flood(server, files: list[Path], report: SoakReport, seconds: float = 60.0, concurrency: int = 64) -> None:
    normal = normal_images(files)
    baseline = asyncio.run(load(server.grpc_url, 5.0, 2, [("normal", d) for d in normal]))
    base_p50 = _percentile([r.seconds for r in baseline if r.outcome == "ok"], 50)
    rss_before = session_rss(server.process.pid)
    mix = [("huge", huge_image())] + [("normal", d) for d in normal[:6]] + [("broken", b) for b in broken_images()[:1]]
    samples: list[int] = []

    async def sampled():
        task = asyncio.create_task(load(server.grpc_url, seconds, concurrency, mix))
        while not task.done():
            samples.append(session_rss(server.process.pid))
            await asyncio.sleep(1.0)
        return await task

    during = asyncio.run(sampled())
    after = asyncio.run(load(server.grpc_url, 10.0, 2, [("normal", d) for d in normal]))
    normal_during = [r for r in during if r.kind == "normal"]
    answered = [r for r in normal_during if r.outcome in ("ok", "refused")]
    slowest = max((r.seconds for r in normal_during), default=float("nan"))
    first = after[0].started if after else 0.0
    recovered = [r for r in after if r.outcome == "ok" and r.started - first > 5.0]
    p50_after = _percentile([r.seconds for r in recovered], 50)
    counts = {
        kind: {
            o: sum(1 for r in during if r.kind == kind and r.outcome == o)
            for o in ("ok", "refused", "invalid", "timeout", "error")
        }
        for kind in ("normal", "huge", "broken")
    }
    report.figures["flood"] = {
        "seconds": seconds,
        "concurrency": concurrency,
        "requests": len(during),
        "outcomes": counts,
        "normal_p50_s": _percentile([r.seconds for r in normal_during if r.outcome == "ok"], 50),
        "normal_p99_s": _percentile([r.seconds for r in normal_during], 99),
        "normal_slowest_s": slowest,
        "baseline_p50_s": base_p50,
        "p50_after_s": p50_after,
        "server_rss_mb_before": rss_before / 2**20,
        "server_rss_mb_max": max(samples, default=0) / 2**20,
    }
    limit = contract.QUEUE_TIMEOUT_MS / 1000 + 15
    report.add(
        "flood: normal requests answered or refused",
        f"{len(answered)} of {len(normal_during)}",
        "all (no stall, no internal error)",
        len(answered) == len(normal_during) and normal_during,
    )
    report.add(
        "flood: slowest normal request",
        f"{slowest:.1f} s",
        f"<= {limit:.0f} s (queue timeout + 15 s)",
        slowest <= limit,
    )
    report.add(
        "flood: server memory, max",
        f"{max(samples, default=0) / 2**20:.0f} MB (from {rss_before / 2**20:.0f})",
        "<= 4096 MB",
        max(samples, default=0) <= 4 * 2**30,
    )
    report.add(
        "flood: latency 5-15 s after",
        f"p50 {p50_after * 1000:.0f} ms (before {base_p50 * 1000:.0f} ms)",
        "<= 2 x before + 50 ms",
        p50_after <= 2 * base_p50 + 0.05,
    )
    report.add(
        "flood: broken files",
        f"{counts['broken']['invalid']} INVALID_ARGUMENT, {counts['broken']['error']} other",
        "all refused as invalid",
        counts["broken"]["error"] == 0 and counts["broken"]["invalid"] > 0,
    )


def long_run(server, files: list[Path], report: SoakReport, requests: int = 10_000, concurrency: int = 8) -> None:
    normal = normal_images(files)

    async def counted():
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(server.grpc_url)
        results, sizes = [], []
        queue = asyncio.Queue()
        for k in range(requests):
            queue.put_nowait(normal[k % len(normal)])

        async def worker():
            while not queue.empty():
                data = queue.get_nowait()
                results.append(await _one(client, "normal", data, 60.0))
                if len(results) in (requests // 10, requests):
                    sizes.append(session_rss(server.process.pid))

        started = time.monotonic()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await client.close()
        return results, sizes, time.monotonic() - started

    results, sizes, elapsed = asyncio.run(counted())
    ok = sum(r.outcome == "ok" for r in results)
    growth = (sizes[-1] - sizes[0]) / sizes[0] if len(sizes) == 2 and sizes[0] else float("nan")
    report.figures["long_run"] = {
        "requests": requests,
        "ok": ok,
        "seconds": elapsed,
        "images_per_s": requests / elapsed,
        "rss_mb_after_warmup": sizes[0] / 2**20 if sizes else None,
        "rss_mb_end": sizes[-1] / 2**20 if sizes else None,
        "rss_growth": growth,
    }
    report.add(
        f"long run: {requests} requests",
        f"{ok} ok in {elapsed:.0f} s ({requests / elapsed:.0f} images/s)",
        "all ok",
        ok == requests,
    )
    report.add("long run: memory growth after warm-up", f"{growth * 100:+.1f} %", "< 10 %", growth < 0.10)


def faults(repository: Path, files: list[Path], report: SoakReport, work: Path) -> None:
    """Kill a stub twice, then `brainscan serve` itself, under one `brainscan predict` run."""
    from brainscan.serving import free_port

    brainscan = str(Path(sys.executable).parent / "brainscan")
    copy = Path(shutil.copytree(repository, work / "repository")).resolve()
    ports = [str(free_port()) for _ in range(3)]
    serve_command = [
        brainscan,
        "serve",
        "--repository",
        str(copy),
        "--grpc-port",
        ports[0],
        "--http-port",
        ports[1],
        "--metrics-port",
        ports[2],
        "--watchdog-interval",
        "1",
        "--log-file",
        str(work / "serve.log"),
    ]
    inputs = work / "inputs"
    inputs.mkdir()
    for k in range(1500):
        shutil.copyfile(files[k % len(files)], inputs / f"slice_{k:04d}{files[k % len(files)].suffix}")
    out = work / "out"
    events = []
    serve = subprocess.Popen(serve_command, stdout=subprocess.DEVNULL, stderr=open(work / "serve.err", "w"))
    try:
        subprocess.run(
            [brainscan, "health", "--url", f"127.0.0.1:{ports[0]}", "--wait", "120"], check=True, capture_output=True
        )
        predict = subprocess.Popen(
            [
                brainscan,
                "predict",
                str(inputs),
                "--url",
                f"127.0.0.1:{ports[0]}",
                "--out",
                str(out),
                "--format",
                "json",
                "--concurrency",
                "4",
                "--retries",
                "12",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        for when, what in ((4, "stub"), (20, "stub"), (36, "serve")):
            while time.monotonic() - started < when and predict.poll() is None:
                time.sleep(0.2)
            if predict.poll() is not None:
                break
            if what == "stub":
                stubs = processes("triton_python_backend_stub", str(copy / "segmenter"))
                if stubs:
                    os.kill(stubs[0], signal.SIGKILL)
                    events.append(f"{time.monotonic() - started:.0f} s: kill -9 segmenter stub")
            else:
                serve.kill()
                serve.wait()
                events.append(f"{time.monotonic() - started:.0f} s: kill -9 brainscan serve")
                time.sleep(3)
                left = processes("tritonserver", f"--grpc-port={ports[0]}") + processes(
                    "triton_python_backend_stub", str(copy)
                )
                report.figures["orphans_after_serve_killed"] = len(left)
                for pid in left:
                    os.kill(pid, signal.SIGKILL)
                serve = subprocess.Popen(
                    serve_command, stdout=subprocess.DEVNULL, stderr=open(work / "serve2.err", "w")
                )
                events.append(f"{time.monotonic() - started:.0f} s: brainscan serve started again")
        stdout, stderr = predict.communicate(timeout=900)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    reported = [json.loads(line)["file"] for line in stdout.splitlines() if line.strip()]
    masks = len(list(out.glob("*.mask.png")))
    report.figures["faults"] = {
        "inputs": 1500,
        "exit": predict.returncode,
        "reported": len(reported),
        "distinct": len(set(reported)),
        "masks": masks,
        "events": events,
        "watchdog": [line for line in (work / "serve.err").read_text().splitlines() if "watchdog" in line],
    }
    report.add(
        "faults: 2 stubs killed, serve killed and restarted",
        f"{masks} of 1500 outputs, exit {predict.returncode}",
        "1500 outputs, each input once, exit 0",
        predict.returncode == 0 and masks == 1500 and len(reported) == len(set(reported)) == 1500,
    )
    report.add(
        "faults: processes left after kill -9 of serve",
        str(report.figures.get("orphans_after_serve_killed")),
        "0",
        report.figures.get("orphans_after_serve_killed") == 0,
    )


def hostile_files(server, files: list[Path], report: SoakReport, work: Path, address_space_gb: int = 4) -> None:
    """Malformed and oversized files beside good ones, `brainscan predict` under prlimit --as."""
    folder = work / "hostile"
    folder.mkdir()
    made = write_hostile_files(folder)
    for k, source in enumerate(files[:5]):
        shutil.copyfile(source, folder / f"good_{k}{source.suffix}")
    brainscan = str(Path(sys.executable).parent / "brainscan")
    if not shutil.which("prlimit"):
        report.add("hostile files", "prlimit missing", "prlimit (util-linux) present", False)
        return
    started = time.monotonic()
    # formats a folder walk does not pick up by their suffix are named on the command line
    odd = [str(p) for p in sorted(folder.iterdir()) if p.suffix in (".webp", ".mpo", ".psd")]
    result = subprocess.run(
        [
            "prlimit",
            f"--as={address_space_gb << 30}",
            brainscan,
            "predict",
            str(folder),
            *odd,
            "--url",
            server.grpc_url,
            "--out",
            str(work / "hostile-out"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    failures = json.loads((work / "hostile-out" / "failures.json").read_text())["failures"]
    good = len(list((work / "hostile-out").glob("good_*.mask.png")))
    report.figures["hostile"] = {
        "files": made,
        "address_space_gb": address_space_gb,
        "seconds": elapsed,
        "exit": result.returncode,
        "good_done": good,
        "failures": [
            {"file": Path(f["file"]).name, "status": f["status"], "error": f["error"][-160:]} for f in failures
        ],
    }
    report.add(
        f"hostile files under prlimit --as={address_space_gb}G",
        f"{len(failures)} failures named, {good} of 5 good done, exit {result.returncode}, {elapsed:.0f} s",
        "every hostile file one failure, every good file done, exit 1, no traceback",
        good == 5 and len(failures) == len(made) and result.returncode == 1 and "Traceback" not in result.stderr,
    )


def write_hostile_files(folder: Path) -> list[str]:
    """The files the README's table lists, written here."""
    import nibabel
    import pydicom
    from PIL import Image
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from volume_files import write_dicom_series, write_multiframe_dicom

    slices = [np.full((48, 40), 100 + k, np.uint16) for k in range(3)]
    (folder / "enhanced").mkdir()
    write_multiframe_dicom(folder / "enhanced" / "empty-groups.dcm", slices)
    ds = pydicom.dcmread(str(folder / "enhanced" / "empty-groups.dcm"))
    ds.SharedFunctionalGroupsSequence = Sequence([])
    ds.save_as(str(folder / "enhanced" / "empty-groups.dcm"))
    write_dicom_series(folder / "slope", slices)
    first = sorted((folder / "slope").iterdir())[0]
    ds = pydicom.dcmread(str(first))
    ds.RescaleSlope = [1, 2]
    ds.save_as(str(first))
    write_dicom_series(folder / "bomb", slices[:1])
    (source,) = sorted((folder / "bomb").iterdir())
    ds = pydicom.dcmread(str(source))
    ds.add_new(0x00091010, "OB", bytes(contract.MAX_INFLATED_DICOM_BYTES + (64 << 20)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(str(source), enforce_file_format=True)
    header = nibabel.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))
    header.set_data_dtype(np.int16)
    (folder / "claims-4G-voxels.nii").write_bytes(header.binaryblock + bytes(4) + bytes(256))
    pixels = np.full((64, 64), 100, np.float32)
    pixels[3, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(folder / "nan.tiff")
    pages = [Image.fromarray(np.full((64, 64), 80 + k, np.uint8)) for k in range(3)]
    pages[0].save(folder / "pages.tiff", save_all=True, append_images=pages[1:])
    pages[0].convert("RGB").save(folder / "photo.webp")
    pages[0].convert("RGB").save(
        folder / "stereo.mpo", format="MPO", save_all=True, append_images=[p.convert("RGB") for p in pages[1:]]
    )
    (folder / "layers.psd").write_bytes(b"8BPS\x00\x01" + bytes(40))
    return [
        "enhanced DICOM, empty functional groups",
        "DICOM with RescaleSlope 1\\2",
        f"deflated DICOM inflating to {(contract.MAX_INFLATED_DICOM_BYTES >> 20) + 64} MB",
        "NIfTI header claiming 2048x2048x1024",
        "float TIFF with NaN",
        "3-page TIFF",
        "WebP",
        "MPO",
        "PSD",
    ]


# --- the runs as tests, sharing one server and one report --------------------------------------


def _soak_inputs() -> tuple[Path, list[Path]]:
    repository = Path(os.environ.get("BRAINSCAN_SOAK_REPOSITORY", ""))
    data = Path(os.environ.get("BRAINSCAN_SOAK_DATA", ""))
    if not (repository / "brainscan" / "config.pbtxt").exists() or not data.is_dir():
        pytest.skip(
            reason="set BRAINSCAN_SOAK_REPOSITORY and BRAINSCAN_SOAK_DATA (`make soak` does, after `make demo`)"
        )
    files = sorted(p for p in data.rglob("*.tif") if not p.stem.endswith("_mask"))
    return repository, files


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """The demo repository served on loopback, its slices, a scratch folder and the report;
    the report is written when the module's runs are done (passed or not)."""
    from brainscan.serving import Ports, TritonServer

    repository, files = _soak_inputs()
    work = tmp_path_factory.mktemp("soak")
    report = SoakReport()
    ports = Ports.free()
    with TritonServer(repository, ports=ports, log_file=work / "tritonserver.log") as server:
        yield server, repository, files, work, report
    folder = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-soak"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak.json").write_text(
        json.dumps(
            {"passed": report.passed, "checks": [asdict(c) for c in report.checks], "figures": report.figures}, indent=2
        )
        + "\n"
    )
    (folder / "soak.md").write_text(report.markdown())


def _assert(report: SoakReport, prefix: str) -> None:
    failed = [c for c in report.checks if c.name.startswith(prefix) and not c.passed]
    assert not failed, failed


def test_a_flood_is_refused_fast_with_bounded_memory_and_latency_recovers(soak):
    server, _, files, _, report = soak
    flood(server, files, report)
    _assert(report, "flood")


def test_ten_thousand_requests_do_not_grow_the_server(soak):
    server, _, files, _, report = soak
    long_run(server, files, report)
    _assert(report, "long run")


def test_hostile_files_fail_alone_under_an_address_space_limit(soak):
    server, _, files, work, report = soak
    hostile_files(server, files, report, work)
    _assert(report, "hostile")


def test_killed_stubs_and_a_killed_serve_lose_nothing(soak):
    _, repository, files, work, report = soak
    faults(repository, files, report, work)
    _assert(report, "faults")
