"""`brainscan listen`: the DICOM node a PACS routes series to, its options checked and its
parts put together (the listener, its predict and send steps, TLS, metrics, the ATNA audit).
predict's study from a PACS is in ``study``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainscan.client.hospital import node_config as nc
from brainscan.client.hospital.node_config import MAX_PDU, TIMEOUT
from brainscan.client.hospital.node_tls import TlsFiles
from brainscan.client.hospital.study import DicomwebAccess, with_dicomweb
from brainscan.console import Rules, Url, fail, with_options

TLS_PANEL = "DICOM TLS"
TLS_OPTIONS = (
    (
        "tls_cert",
        Annotated[
            Path | None,
            typer.Option(rich_help_panel=TLS_PANEL, help="This node's certificate (PEM); with --tls-key and --tls-ca."),
        ],
        None,
    ),
    (
        "tls_key",
        Annotated[Path | None, typer.Option(rich_help_panel=TLS_PANEL, help="This node's private key (PEM).")],
        None,
    ),
    (
        "tls_ca",
        Annotated[
            Path | None,
            typer.Option(
                rich_help_panel=TLS_PANEL,
                help="The CA bundle (PEM) callers' certificates must chain to; callers must show one.",
            ),
        ],
        None,
    ),
)


def _tls_files(tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None) -> TlsFiles | None:
    """listen's DICOM TLS files: all three or none (a usage error, exit 2, names what is missing)."""
    try:
        return TlsFiles.of(tls_cert, tls_key, tls_ca)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@with_dicomweb
@with_options(TLS_OPTIONS, "tls", _tls_files)
def listen(
    ae_title: Annotated[
        str, typer.Option(help=f"This node's AE title (at most {nc.AE_TITLE_LENGTH} characters).")
    ] = nc.AE_TITLE,
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = nc.PORT,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; 0.0.0.0 takes callers from the network (then name them with --allow-ae)."),
    ] = "127.0.0.1",
    url: Url = None,
    allow_ae: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-ae",
            help=(
                "A calling AE title allowed to send (repeatable). None given: any caller on loopback, none from "
                "elsewhere."
            ),
        ),
    ] = None,
    store_to: Annotated[
        str | None,
        typer.Option(help="Send each series' SEG and SR by C-STORE to AET@HOST:PORT (e.g. the PACS that routed it)."),
    ] = None,
    store_url: Annotated[str | None, typer.Option(help="Send them by STOW-RS to this DICOMweb root instead.")] = None,
    spool: Annotated[
        Path,
        typer.Option(help="Folder for the series being received (and failed/ with the reason of those that failed)."),
    ] = Path("brainscan-spool"),
    idle: Annotated[
        float, typer.Option(min=0.5, help="Seconds without a new object after which a series is complete.")
    ] = nc.IDLE,
    max_series_mb: Annotated[
        int, typer.Option(min=1, help="Largest series accepted, MB; more is refused (Out of Resources).")
    ] = nc.MAX_SERIES_MB,
    max_spool_mb: Annotated[int, typer.Option(min=1, help="Disk the spool may use, MB.")] = nc.MAX_SPOOL_MB,
    audit: Annotated[
        Path | None, typer.Option(help="JSON-lines audit file, one line per series (default: `<spool>/audit.jsonl`).")
    ] = None,
    rules: Rules = None,
    retry_for: Annotated[
        float,
        typer.Option(
            min=0,
            help=(
                "Seconds a series is tried again, with back-off, while Triton or the destination cannot be "
                "reached; then it goes to <spool>/failed/."
            ),
        ),
    ] = nc.RETRY_FOR,
    keep_for: Annotated[
        float,
        typer.Option(
            min=0,
            help=(
                "Seconds a series' received objects and results are kept once its results are stored; objects "
                "of it arriving meanwhile join them and it runs again over all. Then both are deleted."
            ),
        ),
    ] = nc.KEEP_FOR,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on http://HOST:PORT/metrics (HOST: --host); none given, none served."
        ),
    ] = None,
    store_tls: Annotated[
        bool,
        typer.Option(
            help=(
                "Send the results by C-STORE over TLS: this node's certificate, the destination's checked "
                "against --tls-ca."
            )
        ),
    ] = False,
    max_pdu: Annotated[
        int, typer.Option(min=0, help="Largest PDU received, bytes (0: unlimited; pynetdicom's storescp default).")
    ] = MAX_PDU,
    acse_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for an association message.")] = TIMEOUT,
    dimse_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for a DIMSE message.")] = TIMEOUT,
    network_timeout: Annotated[float, typer.Option(min=1, help="Seconds an idle association is kept open.")] = TIMEOUT,
    pacs_access: DicomwebAccess | None = None,  # the DICOMweb options (with_dicomweb)
    tls: TlsFiles | None = None,  # the DICOM TLS options (TLS_OPTIONS)
) -> None:
    """A DICOM node (C-STORE SCP) for a PACS to route MR series to: each series is predicted
    once complete (--idle seconds without a new object) and its DICOM SEG and SR go back by
    C-STORE (--store-to) or STOW-RS (--store-url). A series outside the served models'
    intended use gets no SEG, and an SR saying it was not analysed and why. Runs until Ctrl-C."""
    from brainscan.client.hospital import atna_events, node_config, node_steps
    from brainscan.client.hospital import listener as node
    from brainscan.client.triton.inference import Connection

    if (store_to is None) == (store_url is None):
        raise typer.BadParameter("give one of --store-to AET@HOST:PORT or --store-url URL: where the results go")
    if store_tls and (store_to is None or tls is None):
        raise typer.BadParameter("--store-tls sends by C-STORE (--store-to) with this node's TLS files (--tls-cert…)")
    try:
        destination = node_config.Destination.parse(store_to) if store_to else None
        config = node_config.ListenerConfig(
            ae_title,
            port,
            spool,
            host,
            allow_ae=tuple(allow_ae or ()),
            idle=idle,
            max_series_bytes=max_series_mb << 20,
            max_spool_bytes=max_spool_mb << 20,
            store_to=destination,
            audit=audit,
            retry_for=retry_for,
            keep_for=keep_for,
            metrics_port=metrics_port,
            tls=tls,
            max_pdu=max_pdu,
            acse_timeout=acse_timeout,
            dimse_timeout=dimse_timeout,
            network_timeout=network_timeout,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if len(ae_title) > nc.AE_TITLE_LENGTH:
        raise typer.BadParameter(f"--ae-title {ae_title!r}: at most {nc.AE_TITLE_LENGTH} characters")
    if rules is not None:
        from brainscan.site_rules import read_rules

        read_rules(rules)  # a malformed rules file exits 2 before the node starts
    conn, audit_path = Connection(url) if url else Connection(), config.audit_path
    atna = pacs_access.atna_audit(ae_title, (config.tls.certificate, config.tls.key) if config.tls else None)
    if destination is not None:
        send = node_steps.c_store(
            destination, ae_title, config.tls.client() if store_tls and config.tls else None, atna
        )
    else:
        send = node_steps.stow(pacs_access.open(store_url, atna, atna_events.node(ae_title, host)))
    listener = node.Listener(
        config,
        node_steps.predict_series(conn, Path(spool).resolve(), audit_path, rules),
        send,
        log=lambda line: typer.echo(line, err=True),
        atna=atna,
    )
    _run_until_stopped(listener, host, port)


def _run_until_stopped(listener, host: str, port: int) -> None:
    """Start the node, and stop it cleanly on Ctrl-C or SIGTERM (what it holds stays journaled)."""
    import signal
    import threading

    try:
        listener.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    listener.stop()
    typer.echo("stopped", err=True)
