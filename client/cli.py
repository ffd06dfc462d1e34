"""`brainscan predict` and `brainscan health`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from brainscan import contract
from brainscan.console import EXIT_FAILED, EXIT_UNAVAILABLE, Url, fail

NAME_WIDTH = 40


def shorten(path: Path) -> str:
    """The file column: the path, cut from the left with an ellipsis when too long."""
    text = str(path)
    return text if len(text) <= NAME_WIDTH else "…" + text[-(NAME_WIDTH - 1):]


def _ground_truth(path: Path) -> np.ndarray | None:
    """The kaggle_3m ground truth beside ``path`` as a boolean mask, if there is one."""
    from brainscan.client.files import ground_truth_for
    from brainscan.preprocessing import InvalidImageError, decode_image

    truth_path = ground_truth_for(path)
    if truth_path is None:
        return None
    try:
        truth = decode_image(truth_path.read_bytes())
    except InvalidImageError as exc:
        typer.echo(f"warning: ground truth {truth_path}: {exc}", err=True)
        return None
    return (truth.max(axis=2) if truth.ndim == 3 else truth) > 0


def _row(record: dict) -> str:
    line = (
        f"{shorten(Path(record['file'])):<{NAME_WIDTH}} {record['probability']:>11.4f} {record['label']:<9} "
        f"{record['area_pixels']:>8d} {100 * record['area_fraction']:>6.2f}%"
    )
    if "truth" in record:
        line += f" {record['truth']:<9} {record.get('dice', ''):>6}"
    return line


def _summary(records: list[dict], failures: int, elapsed: float, out: Path | None) -> str:
    from brainscan.metrics import classification_metrics

    done = len(records)
    text = f"{done} of {done + failures} images in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.1f} images/s)"
    if failures:
        text += f", {failures} failed"
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
        text += f"; masks and overlays in {out}"
    return text


def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    url: Url = contract.DEFAULT_URL,
    out: Annotated[Path | None, typer.Option(help="Folder for <name>.mask.png and <name>.overlay.png.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image instead of a table.")] = False,
    evaluate: Annotated[bool, typer.Option(help="Compare with X_mask.* ground truth beside each X.* (kaggle_3m layout).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 60.0,
) -> None:
    """Send each image to the `brainscan` ensemble over gRPC (one request per image) and
    report probability, label and tumour area; optionally write masks and red overlays.
    Exit code 1 when any file failed (the others still finish), 3 when no server answers."""
    from brainscan.client import files as io
    from brainscan.client.inference import BrainscanClient, InferenceError, ServerUnavailableError
    from brainscan.metrics import dice
    from brainscan.preprocessing import decode_image

    inputs = io.expand_inputs(paths)
    if not inputs:
        fail("no image files found in the given paths")
    records: list[dict] = []
    failures = 0
    started = time.perf_counter()
    if not as_json:
        header = f"{'file':<{NAME_WIDTH}} {'probability':>11} {'label':<9} {'area px':>8} {'area %':>7}"
        typer.echo(header + (f" {'truth':<9} {'dice':>6}" if evaluate else ""))
    with BrainscanClient(url, timeout=timeout) as client:
        for path, name in zip(inputs, io.output_stems(inputs)):
            try:
                data = path.read_bytes()
                prediction = client.infer(data)
            except ServerUnavailableError as exc:
                fail(f"{exc} (start one with `brainscan serve`)", EXIT_UNAVAILABLE)
            except (OSError, InferenceError) as exc:
                failures += 1
                if as_json:
                    typer.echo(json.dumps({"file": str(path), "error": str(exc)}))
                else:
                    typer.echo(f"{shorten(path)}  failed: {exc}", err=True)
                continue
            record = {
                "file": str(path),
                "probability": round(prediction.probability, 6),
                "label": prediction.label,
                "area_pixels": prediction.area_pixels,
                "area_fraction": round(prediction.area_fraction, 6),
                "height": int(prediction.mask.shape[0]),
                "width": int(prediction.mask.shape[1]),
            }
            truth = _ground_truth(path) if evaluate else None
            if truth is not None:
                record["truth"] = "tumour" if truth.any() else "no tumour"
                if truth.any():
                    record["dice"] = round(dice(prediction.mask, truth), 4)
            if out is not None:
                io.save_png(out / f"{name}.mask.png", prediction.mask * 255)
                io.save_png(out / f"{name}.overlay.png", io.overlay(decode_image(data), prediction.mask))
            records.append(record)
            typer.echo(json.dumps(record) if as_json else _row(record))
    typer.echo(_summary(records, failures, time.perf_counter() - started, out), err=as_json)
    if failures:
        raise typer.Exit(EXIT_FAILED)


def health(
    url: Url = contract.DEFAULT_URL,
    wait: Annotated[float, typer.Option(help="Keep trying for this many seconds before giving up.")] = 0.0,
) -> None:
    """Say whether the server and every model of the ensemble are ready (exit 0 if so)."""
    from brainscan.client.inference import BrainscanClient, InferenceError, ServerUnavailableError

    deadline = time.monotonic() + wait
    while True:
        try:
            with BrainscanClient(url, timeout=10) as client:
                state = client.health()
            if state["ready"] and all(state["models"].values()) or time.monotonic() >= deadline:
                break
        except (ServerUnavailableError, InferenceError) as exc:
            if time.monotonic() >= deadline:
                fail(str(exc), EXIT_UNAVAILABLE)
        time.sleep(0.5)
    typer.echo(f"server {url}: live={state['live']} ready={state['ready']}")
    for name, ready in state["models"].items():
        typer.echo(f"  {name:<12} {'ready' if ready else 'NOT READY'}")
    if not (state["ready"] and all(state["models"].values())):
        raise typer.Exit(EXIT_FAILED)


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
    repository: Annotated[Path, typer.Option(help="The served repository (its ONNX networks run the in-process baseline).")] = contract.demo_repository(),
    out: Annotated[Path, typer.Option(help="Results folder; a <date>-<host> folder is made inside.")] = Path("benchmarks/results"),
    concurrency: Annotated[str, typer.Option(help="Ensemble concurrency sweep, START:END[:STEP].")] = "1:8",
    model_concurrency: Annotated[str, typer.Option(help="Sweep of each composing model.")] = "1:4",
    requests: Annotated[int, typer.Option(help="Requests per perf_analyzer measurement window (doubled when unstable).")] = 200,
    limit: Annotated[int, typer.Option(help="Use at most this many image files.")] = 64,
    composing: Annotated[bool, typer.Option(help="Also load-test each composing model on its own.")] = True,
    keras_runs: Annotated[Path | None, typer.Option(help="Folder with classifier/ and segmenter/ model.keras for the Keras baseline (default: the demo's runs).")] = None,
    baseline_seconds: Annotated[float, typer.Option(help="Seconds each in-process baseline setting runs.")] = 3.0,
) -> None:
    """Load-test a running server with perf_analyzer on real images (ensemble and each
    composing model), collect Triton's per-model statistics, run the in-process baselines
    on the same files, and write report.md, summary.json and plots."""
    from brainscan.benchmarks.perf_analyzer import PerfAnalyzerError
    from brainscan.benchmarks.run import BenchConfig, run
    from brainscan.client.files import expand_inputs

    files = [f for f in expand_inputs(inputs) if f.is_file()][:limit]
    if not files:
        fail(f"no image files found in {', '.join(map(str, inputs))}")
    config = BenchConfig(url=url, repository=repository, files=files, out=out, concurrency=_span(concurrency),
                         model_concurrency=_span(model_concurrency), request_count=requests, composing=composing,
                         keras_runs=keras_runs or contract.artifacts_dir() / "runs", baseline_seconds=baseline_seconds)
    try:
        run(config, log=lambda line: typer.echo(line, err=True))
    except (PerfAnalyzerError, FileNotFoundError) as exc:
        fail(str(exc))
