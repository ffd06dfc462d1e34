"""The connection options that predict, health, ui and listen share, each with its
environment variable and Triton's client's short flag where it has one."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.console import Url, flag, with_options

Protocol = Annotated[
    contract.Protocol,
    typer.Option(
        "-i", "--protocol", envvar="BRAINSCAN_PROTOCOL", help="Protocol to talk to Triton.", case_sensitive=False
    ),
]
Ssl = Annotated[bool, typer.Option("--ssl", envvar="BRAINSCAN_SSL", help="TLS (grpcs/https).")]
RootCerts = Annotated[
    Path | None,
    typer.Option(
        "--root-certificates",
        envvar="BRAINSCAN_ROOT_CERTIFICATES",
        help="PEM of the CA that signed the server's certificate (default: the system's).",
    ),
]
PrivateKey = Annotated[
    Path | None,
    typer.Option(
        "--private-key", envvar="BRAINSCAN_PRIVATE_KEY", help="Client key (PEM) for servers that verify clients."
    ),
]
CertChain = Annotated[
    Path | None,
    typer.Option(
        "--certificate-chain",
        envvar="BRAINSCAN_CERTIFICATE_CHAIN",
        help="Client certificate chain (PEM), with --private-key.",
    ),
]
Model = Annotated[str, typer.Option("-m", "--model", envvar="BRAINSCAN_MODEL", help="Ensemble to call.")]
ModelVersion = Annotated[
    str,
    typer.Option(
        "-x",
        "--model-version",
        envvar="BRAINSCAN_MODEL_VERSION",
        help="Version of --model (default: the server's latest).",
    ),
]
SharedMemory = Annotated[
    bool,
    flag(
        "--shared-memory",
        (
            "Send series' slices (and get their masks) through system shared memory: a server on this machine, run by "
            "this user, and its admin key file."
        ),
        envvar="BRAINSCAN_SHARED_MEMORY",
    ),
]
AdminKeyFile = Annotated[
    Path | None,
    typer.Option(
        envvar=contract.ADMIN_KEY_ENV,
        help="The server's admin key file (brainscan serve's), which its shared-memory API needs.",
    ),
]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for each answer.")]


# The connection options, in the order --help lists them: (name, annotation, default).
CONNECTION_OPTIONS = (
    ("url", Url, None),
    ("protocol", Protocol, contract.Protocol.GRPC),
    ("ssl", Ssl, False),
    ("root_certificates", RootCerts, None),
    ("private_key", PrivateKey, None),
    ("certificate_chain", CertChain, None),
    ("model", Model, contract.ENSEMBLE),
    ("model_version", ModelVersion, ""),
    ("shared_memory", SharedMemory, False),
    ("admin_key_file", AdminKeyFile, None),
)


def _connector(**options):
    return functools.partial(connection, **options)


# Gives a command the connection options (--help lists them after the command's own); it
# receives them as one ``connect`` callable: ``connect(timeout, retries)`` -> Connection
# (a bad combination is a usage error, exit 2).
with_connection = with_options(CONNECTION_OPTIONS, "connect", _connector)


def connection(
    timeout: float = 60.0,
    retries: int = 0,
    *,
    url,
    protocol,
    ssl,
    root_certificates,
    private_key,
    certificate_chain,
    model,
    model_version,
    shared_memory=False,
    admin_key_file=None,
):
    """The options as a Connection; a bad combination is a usage error (exit 2)."""
    from brainscan.client.triton.connection import Connection

    try:
        return Connection(
            url,
            protocol,
            ssl or bool(root_certificates or certificate_chain),
            root_certificates,
            private_key,
            certificate_chain,
            model,
            model_version,
            timeout,
            retries,
            shared_memory=shared_memory,
            admin_key_file=admin_key_file,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
