"""The `brainscan` command: one sub-app per command group; heavy imports stay inside the
commands so `--help` is instant."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

# TensorFlow prints C++ start-up chatter unless told otherwise; users can still override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from brainscan.benchmarks.cli import bench_app
from brainscan.client.cli import health, predict, ui
from brainscan.client.hospital.cli import listen
from brainscan.console import flag
from brainscan.errors import EXIT_FAILED, BrainscanError
from brainscan.export.cli import doctor, export_app
from brainscan.serving.cli import serve
from brainscan.train.cli import data_app, evaluate, train_app

_state = {"debug": False}


class _ErrorBoundary(TyperGroup):
    """The one error boundary, around every command: an error the user can act on
    (BrainscanError, or a file that cannot be read or written) prints one line and exits
    with its code (brainscan.errors); anything else is a bug and shows its traceback.
    --debug or BRAINSCAN_DEBUG=1 shows the traceback of user errors too."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (BrainscanError, OSError) as exc:
            if _state["debug"] or os.environ.get("BRAINSCAN_DEBUG", "").lower() in ("1", "true", "yes"):
                raise
            if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
                message = f"{exc.filename}: {exc.strerror}"
            else:
                message = str(exc) or type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(exc.exit_code if isinstance(exc, BrainscanError) else EXIT_FAILED) from None


app = typer.Typer(
    rich_markup_mode="markdown",
    cls=_ErrorBoundary,
    help="Brain-tumour detection and segmentation on MRI, served by Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(export_app, name="export")
app.add_typer(bench_app, name="bench")
app.command("predict")(predict)
app.command("health")(health)
app.command("ui")(ui)
app.command("listen")(listen)
app.command("evaluate")(evaluate)
app.command("serve")(serve)
app.command("doctor")(doctor)


@app.callback()
def _root(
    debug: Annotated[
        bool, flag("--debug", "Show the traceback of every error, not only of bugs.", envvar="BRAINSCAN_DEBUG")
    ] = False,
) -> None:
    _state["debug"] = debug


if __name__ == "__main__":
    app()
