"""gRPC client of the ``brainscan`` ensemble: one request per image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainscan import contract


class ServerUnavailableError(ConnectionError):
    """No Triton server answers at the URL."""


class InferenceError(RuntimeError):
    """The server refused or failed one request; ``status`` is Triton's status code."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Prediction:
    """The ensemble's answer for one image."""

    probability: float
    mask: np.ndarray  # uint8 0/1, the image's own height x width

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


def image_input(data: bytes):
    """The ``IMAGE`` input tensor ([1, 1] BYTES) for one encoded file."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def _unavailable(exc) -> bool:
    status = str(getattr(exc, "status", lambda: "")() or "")
    return "UNAVAILABLE" in status or "failed to connect" in str(exc).lower()


class BrainscanClient:
    """Talks to the ``brainscan`` ensemble of a Triton server over gRPC."""

    def __init__(self, url: str = contract.DEFAULT_URL, model: str = contract.ENSEMBLE, timeout: float = 60.0):
        import tritonclient.grpc as grpcclient

        self.url = url
        self.model = model
        self.timeout = timeout
        # Large images: lift gRPC's 4 MB message limit to the contract's pixel limit.
        limit = 2**31 - 1
        self._client = grpcclient.InferenceServerClient(
            url, channel_args=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        )
        self._outputs = [grpcclient.InferRequestedOutput(contract.TUMOR_PROBABILITY), grpcclient.InferRequestedOutput(contract.MASK)]

    def infer(self, data: bytes) -> Prediction:
        """Send one encoded image; raise ServerUnavailableError or InferenceError."""
        from tritonclient.utils import InferenceServerException

        try:
            result = self._client.infer(
                self.model, [image_input(data)], outputs=self._outputs, client_timeout=self.timeout
            )
        except InferenceServerException as exc:
            if _unavailable(exc):
                raise ServerUnavailableError(f"no Triton server reachable at {self.url}") from None
            raise InferenceError(exc.message() or str(exc), exc.status()) from None
        probability = result.as_numpy(contract.TUMOR_PROBABILITY)
        mask = result.as_numpy(contract.MASK)
        return Prediction(float(probability.reshape(-1)[0]), mask[0])

    def health(self) -> dict:
        """Liveness and readiness of the server and of every model of the ensemble."""
        from tritonclient.utils import InferenceServerException

        try:
            live = self._client.is_server_live(client_timeout=self.timeout)
            ready = self._client.is_server_ready(client_timeout=self.timeout)
            models = {
                name: self._client.is_model_ready(name, client_timeout=self.timeout)
                for name in (self.model, *contract.COMPOSING_MODELS)
            }
        except InferenceServerException as exc:
            if _unavailable(exc):
                raise ServerUnavailableError(f"no Triton server reachable at {self.url}") from None
            raise InferenceError(exc.message() or str(exc), exc.status()) from None
        return {"url": self.url, "live": live, "ready": ready, "models": models}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "BrainscanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
