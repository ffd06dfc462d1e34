"""The one base of the errors a user can act on.

Every command runs inside one boundary (``brainscan.cli._ErrorBoundary``): a ``BrainscanError``
prints as one ``error:`` line and exits with its ``exit_code``; anything else is a bug and
shows its traceback. ``--debug`` (or ``BRAINSCAN_DEBUG=1``) shows the traceback of user
errors too.
"""

from __future__ import annotations

# Exit codes of the CLI (README, "Exit codes"; tests/test_cli.py checks each).
EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, or an input (some files of a batch) failed
EXIT_USAGE = 2  # a bad option or argument (Typer's own code, Enum choices included)
EXIT_UNAVAILABLE = 3  # no server reachable


class BrainscanError(Exception):
    """An error the user can act on: its message says what is wrong and what to do."""

    exit_code = EXIT_FAILED


class UsageError(BrainscanError, ValueError):
    """An option's value is wrong (a URL that is not host:port, an unknown choice)."""

    exit_code = EXIT_USAGE


class DataError(BrainscanError, ValueError):
    """A dataset, run or input folder does not hold what the step needs."""
