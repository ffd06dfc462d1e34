"""The soak report and the load runs of `make soak` (tests/test_soak.py): a flood of mixed
good, huge and broken images, and a long run of 10 000 requests."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainscan import contract


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
