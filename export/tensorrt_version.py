"""Which TensorRT is here, and whether it can build what brainscan builds: strongly typed
engines from FP16 graphs (10.12+; 11.x builds nothing else). Importing this module never
imports TensorRT."""

from __future__ import annotations

import re

from brainscan import contract
from brainscan.errors import BrainscanError

MINIMUM_VERSION = (10, 12)  # STRONGLY_TYPED builds of FP16 graphs; weak typing was deprecated here
ONLY_STRONGLY_TYPED = 11  # from this major on every network is strongly typed and the flag is ignored
EXPORT_COMMAND = f"{contract.COMPOSE} run --rm export"
CONTAINER_HINT = (
    f"build engines in the export container on a GPU host: `{EXPORT_COMMAND}` (docs/gpu.md, 'On a GPU host')"
)
REMEDY = (
    "The FP16 graphs passed the same gate on CPU, so the difference comes from TensorRT's kernels: keep the "
    "offending nodes in FP32 with `brainscan export fp16 RUN --keep-fp32 PATTERN` (--list-nodes prints them), "
    "then build again."
)


class TensorRTUnavailableError(BrainscanError, RuntimeError):
    """The ``tensorrt`` module is missing, not TensorRT's bindings, or too old."""


class EngineBuildError(BrainscanError, RuntimeError):
    """Parsing or building failed; the message carries TensorRT's own errors."""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def check_version(version: str) -> None:
    """Refuse, in one sentence, a TensorRT that cannot build strongly typed FP16 engines."""
    if version_tuple(version)[:2] < MINIMUM_VERSION:
        need = ".".join(str(n) for n in MINIMUM_VERSION)
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: brainscan builds strongly typed engines from FP16 graphs, which needs "
            f"TensorRT {need} or newer (11.x builds only strongly typed networks); {CONTAINER_HINT}."
        )


def installed_version() -> str | None:
    """The version of the importable TensorRT bindings, or None. A ``tensorrt`` package
    without ``__version__`` (e.g. type stubs on the path) is not TensorRT."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    version = getattr(trt, "__version__", None)
    return version if isinstance(version, str) else None


def import_tensorrt():
    """The ``tensorrt`` module (10.12+), or TensorRTUnavailableError in one sentence."""
    version = installed_version()
    if version is None:
        raise TensorRTUnavailableError(f"TensorRT is not installed in this environment: {CONTAINER_HINT}.")
    check_version(version)
    import tensorrt as trt

    return trt


def needs_strongly_typed_flag(version: str) -> bool:
    """10.12-10.x must be asked for a strongly typed network; 11.x has no other kind (its
    STRONGLY_TYPED flag is deprecated and ignored, so it is not set)."""
    return version_tuple(version)[0] < ONLY_STRONGLY_TYPED
