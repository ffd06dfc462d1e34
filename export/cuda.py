"""The few CUDA runtime calls the engine builder needs, through ctypes and libcudart.

TensorRT's Python API takes device pointers and a stream handle as integers; this module
provides them (allocate, copy, synchronise) and reads the GPU's name and compute
capability for the engine record. It needs no Python CUDA package: the NGC TensorRT and
Triton images ship libcudart. Every failing call raises CudaError with CUDA's own message.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import numpy as np

# cudaMemcpyKind and cudaDeviceAttr values from cuda_runtime_api.h / driver_types.h
_HOST_TO_DEVICE = 1
_DEVICE_TO_HOST = 2
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_PROP_BUFFER = 8192  # cudaDeviceProp is ~1 KiB and starts with char name[256]; leave room
LIBRARY_ENV = "BRAINSCAN_CUDART"  # an explicit libcudart path wins over the search


class CudaError(RuntimeError):
    """A CUDA runtime call failed (or libcudart is missing); the message says which and why."""


def _candidates() -> list[str]:
    names = [os.environ[LIBRARY_ENV]] if os.environ.get(LIBRARY_ENV) else []
    names += ["libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0"]
    found = ctypes.util.find_library("cudart")
    if found:
        names.append(found)
    return names


class CudaRuntime:
    """A loaded libcudart. ``CudaRuntime()`` searches the usual names; pass ``library`` to
    load one file."""

    def __init__(self, library: str | Path | None = None):
        errors = []
        self.lib = None
        for name in [str(library)] if library else _candidates():
            try:
                self.lib = ctypes.CDLL(name)
                self.path = name
                break
            except OSError as exc:
                errors.append(f"{name}: {exc}")
        if self.lib is None:
            raise CudaError(
                "the CUDA runtime (libcudart) was not found; run this in the export container "
                f"(docker compose -f docker/compose.yaml run --rm export) or set {LIBRARY_ENV}. Tried: "
                + "; ".join(errors)
            )
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaGetErrorName.restype = ctypes.c_char_p

    def check(self, status: int, call: str) -> None:
        if status != 0:
            name = self.lib.cudaGetErrorName(status).decode()
            text = self.lib.cudaGetErrorString(status).decode()
            raise CudaError(f"{call} failed: {name} ({status}): {text}")

    # --- devices
    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self.check(self.lib.cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount")
        return count.value

    def compute_capability(self, device: int = 0) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"

    def device_name(self, device: int = 0) -> str:
        buffer = ctypes.create_string_buffer(_PROP_BUFFER)
        # CUDA 12 headers map cudaGetDeviceProperties to the _v2 symbol; older runtimes lack it
        call = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        self.check(call(buffer, device), "cudaGetDeviceProperties")
        return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    # --- memory and streams
    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(pointer.value)

    def free(self, pointer: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(pointer)), "cudaFree")

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self.check(
            self.lib.cudaMemcpy(ctypes.c_void_p(pointer), array.ctypes.data_as(ctypes.c_void_p),
                                ctypes.c_size_t(array.nbytes), _HOST_TO_DEVICE),
            "cudaMemcpy host->device",
        )

    def from_device(self, pointer: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.check(
            self.lib.cudaMemcpy(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(pointer),
                                ctypes.c_size_t(out.nbytes), _DEVICE_TO_HOST),
            "cudaMemcpy device->host",
        )
        return out

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


def gpu_description(runtime: CudaRuntime, device: int = 0) -> dict[str, str]:
    """Name and compute capability of ``device``; raises CudaError without a usable GPU."""
    if runtime.device_count() < 1:
        raise CudaError("no CUDA GPU is visible (cudaGetDeviceCount returned 0)")
    return {"gpu_name": runtime.device_name(device), "compute_capability": runtime.compute_capability(device)}
