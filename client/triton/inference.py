"""Client library of the ``brainscan`` ensemble: one request per image, over gRPC or HTTP,
with TLS, a per-request timeout and retries with back-off while the server is unreachable.

``AsyncBrainscanClient`` is the implementation (``tritonclient``'s asyncio clients, so many
requests can be in flight from one thread); ``BrainscanClient`` runs it on a private event
loop for callers that are not asynchronous (``brainscan health``, the web UI).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import asynccontextmanager

import numpy as np

from brainscan import contract
from brainscan.client.triton.connection import DNS_SCHEME, PROTOCOLS, Connection  # noqa: F401 (the client's API)
from brainscan.client.triton.shared_memory import SharedSlices
from brainscan.client.triton.tensors import Prediction, client_module, image_input, pixels_input  # noqa: F401 (the API)
from brainscan.errors import EXIT_UNAVAILABLE, BrainscanError
from brainscan.identity import ModelIdentity, identity_facts
from brainscan.intended_use import UNDECLARED, IntendedUse
from brainscan.triton_errors import is_transient

BACKOFF_CAP = 8.0  # seconds: the longest wait between two attempts

TIMEOUT = "TIMEOUT"  # the status of a request not answered within --timeout


class ServerUnavailableError(BrainscanError, ConnectionError):
    """No Triton server answers at the URL (after the retries, if any)."""

    exit_code = EXIT_UNAVAILABLE


class InferenceError(BrainscanError, RuntimeError):
    """The server refused or failed one request; ``status`` is Triton's status code."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class ModelNotReadyError(InferenceError):
    """The server answers but does not serve the requested model (or version)."""


class _Retryable(Exception):
    """A failure that a restarting or briefly unreachable server explains."""


def _http_transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's errors of an exchange that failed on the way (a connection refused or
    cut, a server gone mid-answer), which a retry may cure; not an answer the server gave.
    gRPC's arrive as InferenceServerException."""
    try:
        import aiohttp
    except ImportError:  # the gRPC client alone
        return ()
    return (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def _is_transient(exc: Exception) -> bool:
    status = str(getattr(exc, "status", lambda: "")() or "")
    return is_transient(str(exc), status)


class AsyncBrainscanClient:
    """Talks to the ``brainscan`` ensemble (or ``connection.model``) of a Triton server.

    ``infer`` raises ``InferenceError`` for a request the server refused (a bad image) or
    that timed out, and ``ServerUnavailableError`` when the server stayed unreachable
    through every retry. ``on_retry(error, delay, attempt)`` is told about each wait.
    """

    def __init__(
        self, connection: Connection = Connection(), on_retry: Callable[[str, float, int], None] | None = None
    ):
        self.connection = connection
        self.on_retry = on_retry
        module = client_module(connection.protocol)
        if connection.protocol is contract.Protocol.GRPC:
            # Large images: lift gRPC's 4 MB message limit.
            limit = 2**31 - 1
            path = lambda p: str(p) if p else None  # noqa: E731  (tritonclient opens the PEM files itself)
            channel = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
            if connection.balanced:  # gRPC's own client-side balancing: each request to the next server
                channel.append(("grpc.lb_policy_name", "round_robin"))
            self._client = module.InferenceServerClient(
                connection.grpc_target,
                ssl=connection.ssl,
                root_certificates=path(connection.root_certificates),
                private_key=path(connection.private_key),
                certificate_chain=path(connection.certificate_chain),
                channel_args=channel,
            )
        else:
            self._client = module.InferenceServerClient(
                connection.url,
                ssl=connection.ssl,
                ssl_context=self._ssl_context() if connection.ssl else None,
                conn_timeout=connection.timeout,
            )
        self._outputs: list | None = None  # what to ask for, once the model's outputs are known
        # slices through system shared memory (--shared-memory), registered on first use
        self._shared = SharedSlices(self._client, connection.admin_key_file) if connection.shared_memory else None

    def _ssl_context(self):
        import ssl

        c = self.connection
        context = ssl.create_default_context(cafile=str(c.root_certificates) if c.root_certificates else None)
        if c.certificate_chain:
            context.load_cert_chain(str(c.certificate_chain), str(c.private_key))
        return context

    async def _call(self, coroutine):
        """One attempt: a server-side refusal -> InferenceError, an unreachable or
        restarting server -> _Retryable, no answer in time -> InferenceError."""
        from tritonclient.utils import InferenceServerException

        try:
            return await asyncio.wait_for(coroutine, self.connection.timeout)
        except asyncio.TimeoutError:
            raise InferenceError(f"no answer within {self.connection.timeout:g} s (--timeout)", TIMEOUT) from None
        except InferenceServerException as exc:
            if _is_transient(exc):
                raise _Retryable(exc.message() or str(exc)) from None
            raise InferenceError(exc.message() or str(exc), exc.status()) from None
        except (OSError, asyncio.IncompleteReadError, *_http_transport_errors()) as exc:
            raise _Retryable(str(exc) or type(exc).__name__) from None

    async def _with_retries(self, make_coroutine, retries: int):
        for attempt in range(retries + 1):
            try:
                return await self._call(make_coroutine())
            except _Retryable as exc:
                if attempt == retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise ServerUnavailableError(
                        f"no Triton server reachable at {self.connection.address}{tries} ({exc})"
                    ) from None
                delay = min(self.connection.backoff * 2**attempt, BACKOFF_CAP) * random.uniform(0.75, 1.0)
                if self.on_retry:
                    self.on_retry(str(exc), delay, attempt + 1)
                await asyncio.sleep(delay)

    async def _requested_outputs(self) -> list:
        """The outputs to ask for: the probability and the mask, and the out-of-distribution
        score when the model gives it (a server of an earlier kit does not)."""
        if self._outputs is None:
            c = self.connection
            metadata = await self._with_retries(
                lambda: (
                    self._client.get_model_metadata(c.model, c.model_version, as_json=True)
                    if c.protocol is contract.Protocol.GRPC
                    else self._client.get_model_metadata(c.model, c.model_version)
                ),
                c.retries,
            )
            given = {output.get("name") for output in metadata.get("outputs", [])}
            wanted = [contract.TUMOR_PROBABILITY, contract.MASK, contract.OOD_SCORE]
            sync = client_module(c.protocol, aio=False)
            names = [name for name in wanted if name in given] if given else wanted[:2]
            self._outputs = [sync.InferRequestedOutput(name) for name in names]
        return self._outputs

    async def _request(self, model: str, tensor, outputs: list, version: str):
        """One request to ``model`` with one input tensor, asking for ``outputs``."""
        c = self.connection
        return await self._with_retries(
            lambda: self._client.infer(
                model,
                [tensor],
                model_version=version,
                outputs=outputs,
                # the server drops the request from its queues once the client has stopped waiting
                timeout=int(c.timeout * 1_000_000),
            ),
            c.retries,
        )

    async def _infer(self, model: str, tensor, slot=None) -> list[Prediction]:
        """One request to an ensemble with one input tensor; an answer per image of its batch
        (``slot``: the shared memory that holds the slices and gets the masks)."""
        c = self.connection
        outputs = await self._requested_outputs()
        asked = slot.outputs(outputs, client_module(c.protocol, aio=False)) if slot else outputs
        result = await self._request(model, tensor, asked, c.model_version)
        probability = result.as_numpy(contract.TUMOR_PROBABILITY)
        mask = slot.mask() if slot else result.as_numpy(contract.MASK)
        if probability is None or mask is None:
            raise InferenceError(
                f"{model} at {c.address} did not return {contract.TUMOR_PROBABILITY} and {contract.MASK}: is it a "
                "brainscan ensemble?"
            )
        scores = result.as_numpy(contract.OOD_SCORE) if len(outputs) > 2 else None
        return [
            Prediction(float(p), m, None if scores is None else float(scores.reshape(-1)[k]))
            for k, (p, m) in enumerate(zip(probability.reshape(-1), mask))
        ]

    @asynccontextmanager
    async def _pixels(self, pixels: np.ndarray):
        """The ``PIXELS`` tensor of slices of one size ([B, H, W, C], any numeric dtype), and the
        shared-memory slot holding them (None: they go over the socket)."""
        protocol = self.connection.protocol
        if self._shared is None:
            yield pixels_input(pixels, protocol), None
            return
        async with self._shared.slot(pixels) as slot:
            yield (pixels_input(pixels, protocol) if slot is None else slot.input(client_module(protocol, False))), slot

    async def infer(self, data: bytes) -> Prediction:
        """Send one encoded image (PNG, JPEG, TIFF; 8 or 16 bit) and return the answer."""
        (answer,) = await self._infer(self.connection.model, image_input(data, self.connection.protocol))
        return answer

    async def pixels_batch_size(self) -> int:
        """How many slices one request to ``contract.PIXELS_ENSEMBLE`` may carry (its config's
        max_batch_size); 0 when the server does not serve it (an earlier kit's) or the target
        is another ensemble than the kit's."""
        c = self.connection
        if c.model != contract.ENSEMBLE:
            return 0
        ready = await self._with_retries(
            lambda: self._client.is_model_ready(contract.PIXELS_ENSEMBLE, c.model_version), c.retries
        )
        return int((await self._config(contract.PIXELS_ENSEMBLE)).get("max_batch_size", 0)) if ready else 0

    async def classify_pixels(self, pixels: np.ndarray) -> list[tuple[float, float]]:
        """The classifier alone on slices of one size ([B, H, W, C]): each slice's tumour
        probability and out-of-distribution score (the first step of a series whose
        segmenter runs only where the classifier does not rule a tumour out)."""
        sync = client_module(self.connection.protocol, aio=False)
        wanted = [sync.InferRequestedOutput(n) for n in (contract.TUMOR_PROBABILITY, contract.OOD_SCORE)]
        async with self._pixels(pixels) as (tensor, _):
            result = await self._request(contract.CLASSIFIER, tensor, wanted, "")
        probability, score = (result.as_numpy(n).reshape(-1) for n in (contract.TUMOR_PROBABILITY, contract.OOD_SCORE))
        return [(float(p), float(s)) for p, s in zip(probability, score)]

    async def segment_pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The segmenter alone on slices of one size ([B, H, W, C]): each slice's mask."""
        sync = client_module(self.connection.protocol, aio=False)
        wanted = [sync.InferRequestedOutput(contract.MASK)]
        async with self._pixels(pixels) as (tensor, slot):
            result = await self._request(contract.SEGMENTER, tensor, slot.outputs(wanted, sync) if slot else wanted, "")
            return list(slot.mask() if slot else result.as_numpy(contract.MASK))

    async def infer_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        """Send slices of one size ([B, H, W, C] pixel values, B up to ``pixels_batch_size``) to
        ``contract.PIXELS_ENSEMBLE`` in one request: no encoding here, no decoding there."""
        async with self._pixels(pixels) as (tensor, slot):
            return await self._infer(contract.PIXELS_ENSEMBLE, tensor, slot)

    async def health(self, retries: int = 0) -> dict:
        """Liveness and readiness of the server, of the target model and of the composing
        models of the ensemble (only when the target is the ``brainscan`` ensemble)."""
        c = self.connection

        async def state():
            live = await self._client.is_server_live()
            ready = await self._client.is_server_ready()
            models = {c.target: await self._client.is_model_ready(c.model, c.model_version)}
            if c.model == contract.ENSEMBLE:
                for name in contract.COMPOSING_MODELS:
                    models[name] = await self._client.is_model_ready(name)
            return {"url": c.address, "live": live, "ready": ready, "models": models}

        return await self._with_retries(state, retries)

    async def _config(self, model: str) -> dict:
        """A served model's config (JSON form; model config is not an admin API)."""
        answer = await self._with_retries(
            lambda: (
                self._client.get_model_config(model, as_json=True)
                if self.connection.protocol is contract.Protocol.GRPC
                else self._client.get_model_config(model)
            ),
            self.connection.retries,
        )
        return answer.get("config", answer)

    async def model_identity(self) -> ModelIdentity:
        """The served networks' identity (``ModelIdentity``), from their configs."""
        return ModelIdentity({network: identity_facts(await self._config(network)) for network in contract.NETWORKS})

    async def segmenter_rule_out(self) -> float | None:
        """The tumour probability under which the served classifier rules a slice out, so a
        series' segmenter may skip it (its config's parameter); None when it declares none."""
        parameters = (await self._config(contract.CLASSIFIER)).get("parameters") or {}
        declared = parameters.get(contract.SEGMENTER_RULE_OUT_PARAMETER)
        text = declared.get("string_value", "") if isinstance(declared, dict) else str(declared or "")
        return float(text) if text else None

    async def intended_use(self) -> IntendedUse:
        """The intended use the served classifier declares (its config's parameter); the kit's
        defaults (header rules, no pixel gate) when it declares none (an earlier kit's
        repository), which its description says."""
        parameters = (await self._config(contract.CLASSIFIER)).get("parameters") or {}
        declared = parameters.get(contract.INTENDED_USE_PARAMETER)
        if not declared:
            return IntendedUse(description=UNDECLARED)
        text = declared.get("string_value", "") if isinstance(declared, dict) else str(declared)
        return IntendedUse.from_json(text, f"the intended use {self.connection.address} declares")

    async def check_ready(self) -> None:
        """Before a run: ServerUnavailableError if nothing answers, ModelNotReadyError if
        the server does not serve the target model."""
        state = await self.health()
        if not state["models"][self.connection.target]:
            raise ModelNotReadyError(
                f"the server at {self.connection.address} does not serve model {self.connection.target!r} "
                "(not loaded, or no such version): `brainscan health` lists what is ready"
            )

    async def close(self) -> None:
        try:
            if self._shared is not None:
                await self._shared.close()
        finally:
            await self._client.close()

    async def __aenter__(self) -> AsyncBrainscanClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class BrainscanClient:
    """The same client for synchronous callers: each call runs on a private event loop."""

    def __init__(self, connection: Connection = Connection(), on_retry=None):
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._make(connection, on_retry))
        self.connection = connection

    @staticmethod
    async def _make(connection, on_retry):
        return AsyncBrainscanClient(connection, on_retry)

    def infer(self, data: bytes) -> Prediction:
        return self._loop.run_until_complete(self._client.infer(data))

    def health(self, retries: int = 0) -> dict:
        return self._loop.run_until_complete(self._client.health(retries))

    def check_ready(self) -> None:
        self._loop.run_until_complete(self._client.check_ready())

    def model_identity(self) -> ModelIdentity:
        return self._loop.run_until_complete(self._client.model_identity())

    def intended_use(self) -> IntendedUse:
        return self._loop.run_until_complete(self._client.intended_use())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def __enter__(self) -> BrainscanClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
