"""The ensemble's tensors as the client builds and reads them: an encoded file's ``IMAGE``,
slices' ``PIXELS``, and one image's answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainscan import contract


@dataclass
class Prediction:
    """The ensemble's answer for one image."""

    probability: float
    mask: np.ndarray  # uint8 0/1, the image's own height x width
    score: float | None = None  # OOD_SCORE: how unlike the training slices (None: the server gives none)

    @property
    def tumour(self) -> bool:
        return self.probability > contract.DECISION_THRESHOLD

    @property
    def label(self) -> str:
        return "tumour" if self.tumour else "no tumour"

    @property
    def area_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def client_module(protocol: str, aio: bool = True):
    if protocol == contract.Protocol.GRPC:
        import tritonclient.grpc as sync_module
        import tritonclient.grpc.aio as aio_module
    else:
        import tritonclient.http as sync_module
        import tritonclient.http.aio as aio_module
    return aio_module if aio else sync_module


def image_input(data: bytes, protocol: str = "grpc"):
    """The ``IMAGE`` input tensor ([1, 1] BYTES) for one encoded file."""
    tensor = client_module(protocol, aio=False).InferInput(contract.IMAGE, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def pixels_input(pixels: np.ndarray, protocol: str = "grpc"):
    """The ``PIXELS`` input tensor ([B, H, W, C] FP32) for slices of one size (any numeric dtype)."""
    array = np.ascontiguousarray(pixels, np.float32)
    tensor = client_module(protocol, aio=False).InferInput(contract.PIXELS, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor
