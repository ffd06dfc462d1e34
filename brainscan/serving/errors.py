"""The serving package's error."""

from __future__ import annotations

from brainscan.errors import BrainscanError


class ServerError(BrainscanError, RuntimeError):
    """The server could not be started, or stopped before it was ready."""
