"""What every CLI module shares: option aliases and the one-line failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

# Exit codes of the CLI (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1  # a step failed, or some files of a batch failed
EXIT_USAGE = 2  # bad option or argument (Typer's own code)
EXIT_UNAVAILABLE = 3  # no server reachable

Url = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="BRAINSCAN_URL",
        help=(
            "Triton server as host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP); several, comma-separated, "
            "or dns:///NAME:PORT to spread requests round-robin (gRPC)."
        ),
    ),
]
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
DataDir = Annotated[Path, typer.Option("--data", help="Dataset folder (kaggle_3m layout, or yes/ and no/).")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit: no traceback for a user's mistake."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
