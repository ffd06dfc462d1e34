"""What every CLI module shares: option aliases and the one-line failure."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


def flag(name: str, help: str, **more: Any) -> Any:
    """An on/off option that is off unless given: only ``name``, no --no- form."""
    return typer.Option(name, help=help, **more)


class ReportFormat(contract.Choice):
    TEXT = "text"
    JSON = "json"


# health's and doctor's report: text for people, json for scripts
ReportFormatOption = Annotated[
    ReportFormat, typer.Option("--format", help="text, or json for scripts: JSON on stdout, nothing else.")
]
Rules = Annotated[
    Path | None,
    typer.Option(
        rich_help_panel="Intended use",
        help=(
            "A site's rules file (JSON) narrowing the served models' intended use: modalities, planes, body parts, "
            "ranges, the pixel threshold (docs/intended-use.md). Unknown keys, or rules that widen it, exit 2."
        ),
    ),
]  # predict's and listen's
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
DataDir = Annotated[Path, typer.Option("--data", help="Dataset folder (kaggle_3m layout, or yes/ and no/).")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit: no traceback for a user's mistake."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def with_options(options: Sequence[tuple[str, Any, Any]], into: str, make: Callable[..., Any] = dict):
    """A decorator that gives a command a shared group of options, declared once:
    ``options`` are (name, annotation, default) in the order --help lists them, after the
    command's own; the command receives ``make(**values)`` as its parameter ``into``."""

    def decorate(command):
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        # the command's own parameters, their annotations resolved (its module may postpone them)
        own = [p.replace(annotation=hints.get(n, p.annotation)) for n, p in signature.parameters.items() if n != into]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in options]

        @functools.wraps(command)
        def run(**values):
            grouped = {name: values.pop(name) for name, _, _ in options}
            return command(**{into: make(**grouped)}, **values)

        run.__signature__ = signature.replace(parameters=[*own, *added])
        run.__annotations__ = {**{k: v for k, v in hints.items() if k != into}, **{n: a for n, a, _ in options}}
        return run

    return decorate


def field_options(cls, **overrides: tuple[Any, Any]) -> tuple:
    """The options of a dataclass for ``with_options``: one per field of ``cls`` whose
    metadata has a ``help``, in field order, as --name (or the metadata's ``flag``) with the
    field's type and default; the metadata's other keys go to Typer (e.g. ``min``).
    ``overrides[name] = (type, default)`` gives a field's option another type and default
    (what the command line takes, when the command converts it)."""
    hints = typing.get_type_hints(cls)
    options = []
    for item in dataclasses.fields(cls):
        if "help" not in item.metadata:
            continue
        own = item.default_factory() if item.default is dataclasses.MISSING else item.default  # type: ignore[misc]
        kind, default = overrides.get(item.name, (hints[item.name], own))
        settings = {k: v for k, v in item.metadata.items() if k != "flag"}
        flags = [item.metadata["flag"]] if "flag" in item.metadata else []
        options.append((item.name, Annotated[kind, typer.Option(*flags, **settings)], default))
    return tuple(options)
