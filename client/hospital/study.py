"""predict's study from a PACS (StudyRequest: which study, which series, whether results go
back), how a PACS's DICOMweb is reached (DicomwebAccess, shared with `brainscan listen`, with
the ATNA audit's options), and the fetch and store steps of `predict --dicomweb`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from brainscan.console import fail, field_options, with_options


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


START_A_SERVER = "start one with `brainscan serve`, or check --url/--protocol/--ssl"


def fetch_study(request: StudyRequest, access: DicomwebAccess, conn, out: Path | None):
    """predict's study from a PACS: its image series fetched into ``out`` (a temporary folder
    when None), and how each series' results go back (STOW-RS with --store). Returns (the
    series' folders, the output folder, the deliverer or None), or None when every series
    already has a result of the served models; a PACS or server that fails ends the command."""
    import shutil
    import tempfile

    from brainscan.client.hospital import dicomweb as web
    from brainscan.client.triton.inference import ModelNotReadyError, ServerUnavailableError
    from brainscan.errors import EXIT_UNAVAILABLE

    made_out = out is None
    out = out or Path(tempfile.mkdtemp(prefix="brainscan-dicomweb-"))
    deliver = None
    try:
        atna = access.atna_audit("brainscan")
        pacs = access.open(request.dicomweb, atna)
        if request.store:
            deliver = storer(access.open(request.store_url, atna) if request.store_url else pacs)
        paths = fetch_from_pacs(pacs, request.study, request.series or [], conn, out)
    except (web.DicomWebError, ServerUnavailableError, ModelNotReadyError) as exc:
        if made_out:  # nothing of this run is worth keeping
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, ServerUnavailableError):
            fail(f"{exc} ({START_A_SERVER})", EXIT_UNAVAILABLE)
        fail(str(exc))
    if not paths:
        typer.echo(f"study {request.study}: every image series already has a result from the served models", err=True)
        if made_out:
            shutil.rmtree(out, ignore_errors=True)
        return None
    return paths, out, deliver


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
        files = [Path(p) for p in record.outputs or [] if p.endswith((".seg.dcm", ".sr.dcm"))]
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                pacs.store([pydicom.dcmread(str(f)) for f in files], f"the SEG and SR of series {record.series}")
                break
            except DicomWebError as exc:
                if attempt == STORE_ATTEMPTS:
                    outcome.error = f"{exc} ({STORE_ATTEMPTS} tries)"
                    outcome.status, outcome.record = Failure.STORE, None
                    return outcome
                typer.echo(f"series {record.series}: {exc}; trying again", err=True)
                time.sleep(wait * 2 ** (attempt - 1))
        record.stored = pacs.url
        if attempt > 1:
            record.store_attempts = attempt
        typer.echo(f"series {record.series}: SEG and SR stored in {pacs.url}", err=True)
        return outcome

    return store
