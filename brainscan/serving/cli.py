"""`brainscan serve`: the embedded (or a given) Triton on a checked repository, with its
security options, the watchdog, and a clean stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from brainscan import contract
from brainscan.console import with_options

if TYPE_CHECKING:
    from brainscan.serving.security import GrpcTls


@dataclass(frozen=True)
class ServeSecurity:
    """serve's security options: gRPC TLS (a GrpcTls, or None) and the file of the admin key."""

    tls: GrpcTls | None
    admin_key_file: Path | None

    def admin_key(self) -> str | None:
        from brainscan.serving import read_admin_key

        return read_admin_key(self.admin_key_file) if self.admin_key_file else None


def _security(tls_certificate: Path | None, tls_key: Path | None, tls_client_ca: Path | None, admin_key_file):
    """ServeSecurity from the options; TLS options that do not go together are a usage error (exit 2)."""
    if (tls_certificate is None) != (tls_key is None) or (tls_client_ca and not tls_certificate):
        raise typer.BadParameter("gRPC TLS needs --tls-certificate and --tls-key (and --tls-client-ca only with them)")
    from brainscan.serving.security import GrpcTls

    return ServeSecurity(GrpcTls(tls_certificate, tls_key, tls_client_ca) if tls_certificate else None, admin_key_file)


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
    security: ServeSecurity | None = None,  # SECURITY_OPTIONS
) -> None:
    """Run Triton Inference Server on a model repository until Ctrl-C, SIGTERM or SIGHUP:
    the binary shipped in nvidia-pytriton (no Docker, no GPU; local flavour), or another
    tritonserver with --tritonserver. A watchdog restarts it when real inferences fail
    (a crashed python stub is not restarted by Triton itself)."""
    from brainscan.serving import Ports, ServerError, TritonServer, Watchdog

    tls, admin_key = security.tls, security.admin_key()  # type: ignore[union-attr]  (with_options gives it)
    server = TritonServer(
        repository,
        host,
        Ports(grpc_port, http_port, metrics_port),
        log_file,
        binary=tritonserver,
        backend_directory=backend_directory,
        metrics_host=metrics_host,
        http_host=http_host,
        grpc_tls=tls,  # the security options
        admin_key=admin_key,
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
        admin = f"with the key in {security.admin_key_file}" if admin_key else f"off (no {contract.ADMIN_KEY_ENV})"
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
