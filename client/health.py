"""`brainscan health`'s record of one server: written by ``health_of``, printed as text
(``print``) or as JSON (``as_json``, the fields in their order), read nowhere else."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from brainscan import contract
from brainscan.errors import EXIT_FAILED, EXIT_UNAVAILABLE


@dataclass
class HealthRecord:
    server: str
    live: bool | None = None  # None: no server answered
    ready: bool | None = None
    models: dict[str, bool] = field(default_factory=dict)
    inference_ms: float | None = None  # with --infer, once the probe image came back right
    error: str | None = None
    intended_use: dict | None = None  # what the served classifier declares (or {"error": …})
    exit_code: int = 0

    def failed(self, error: str | None, code: int) -> HealthRecord:
        self.error, self.exit_code = error, code
        return self

    def as_json(self) -> dict:
        record = {
            "server": self.server,
            "live": self.live,
            "ready": self.ready,
            "models": self.models,
            "inference_ms": self.inference_ms,
            "error": self.error,
        }
        if self.intended_use is not None:
            record["intended_use"] = self.intended_use
        return {**record, "exit_code": self.exit_code}

    def print(self, several: bool) -> None:
        """What `brainscan health` prints without --format json: the state on stdout, errors on stderr."""
        import typer

        if several:
            typer.echo(f"{self.server}:")
        if self.live is None:
            typer.echo(f"error: {self.error}", err=True)
            return
        typer.echo(f"server {self.server}: live={self.live} ready={self.ready}")
        for name, ready in self.models.items():
            typer.echo(f"  {name:<12} {'ready' if ready else 'NOT READY'}")
        if self.intended_use:
            from brainscan.intended_use import IntendedUse

            use = self.intended_use
            described = [use["error"]] if "error" in use else IntendedUse.from_dict(use).describe()
            typer.echo("  intended use " + "\n               ".join(described))
        if self.error:
            typer.echo(f"error: {self.error}", err=True)
        elif self.inference_ms is not None:
            typer.echo(f"  inference    ok ({self.inference_ms:.0f} ms)")


def health_of(conn, wait: float, infer: bool) -> HealthRecord:
    """One server's state, with the exit code it deserves: 3 when none answered within
    ``wait``, 1 when something is not ready or the probe inference fails, else 0."""
    from brainscan.client.triton.inference import BrainscanClient, InferenceError, ServerUnavailableError
    from brainscan.errors import BrainscanError

    record = HealthRecord(conn.address)
    deadline = time.monotonic() + wait
    while True:
        try:
            with BrainscanClient(conn) as client:
                state = client.health()
            if state["ready"] and all(state["models"].values()) or time.monotonic() >= deadline:
                break
        except (ServerUnavailableError, InferenceError) as exc:
            if time.monotonic() >= deadline:
                return record.failed(str(exc), EXIT_UNAVAILABLE)
        time.sleep(0.5)
    record.live, record.ready, record.models = state["live"], state["ready"], dict(state["models"])
    if not (state["ready"] and all(state["models"].values())):
        return record.failed(None, EXIT_FAILED)
    if conn.model == contract.ENSEMBLE:  # what the served models were made for (docs/intended-use.md)
        try:
            with BrainscanClient(conn) as client:
                record.intended_use = client.intended_use().as_dict()
        except (ServerUnavailableError, InferenceError, BrainscanError) as exc:
            record.intended_use = {"error": str(exc)}
    if infer:
        from brainscan.probe import PROBE_SHAPE, probe_image

        started = time.monotonic()
        try:
            with BrainscanClient(conn) as client:
                answer = client.infer(probe_image())
        except (ServerUnavailableError, InferenceError) as exc:
            return record.failed(f"inference through {conn.target} failed: {exc}", EXIT_FAILED)
        if answer.mask.shape != PROBE_SHAPE:
            error = f"inference through {conn.target} returned a {answer.mask.shape} mask for a {PROBE_SHAPE} image"
            return record.failed(error, EXIT_FAILED)
        record.inference_ms = (time.monotonic() - started) * 1000
    return record
