"""`brainscan bench run`: load-test a running server with perf_analyzer and compare it with
in-process baselines measured in the same run, on the same files.

Writes ``<out>/<date>-<host>/``: report.md (tables, ratios, targets), summary.json,
throughput.png and latency.png, and raw/ (perf_analyzer CSVs, logs, input data).
"""

from __future__ import annotations

import importlib.util
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from brainscan import contract
from brainscan.benchmarks import baselines, perf_analyzer
from brainscan.benchmarks.inputs import tensors, write_all
from brainscan.benchmarks.report import write_report
from brainscan.benchmarks.summary import BenchSummary
from brainscan.export.repository import VERSION

STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")
# The last resort when three windows never agree within the requested percentage: measured
# anyway, and the report's notes say so (a 2-core shared machine seldom holds 10 %).
LOOSE_STABILITY = 30.0


@dataclass
class BenchConfig:
    url: str
    repository: Path | None  # the served repository, when it is a local folder holding the ONNX networks
    files: list[Path]
    out: Path
    concurrency: tuple[int, int, int] = (1, 8, 1)
    model_concurrency: tuple[int, int, int] = (1, 4, 1)
    request_count: int = 200
    retries: int = 3  # window doublings of the ensemble's sweep when perf_analyzer finds no stable measurement
    # ... and of each composing model's: their figures are detail, and on a busy machine every
    # doubling of a sweep that will not settle costs minutes (make bench: 36 min with 3)
    model_retries: int = 1
    composing: bool = True
    runs: Path | None = None  # training runs: classifier/ and segmenter/ with model.onnx, model.keras
    baseline_seconds: float = 3.0
    stability_percentage: float = 10.0  # perf_analyzer's: how close 3 windows must agree (its default)
    notes: list[str] = field(default_factory=list)


def server_statistics(url: str) -> dict[str, dict]:
    """Triton's cumulative per-model statistics (counts and nanoseconds): open on a server
    that brainscan starts, as perf_analyzer needs them (contract.ADMIN_APIS)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    except InferenceServerException as exc:
        raise PermissionError(
            f"the server refused its statistics ({exc.message()}), which perf_analyzer needs as well: "
            "it restricts them (tritonserver --grpc-restricted-protocol=statistics:…); serve with "
            "`brainscan serve`, which keeps them open (docs/operations.md#security)"
        ) from None
    finally:
        client.close()
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        out[model["name"]] = {
            "inferences": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
            "success": int(inference.get("success", {}).get("count", 0)),
            "fail": int(inference.get("fail", {}).get("count", 0)),
            **{f"{name}_ns": int(inference.get(name, {}).get("ns", 0)) for name in STAT_FIELDS},
        }
    return out


def statistics_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model: requests, failures, average batch and µs per request in each stage."""
    delta = {}
    for name, now in after.items():
        then = before.get(name, {})
        d = {k: now[k] - then.get(k, 0) for k in now}
        if d["success"] == 0 and d["fail"] == 0:
            continue
        requests = max(d["success"], 1)
        delta[name] = {
            "requests": d["success"],
            "failed": d["fail"],
            "avg_batch": d["inferences"] / max(d["executions"], 1),
            **{f"{k}_us": d[f"{k}_ns"] / requests / 1e3 for k in STAT_FIELDS},
        }
    return delta


def network_onnx(repository: Path | None, runs: Path | None, network: str) -> Path:
    """The FP32 ONNX of ``network`` for the in-process baselines: the served repository's own
    (local, onnxruntime flavours), else the training run's (the tensorrt flavour holds
    engines, a remote server nothing here)."""
    candidates = [
        Path(folder) / network / sub / "model.onnx"
        for folder, sub in ((repository, VERSION), (runs, ""))
        if folder is not None
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no ONNX of the {network} found ({', '.join(map(str, candidates)) or 'nowhere given'}): "
        "give the training runs with --runs (folders classifier/ and segmenter/ with model.onnx)"
    )


def served_networks(url: str) -> dict[str, dict]:
    """The networks' model configs as the server reports them (not an admin API): their
    platforms, whatever the repository's flavour or location."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return {n: client.get_model_config(n, as_json=True)["config"] for n in contract.NETWORKS}
    finally:
        client.close()


def _sweep_served(config: BenchConfig, command, inputs: dict, raw: Path, log) -> dict:
    """perf_analyzer over the ensemble (and each composing model alone with ``composing``),
    with Triton's statistics of each sweep; a composing model that never measures stably is
    left out with a note, the ensemble's failure ends the run."""
    served = {}
    models = [contract.ENSEMBLE] + (list(contract.COMPOSING_MODELS) if config.composing else [])
    loose = max(LOOSE_STABILITY, config.stability_percentage)
    loosen_to = loose if loose > config.stability_percentage else None
    for model in models:
        span, retries = (
            (config.concurrency, config.retries)
            if model == contract.ENSEMBLE
            else (config.model_concurrency, config.model_retries)
        )
        log(f"perf_analyzer: {model}, concurrency {span[0]}..{span[1]}")
        before = server_statistics(config.url)
        try:
            result = perf_analyzer.sweep(
                command,
                model,
                config.url,
                inputs[model],
                span,
                raw / f"{model}.csv",
                config.request_count,
                max_retries=retries,
                stability=config.stability_percentage,
                loosen_to=loosen_to,
            )
        except perf_analyzer.UnstableMeasurement as exc:
            if model == contract.ENSEMBLE:
                raise
            # one composing model alone is a detail of the report, not a reason to lose the rest
            (raw / f"{model}.log").write_text(str(exc))
            config.notes.append(
                f"{model} alone: no stable measurement even at {loose:g} % (a busy or shared machine, "
                f"or one instance called back to back: docs/operations.md#troubleshooting); "
                f"left out of the report, see raw/{model}.log"
            )
            continue
        if result.stability != config.stability_percentage:
            config.notes.append(
                f"{model}: perf_analyzer's windows never agreed within {config.stability_percentage:g} % "
                f"(a busy or shared machine); measured with --stability-percentage {result.stability:g}"
            )
        stats = statistics_delta(before, server_statistics(config.url))
        (raw / f"{model}.log").write_text(result.log)
        served[model] = {
            "rows": result.rows,
            "retries": result.retries,
            "request_count": result.request_count,
            "server": stats,
        }

    return served


def _baselines(config: BenchConfig, onnx: dict, log) -> tuple[list, object]:
    """The in-process baselines on the same files: ONNX Runtime's sweep, and Keras's predict
    when the runs are here (each skip noted)."""
    in_process, keras = [], None
    if onnx:
        log("in-process baselines: ONNX Runtime (batch x threads)")
        in_process = baselines.onnxruntime_sweep(
            onnx[contract.CLASSIFIER], onnx[contract.SEGMENTER], config.files, min_seconds=config.baseline_seconds
        )
    if onnx and config.runs:
        keras_files = [Path(config.runs) / n / "model.keras" for n in onnx]
        if all(p.exists() for p in keras_files) and importlib.util.find_spec("keras") is None:
            config.notes.append("Keras baseline skipped: Keras is not installed here (the train extra has it)")
        elif all(p.exists() for p in keras_files):
            log("baseline: Keras model.predict per image")
            keras = baselines.keras_predict(*keras_files, config.files, min_seconds=config.baseline_seconds)
        else:
            config.notes.append(f"Keras baseline skipped: no model.keras under {config.runs}")
    return in_process, keras


def run(config: BenchConfig, log=print) -> Path:
    command = perf_analyzer.find() or perf_analyzer.install()
    folder = Path(config.out) / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}"
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    try:
        onnx = {n: network_onnx(config.repository, config.runs, n) for n in contract.NETWORKS}
    except FileNotFoundError as exc:  # any server, nothing of it here: the load test alone
        onnx = {}
        config.notes.append(f"in-process baselines and FLOPs skipped: {exc}")
    networks = served_networks(config.url)
    platforms = {n: c.get("platform") or c.get("backend", "?") for n, c in networks.items()}
    log(
        f"served networks: {', '.join(f'{n} {p}' for n, p in platforms.items())}; "
        f"baselines from {', '.join(str(p) for p in onnx.values()) or 'nothing here (load test only)'}"
    )
    inputs = write_all(tensors(config.files), raw)

    served = _sweep_served(config, command, inputs, raw, log)
    in_process, keras = _baselines(config, onnx, log)
    flops = {n: baselines.onnx_flops(p) for n, p in onnx.items()}
    summary = BenchSummary(
        url=config.url,
        repository=str(config.repository) if config.repository else None,
        files=len(config.files),
        host=socket.gethostname(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        served=served,
        in_process=[asdict(b) for b in in_process],
        keras=asdict(keras) if keras else None,
        flops_per_image=flops,
        notes=config.notes,
        served_platforms=platforms,
        baseline_onnx={n: str(p) for n, p in onnx.items()},
    )
    summary.write(folder)
    write_report(folder, summary)
    log(f"wrote {folder / 'report.md'}")
    return folder
