"""`brainscan bench ceiling`: what the ensemble can do when its networks cost nothing.

On a GPU host, TensorRT runs both networks many times faster than one CPU core decodes and
resizes images, so the python steps (``preprocess``, ``postprocess``) bound the ensemble.
This measures that bound here: the two networks are replaced by free ones (a mean and a
sigmoid: the same tensors in and out, next to no arithmetic), the repository is written
with 1, 2, … instances of each python step, served by a real Triton on loopback, and
perf_analyzer sweeps the ensemble with real image files. Besides images/s, the CPU time of
every process (Triton, each python stub, read from /proc) is divided by the images served:
CPU ms per image per step, i.e. images/s one core of each step sustains — the figure that
sizes the python instances of a GPU host, whatever else shares this machine's cores.

Writes ``<out>/<date>-<host>-ceiling/``: ceiling.md, ceiling.json, raw/ (perf_analyzer CSVs, logs).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from brainscan import contract
from brainscan.benchmarks import perf_analyzer
from brainscan.benchmarks.run import server_statistics, statistics_delta
from brainscan.client.perf import write_input_data

TICKS = os.sysconf("SC_CLK_TCK")
ADMIN_KEY = "ceiling-benchmark-admin-key"  # the servers it starts are its own, on loopback


DTYPES = ("fp32", "uint8")  # the networks' input type: as served, or a quarter of the bytes with the cast in the graph


def write_free_network(path: Path, network: str, size: int, dtype: str = "fp32") -> Path:
    """An ONNX network with the real one's input and output (names, shapes, FP32) that
    costs next to nothing: the classifier's probability is a sigmoid of the image mean, the
    segmenter's a sigmoid of each pixel's channel mean. With ``uint8`` its input is UINT8
    and the graph casts it to float first."""
    from brainscan.export.onnx import save_graph
    from onnx import TensorProto, helper

    if network == contract.CLASSIFIER:
        source, target, axes, out_shape = contract.CLASSIFIER_INPUT, contract.CLASSIFIER_OUTPUT, [1, 2, 3], ["N", 1]
    else:
        source, target, axes, out_shape = contract.SEGMENTER_INPUT, contract.SEGMENTER_OUTPUT, [3], ["N", size, size, 1]
    pixels = source
    nodes = []
    if dtype == "uint8":
        pixels = "pixels"
        nodes.append(helper.make_node("Cast", [source], [pixels], to=TensorProto.FLOAT))
    nodes += [
        helper.make_node("ReduceMean", [pixels], ["mean"], axes=axes, keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["level"]),
        helper.make_node("Sub", ["level", "middle"], ["centred"]),
        helper.make_node("Sigmoid", ["centred"], [target]),
    ]
    shape = [-1, 1] if network == contract.CLASSIFIER else [-1, size, size, 1]
    graph = helper.make_graph(
        nodes, f"free_{network}",
        [helper.make_tensor_value_info(source, TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT,
                                       ["N", size, size, contract.CHANNELS])],
        [helper.make_tensor_value_info(target, TensorProto.FLOAT, out_shape)],
        [helper.make_tensor("shape", TensorProto.INT64, [len(shape)], shape),
         helper.make_tensor("middle", TensorProto.FLOAT, [], [128.0])],
    )
    return save_graph(graph, path)


def narrow_network_inputs(repository: Path) -> None:
    """Declare the networks' inputs (preprocess's outputs) UINT8 in the configs, their
    warm-up samples included."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from brainscan.export.repository import read_config

    names = (contract.CLASSIFIER_INPUT, contract.SEGMENTER_INPUT)
    for model, field in ((contract.PREPROCESS, "output"), (contract.CLASSIFIER, "input"), (contract.SEGMENTER, "input")):
        path = Path(repository) / model / "config.pbtxt"
        config = read_config(path)
        for tensor in getattr(config, field):
            if tensor.name in names:
                tensor.data_type = model_config_pb2.TYPE_UINT8
        for sample in config.model_warmup:
            for name, given in sample.inputs.items():
                if name in names:
                    given.data_type = model_config_pb2.TYPE_UINT8
        path.write_text(text_format.MessageToString(config))


def _process_ticks(fragments: tuple[str, ...]) -> dict[int, tuple[str, int]]:
    """pid -> (command line, user+system CPU ticks) of every process whose command line
    holds all ``fragments``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not all(f in cmdline for f in fragments):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(pid)] = (cmdline, int(fields[11]) + int(fields[12]))  # utime, stime
    return found


def cpu_by_step(repository: Path, grpc_port: int) -> dict[str, float]:
    """CPU seconds so far of the server (tritonserver) and of each model's python stubs."""
    seconds: dict[str, float] = {}
    for _, (cmdline, ticks) in _process_ticks(("tritonserver", f"--grpc-port={grpc_port}")).items():
        if "triton_python_backend_stub" not in cmdline:
            seconds["tritonserver"] = seconds.get("tritonserver", 0.0) + ticks / TICKS
    for _, (cmdline, ticks) in _process_ticks(("triton_python_backend_stub", str(repository))).items():
        model = Path(cmdline.split()[1]).parent.parent.name  # …/<model>/1/model.py
        seconds[model] = seconds.get(model, 0.0) + ticks / TICKS
    return seconds


@dataclass
class CeilingConfig:
    files: list[Path]
    out: Path
    instances: tuple[int, ...] = (1, 2)
    dtypes: tuple[str, ...] = DTYPES
    concurrency: tuple[int, int, int] = (1, 8, 1)
    request_count: int = 400
    stability_percentage: float = 10.0


def measure(config: CeilingConfig, log=print) -> Path:
    command = perf_analyzer.find() or perf_analyzer.install()
    folder = Path(config.out) / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-ceiling"
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    inputs = write_input_data(config.files, raw / "input-brainscan.json")
    runs = []
    for dtype in config.dtypes:
        networks = {n: write_free_network(raw / f"free-{n}-{dtype}.onnx", n, size, dtype)
                    for n, size in ((contract.CLASSIFIER, contract.CLASSIFIER_SIZE),
                                    (contract.SEGMENTER, contract.SEGMENTER_SIZE))}
        for count in config.instances:
            runs.append(_one_run(command, inputs, raw, networks, count, dtype, config, log))
    summary = {"host": socket.gethostname(), "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
               "files": len(config.files), "runs": runs}
    (folder / "ceiling.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "ceiling.md").write_text(report(summary))
    log(f"wrote {folder / 'ceiling.md'}")
    return folder


def _one_run(command, inputs: Path, raw: Path, networks: dict[str, Path], count: int, dtype: str,
             config: CeilingConfig, log) -> dict:
    from brainscan.export.repository import write_repository
    from brainscan.server import Ports, TritonServer

    name = f"{count}-{dtype}"
    repository = write_repository(raw / f"repository-{name}", "local", networks[contract.CLASSIFIER],
                                  networks[contract.SEGMENTER],
                                  instances={contract.PREPROCESS: count, contract.POSTPROCESS: count,
                                             contract.SEGMENTER: 1}).resolve()
    if dtype == "uint8":
        narrow_network_inputs(repository)
    ports = Ports.free()
    log(f"{count} instance(s) per python step, {dtype} network inputs: serving {repository} on 127.0.0.1:{ports.grpc}")
    with TritonServer(repository, ports=ports, log_file=raw / f"tritonserver-{name}.log", admin_key=ADMIN_KEY) as server:
        url = server.grpc_url
        before, cpu_before = server_statistics(url, ADMIN_KEY), cpu_by_step(repository, ports.grpc)
        result = perf_analyzer.sweep(command, contract.ENSEMBLE, url, inputs, config.concurrency,
                                     raw / f"brainscan-{name}.csv", config.request_count,
                                     extra=["-H", f"{contract.GRPC_ADMIN_HEADER}:{ADMIN_KEY}"],
                                     stability=config.stability_percentage)
        cpu_after = cpu_by_step(repository, ports.grpc)
        stats = statistics_delta(before, server_statistics(url, ADMIN_KEY))
    (raw / f"brainscan-{name}.log").write_text(result.log)
    images = stats[contract.ENSEMBLE]["requests"]
    cpu_ms = {step: (cpu_after.get(step, 0.0) - cpu_before.get(step, 0.0)) * 1e3 / max(images, 1)
              for step in sorted(set(cpu_after) | set(cpu_before))}
    return {"instances": count, "dtype": dtype, "rows": result.rows, "server": stats, "images": images,
            "cpu_ms_per_image": cpu_ms}


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["Inferences/Second"])


def report(summary: dict) -> str:
    lines = [f"# The ensemble's ceiling with free networks, {summary['date']} on {summary['host']}", "",
             f"{summary['cores']} cores; {summary['files']} real image files; the networks replaced by free ones "
             "(same tensors, a mean and a sigmoid); local flavour served by the embedded Triton on loopback; "
             "perf_analyzer sweeps the ensemble over gRPC in count-windows mode.", "",
             "| python instances (pre/post) | network inputs | best images/s | at concurrency | p50 ms at concurrency 1 |",
             "|---|---|---|---|---|"]
    for run in summary["runs"]:
        top, first = best(run["rows"]), run["rows"][0]
        lines.append(f"| {run['instances']} | {run['dtype']} | {top['Inferences/Second']:.1f} | {int(top['Concurrency'])} | "
                     f"{first['p50 latency'] / 1e3:.2f} |")
    steps = ["tritonserver", *contract.COMPOSING_MODELS]
    lines += ["", "## CPU per image (ms), from /proc, over each sweep", "",
              "| python instances | inputs | " + " | ".join(steps) + " | total |", "|---" * (len(steps) + 3) + "|"]
    for run in summary["runs"]:
        cpu = run["cpu_ms_per_image"]
        lines.append(f"| {run['instances']} | {run['dtype']} | " + " | ".join(f"{cpu.get(s, 0.0):.2f}" for s in steps)
                     + f" | {sum(cpu.values()):.2f} |")
    lines += ["", "One core of a step sustains 1000 / (its CPU ms per image) images/s:", "",
              "| python instances | inputs | preprocess images/s per core | postprocess images/s per core |",
              "|---|---|---|---|"]
    for run in summary["runs"]:
        cpu = run["cpu_ms_per_image"]
        per_core = [f"{1e3 / cpu[s]:.0f}" if cpu.get(s) else "-" for s in (contract.PREPROCESS, contract.POSTPROCESS)]
        lines.append(f"| {run['instances']} | {run['dtype']} | {per_core[0]} | {per_core[1]} |")
    fields = ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")
    lines += ["", "## Triton's statistics during each sweep (µs per request)", "",
              "| python instances | inputs | model | avg batch | queue | compute input | compute infer | compute output |",
              "|---|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        for model in contract.COMPOSING_MODELS:
            s = run["server"].get(model)
            if s:
                lines.append(f"| {run['instances']} | {run['dtype']} | {model} | {s['avg_batch']:.2f} | "
                             + " | ".join(f"{s[f]:.0f}" for f in fields) + " |")
    return "\n".join(lines) + "\n"
