"""What `bench ceiling` and the series measurement share: networks that cost next to nothing
with the real ones' tensors, and the CPU time of a served repository's processes."""

from __future__ import annotations

import os
from pathlib import Path

from brainscan import contract

TICKS = os.sysconf("SC_CLK_TCK")


def write_free_network(path: Path, network: str, design: str) -> Path:
    """An ONNX network with the real one's input and output for ``design`` that costs next
    to nothing: the classifier's probability is a sigmoid of the image mean; the segmenter's
    mask probability a sigmoid of each pixel's channel mean (python-steps), or its mask those
    pixels above the middle (in-graph, at the image's own size)."""
    from onnx import TensorProto, helper

    from brainscan.export.onnx import save_graph

    served = design == "in-graph"
    size = contract.CLASSIFIER_SIZE if network == contract.CLASSIFIER else contract.SEGMENTER_SIZE
    source = contract.PIXELS if served else contract.NETWORK_INPUT[network]
    shape = ["N", "H", "W", "C"] if served else ["N", size, size, contract.CHANNELS]
    constants = [helper.make_tensor("middle", TensorProto.FLOAT, [], [128.0])]
    extra: list = []
    if network == contract.CLASSIFIER:
        target = contract.CLASSIFIER_OUTPUT
        nodes = [
            helper.make_node("ReduceMean", [source], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "shape"], ["level"]),
            helper.make_node("Sub", ["level", "middle"], ["centred"]),
            helper.make_node("Sigmoid", ["centred"], [target]),
        ]
        constants.append(helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]))
        output = helper.make_tensor_value_info(target, TensorProto.FLOAT, ["N", 1])
        if served:  # the served classifier's score too: zeros, as a network without a fitted gate gives
            nodes.append(helper.make_node("Sub", [target, target], [contract.OOD_SCORE]))
            extra = [helper.make_tensor_value_info(contract.OOD_SCORE, TensorProto.FLOAT, ["N", 1])]
    elif served:
        target = contract.MASK
        nodes = [
            helper.make_node("ReduceMean", [source], ["mean"], axes=[3], keepdims=0),
            helper.make_node("Greater", ["mean", "middle"], ["above"]),
            helper.make_node("Cast", ["above"], [target], to=TensorProto.UINT8),
        ]
        output = helper.make_tensor_value_info(target, TensorProto.UINT8, ["N", "H", "W"])
    else:
        target = contract.SEGMENTER_OUTPUT
        nodes = [
            helper.make_node("ReduceMean", [source], ["mean"], axes=[3], keepdims=1),
            helper.make_node("Sub", ["mean", "middle"], ["centred"]),
            helper.make_node("Sigmoid", ["centred"], [target]),
        ]
        output = helper.make_tensor_value_info(target, TensorProto.FLOAT, ["N", size, size, 1])
    graph = helper.make_graph(
        nodes,
        f"free_{network}",
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, shape)],
        [output, *extra],
        constants,
    )
    return save_graph(graph, path)


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
