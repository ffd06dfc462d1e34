"""Ports for tritonserver: the defaults, free ones for tests and parallel servers."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

from brainscan import contract


@dataclass(frozen=True)
class Ports:
    grpc: int = contract.GRPC_PORT
    http: int = contract.HTTP_PORT
    metrics: int = contract.METRICS_PORT
    # chosen by free_port (Ports.free): a server that finds one taken tries others
    chosen: bool = field(default=False, compare=False)

    @classmethod
    def free(cls, host: str = contract.DEFAULT_HOST) -> Ports:
        return cls(free_port(host), free_port(host), free_port(host), chosen=True)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


_HANDED_OUT: set[tuple[str, int]] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = contract.DEFAULT_HOST) -> int:
    """A port free now, for tests and parallel servers: never one this process handed out
    before, and below the kernel's ephemeral range, so no outgoing connection can take it
    between now and the moment a server binds it (a port from bind(0) could be)."""
    low = _ephemeral_range()[0]
    candidates = random.Random().sample(range(10000, low), k=min(200, low - 10000)) if low > 10200 else []
    for port in candidates:
        if (host, port) in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add((host, port))
        return port
    with socket.socket() as sock:  # an unusual kernel setting: fall back to the OS's choice
        sock.bind((host, 0))
        _HANDED_OUT.add((host, sock.getsockname()[1]))
        return sock.getsockname()[1]
