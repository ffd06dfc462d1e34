"""`brainscan predict`, `brainscan health` and `brainscan ui`."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.client.batch.output import OutputFormat, Reporter, retry_notice, summary, write_failures
from brainscan.client.health import health_of
from brainscan.client.hospital.study import (
    START_A_SERVER,
    DicomwebAccess,
    StudyRequest,
    fetch_study,
    with_dicomweb,
    with_study_request,
)
from brainscan.client.options import Timeout, with_connection
from brainscan.client.ui import DEFAULT_PORT, MAX_UPLOAD_MB
from brainscan.console import EXIT_FAILED, EXIT_UNAVAILABLE, ReportFormat, ReportFormatOption, Rules, fail, flag
from brainscan.contract import SlicePath

SkipExisting = Annotated[bool, typer.Option(help="Resume: skip inputs whose outputs are already in --out.")]
Failures = Annotated[Path | None, typer.Option(help="JSON report of every failure (default: `<out>/failures.json`).")]
Evaluate = Annotated[bool, typer.Option(help="Compare with X_mask.* ground truth beside each X.* (kaggle_3m layout).")]
ProgressBar = Annotated[bool | None, typer.Option(help="Progress bar on stderr (default: when stderr is a terminal).")]


@with_connection
@with_dicomweb
@with_study_request
def predict(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help=(
                "Image files, NIfTI volumes (.nii, .nii.gz), DICOM files or folders (searched recursively; DICOM "
                "files are grouped into series)."
            )
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Folder for `<name>.mask.png` and `<name>.overlay.png` per image, `<name>.mask.nii.gz` and "
                "`<name>.summary.json` per volume, and `failures.json`."
            )
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", help="What goes to stdout (json: one object per line).", case_sensitive=False),
    ] = OutputFormat.TABLE,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as --format json.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight at once.")] = 4,
    timeout: Timeout = 60.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0, help="Attempts after the first while the server is unreachable (back-off 0.5 s doubling to 8 s)."
        ),
    ] = 8,
    skip_existing: SkipExisting = False,
    failures: Failures = None,
    evaluate: Evaluate = False,
    progress: ProgressBar = None,
    slices: Annotated[
        SlicePath,
        typer.Option(
            case_sensitive=False,
            help=(
                "How a volume's slices reach the server: pixels (raw, many a request, to the brainscan_pixels ensemble "
                "when the server serves it: no PNG on either side) or png (one 16-bit PNG each, through the brainscan "
                "ensemble)."
            ),
        ),
    ] = SlicePath.PIXELS,
    segment_all: Annotated[
        bool,
        flag(
            "--segment-all",
            (
                "On the pixels path, run the segmenter on every slice of a series (by default only on those the "
                "classifier does not rule out, with the rule-out threshold the served classifier declares, and one "
                "slice on each side)."
            ),
        ),
    ] = False,
    audit: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="PACS",
            help="JSON-lines audit file, one line per DICOM series (default: `<out>/audit.jsonl`).",
        ),
    ] = None,
    rules: Rules = None,
    outside_intended_use: Annotated[
        bool,
        flag(
            "--outside-intended-use",
            (
                "Research only: analyse inputs outside the intended use too; every output of those says so (JSON, "
                "table, PNG and NIfTI notes, SEG and SR descriptions). Never the default."
            ),
            rich_help_panel="Intended use",
        ),
    ] = False,
    request: StudyRequest | None = None,  # the study options (with_study_request)
    connect=None,  # the connection options (with_connection)
    pacs_access: DicomwebAccess | None = None,  # the DICOMweb options (with_dicomweb)
) -> None:
    """Send images to the `brainscan` ensemble (one request per file) and the axial slices of
    volumes and DICOM series as raw pixels to `brainscan_pixels` (up to the server's batch a
    request; --slices png sends PNGs instead), --concurrency requests in flight, and report,
    in input order, probability, label and tumour area; for volumes also tumour volume (ml),
    slices with tumour and the largest cross-section. Writes masks, red overlays and NIfTI
    mask volumes with --out, and for each DICOM series a DICOM SEG and SR. Inputs outside
    the served models' intended use (a series' headers, or pixels unlike the training data)
    are refused, not analysed: no mask, no SEG, the reason in the table and JSON, and for a
    DICOM series an SR saying so; a refusal is not an error. With --dicomweb the series come
    from a PACS, and --store sends their SEG and SR back; series that already have a result
    of the same served models there are skipped. Exit codes: 0 all done (refusals included),
    1 some inputs failed (the others finished), 2 bad usage, 3 server unreachable (before
    the run, or for longer than the retries mid-run)."""
    import asyncio
    import sys

    from brainscan.client.batch.engine import RunOptions
    from brainscan.client.triton.inference import ModelNotReadyError, ServerUnavailableError

    fmt = OutputFormat.JSON if as_json else fmt
    if skip_existing and out is None:
        raise typer.BadParameter("--skip-existing needs --out (it looks for the outputs there)")
    if rules is not None:
        from brainscan.site_rules import read_rules

        read_rules(rules)  # a malformed rules file exits 2 before anything is fetched or sent
    conn = connect(timeout, retries)
    deliver = None
    if request.given:
        request.check(paths)
        fetched = fetch_study(request, pacs_access, conn, out)
        if fetched is None:  # every series has a result of these models already
            return
        paths, out, deliver = fetched
    if not paths:
        raise typer.BadParameter("give the images, volumes or DICOM folders to predict, or --dicomweb")
    inputs, rejected = _inputs(paths)
    failures = failures or (out / "failures.json" if out is not None else None)
    show_progress = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    options = RunOptions(
        out=out,
        concurrency=concurrency,
        skip_existing=skip_existing,
        evaluate=evaluate,
        audit=audit,
        deliver=deliver,
        rules=rules,
        slices=slices,
        segment_all=segment_all,
        outside_intended_use=outside_intended_use,
    )
    try:
        outcomes = asyncio.run(_run_with_progress(inputs, conn, options, Reporter(fmt, evaluate), show_progress))
    except ServerUnavailableError as exc:
        fail(f"{exc} ({START_A_SERVER})", EXIT_UNAVAILABLE)
    except ModelNotReadyError as exc:
        fail(str(exc))
    _conclude(outcomes, rejected, conn, failures, summary(outcomes, time.perf_counter() - started, out), fmt)


def _inputs(paths: list[Path]) -> tuple[list, list]:
    """The inputs under ``paths``, and the DICOM files that could not be read (each said)."""
    from brainscan.client.imaging.files import collect_inputs

    inputs, rejected, ignored = collect_inputs(paths)
    for _, reason in rejected:
        typer.echo(f"failed: {reason}", err=True)
    if ignored:
        typer.echo(f"ignored {len(ignored)} DICOM file(s) that are not image slices, e.g. {ignored[0][0]}", err=True)
    if not inputs:
        fail("no images, NIfTI volumes or DICOM series found in the given paths")
    return inputs, rejected


def _conclude(outcomes, rejected, conn, failures: Path | None, closing: str, fmt: OutputFormat) -> None:
    """The failures' report, the closing line, and the exit code: 3 when the server went away
    for good, 1 when some input failed, else 0."""
    from brainscan.client.batch.records import Failure

    aborted = any(o.status is Failure.UNAVAILABLE for o in outcomes)
    if failures is not None:
        write_failures(failures, conn, outcomes, rejected, aborted)
    typer.echo(closing, err=fmt is not OutputFormat.TABLE)
    if aborted:
        fail(f"the server at {conn.address} stayed unreachable; rerun with --skip-existing to resume", EXIT_UNAVAILABLE)
    if rejected or any(o.error for o in outcomes):
        if failures is not None:
            typer.echo(f"failures listed in {failures}", err=True)
        raise typer.Exit(EXIT_FAILED)


async def _run_with_progress(inputs, conn, options, reporter, show: bool):
    from brainscan.client.batch.engine import run_inputs

    if not show:
        return await run_inputs(inputs, conn, options, reporter, retry_notice())
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("predicting", total=len(inputs))

        def report(outcome):
            reporter(outcome)
            bar.advance(task)

        return await run_inputs(inputs, conn, options, report, retry_notice())


@with_connection
def health(
    wait: Annotated[float, typer.Option(help="Keep trying for this many seconds before giving up.")] = 0.0,
    infer: Annotated[
        bool,
        flag(
            "--infer",
            (
                "Also send a small real image through the model and check the answer (a liveness check that readiness "
                "flags cannot fake)."
            ),
        ),
    ] = False,
    fmt: ReportFormatOption = ReportFormat.TEXT,
    connect=None,  # the connection options (with_connection)
) -> None:
    """Say whether the server and every model of the ensemble are ready (exit 0 if so,
    1 if something is not ready or --infer fails, 3 if no server answers); with several
    servers, each of them (--format json: one object per server)."""
    conn = connect(10.0)
    servers = conn.servers if conn.balanced and not conn.url.startswith("dns:") else [None]
    codes = []
    for server in servers:  # each server of a list, one after the other
        record = health_of(conn if server is None else replace(conn, url=server), wait, infer)
        codes.append(record.exit_code)
        if fmt is ReportFormat.JSON:
            typer.echo(json.dumps(record.as_json()))
        else:
            record.print(several=server is not None)
    if any(codes):
        raise typer.Exit(max(codes))


@with_connection
def ui(
    timeout: Timeout = 60.0,
    host: Annotated[
        str, typer.Option(help="Address the page listens on; anything but loopback needs --auth-file.")
    ] = contract.DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port of the page.")] = DEFAULT_PORT,
    auth_file: Annotated[
        Path | None,
        typer.Option(envvar="BRAINSCAN_UI_AUTH_FILE", help="user:password lines; the page asks for a login."),
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Largest upload accepted, in MB.")] = MAX_UPLOAD_MB,
    connect=None,  # the connection options (with_connection)
) -> None:
    """Web page (Gradio): upload an MRI slice, see label and probability, the slice with the
    tumour in red, and the mask. Needs the ui extra (`pip install '.[ui]'` in the checkout) and a running server.
    Uploads are deleted once analysed; what the page shows is kept 10 minutes at most."""
    conn = connect(timeout, retries=1)
    try:
        from brainscan.client import ui as page
    except ImportError as exc:
        fail(f"the web UI needs Gradio ({exc}): pip install '.[ui]' in the brainscan checkout")
    logins = page.read_logins(auth_file) if auth_file else None
    page.launch_options(host, port, logins, max_upload_mb)  # refuse before anything starts
    typer.echo(
        f"brainscan ui on http://{host}:{port} (server {conn.address}, model {conn.target}"
        f"{', login required' if logins else ''}); Ctrl-C to stop",
        err=True,
    )
    page.serve(conn, host, port, logins, max_upload_mb)
