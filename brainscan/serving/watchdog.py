"""The watchdog: a real inference through the ensemble at intervals, and a restart when the
server keeps failing (Triton restarts no dead python stub by itself)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from brainscan.serving.errors import ServerError
from brainscan.serving.process import TritonServer
from brainscan.triton_errors import Problem, classify


@dataclass
class Watchdog:
    """Keeps a TritonServer serving: every ``interval`` seconds a real inference goes
    through the ensemble. The server is restarted at once when its process exits or a
    python stub is dead, after ``failures`` other failed probes in a row, or after
    ``timeouts`` probes in a row without an answer (a flood answers "busy" instead: the
    queues are bounded). More than ``max_restarts`` restarts within ``window`` seconds is a
    crash loop: it gives up (ServerError), so whatever supervises `brainscan serve`
    (Docker, Kubernetes) takes over."""

    server: TritonServer
    interval: float = 5.0
    failures: int = 2
    timeouts: int = 6
    max_restarts: int = 5
    window: float = 600.0
    log: Callable[[str], None] = print
    restarts: list[float] = field(default_factory=list)

    def check(self) -> tuple[Problem, str | None]:
        """One probe: (kind, message) with kind as ``classify`` says, or EXITED."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return Problem.EXITED, f"tritonserver exited (code {None if process is None else process.returncode})"
        problem = self.server.probe(timeout=max(self.interval, 5.0))
        return classify(problem), problem

    def restart(self, reason: str) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.window] + [now]
        if len(self.restarts) > self.max_restarts:
            raise ServerError(
                f"tritonserver failed {len(self.restarts)} times within {self.window:.0f} s, last: "
                f"{reason}; giving up:\n{self.server.log_report()}"
            )
        self.log(f"watchdog: restarting tritonserver ({reason})")
        started = time.monotonic()
        self.server.restart()
        self.log(f"watchdog: tritonserver ready again after {time.monotonic() - started:.1f} s")

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch until ``stop()`` says so (checked every interval)."""
        streak: dict[Problem, int] = {}
        while not stop():
            process = self.server.process
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(self.interval)
            else:
                time.sleep(self.interval)
            if stop():
                return
            kind, problem = self.check()
            if kind is Problem.UNREACHABLE:  # the process runs (checked above) but does not answer
                kind = Problem.ERROR
            streak = {kind: streak.get(kind, 0) + 1} if kind in (Problem.ERROR, Problem.TIMEOUT) else {}
            if kind in (Problem.OK, Problem.BUSY):
                continue
            limit = {Problem.ERROR: self.failures, Problem.TIMEOUT: self.timeouts}.get(kind, 1)
            self.log(f"watchdog: probe failed ({kind.value}, {streak.get(kind, 1)}/{limit}): {problem}")
            if streak.get(kind, 1) >= limit:
                self.restart(problem or kind.value)
                streak = {}
