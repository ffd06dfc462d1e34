"""Which NVIDIA GPU is here, from ``nvidia-smi`` (shipped with the driver and mounted into
containers by the NVIDIA Container Toolkit). TensorRT plans run only on the compute
capability they were built for, so both the engine builder and the doctor need it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from brainscan.errors import BrainscanError


class GpuError(BrainscanError, RuntimeError):
    """No GPU, or not one GPU that an engine could be said to be built for."""


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # e.g. "8.9"


def visible_gpus(timeout: float = 20.0) -> list[Gpu]:
    """The GPUs nvidia-smi lists (in its order); [] when it is missing or fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        if "," in line:
            capability, name = (part.strip() for part in line.split(",", 1))
            gpus.append(Gpu(name, capability))
    return gpus


def cuda_visible(gpus: list[Gpu], environ=os.environ) -> list[Gpu]:
    """The GPUs CUDA will use: with CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA's indices are
    nvidia-smi's, so CUDA_VISIBLE_DEVICES=1,… selects from the list; otherwise all."""
    wanted = environ.get("CUDA_VISIBLE_DEVICES", "")
    if environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" or not wanted:
        return gpus
    indices = [int(i) for i in wanted.split(",") if i.strip().isdigit()]
    return [gpus[i] for i in indices if i < len(gpus)]


def build_gpu(gpus: list[Gpu] | None = None) -> Gpu:
    """The GPU an engine built here is for. Several GPUs of different compute capabilities
    are refused: CUDA's device 0 need not be nvidia-smi's first, so the record could name
    the wrong one."""
    gpus = cuda_visible(visible_gpus()) if gpus is None else gpus
    if not gpus:
        raise GpuError(
            "no NVIDIA GPU is visible (nvidia-smi is missing or lists none): build engines on the GPU host, "
            "in the export container"
        )
    if len({g.compute_capability for g in gpus}) > 1:
        listed = ", ".join(f"{g.name} ({g.compute_capability})" for g in gpus)
        raise GpuError(
            f"GPUs of different compute capabilities are visible ({listed}): make one kind visible, e.g. "
            "CUDA_VISIBLE_DEVICES=0 with CUDA_DEVICE_ORDER=PCI_BUS_ID, and build once per kind"
        )
    return gpus[0]
