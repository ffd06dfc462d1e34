"""The `brainscan` command: one sub-app per command group; heavy imports stay inside the
commands so `--help` is instant."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from brainscan import contract

# TensorFlow prints C++ start-up chatter unless told otherwise; users can still override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from brainscan.benchmarks.cli import bench_app
from brainscan.client.cli import health, predict, ui
from brainscan.client.pacs_cli import listen
from brainscan.console import ReportFormat, ReportFormatOption, fail, with_options
from brainscan.errors import EXIT_FAILED, BrainscanError
from brainscan.export.cli import export_app
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


def _security(tls_certificate: Path | None, tls_key: Path | None, tls_client_ca: Path | None, admin_key_file):
    """serve's security options: gRPC TLS (a GrpcTls, or None) and the admin key's file; TLS
    options that do not go together are a usage error (exit 2)."""
    if (tls_certificate is None) != (tls_key is None) or (tls_client_ca and not tls_certificate):
        raise typer.BadParameter("gRPC TLS needs --tls-certificate and --tls-key (and --tls-client-ca only with them)")
    from brainscan.serving.security import GrpcTls

    tls = GrpcTls(tls_certificate, tls_key, tls_client_ca) if tls_certificate else None
    return {"tls": tls, "admin_key_file": admin_key_file}


SECURITY_PANEL = "Security"
SECURITY_OPTIONS = (
    (
        "tls_certificate",
        Annotated[
            Path | None,
            typer.Option(
                envvar="BRAINSCAN_TLS_CERTIFICATE",
                rich_help_panel=SECURITY_PANEL,
                help="Serve gRPC over TLS with this certificate (PEM); HTTP and metrics then listen on loopback only.",
            ),
        ],
        None,
    ),
    (
        "tls_key",
        Annotated[
            Path | None,
            typer.Option(
                envvar="BRAINSCAN_TLS_KEY",
                rich_help_panel=SECURITY_PANEL,
                help="The server certificate's private key (PEM).",
            ),
        ],
        None,
    ),
    (
        "tls_client_ca",
        Annotated[
            Path | None,
            typer.Option(
                envvar="BRAINSCAN_TLS_CLIENT_CA",
                rich_help_panel=SECURITY_PANEL,
                help="Mutual TLS: accept only clients whose certificate this CA signed.",
            ),
        ],
        None,
    ),
    (
        "admin_key_file",
        Annotated[
            Path | None,
            typer.Option(
                envvar=contract.ADMIN_KEY_ENV,
                rich_help_panel=SECURITY_PANEL,
                help=(
                    f"File holding the key that Triton's administrative APIs ({', '.join(contract.ADMIN_APIS)}) "
                    f"require in the '{contract.ADMIN_HEADER}' header; without it they are off. Inference, health, "
                    "metadata and statistics need no key."
                ),
            ),
        ],
        None,
    ),
)


@app.command("serve")
@with_options(SECURITY_OPTIONS, "security", _security)
def serve(
    repository: Annotated[
        str,
        typer.Option(
            envvar="BRAINSCAN_REPOSITORY",
            help=(
                "Model repository: a folder (default: the one `make demo` built) or "
                "s3://[http(s)://host:port/]bucket/path, with credentials in AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY."
            ),
        ),
    ] = str(contract.demo_repository()),
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")
    ] = contract.DEFAULT_HOST,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = contract.GRPC_PORT,
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = contract.HTTP_PORT,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = contract.METRICS_PORT,
    log_file: Annotated[Path | None, typer.Option(help="Where tritonserver's log goes (default: a temp file).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the ensemble to become ready.")] = 180.0,
    http_host: Annotated[
        str | None,
        typer.Option(help="Address for plain HTTP (default: --host; 127.0.0.1 with TLS or with the embedded server)."),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Address for the Prometheus metrics (default: as HTTP).")
    ] = None,
    tritonserver: Annotated[
        Path | None,
        typer.Option(
            envvar="BRAINSCAN_TRITONSERVER",
            help=(
                "Another tritonserver binary, e.g. the NGC image's /opt/tritonserver/bin/tritonserver (default: the "
                "one in nvidia-pytriton)."
            ),
        ),
    ] = None,
    backend_directory: Annotated[
        Path | None, typer.Option(help="Backends of --tritonserver (default: its ../backends).")
    ] = None,
    watchdog: Annotated[
        bool,
        typer.Option(
            help="Send a real inference every --watchdog-interval seconds and restart the server when it keeps failing."
        ),
    ] = True,
    watchdog_interval: Annotated[float, typer.Option(help="Seconds between two watchdog probes.")] = 5.0,
    security: dict | None = None,  # SECURITY_OPTIONS
) -> None:
    """Run Triton Inference Server on a model repository until Ctrl-C, SIGTERM or SIGHUP:
    the binary shipped in nvidia-pytriton (no Docker, no GPU; local flavour), or another
    tritonserver with --tritonserver. A watchdog restarts it when real inferences fail
    (a crashed python stub is not restarted by Triton itself)."""
    from brainscan.serving import Ports, ServerError, TritonServer, Watchdog, read_admin_key

    tls, admin_key_file = security["tls"], security["admin_key_file"]
    admin_key = read_admin_key(admin_key_file) if admin_key_file else None
    server = TritonServer(
        repository,
        host,
        Ports(grpc_port, http_port, metrics_port),
        log_file,
        grpc_tls=tls,
        binary=tritonserver,
        backend_directory=backend_directory,
        admin_key=admin_key,
        metrics_host=metrics_host,
        http_host=http_host,
    )
    stop_requested = []

    def request_stop(signum, _frame):
        stop_requested.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or SSH session went away
        signal.signal(signum, request_stop)
    try:
        server.start()
        typer.echo(f"tritonserver starting (log: {server.log_file})", err=True)
        server.wait_ready(timeout)
        admin = f"with the key in {admin_key_file}" if admin_key else f"off (no {contract.ADMIN_KEY_ENV})"
        typer.echo(
            f"ready: gRPC{'+TLS' if tls else ''} {host}:{grpc_port}, HTTP {server.http_host}:{http_port}, "
            f"metrics {server.metrics_host}:{metrics_port} - model '{contract.ENSEMBLE}'; admin APIs {admin} "
            "(Ctrl-C to stop)",
            err=True,
        )
        if watchdog:
            Watchdog(server, interval=watchdog_interval, log=lambda line: typer.echo(line, err=True)).run()
        code = server.process.wait()
        raise ServerError(f"tritonserver exited with code {code}:\n{server.log_report()}")
    except KeyboardInterrupt:
        typer.echo("stopping tritonserver…", err=True)
    finally:
        server.stop()
    typer.echo("stopped", err=True)


@app.command("doctor")
def doctor(
    repository: Annotated[
        str,
        typer.Option(
            envvar="BRAINSCAN_REPOSITORY",
            help="Model repository to check: a folder or s3://… (configs and engine records are read, no weights).",
        ),
    ] = str(contract.PRODUCTION_REPOSITORY),
    tensorrt_version: Annotated[
        str | None,
        typer.Option(
            help="TensorRT version of the target server (default: found here, else the pinned NGC release's)."
        ),
    ] = None,
    compute_capability: Annotated[
        str | None, typer.Option(help="Compute capability of the target GPU, e.g. 9.0 (default: nvidia-smi here).")
    ] = None,
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--sources",
            envvar="BRAINSCAN_SOURCES",
            help=(
                "Folder of training runs (`<network>/model.fp16.onnx`) to compare the engines' source ONNX with when "
                "the path their record holds is not here, e.g. the runs mounted into the server container; "
                "repeatable."
            ),
        ),
    ] = None,
    fmt: ReportFormatOption = ReportFormat.TEXT,
) -> None:
    """Check that a repository's TensorRT engines fit the server that will load them: same
    TensorRT version, same GPU compute capability, optimization profile equal to the config, built
    from the current ONNX. Says what to rebuild; exits 1 on any mismatch. Shows the intended use
    the served classifier declares to clients."""
    from brainscan.export.doctor import Status, advice, declared_use, detect_target, diagnose, table
    from brainscan.storage import local_view

    target = detect_target(tensorrt_version, compute_capability)
    with local_view(repository) as local:
        findings = diagnose(local, target, sources=sources or [])
        use = declared_use(local)
    if str(local) != repository:  # name the bucket, not the skeleton the checks ran on
        for finding in findings:
            finding.detail = finding.detail.replace(str(local), repository)
    verdict = advice(findings, repository) or "the repository is not servable (see above)"
    if fmt is ReportFormat.JSON:
        bad = any(f.bad for f in findings)
        typer.echo(
            json.dumps(
                {
                    "repository": repository,
                    "servable": not bad,
                    "advice": verdict if bad else None,
                    "findings": [dataclasses.asdict(f) for f in findings],
                    "intended_use": use.as_dict() if use else None,
                }
            )
        )
        if bad:
            raise typer.Exit(EXIT_FAILED)
        return
    typer.echo(table(findings))
    typer.echo(
        "intended use the classifier declares:\n  " + "\n  ".join(use.describe())
        if use
        else "intended use: none declared yet (written with the classifier's graph: `brainscan export repository`, "
        "or `export tensorrt` for a tensorrt repository)"
    )
    if any(f.bad for f in findings):
        fail(verdict)
    skipped = [f for f in findings if f.status == Status.NOT_CHECKED]
    typer.echo(
        f"{repository}: no mismatch found"
        + (f" ({len(skipped)} checks skipped: nothing to compare with here)" if skipped else "")
    )


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="BRAINSCAN_DEBUG",
            help="Show the traceback of every error, not only of bugs.",
        ),
    ] = False,
) -> None:
    _state["debug"] = debug


if __name__ == "__main__":
    app()
