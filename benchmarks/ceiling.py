"""`brainscan bench ceiling`: what the ensemble can do when its networks cost nothing.

On a GPU host, TensorRT runs both networks many times faster than one CPU core decodes and
resizes images, so whatever runs on the CPU bounds the ensemble. This measures that bound
here, for two designs in the same run:

- ``python-steps`` (kit 0.1): python ``preprocess`` decodes, resizes to each network's size
  and scales (two FP32 tensors), python ``postprocess`` brings the mask back to the image's
  size (``benchmarks/python_steps.py``);
- ``in-graph`` (now): python ``preprocess`` only decodes; the networks' graphs resize, scale
  and threshold (``export.served_graph``), which a GPU runs;
- ``local`` (with trained networks only): the local flavour as it is written, ``in-graph``
  but with its python runners doing the graphs' resize, stretch and mask with OpenCV
  (``brainscan.opencv_path``) and running only the networks' part of the graphs.

The two networks are replaced by free ones (the same tensors in and out, next to no
arithmetic), the repository is written with 1, 2, … instances of each python step, served by
a real Triton on loopback, and perf_analyzer sweeps the ensemble with real image files.
Besides images/s, the CPU time of every process (Triton, each python stub, read from /proc)
is divided by the images served: CPU ms per image per step, and in all outside the
networks (tritonserver and the python steps), the figure that bounds a GPU host whatever
else shares this machine's cores.

With free networks it also measures a series' CPU per slice outside the networks on the PNG
path and on the pixels path (``benchmarks/series.py``).

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
from brainscan.benchmarks.ceiling_report import PREVIOUS_POSTPROCESS, report
from brainscan.benchmarks.free_networks import cpu_by_step, write_free_network
from brainscan.benchmarks.perf_data import write_input_data
from brainscan.benchmarks.run import server_statistics, statistics_delta
from brainscan.benchmarks.series import measure_series

DESIGNS = ("python-steps", "in-graph")
LOCAL_DESIGN = "local"  # measured with trained networks (a free network has no network part)
SERVED_DESIGNS = ("in-graph", LOCAL_DESIGN)  # the served graphs in the local flavour's repository
OUTSIDE = ("tritonserver", contract.PREPROCESS, PREVIOUS_POSTPROCESS)  # what is not a network


def _previous_configs(count: int, segmenters: int) -> dict[str, dict]:
    """The python-steps design's configs: preprocess resizes and scales for each network,
    the networks take their fixed-size inputs, and a python postprocess brings the mask back."""
    from brainscan.export.repository import RepositorySpec, model_configs

    spec = RepositorySpec(
        flavour=contract.Flavour.LOCAL,
        instances={contract.PREPROCESS: count, contract.SEGMENTER: segmenters},
        local_resize=contract.GRAPH_RESIZE,  # the runners run the bare networks as they are
    )
    configs = model_configs(spec)
    configs.pop(contract.PIXELS_ENSEMBLE)  # that design had no pixels path
    size = {contract.CLASSIFIER: contract.CLASSIFIER_SIZE, contract.SEGMENTER: contract.SEGMENTER_SIZE}
    inputs = {
        n: {"name": contract.NETWORK_INPUT[n], "data_type": "TYPE_FP32", "dims": [size[n], size[n], 3]}
        for n in contract.NETWORKS
    }
    original = {"name": "ORIGINAL_SIZE", "data_type": "TYPE_INT32", "dims": [2]}
    probability = {
        "name": contract.SEGMENTER_OUTPUT,
        "data_type": "TYPE_FP32",
        "dims": [size[contract.SEGMENTER]] * 2 + [1],
    }
    for network in contract.NETWORKS:
        configs[network].pop("model_warmup")
        configs[network]["input"] = [inputs[network]]
    for name in (contract.CLASSIFIER, contract.ENSEMBLE):  # that design had no out-of-distribution score
        configs[name]["output"] = [t for t in configs[name]["output"] if t["name"] != contract.OOD_SCORE]
    configs[contract.SEGMENTER]["output"] = [probability]
    preprocess = configs[contract.PREPROCESS]
    preprocess.pop("model_warmup")
    preprocess["output"] = [*inputs.values(), original]
    preprocess["parameters"] = {"step": {"string_value": contract.PREPROCESS}}
    configs[PREVIOUS_POSTPROCESS] = {
        **preprocess,
        "name": PREVIOUS_POSTPROCESS,
        "input": [probability, original],
        "output": [
            {"name": contract.MASK, "data_type": contract.MASK_SPEC.triton_dtype, "dims": list(contract.MASK_SPEC.dims)}
        ],
        "instance_group": [{"kind": "KIND_CPU", "count": count}],
        "parameters": {"step": {"string_value": PREVIOUS_POSTPROCESS}},
    }
    _previous_steps(configs[contract.ENSEMBLE]["ensemble_scheduling"]["step"], preprocess)
    return configs


def _previous_steps(steps: list[dict], preprocess: dict) -> None:
    """The ensemble's steps of the python-steps design: each network fed by preprocess, then
    postprocess."""
    steps[0]["output_map"] = {t["name"]: t["name"] for t in preprocess["output"]}
    steps[1]["input_map"] = {contract.CLASSIFIER_INPUT: contract.CLASSIFIER_INPUT}
    steps[1]["output_map"] = {contract.TUMOR_PROBABILITY: contract.TUMOR_PROBABILITY}
    steps[2]["input_map"] = {contract.SEGMENTER_INPUT: contract.SEGMENTER_INPUT}
    steps[2]["output_map"] = {contract.SEGMENTER_OUTPUT: contract.SEGMENTER_OUTPUT}
    steps.append(
        {
            "model_name": PREVIOUS_POSTPROCESS,
            "model_version": -1,
            "input_map": {contract.SEGMENTER_OUTPUT: contract.SEGMENTER_OUTPUT, "ORIGINAL_SIZE": "ORIGINAL_SIZE"},
            "output_map": {contract.MASK: contract.MASK},
        }
    )


def previous_repository(out: Path, networks: dict[str, Path], count: int, segmenters: int = 1) -> Path:
    """The python-steps design's repository: the local flavour's networks (``networks``,
    bare), ``count`` instances of each python step, ``segmenters`` of the segmenter."""
    import shutil
    from importlib import resources

    from brainscan.export.repository import ONNX_RUNNER_SOURCE, VERSION, render_config

    steps_source = resources.files("brainscan.benchmarks").joinpath("python_steps.py").read_bytes()
    runner = resources.files("brainscan.export.triton_models").joinpath(ONNX_RUNNER_SOURCE).read_bytes()
    for name, config in _previous_configs(count, segmenters).items():
        folder = Path(out) / name / VERSION
        folder.mkdir(parents=True, exist_ok=True)
        (Path(out) / name / "config.pbtxt").write_text(render_config(config))
        if name in (contract.PREPROCESS, PREVIOUS_POSTPROCESS):
            (folder / "model.py").write_bytes(steps_source)
        elif name in networks:
            (folder / "model.py").write_bytes(runner)
            shutil.copyfile(networks[name], folder / "model.onnx")
    return Path(out)


@dataclass
class CeilingConfig:
    files: list[Path]
    out: Path
    instances: tuple[int, ...] = (1, 2)
    designs: tuple[str, ...] | None = None  # DESIGNS, and LOCAL_DESIGN with trained networks
    concurrency: tuple[int, int, int] = (1, 8, 1)
    request_count: int = 400
    stability_percentage: float = 10.0
    # the trained networks' served graphs (classifier, segmenter) instead of free ones: what a
    # CPU-only server of each design does, the networks' own work included
    networks: dict[str, Path] | None = None
    series_slices: int = 160  # with free networks: a series of this many slices, PNG path and pixels path (0: none)


def design_networks(design: str, served: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The trained networks as each design serves them: the served graphs (in-graph), or the
    bare networks inside them (python-steps)."""
    import onnx

    from brainscan.export.served_graph import network_only

    if design in SERVED_DESIGNS:
        return dict(served)
    bare = {}
    for network, path in served.items():
        bare[network] = folder / f"{network}-bare.onnx"
        onnx.save(network_only(onnx.load(str(path))), str(bare[network]))
    return bare


def measure(config: CeilingConfig, log=print) -> Path:
    command = perf_analyzer.find() or perf_analyzer.install()
    kind = "designs" if config.networks else "ceiling"
    folder = Path(config.out) / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-{kind}"
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    inputs = write_input_data(config.files, raw / "input-brainscan.json")
    runs = []
    for count in config.instances:
        for design in config.designs or (*DESIGNS, *((LOCAL_DESIGN,) if config.networks else ())):
            if config.networks:
                networks = design_networks(design, config.networks, raw)
            else:
                networks = {
                    n: write_free_network(raw / f"free-{n}-{design}.onnx", n, design) for n in contract.NETWORKS
                }
            runs.append(_one_run(command, inputs, raw, networks, count, design, config, log))
    summary = {
        "host": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "files": len(config.files),
        "runs": runs,
        "networks": {n: str(p) for n, p in config.networks.items()} if config.networks else "free",
    }
    if config.series_slices and not config.networks:  # a series' CPU outside the networks, both paths
        costs = measure_series(raw, config.files, config.series_slices, log=log)
        summary["series"] = [cost.as_dict() for cost in costs]
    (folder / "ceiling.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "ceiling.md").write_text(report(summary))
    log(f"wrote {folder / 'ceiling.md'}")
    return folder


def _one_run(
    command, inputs: Path, raw: Path, networks: dict[str, Path], count: int, design: str, config: CeilingConfig, log
) -> dict:
    from brainscan.export.repository import DEFAULT_INSTANCES, write_repository
    from brainscan.serving import Ports, TritonServer

    name = f"{count}-{design}"
    # free networks: one instance each; trained ones: the local flavour's (a second segmenter)
    segmenters = 1 if config.networks is None else DEFAULT_INSTANCES[contract.Flavour.LOCAL][contract.SEGMENTER]
    if design in SERVED_DESIGNS:
        repository = write_repository(
            raw / f"repository-{name}",
            contract.Flavour.LOCAL,
            networks[contract.CLASSIFIER],
            networks[contract.SEGMENTER],
            instances={contract.PREPROCESS: count, contract.SEGMENTER: segmenters},
            local_resize=contract.OPENCV_RESIZE if design == LOCAL_DESIGN else contract.GRAPH_RESIZE,
        ).resolve()
    else:
        repository = previous_repository(raw / f"repository-{name}", networks, count, segmenters).resolve()
    ports = Ports.free()
    log(f"{design}, {count} instance(s) per python step: serving {repository} on 127.0.0.1:{ports.grpc}")
    ensembles = contract.ENSEMBLES if design in SERVED_DESIGNS else (contract.ENSEMBLE,)  # no pixels path then
    with TritonServer(
        repository, ports=ports, log_file=raw / f"tritonserver-{name}.log", ensembles=ensembles
    ) as server:
        url = server.grpc_url
        before, cpu_before = server_statistics(url), cpu_by_step(repository, ports.grpc)
        result = perf_analyzer.sweep(
            command,
            contract.ENSEMBLE,
            url,
            inputs,
            config.concurrency,
            raw / f"brainscan-{name}.csv",
            config.request_count,
            stability=config.stability_percentage,
        )
        cpu_after = cpu_by_step(repository, ports.grpc)
        stats = statistics_delta(before, server_statistics(url))
    (raw / f"brainscan-{name}.log").write_text(result.log)
    images = stats[contract.ENSEMBLE]["requests"]
    cpu_ms = {
        step: (cpu_after.get(step, 0.0) - cpu_before.get(step, 0.0)) * 1e3 / max(images, 1)
        for step in sorted(set(cpu_after) | set(cpu_before))
    }
    return {
        "instances": count,
        "design": design,
        "rows": result.rows,
        "server": stats,
        "images": images,
        "cpu_ms_per_image": cpu_ms,
        "outside_networks_ms": sum(cpu_ms.get(s, 0.0) for s in OUTSIDE),
    }
