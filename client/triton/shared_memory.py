"""Slices through system shared memory, for a client on the server's own machine
(``--shared-memory``): the client writes each request's slices into a region the server has
mapped, and the request carries only where they are; the masks come back the same way. No
protobuf copy, no gRPC payload, no parse on the server: the bytes of a series never cross the
socket.

Triton's shared-memory API is administrative, so the hardened default serves it only to a
client holding the server's admin key (``BRAINSCAN_ADMIN_KEY_FILE``, the file ``brainscan
serve`` reads). The region is created by this process, readable by its user only (0600), named
after the process, unregistered and removed when the client closes. It has ``SLOTS`` slots, each
sized by the first request (the largest of a series: a full batch); a request that does not fit
goes over the socket as before, and one sent while every slot is busy waits for a slot.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.errors import BrainscanError

SHM_FOLDER = Path("/dev/shm")  # where Linux keeps POSIX shared memory (shm_open's "/NAME")
SLOTS = 8  # requests in flight through the region (predict keeps 4 in flight by default)


class SharedMemoryError(BrainscanError, RuntimeError):
    """The server would not map this client's region; the message says why and what to do."""


def _explained(message: str, key_file) -> str:
    if "restricted" in message.lower() or "permission" in message.lower():
        return (
            f"the server refused to map shared memory ({message}): --shared-memory needs the key of the server's "
            f"administrative APIs in {contract.ADMIN_KEY_ENV} (given: {key_file})"
        )
    return (
        f"the server could not map this client's shared memory ({message}): --shared-memory works only with a server "
        "on this machine, run by the same user (in a container, one sharing the host's IPC namespace)"
    )


class Slot:
    """One request's part of the region: its slices in, its masks out."""

    def __init__(self, pool: SharedSlices, index: int, pixels: np.ndarray):
        self.pool, self.shape = pool, pixels.shape
        self.offset = index * (pool.slot_in + pool.slot_out)
        view = np.ndarray(pixels.shape, np.float32, pool.region, self.offset)
        np.copyto(view, pixels, casting="unsafe")  # uint16 slices become FP32 here, in place

    def input(self, module):
        tensor = module.InferInput(contract.PIXELS, list(self.shape), "FP32")
        tensor.set_shared_memory(self.pool.name, int(np.prod(self.shape)) * 4, offset=self.offset)
        return tensor

    def outputs(self, outputs: list, module) -> list:
        """``outputs`` with the mask written into this slot instead of sent back."""
        mask = module.InferRequestedOutput(contract.MASK)
        mask.set_shared_memory(self.pool.name, self.mask_bytes, offset=self.offset + self.pool.slot_in)
        return [mask if output.name() == contract.MASK else output for output in outputs]

    @property
    def mask_bytes(self) -> int:
        return int(np.prod(self.shape[:3]))

    def mask(self) -> np.ndarray:
        return np.ndarray(self.shape[:3], np.uint8, self.pool.region, self.offset + self.pool.slot_in).copy()


class SharedSlices:
    """The client's region, registered with the server on first use."""

    def __init__(self, client, key_file):
        self.client, self.key_file = client, key_file
        self.name = f"brainscan-{os.getpid()}-{secrets.token_hex(4)}"
        self.region = None
        self._created = False  # the file in SHM_FOLDER is this client's, to remove
        self.slot_in = self.slot_out = 0
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._lock = asyncio.Lock()

    def _headers(self) -> dict[str, str]:
        try:  # the server checks it (brainscan serve read it from the same file)
            return {contract.GRPC_ADMIN_HEADER: open(self.key_file, encoding="utf-8").read().strip()}
        except OSError as exc:
            raise SharedMemoryError(f"cannot read the admin key file {self.key_file}: {exc.strerror}") from None

    def _create(self, size: int) -> None:
        """The region as POSIX shared memory (Linux keeps it in /dev/shm), this user's alone."""
        descriptor = os.open(SHM_FOLDER / self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._created = True
        try:
            os.ftruncate(descriptor, size)
            self.region = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)

    async def _open(self, pixels: np.ndarray) -> None:
        from tritonclient.utils import InferenceServerException

        self.slot_in, self.slot_out = int(np.prod(pixels.shape)) * 4, int(np.prod(pixels.shape[:3]))
        size = SLOTS * (self.slot_in + self.slot_out)
        try:
            self._create(size)
        except OSError as exc:
            self._remove()
            raise SharedMemoryError(f"cannot create shared memory in {SHM_FOLDER}: {exc.strerror}") from None
        try:
            await self.client.register_system_shared_memory(self.name, f"/{self.name}", size, headers=self._headers())
        except InferenceServerException as exc:
            self._remove()
            raise SharedMemoryError(_explained(exc.message() or str(exc), self.key_file)) from None
        except BaseException:
            self._remove()
            raise
        for index in range(SLOTS):
            self._free.put_nowait(index)

    @asynccontextmanager
    async def slot(self, pixels: np.ndarray):
        """A slot holding ``pixels`` for one request, or None: the request goes over the socket."""
        async with self._lock:
            if self.region is None:
                await self._open(pixels)
        if int(np.prod(pixels.shape)) * 4 > self.slot_in:
            yield None
            return
        index = await self._free.get()
        try:
            yield Slot(self, index, pixels)
        finally:
            self._free.put_nowait(index)

    def _remove(self) -> None:
        if self.region is not None:
            self.region.close()
            self.region = None
        if self._created:
            (SHM_FOLDER / self.name).unlink(missing_ok=True)
            self._created = False

    async def close(self) -> None:
        if self.region is None:
            self._remove()
            return
        try:
            await self.client.unregister_system_shared_memory(self.name, headers=self._headers())
        finally:
            self._remove()
