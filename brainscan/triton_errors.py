"""What Triton's error text means, for the server's watchdog and for the client alike.

Load shedding is an answer (``BUSY``): the watchdog never restarts for it, and a client
waits before it retries a full queue. A dead python stub never recovers by itself
(``FATAL``): the watchdog restarts at once, and clients retry meanwhile. A timeout may be a
flood or a hang (``TIMEOUT``): only many in a row restart. A server that is stopping,
starting or not there is ``UNREACHABLE``: clients retry it.
"""

from __future__ import annotations

import enum
import re


class Problem(str, enum.Enum):
    OK = "ok"
    BUSY = "busy"
    FATAL = "fatal"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    EXITED = "exited"  # the watchdog's own finding: the process is gone


QUEUE_FULL = "exceeds maximum queue size"
QUEUE_TIMEOUT = "request timeout expired"
FRAGMENTS = {
    Problem.BUSY: (QUEUE_FULL, QUEUE_TIMEOUT),
    Problem.FATAL: ("stub process", "is not healthy"),
    Problem.TIMEOUT: ("timed out", "timeout"),
    Problem.UNREACHABLE: (
        "failed to connect",
        "connection refused",
        "connect call failed",
        "cannot connect",
        "socket closed",
        "connection reset",
        "server disconnected",
        "broken pipe",
        "unknown model",
        "not ready",
        "no available versions",
        "is not found",
        "server is shutting down",
        "end of tcp stream",
    ),
}


def classify(message: str | None) -> Problem:
    """The kind of a probe's or a request's failure (``OK`` for None)."""
    if message is None:
        return Problem.OK
    text = message.lower()
    for kind in (Problem.BUSY, Problem.FATAL, Problem.TIMEOUT, Problem.UNREACHABLE):
        if any(fragment in text for fragment in FRAGMENTS[kind]):
            return kind
    return Problem.ERROR


def is_transient(message: str, status: str = "") -> bool:
    """Worth a retry after a wait: a server stopping, starting or not there, a dead stub
    (its watchdog restarts it) or a full queue — gRPC and HTTP alike."""
    if "UNAVAILABLE" in status:
        return True
    text = message.lower()
    return (
        QUEUE_FULL in text
        or any(f in text for f in FRAGMENTS[Problem.FATAL])
        or any(f in text for f in FRAGMENTS[Problem.UNREACHABLE])
    )


# Triton's (glog) error lines: E1122 09:25:36.736615 2530 model_lifecycle.cc:642] "message"
LOG_ERROR = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")
# logged by every CPU-only start of the embedded server: not a reason for anything
UNINFORMATIVE_ERRORS = ("CudaDriverHelper has not been initialized.",)


def log_errors(lines: list[str]) -> list[str]:
    """The distinct error messages among Triton's log lines, in order, without the noise."""
    found = []
    for line in lines:
        if LOG_ERROR.match(line):
            message = LOG_ERROR.sub("", line, count=1).strip()
            if len(message) > 1 and message[0] == message[-1] == '"':
                message = message[1:-1]
            if message not in UNINFORMATIVE_ERRORS and message not in found:
                found.append(message)
    return found
