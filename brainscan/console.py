"""What every CLI module shares: option aliases and the one-line failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from brainscan import contract
from brainscan.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE  # noqa: F401 (re-exported)

Url = Annotated[
    list[str] | None,
    typer.Option(
        "-u",
        "--url",
        envvar="BRAINSCAN_URL",
        metavar="HOST:PORT",
        help=(
            "Triton server as host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP); several (repeat --url, "
            "or comma-separated), or dns:///NAME:PORT, spread requests round-robin (gRPC)."
        ),
    ),
]


class ReportFormat(contract.Choice):
    TEXT = "text"
    JSON = "json"


Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
DataDir = Annotated[Path, typer.Option("--data", help="Dataset folder (kaggle_3m layout, or yes/ and no/).")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit: no traceback for a user's mistake."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
