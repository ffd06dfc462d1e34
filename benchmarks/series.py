"""A series' CPU cost outside the networks, the PNG path against the pixels path in one run
(`brainscan bench ceiling` measures it beside the ensemble's ceiling).

The networks are free ones (``free_networks.write_free_network``), served by the embedded Triton
on loopback with both ensembles. One volume's axial slices are sent by the kit's client as
`brainscan predict` sends them: one 16-bit PNG per slice through ``brainscan`` (encoded
here, decoded by the python ``preprocess`` there), or raw, up to the server's batch per
request, through ``brainscan_pixels``: over the socket, or through system shared memory
(``--shared-memory``, the server started with an admin key). The CPU time of this process (encoding, sending,
gRPC) and of the server's processes (tritonserver, each python stub, read from /proc) is
divided by the slices: CPU ms per slice, the client's work counted.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.errors import BrainscanError

PATHS = ("png", "pixels", "pixels-shm")  # the last: the pixels path through system shared memory
CONCURRENCY = 4  # requests in flight, as predict's default


class SeriesMeasurementError(BrainscanError, RuntimeError):
    """A path answered fewer slices than it was sent: its figures would measure something else."""


@dataclass
class SeriesCost:
    path: str
    slices: int
    seconds: float
    client_ms: float  # CPU ms per slice of this process: encoding, tensors, gRPC
    server_ms: dict[str, float]  # CPU ms per slice of each server process (tritonserver, python stubs)

    @property
    def outside_networks_ms(self) -> float:
        """The client's and the server's CPU per slice, but for the networks' own processes."""
        outside = sum(ms for step, ms in self.server_ms.items() if step not in contract.NETWORKS)
        return self.client_ms + outside

    def as_dict(self) -> dict:
        return {**self.__dict__, "outside_networks_ms": self.outside_networks_ms}


def series_stack(files: list[Path], slices: int) -> np.ndarray:
    """A volume's axial stack, uint16 [slices, H, W], from grey image files of one size
    (repeated in order until there are ``slices``); the values scaled into 16 bits as a
    volume's are."""
    from brainscan.preprocessing import decode_image

    images = [decode_image(Path(f).read_bytes()) for f in files]
    images = [i if i.ndim == 2 else i.max(axis=2) for i in images]
    shape = images[0].shape
    same = [i for i in images if i.shape == shape]
    stack = np.stack([same[k % len(same)] for k in range(slices)]).astype(np.float64)
    return np.rint(stack * (65535.0 / max(float(stack.max()), 1.0))).astype(np.uint16)


async def _send(url: str, path: str, stack: np.ndarray, key_file: Path) -> int:
    """Every slice of ``stack`` through ``path``, CONCURRENCY requests in flight; the number answered."""
    from brainscan.client.imaging.volumes import encode_png16
    from brainscan.client.triton.inference import AsyncBrainscanClient, Connection

    gate = asyncio.Semaphore(CONCURRENCY)
    shared = path == "pixels-shm"
    async with AsyncBrainscanClient(Connection(url, shared_memory=shared, admin_key_file=key_file)) as client:
        batch = await client.pixels_batch_size()

        async def one(call):
            async with gate:
                return len(await call())

        if path == "png":
            calls = [lambda s=s: asyncio.gather(client.infer(encode_png16(s))) for s in stack]
        else:
            calls = [
                lambda k=k: client.infer_pixels(stack[k : k + batch, :, :, None]) for k in range(0, len(stack), batch)
            ]
        return sum(await asyncio.gather(*(one(call) for call in calls)))


def measure_series(raw: Path, files: list[Path], slices: int = 160, log=print, **options) -> list[SeriesCost]:
    """Every path on one server of free networks, the PNG path first, each after a warm-up
    (``options``: of the local repository, e.g. max_batch_size)."""
    from brainscan.benchmarks.free_networks import cpu_by_step, write_free_network
    from brainscan.export.repository import write_repository
    from brainscan.serving import Ports, TritonServer

    stack = series_stack(files, slices)
    networks = {n: write_free_network(raw / f"free-{n}-series.onnx", n, "in-graph") for n in contract.NETWORKS}
    repository = write_repository(
        raw / "repository-series",
        contract.Flavour.LOCAL,
        networks[contract.CLASSIFIER],
        networks[contract.SEGMENTER],
        **options,
    ).resolve()
    ports = Ports.free()
    costs = []
    key = secrets.token_urlsafe(32)  # the shared-memory API needs the server's admin key
    key_file = raw / "admin.key"
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    with TritonServer(repository, ports=ports, log_file=raw / "tritonserver-series.log", admin_key=key) as server:
        for path in PATHS:
            asyncio.run(_send(server.grpc_url, path, stack[: 2 * contract.MAX_BATCH_SIZE], key_file))  # warm-up
            before, client_before, started = cpu_by_step(repository, ports.grpc), time.process_time(), time.time()
            answered = asyncio.run(_send(server.grpc_url, path, stack, key_file))
            seconds, client = time.time() - started, time.process_time() - client_before
            after = cpu_by_step(repository, ports.grpc)
            if answered != len(stack):
                raise SeriesMeasurementError(f"the {path} path answered {answered} of {len(stack)} slices")
            server_ms = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1e3 / len(stack) for k in after}
            costs.append(SeriesCost(path, len(stack), seconds, client * 1e3 / len(stack), server_ms))
            log(f"series, {path} path: {costs[-1].outside_networks_ms:.2f} CPU ms per slice outside the networks")
    return costs


def series_table(costs: list[dict]) -> list[list[str]]:
    """Rows of the report: path, slices, seconds, client, server steps, outside the networks."""
    steps = sorted({step for cost in costs for step in cost["server_ms"]})
    rows = [["path", "slices", "s", "client ms", *[f"{s} ms" for s in steps], "outside the networks, ms"]]
    for cost in costs:
        rows.append(
            [
                cost["path"],
                str(cost["slices"]),
                f"{cost['seconds']:.1f}",
                f"{cost['client_ms']:.2f}",
                *[f"{cost['server_ms'].get(s, 0.0):.2f}" for s in steps],
                f"{cost['outside_networks_ms']:.2f}",
            ]
        )
    return rows
