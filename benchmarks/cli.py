"""`brainscan bench`: load tests with perf_analyzer, in-process baselines and the ceiling
of the python steps. Installed with the bench extra (`pip install '.[bench]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.console import fail, flag

Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders (recursive) to send.")]
Concurrency = Annotated[str, typer.Option(help="Ensemble concurrency sweep, START:END[:STEP].")]


def _image_files(inputs: list[Path], limit: int) -> list[Path]:
    """The first ``limit`` files among ``inputs`` (folders searched recursively)."""
    from brainscan.client.imaging.files import expand_inputs

    files = [f for f in expand_inputs(inputs) if f.is_file()][:limit]
    if not files:
        fail(f"no image files found in {', '.join(map(str, inputs))}")
    return files


bench_app = typer.Typer(
    rich_markup_mode="markdown", help="Load-test a server with perf_analyzer.", no_args_is_help=True
)


# perf_analyzer's --stability-percentage, as bench run and bench ceiling pass it on
Stability = Annotated[
    float,
    typer.Option(
        help=(
            "perf_analyzer's --stability-percentage: how close its windows must agree (a shared machine needs "
            "slack; bench run measures a sweep whose windows never agree again at 30 % and says so)."
        )
    ),
]


@bench_app.command("input-data")
def bench_input_data(
    inputs: Inputs,
    out: Annotated[Path, typer.Option(help="JSON file for perf_analyzer --input-data.")] = Path("perf-input.json"),
    limit: Annotated[int, typer.Option(help="Use at most this many files.")] = 64,
    pixels: Annotated[
        bool,
        flag(
            "--pixels",
            (
                "For brainscan_pixels (or a network): each image decoded into PIXELS, FP32 [H, W, C], instead of the "
                "encoded file the brainscan ensemble takes; perf_analyzer's -b sends that many a request."
            ),
        ),
    ] = False,
) -> None:
    """Write perf_analyzer --input-data JSON from real images (the IMAGE input as
    length-prefixed bytes, or with --pixels their decoded PIXELS), so a load test sends MRI
    slices, not random bytes."""
    files = _image_files(inputs, limit)
    if pixels:
        import json

        from brainscan.atomic import write_bytes_atomic
        from brainscan.benchmarks.inputs import pixel_entries

        entries = pixel_entries(files)
        shapes = {tuple(e[contract.PIXELS]["shape"]) for e in entries}
        if len(shapes) > 1:
            fail(f"the images differ in size ({sorted(shapes)}): one request's slices share one, give images of one")
        write_bytes_atomic(out, json.dumps({"data": entries}).encode())
    else:
        from brainscan.benchmarks.perf_data import write_input_data

        write_input_data(files, out)
    typer.echo(f"wrote {out}: {len(files)} images")


@bench_app.command("setup")
def bench_setup() -> None:
    """Make perf_analyzer runnable here: use one on PATH, else download the PyPI binary and,
    on systems older than glibc 2.38, a Debian 13 C runtime beside it (nothing system-wide)."""
    from brainscan.benchmarks import perf_analyzer

    command = perf_analyzer.find() or perf_analyzer.install()
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
    inputs: Inputs,
    url: Annotated[
        str,
        typer.Option(
            "-u",
            "--url",
            envvar="BRAINSCAN_URL",
            metavar="HOST:PORT",
            help="The Triton server to load-test, over gRPC (one server: perf_analyzer's -u).",
        ),
    ] = contract.DEFAULT_URL,
    repository: Annotated[
        Path | None,
        typer.Option(
            help=(
                "The served repository, if it is a folder here holding the ONNX networks (local, onnxruntime "
                "flavours); otherwise they come from --runs."
            )
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results folder; a `<date>-<host>` folder is made inside.")] = Path(
        "benchmarks/results"
    ),
    concurrency: Concurrency = "1:8",
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
    stability: Stability = 10.0,
) -> None:
    """Load-test a running server, of any flavour, with perf_analyzer on real images
    (ensemble and each composing model), collect Triton's per-model statistics, run the
    in-process baselines on the same files, and write report.md, summary.json and plots."""
    from brainscan.benchmarks.run import BenchConfig, run

    files = _image_files(inputs, limit)
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
    run(config, log=lambda line: typer.echo(line, err=True))


@bench_app.command("ceiling")
def bench_ceiling(
    inputs: Inputs,
    out: Annotated[Path, typer.Option(help="Results folder; a `<date>-<host>-ceiling` folder is made inside.")] = Path(
        "benchmarks/results"
    ),
    instances: Annotated[str, typer.Option(help="Instances of each python step to compare, comma-separated.")] = "1,2",
    concurrency: Concurrency = "1:8",
    requests: Annotated[
        int,
        typer.Option(
            help="Requests per perf_analyzer measurement window (doubled up to 3 times when its windows never agree)."
        ),
    ] = 400,
    limit: Annotated[int, typer.Option(help="Use at most this many image files.")] = 64,
    stability: Stability = 30.0,
    runs: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Training runs (classifier/ and segmenter/ with model.onnx): compare the two designs with these "
                "trained networks instead of free ones, as a CPU-only server runs them; writes a "
                "`<date>-<host>-designs` folder."
            )
        ),
    ] = None,
    series_slices: Annotated[
        int,
        typer.Option(
            help=(
                "With free networks, also send one DICOM series of this many slices through the PNG path and the "
                "pixels path, and count the client's and the server's CPU per slice (0: no series)."
            )
        ),
    ] = 160,
) -> None:
    """The ensemble's ceiling when the networks cost nothing (what bounds a GPU deployment),
    for the previous design (python resize and mask steps) and the current one (python only
    decodes) in the same run: free networks in place of the real ones, 1, 2, … instances per
    python step, each served by the embedded Triton on loopback and swept with
    perf_analyzer; reports images/s and CPU ms per image of every step and outside the
    networks, and CPU ms per slice of a series sent as PNG and as raw pixels."""
    from brainscan.benchmarks.ceiling import CeilingConfig, measure

    files = _image_files(inputs, limit)
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
        series_slices=series_slices,
    )
    measure(config, log=lambda line: typer.echo(line, err=True))


@bench_app.command("gate")
def bench_gate(
    run: Annotated[
        Path, typer.Argument(help="The classifier's training run (run.json, and model.onnx from `export onnx`).")
    ] = contract.demo_run(contract.CLASSIFIER),
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and results.json.")] = None,
) -> None:
    """Compare out-of-distribution scores of the classifier by AUROC and by what each refuses
    at a limit set on the validation slices: the served pixel gate, its two parts alone, the
    last stage's feature distance, the maximum probability and the energy score. In-process
    (ONNX Runtime on CPU); needs the train extra."""
    import time

    from brainscan.benchmarks.gate_methods import run_comparison

    if not (run / "model.onnx").exists() or not (run / "run.json").exists():
        fail(f"{run} holds no run.json and model.onnx: train and export the classifier first (make demo)")
    target = out or Path("benchmarks") / "results" / f"{time.strftime('%Y-%m-%d')}-gate"
    text, paths = run_comparison(run, target)
    typer.echo(text)
    typer.echo(f"wrote {paths[0]}")
