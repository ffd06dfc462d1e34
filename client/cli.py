"""`brainscan predict`, `brainscan health` and `brainscan bench`."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.console import EXIT_FAILED, EXIT_UNAVAILABLE, Url, fail

NAME_WIDTH = 40
FORMATS = ("table", "json", "csv")
CSV_COLUMNS = (
    "file",
    "kind",
    "probability",
    "label",
    "area_pixels",
    "area_fraction",
    "height",
    "width",
    "slices",
    "tumour_volume_ml",
    "tumour_slices",
    "largest_cross_section_mm2",
    "largest_cross_section_slice",
    "truth",
    "dice",
    "error",
    "status",
)

# The connection options, shared by predict, health and ui.
Protocol = Annotated[str, typer.Option(help="grpc or http.", case_sensitive=False)]
Ssl = Annotated[bool, typer.Option("--ssl", help="TLS (grpcs/https).")]
RootCerts = Annotated[
    Path | None,
    typer.Option(
        "--root-certificates", help="PEM of the CA that signed the server's certificate (default: the system's)."
    ),
]
PrivateKey = Annotated[
    Path | None, typer.Option("--private-key", help="Client key (PEM) for servers that verify clients.")
]
CertChain = Annotated[
    Path | None, typer.Option("--certificate-chain", help="Client certificate chain (PEM), with --private-key.")
]
Model = Annotated[str, typer.Option(help="Ensemble to call.")]
ModelVersion = Annotated[str, typer.Option(help="Version of --model (default: the server's latest).")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for each answer.")]


def connection(
    url, protocol, ssl, root_certificates, private_key, certificate_chain, model, model_version, timeout, retries=0
):
    """The options as a Connection; a bad combination is a usage error (exit 2)."""
    from brainscan.client.inference import Connection

    try:
        return Connection(
            url,
            protocol.lower(),
            ssl or bool(root_certificates or certificate_chain),
            root_certificates,
            private_key,
            certificate_chain,
            model,
            model_version,
            timeout,
            retries,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def shorten(text: str) -> str:
    """The file column: the path, cut from the left with an ellipsis when too long."""
    text = str(text)
    return text if len(text) <= NAME_WIDTH else "…" + text[-(NAME_WIDTH - 1) :]


def _row(record: dict) -> str:
    line = (
        f"{shorten(record['file']):<{NAME_WIDTH}} {record['probability']:>11.4f} {record['label']:<9} "
        f"{record['area_pixels']:>8d} {100 * record['area_fraction']:>6.2f}%"
    )
    if "truth" in record:
        line += f" {record['truth']:<9} {record.get('dice', ''):>6}"
    if "tumour_volume_ml" in record:
        largest = record["largest_cross_section_slice"]
        line += (
            f"\n  └ volume: {record['tumour_volume_ml']:.2f} ml in {record['tumour_slices']} of {record['slices']} "
            f"axial slices"
            + (
                f", largest cross-section {record['largest_cross_section_mm2']:.1f} mm² (slice {largest})"
                if largest is not None
                else ""
            )
        )
    return line


def _summary(outcomes, elapsed: float, out: Path | None) -> str:
    from brainscan.metrics import classification_metrics

    records = [o.record for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.error]
    skipped = sum(o.skipped for o in outcomes)
    sent = sum(o.requests for o in outcomes)
    text = (
        f"{len(records)} of {len(outcomes)} inputs in {elapsed:.1f} s "
        f"({sent} image{'s' if sent != 1 else ''} sent, {sent / max(elapsed, 1e-9):.1f} images/s)"
    )
    if failed:
        text += f", {len(failed)} failed"
    if skipped:
        text += f", {skipped} skipped (outputs exist)"
    labelled = [r for r in records if "truth" in r]
    if labelled:
        accuracy = classification_metrics(
            [r["probability"] for r in labelled], [r["truth"] == "tumour" for r in labelled]
        )["accuracy"]
        text += f"; accuracy {accuracy:.3f} on {len(labelled)} labelled images"
        dices = [r["dice"] for r in labelled if "dice" in r]
        if dices:
            text += f", mean Dice {sum(dices) / len(dices):.3f} on {len(dices)} tumour images"
    if out is not None:
        text += f"; outputs in {out}"
    return text


class _Reporter:
    """Prints each outcome in the chosen format as it arrives (in input order)."""

    def __init__(self, fmt: str, evaluate: bool):
        import csv
        import sys

        self.fmt, self.evaluate, self.started = fmt, evaluate, False
        if fmt == "csv":
            self.writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")

    def _header(self) -> None:
        self.started = True
        if self.fmt == "table":
            header = f"{'file':<{NAME_WIDTH}} {'probability':>11} {'label':<9} {'area px':>8} {'area %':>7}"
            typer.echo(header + (f" {'truth':<9} {'dice':>6}" if self.evaluate else ""))
        elif self.fmt == "csv":
            self.writer.writeheader()

    def __call__(self, outcome) -> None:
        if outcome.skipped:
            return
        if not self.started:
            self._header()
        if self.fmt == "json":
            typer.echo(json.dumps(outcome.record if outcome.ok else outcome.failure()))
        elif self.fmt == "csv":
            self.writer.writerow(outcome.record if outcome.ok else outcome.failure())
        elif outcome.ok:
            typer.echo(_row(outcome.record))
        else:
            typer.echo(f"{shorten(outcome.input.display)}  failed: {outcome.error}", err=True)


def _retry_notice():
    """Tells the user, at most every 2 s, that the server is being waited for."""
    last = [0.0]

    def notice(error: str, delay: float, attempt: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            typer.echo(
                f"server unavailable ({error.splitlines()[0][:120]}); retrying in {delay:.1f} s "
                f"(attempt {attempt + 1})",
                err=True,
            )

    return notice


def write_failures(path: Path, conn, outcomes, rejected, aborted: bool) -> None:
    from brainscan.atomic import write_bytes_atomic

    failures = [o.failure() for o in outcomes if o.error]
    failures += [{"file": str(p), "kind": "dicom", "error": reason, "status": "READ"} for p, reason in rejected]
    report = {
        "server": conn.address,
        "model": conn.target,
        "inputs": len(outcomes),
        "done": sum(o.ok for o in outcomes),
        "skipped": sum(o.skipped for o in outcomes),
        "failed": len(failures),
        "server_unreachable": aborted,
        "failures": failures,
    }
    write_bytes_atomic(path, (json.dumps(report, indent=1) + "\n").encode())


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
    url: Url = None,
    protocol: Protocol = "grpc",
    ssl: Ssl = False,
    root_certificates: RootCerts = None,
    private_key: PrivateKey = None,
    certificate_chain: CertChain = None,
    model: Model = contract.ENSEMBLE,
    model_version: ModelVersion = "",
    out: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Folder for <name>.mask.png and <name>.overlay.png per image, <name>.mask.nii.gz and "
                "<name>.summary.json per volume, and failures.json."
            )
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, json (one object per line) or csv, on stdout.", case_sensitive=False)
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as --format json.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight at once.")] = 4,
    timeout: Timeout = 60.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0, help="Attempts after the first while the server is unreachable (back-off 0.5 s doubling to 8 s)."
        ),
    ] = 8,
    skip_existing: Annotated[
        bool, typer.Option(help="Resume: skip inputs whose outputs are already in --out.")
    ] = False,
    failures: Annotated[
        Path | None, typer.Option(help="JSON report of every failure (default: <out>/failures.json with --out).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Compare with X_mask.* ground truth beside each X.* (kaggle_3m layout).")
    ] = False,
    progress: Annotated[
        bool | None, typer.Option(help="Progress bar on stderr (default: when stderr is a terminal).")
    ] = None,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            rich_help_panel="PACS",
            help=(
                "DICOMweb root of a PACS (e.g. http://pacs:8042/dicom-web): predict the image series of --study, "
                "found with QIDO-RS and fetched with WADO-RS, instead of PATHS."
            ),
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(rich_help_panel="PACS", help="StudyInstanceUID to fetch from --dicomweb.")
    ] = None,
    series: Annotated[
        list[str] | None,
        typer.Option(
            "--series",
            rich_help_panel="PACS",
            help="Only this SeriesInstanceUID of --study (repeatable; default: its MR/CT/PT/OT series).",
        ),
    ] = None,
    store: Annotated[
        bool,
        typer.Option(
            rich_help_panel="PACS",
            help="Send each series' DICOM SEG and SR to the PACS with STOW-RS (--store-url, default --dicomweb).",
        ),
    ] = False,
    store_url: Annotated[
        str | None,
        typer.Option(rich_help_panel="PACS", help="DICOMweb root to store the results in, if not --dicomweb."),
    ] = None,
    dicomweb_auth_file: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="PACS",
            envvar="BRAINSCAN_DICOMWEB_AUTH_FILE",
            help=(
                "File holding 'basic USER:PASSWORD' or 'bearer TOKEN' for the PACS (or the credentials themselves in "
                "BRAINSCAN_DICOMWEB_AUTH); never on the command line."
            ),
        ),
    ] = None,
    dicomweb_ca_file: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="PACS",
            envvar="BRAINSCAN_DICOMWEB_CA_FILE",
            help="CA certificate (PEM) to verify the PACS's TLS certificate with.",
        ),
    ] = None,
    dicomweb_timeout: Annotated[
        float,
        typer.Option(
            rich_help_panel="PACS",
            min=1,
            help="Seconds to wait for each answer of the PACS (a request is tried 3 times).",
        ),
    ] = 60.0,
    audit: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="PACS",
            help="JSON-lines audit file, one line per DICOM series (default: <out>/audit.jsonl).",
        ),
    ] = None,
) -> None:
    """Send images and volumes to the `brainscan` ensemble (one request per image or axial
    slice, --concurrency in flight) and report, in input order, probability, label and
    tumour area; for volumes also tumour volume (ml), slices with tumour and the largest
    cross-section. Writes masks, red overlays and NIfTI mask volumes with --out, and for each
    DICOM series a DICOM SEG and SR. With --dicomweb the series come from a PACS, and --store
    sends their SEG and SR back; series that already have a result of the same served models
    there are skipped. Exit codes: 0 all done, 1 some inputs failed (the others finished),
    2 bad usage, 3 server unreachable (before the run, or for longer than the retries mid-run)."""
    import asyncio
    import sys

    from brainscan.client.batch import RunOptions
    from brainscan.client.files import collect_inputs
    from brainscan.client.inference import ModelNotReadyError, ServerUnavailableError

    fmt = "json" if as_json else fmt.lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if skip_existing and out is None:
        raise typer.BadParameter("--skip-existing needs --out (it looks for the outputs there)")
    conn = connection(
        url, protocol, ssl, root_certificates, private_key, certificate_chain, model, model_version, timeout, retries
    )
    deliver = None
    if dicomweb is not None or store:
        from brainscan.client import dicomweb as web
        from brainscan.client.pacs_cli import fetch_from_pacs, storer

        if dicomweb is None:
            raise typer.BadParameter("--store sends results back to a PACS: give --dicomweb")
        if paths:
            raise typer.BadParameter("give PATHS or --dicomweb, not both")
        if not study:
            raise typer.BadParameter("--dicomweb needs --study UID")
        made_out = out is None
        out = out or Path(tempfile.mkdtemp(prefix="brainscan-dicomweb-"))
        try:
            credentials = web.load_credentials(dicomweb_auth_file)
            pacs = web.Pacs(dicomweb, credentials, dicomweb_ca_file, dicomweb_timeout)
            if store:
                deliver = storer(
                    web.Pacs(store_url, credentials, dicomweb_ca_file, dicomweb_timeout) if store_url else pacs
                )
            paths = fetch_from_pacs(pacs, study, series or [], conn, out)
        except (web.DicomWebError, ServerUnavailableError, ModelNotReadyError) as exc:
            if made_out:  # nothing of this run is worth keeping
                shutil.rmtree(out, ignore_errors=True)
            if isinstance(exc, ServerUnavailableError):
                fail(f"{exc} (start one with `brainscan serve`, or check --url/--protocol/--ssl)", EXIT_UNAVAILABLE)
            fail(str(exc))
        if not paths:
            typer.echo(f"study {study}: every image series already has a result from the served models", err=True)
            if made_out:
                shutil.rmtree(out, ignore_errors=True)
            return
    if not paths:
        raise typer.BadParameter("give the images, volumes or DICOM folders to predict, or --dicomweb")
    inputs, rejected, ignored = collect_inputs(paths)
    for _, reason in rejected:
        typer.echo(f"failed: {reason}", err=True)
    if ignored:
        typer.echo(f"ignored {len(ignored)} DICOM file(s) that are not image slices, e.g. {ignored[0][0]}", err=True)
    if not inputs:
        fail("no images, NIfTI volumes or DICOM series found in the given paths")
    failures = failures or (out / "failures.json" if out is not None else None)
    reporter = _Reporter(fmt, evaluate)
    show_progress = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    try:
        options = RunOptions(out, concurrency, skip_existing, evaluate, audit, deliver)
        outcomes = asyncio.run(_run_with_progress(inputs, conn, options, reporter, show_progress))
    except ServerUnavailableError as exc:
        fail(f"{exc} (start one with `brainscan serve`, or check --url/--protocol/--ssl)", EXIT_UNAVAILABLE)
    except ModelNotReadyError as exc:
        fail(str(exc))
    aborted = any(o.status == "UNAVAILABLE" for o in outcomes)
    if failures is not None:
        write_failures(failures, conn, outcomes, rejected, aborted)
    typer.echo(_summary(outcomes, time.perf_counter() - started, out), err=fmt != "table")
    if aborted:
        fail(f"the server at {conn.address} stayed unreachable; rerun with --skip-existing to resume", EXIT_UNAVAILABLE)
    if rejected or any(o.error for o in outcomes):
        if failures is not None:
            typer.echo(f"failures listed in {failures}", err=True)
        raise typer.Exit(EXIT_FAILED)


async def _run_with_progress(inputs, conn, options, reporter, show: bool):
    from brainscan.client.batch import run_inputs

    if not show:
        return await run_inputs(inputs, conn, options, reporter, _retry_notice())
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

        return await run_inputs(inputs, conn, options, report, _retry_notice())


def health(
    url: Url = None,
    protocol: Protocol = "grpc",
    ssl: Ssl = False,
    root_certificates: RootCerts = None,
    private_key: PrivateKey = None,
    certificate_chain: CertChain = None,
    model: Model = contract.ENSEMBLE,
    model_version: ModelVersion = "",
    wait: Annotated[float, typer.Option(help="Keep trying for this many seconds before giving up.")] = 0.0,
    infer: Annotated[
        bool,
        typer.Option(
            "--infer",
            help=(
                "Also send a small real image through the model and check the answer (a liveness check that "
                "readiness flags cannot fake)."
            ),
        ),
    ] = False,
) -> None:
    """Say whether the server and every model of the ensemble are ready (exit 0 if so,
    1 if something is not ready or --infer fails, 3 if no server answers); with several
    servers, each of them."""
    conn = connection(url, protocol, ssl, root_certificates, private_key, certificate_chain, model, model_version, 10.0)
    if conn.balanced and not conn.url.startswith("dns:"):  # each server of the list, one after the other
        codes = []
        for server in conn.servers:
            typer.echo(f"{server}:")
            codes.append(_health_of(replace(conn, url=server), wait, infer))
        if any(codes):
            raise typer.Exit(max(codes))
        return
    code = _health_of(conn, wait, infer)
    if code:
        raise typer.Exit(code)


def _health_of(conn, wait: float, infer: bool) -> int:
    """Print one server's state; the exit code it deserves."""
    from brainscan.client.inference import BrainscanClient, InferenceError, ServerUnavailableError

    deadline = time.monotonic() + wait
    while True:
        try:
            with BrainscanClient(conn) as client:
                state = client.health()
            if state["ready"] and all(state["models"].values()) or time.monotonic() >= deadline:
                break
        except (ServerUnavailableError, InferenceError) as exc:
            if time.monotonic() >= deadline:
                typer.echo(f"error: {exc}", err=True)
                return EXIT_UNAVAILABLE
        time.sleep(0.5)
    typer.echo(f"server {conn.address}: live={state['live']} ready={state['ready']}")
    for name, ready in state["models"].items():
        typer.echo(f"  {name:<12} {'ready' if ready else 'NOT READY'}")
    if not (state["ready"] and all(state["models"].values())):
        return EXIT_FAILED
    if infer:
        from brainscan.server import PROBE_SHAPE, probe_image

        started = time.monotonic()
        try:
            with BrainscanClient(conn) as client:
                answer = client.infer(probe_image())
        except (ServerUnavailableError, InferenceError) as exc:
            typer.echo(f"error: inference through {conn.target} failed: {exc}", err=True)
            return EXIT_FAILED
        if answer.mask.shape != PROBE_SHAPE:
            typer.echo(
                f"error: inference through {conn.target} returned a {answer.mask.shape} mask for a {PROBE_SHAPE} image",
                err=True,
            )
            return EXIT_FAILED
        typer.echo(f"  inference    ok ({(time.monotonic() - started) * 1000:.0f} ms)")
    return 0


def ui(
    url: Url = None,
    protocol: Protocol = "grpc",
    ssl: Ssl = False,
    root_certificates: RootCerts = None,
    private_key: PrivateKey = None,
    certificate_chain: CertChain = None,
    model: Model = contract.ENSEMBLE,
    model_version: ModelVersion = "",
    timeout: Timeout = 60.0,
    host: Annotated[
        str, typer.Option(help="Address the page listens on; anything but loopback needs --auth-file.")
    ] = contract.DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    auth_file: Annotated[
        Path | None,
        typer.Option(envvar="BRAINSCAN_UI_AUTH_FILE", help="user:password lines; the page asks for a login."),
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Largest upload accepted, in MB.")] = 20,
) -> None:
    """Web page (Gradio): upload an MRI slice, see label and probability, the slice with the
    tumour in red, and the mask. Needs the ui extra (`pip install '.[ui]'` in the checkout) and a running server.
    Uploads are deleted once analysed; what the page shows is kept 10 minutes at most."""
    conn = connection(
        url, protocol, ssl, root_certificates, private_key, certificate_chain, model, model_version, timeout, retries=1
    )
    try:
        from brainscan.client import ui as page
    except ImportError as exc:
        fail(f"the web UI needs Gradio ({exc}): pip install '.[ui]' in the brainscan checkout")
    try:
        logins = page.read_logins(auth_file) if auth_file else None
        page.launch_options(host, port, logins, max_upload_mb)  # refuse before anything starts
    except page.UiError as exc:
        fail(str(exc))
    typer.echo(
        f"brainscan ui on http://{host}:{port} (server {conn.address}, model {conn.target}"
        f"{', login required' if logins else ''}); Ctrl-C to stop",
        err=True,
    )
    page.serve(conn, host, port, logins, max_upload_mb)


bench_app = typer.Typer(help="Load-test a server with perf_analyzer.", no_args_is_help=True)


@bench_app.command("input-data")
def bench_input_data(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive) to send.")],
    out: Annotated[Path, typer.Option(help="JSON file for perf_analyzer --input-data.")] = Path("perf-input.json"),
    limit: Annotated[int, typer.Option(help="Use at most this many files.")] = 64,
) -> None:
    """Write perf_analyzer --input-data JSON from real images (the IMAGE input as
    length-prefixed bytes), so a load test sends MRI slices, not random bytes."""
    from brainscan.client.files import expand_inputs
    from brainscan.client.perf import write_input_data

    files = [f for f in expand_inputs(inputs) if f.is_file()][:limit]
    if not files:
        fail(f"no image files found in {', '.join(map(str, inputs))}")
    write_input_data(files, out)
    typer.echo(f"wrote {out}: {len(files)} images")


@bench_app.command("setup")
def bench_setup() -> None:
    """Make perf_analyzer runnable here: use one on PATH, else download the PyPI binary and,
    on systems older than glibc 2.38, a Debian 13 C runtime beside it (nothing system-wide)."""
    from brainscan.benchmarks import perf_analyzer

    try:
        command = perf_analyzer.find() or perf_analyzer.install()
    except perf_analyzer.PerfAnalyzerError as exc:
        fail(str(exc))
    typer.echo("perf_analyzer: " + " ".join(command))


def _span(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 2:
        parts.append(1)
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] or parts[2] < 1:
        raise typer.BadParameter(f"{text!r}: write START:END[:STEP], e.g. 1:8")
    return tuple(parts)


@bench_app.command("run")
def bench_run(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive) to send.")],
    url: Url = contract.DEFAULT_URL,
    repository: Annotated[
        Path | None,
        typer.Option(
            help=(
                "The served repository, if it is a folder here holding the ONNX networks (local, onnxruntime "
                "flavours); otherwise they come from --runs."
            )
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results folder; a <date>-<host> folder is made inside.")] = Path(
        "benchmarks/results"
    ),
    concurrency: Annotated[str, typer.Option(help="Ensemble concurrency sweep, START:END[:STEP].")] = "1:8",
    model_concurrency: Annotated[str, typer.Option(help="Sweep of each composing model.")] = "1:4",
    requests: Annotated[
        int,
        typer.Option(
            help=(
                "Requests per perf_analyzer measurement window; when its windows never agree, doubled up to 3 times "
                "for the ensemble and once for each composing model."
            )
        ),
    ] = 200,
    limit: Annotated[int, typer.Option(help="Use at most this many image files.")] = 64,
    composing: Annotated[bool, typer.Option(help="Also load-test each composing model on its own.")] = True,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            "--keras-runs",
            help=(
                "Training runs: classifier/ and segmenter/ with model.onnx (the composing models' inputs and the "
                "ONNX Runtime baseline when the served repository holds no ONNX: the tensorrt flavour, a remote "
                "server) and model.keras (the Keras baseline). Default: the demo's runs."
            ),
        ),
    ] = None,
    baseline_seconds: Annotated[float, typer.Option(help="Seconds each in-process baseline setting runs.")] = 3.0,
    admin_key_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Ignored: statistics need no key since 0.2.")
    ] = None,
    stability: Annotated[
        float,
        typer.Option(
            help=(
                "perf_analyzer's --stability-percentage; when its windows never agree within it, even with doubled "
                "windows, a sweep is measured with 30 % and the report's notes say so."
            )
        ),
    ] = 10.0,
) -> None:
    """Load-test a running server, of any flavour, with perf_analyzer on real images
    (ensemble and each composing model), collect Triton's per-model statistics, run the
    in-process baselines on the same files, and write report.md, summary.json and plots."""
    from brainscan.benchmarks.perf_analyzer import PerfAnalyzerError
    from brainscan.benchmarks.run import BenchConfig, run
    from brainscan.client.files import expand_inputs

    files = [f for f in expand_inputs(inputs) if f.is_file()][:limit]
    if not files:
        fail(f"no image files found in {', '.join(map(str, inputs))}")
    config = BenchConfig(
        url=url,
        repository=repository,
        files=files,
        out=out,
        concurrency=_span(concurrency),
        model_concurrency=_span(model_concurrency),
        request_count=requests,
        composing=composing,
        runs=runs or contract.artifacts_dir() / "runs",
        baseline_seconds=baseline_seconds,
        stability_percentage=stability,
    )
    try:
        run(config, log=lambda line: typer.echo(line, err=True))
    except (PerfAnalyzerError, FileNotFoundError, PermissionError) as exc:
        fail(str(exc))


@bench_app.command("ceiling")
def bench_ceiling(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive) to send.")],
    out: Annotated[Path, typer.Option(help="Results folder; a <date>-<host>-ceiling folder is made inside.")] = Path(
        "benchmarks/results"
    ),
    instances: Annotated[str, typer.Option(help="Instances of each python step to compare, comma-separated.")] = "1,2",
    concurrency: Annotated[str, typer.Option(help="Ensemble concurrency sweep, START:END[:STEP].")] = "1:8",
    requests: Annotated[
        int,
        typer.Option(
            help="Requests per perf_analyzer measurement window (doubled up to 3 times when its windows never agree)."
        ),
    ] = 400,
    limit: Annotated[int, typer.Option(help="Use at most this many image files.")] = 64,
    stability: Annotated[
        float,
        typer.Option(
            help=(
                "perf_analyzer's --stability-percentage: how close its windows must agree (a shared machine needs "
                "slack)."
            )
        ),
    ] = 30.0,
    runs: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Training runs (classifier/ and segmenter/ with model.onnx): compare the two designs with these "
                "trained networks instead of free ones, as a CPU-only server runs them; writes a "
                "<date>-<host>-designs folder."
            )
        ),
    ] = None,
) -> None:
    """The ensemble's ceiling when the networks cost nothing (what bounds a GPU deployment),
    for the previous design (python resize and mask steps) and the current one (python only
    decodes) in the same run: free networks in place of the real ones, 1, 2, … instances per
    python step, each served by the embedded Triton on loopback and swept with
    perf_analyzer; reports images/s and CPU ms per image of every step and outside the
    networks."""
    from brainscan.benchmarks.ceiling import CeilingConfig, measure
    from brainscan.benchmarks.perf_analyzer import PerfAnalyzerError
    from brainscan.client.files import expand_inputs
    from brainscan.server import ServerError

    files = [f for f in expand_inputs(inputs) if f.is_file()][:limit]
    if not files:
        fail(f"no image files found in {', '.join(map(str, inputs))}")
    try:
        counts = tuple(int(n) for n in instances.split(","))
    except ValueError:
        raise typer.BadParameter(f"{instances!r}: write counts separated by commas, e.g. 1,2") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("instance counts must be at least 1")
    networks = None
    if runs is not None:
        networks = {n: runs / n / "model.onnx" for n in contract.NETWORKS}
        missing = [str(p) for p in networks.values() if not p.is_file()]
        if missing:
            fail(f"{', '.join(missing)} missing: export the runs first (`brainscan export onnx RUN`, make demo does)")
    config = CeilingConfig(
        files=files,
        out=out,
        instances=counts,
        concurrency=_span(concurrency),
        request_count=requests,
        stability_percentage=stability,
        networks=networks,
    )
    try:
        measure(config, log=lambda line: typer.echo(line, err=True))
    except (PerfAnalyzerError, ServerError) as exc:
        fail(str(exc))
