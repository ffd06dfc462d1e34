"""The hospital loop's commands and glue: a study fetched from a PACS for `predict`, the
results stored back, and `brainscan listen`, the DICOM node a PACS routes series to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from brainscan.client.hospital import node_config as nc
from brainscan.client.hospital.node_config import MAX_PDU, TIMEOUT
from brainscan.console import Url, fail, field_options, with_options


def _pacs_option(help: str, **settings) -> dict:
    """A field's metadata when it is an option (console.field_options), in --help's PACS panel."""
    return {"help": help, "rich_help_panel": "PACS", **settings}


@dataclass
class StudyRequest:
    """predict's study from a PACS: where to fetch it, which series, and where the results
    go. The fields are predict's options (console.field_options)."""

    dicomweb: str | None = field(
        default=None,
        metadata=_pacs_option(
            "DICOMweb root of a PACS (e.g. http://pacs:8042/dicom-web): predict the image series of --study, found "
            "with QIDO-RS and fetched with WADO-RS, instead of PATHS."
        ),
    )
    study: str | None = field(default=None, metadata=_pacs_option("StudyInstanceUID to fetch from --dicomweb."))
    series: list[str] | None = field(
        default=None,
        metadata=_pacs_option("Only this SeriesInstanceUID of --study (repeatable; default: its MR/CT/PT/OT series)."),
    )
    store: bool = field(
        default=False,
        metadata=_pacs_option(
            "Send each series' DICOM SEG and SR to the PACS with STOW-RS (--store-url, default --dicomweb)."
        ),
    )
    store_url: str | None = field(
        default=None, metadata=_pacs_option("DICOMweb root to store the results in, if not --dicomweb.")
    )

    @property
    def given(self) -> bool:
        return self.dicomweb is not None or self.store

    def check(self, paths) -> None:
        """A usage error (exit 2) for options that do not go together."""
        if self.dicomweb is None:
            raise typer.BadParameter("--store sends results back to a PACS: give --dicomweb")
        if paths:
            raise typer.BadParameter("give PATHS or --dicomweb, not both")
        if not self.study:
            raise typer.BadParameter("--dicomweb needs --study UID")


@dataclass
class DicomwebAccess:
    """How to reach a PACS's DICOMweb: predict's (--dicomweb, --store-url) and listen's
    (--store-url), and where both send their ATNA audit messages. The fields are their options."""

    dicomweb_auth_file: Path | None = field(
        default=None,
        metadata=_pacs_option(
            "File holding 'basic USER:PASSWORD' or 'bearer TOKEN' for the PACS's DICOMweb (or the credentials "
            "themselves in BRAINSCAN_DICOMWEB_AUTH); never on the command line.",
            envvar="BRAINSCAN_DICOMWEB_AUTH_FILE",
        ),
    )
    dicomweb_ca_file: Path | None = field(
        default=None,
        metadata=_pacs_option(
            "CA certificate (PEM) to verify the PACS's TLS certificate with.", envvar="BRAINSCAN_DICOMWEB_CA_FILE"
        ),
    )
    dicomweb_timeout: float = field(
        default=60.0,
        metadata=_pacs_option("Seconds to wait for each answer of the PACS (a request is tried 3 times).", min=1),
    )
    dicomweb_deadline: float = field(
        default=900.0,
        metadata=_pacs_option(
            "Seconds one request to the PACS may take in all, its tries and a series' whole transfer included "
            "(a PACS that trickles its answer is cut off there).",
            min=1,
        ),
    )

    atna: str | None = field(
        default=None,
        metadata=_pacs_option(
            "Send IHE ATNA audit messages (DICOM PS3.15 A.5, RFC 5424 syslog) to this audit record repository: "
            "udp://HOST[:514], tcp://HOST[:514] or tls://HOST[:6514] (docs/pacs.md).",
            envvar="BRAINSCAN_ATNA",
        ),
    )
    atna_ca: Path | None = field(
        default=None,
        metadata=_pacs_option(
            "CA certificate (PEM) the audit repository's TLS certificate must chain to (--atna tls://…).",
            envvar="BRAINSCAN_ATNA_CA_FILE",
        ),
    )

    def open(self, url: str, atna=None, me=None):
        """The PACS at ``url`` (a client.dicomweb.Pacs), reporting to ``atna`` as ``me``."""
        from brainscan.client.hospital import dicomweb as web

        credentials = web.load_credentials(self.dicomweb_auth_file)
        pacs = web.Pacs(url, credentials, self.dicomweb_ca_file, self.dicomweb_timeout, self.dicomweb_deadline)
        if atna is not None:
            pacs.audit_to(atna, me or web.this_process())
        return pacs

    def atna_audit(self, source_id: str, certificate: tuple[Path, Path] | None = None):
        """The ATNA audit of --atna (an ``atna_events.AtnaAudit`` that sends nothing without
        it); what waits is sent when the command ends."""
        import atexit

        from brainscan.client.hospital.atna_events import AtnaAudit

        audit = AtnaAudit.open(
            self.atna, source_id, self.atna_ca, certificate, log=lambda line: typer.echo(line, err=True)
        )
        atexit.register(audit.close)
        return audit


# Give a command the study options as one StudyRequest ``request`` (predict), and the
# DICOMweb access options as one DicomwebAccess ``pacs_access`` (predict, listen).
with_study_request = with_options(field_options(StudyRequest), "request", StudyRequest)
with_dicomweb = with_options(field_options(DicomwebAccess), "pacs_access", DicomwebAccess)


def fetch_from_pacs(pacs, study: str, wanted: list[str], conn, out: Path) -> list[Path]:
    """The study's image series to predict, fetched into OUT/dicomweb/<study>/: all of them,
    or the wanted ones, less those that already have a result of the served models."""
    from brainscan.client.hospital import dicomweb as web
    from brainscan.client.triton.inference import BrainscanClient

    web.check_uid(study, "study")
    with BrainscanClient(conn) as client:
        client.check_ready()
        identity = client.model_identity()
    folders = []
    for uid in pacs.image_series(study, [web.check_uid(u, "series") for u in wanted]):
        if pacs.has_result(study, uid, identity.digest):
            typer.echo(
                f"series {uid}: already has a result of these models ({identity.digest}) in the PACS; skipped", err=True
            )
            continue
        folders.append(pacs.fetch_series(study, uid, out / "dicomweb" / study))
        typer.echo(f"series {uid}: fetched {len(list(folders[-1].glob('*.dcm')))} instances", err=True)
    return folders


STORE_ATTEMPTS = 3  # STOW-RS of one series' results, 2 then 4 s apart


def storer(pacs, wait: float = 2.0):
    """Per DICOM series, once its files are written: STOW-RS of its SEG and SR, tried up to
    STORE_ATTEMPTS times when the PACS refuses (an error answer, or a FailedSOPSequence); the
    record and audit line count the tries. A refusal that outlasts them fails that series alone
    (status STORE); the others still go."""
    import time

    import pydicom

    from brainscan.client.batch.records import Failure
    from brainscan.client.hospital.dicomweb import DicomWebError

    def store(outcome):
        record = outcome.record
        files = [Path(p) for p in record.get("outputs", []) if p.endswith((".seg.dcm", ".sr.dcm"))]
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                pacs.store([pydicom.dcmread(str(f)) for f in files], f"the SEG and SR of series {record['series']}")
                break
            except DicomWebError as exc:
                if attempt == STORE_ATTEMPTS:
                    outcome.error = f"{exc} ({STORE_ATTEMPTS} tries)"
                    outcome.status, outcome.record = Failure.STORE, None
                    return outcome
                typer.echo(f"series {record['series']}: {exc}; trying again", err=True)
                time.sleep(wait * 2 ** (attempt - 1))
        record["stored"] = pacs.url
        if attempt > 1:
            record["store_attempts"] = attempt
        typer.echo(f"series {record['series']}: SEG and SR stored in {pacs.url}", err=True)
        return outcome

    return store


@with_dicomweb
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
    rules: Annotated[
        Path | None,
        typer.Option(
            help=(
                "A site's rules file (JSON) narrowing the served models' intended use (docs/intended-use.md); "
                "unknown keys, or rules that widen it, exit 2."
            )
        ),
    ] = None,
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
    tls_cert: Annotated[
        Path | None, typer.Option(help="DICOM TLS: this node's certificate (PEM); with --tls-key and --tls-ca.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="DICOM TLS: this node's private key (PEM).")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="DICOM TLS: the CA bundle (PEM) callers' certificates must chain to; callers must show one."),
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
) -> None:
    """A DICOM node (C-STORE SCP) for a PACS to route MR series to: each series is predicted
    once complete (--idle seconds without a new object) and its DICOM SEG and SR go back by
    C-STORE (--store-to) or STOW-RS (--store-url). A series outside the served models'
    intended use gets no SEG, and an SR saying it was not analysed and why. Runs until Ctrl-C."""
    import signal
    import threading

    from brainscan.client.hospital import atna_events, node_config, node_steps, node_tls
    from brainscan.client.hospital import listener as node
    from brainscan.client.triton.inference import Connection

    if (store_to is None) == (store_url is None):
        raise typer.BadParameter("give one of --store-to AET@HOST:PORT or --store-url URL: where the results go")
    if store_tls and (store_to is None or tls_cert is None):
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
            tls=node_tls.TlsFiles.of(tls_cert, tls_key, tls_ca),
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
    conn = Connection(url) if url else Connection()
    audit_path = config.audit_path
    atna = pacs_access.atna_audit(ae_title, (config.tls.certificate, config.tls.key) if config.tls else None)
    if destination is not None:
        tls = config.tls.client() if store_tls and config.tls else None
        send = node_steps.c_store(destination, ae_title, tls, atna)
    else:
        send = node_steps.stow(pacs_access.open(store_url, atna, atna_events.node(ae_title, host)))
    listener = node.Listener(
        config,
        node_steps.predict_series(conn, Path(spool).resolve(), audit_path, rules),
        send,
        log=lambda line: typer.echo(line, err=True),
        atna=atna,
    )
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
