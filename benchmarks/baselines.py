"""What serving is compared with, on the same files with the same preprocessing:

- in-process ONNX Runtime: decode → the served classifier and segmenter graphs (resize,
  scaling and the mask's way back inside them) in one Python process, swept over batch
  size and intra-op threads;
- the original app's way: Keras ``model.predict`` per image, with the same preprocessing and
  mask graphs around it;

and each network's FLOPs per image, counted from its ONNX graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.onnx_runtime import cpu_session
from brainscan.preprocessing import mask_from_probability, pixels_batch, to_model_input


@dataclass
class Baseline:
    name: str
    batch: int
    threads: int
    images_per_s: float
    p50_ms: float  # per call (one batch)


def _session(path: Path, network: str, threads: int):
    from brainscan.export.repository import served_graph

    graph, _ = served_graph(path, network, cpu=True)  # as the CPU flavours serve it
    return cpu_session(graph, threads=threads, inter_op_threads=1)


class InProcessPipeline:
    """The served pipeline without the server: the same decoding and the same graphs."""

    def __init__(self, classifier_onnx: Path, segmenter_onnx: Path, threads: int = 1):
        self.classifier = _session(classifier_onnx, contract.CLASSIFIER, threads)
        self.segmenter = _session(segmenter_onnx, contract.SEGMENTER, threads)

    def __call__(self, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        pixels = pixels_batch(encoded)
        probability = self.classifier.run(None, {contract.PIXELS: pixels})[0]
        return probability, self.segmenter.run(None, {contract.PIXELS: pixels})[0]


def _timed(call, batches: list[list[bytes]], min_seconds: float) -> tuple[float, float]:
    call(batches[0])  # warm-up
    times, images, started = [], 0, time.perf_counter()
    while True:
        for batch in batches:
            t0 = time.perf_counter()
            call(batch)
            times.append(time.perf_counter() - t0)
            images += len(batch)
        if time.perf_counter() - started >= min_seconds:
            break
    return images / (time.perf_counter() - started), float(np.median(times) * 1e3)


def _batches(data: list[bytes], size: int) -> list[list[bytes]]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)] or [data[:size]]


def onnxruntime_sweep(
    classifier_onnx: Path,
    segmenter_onnx: Path,
    files: list[Path],
    batches=(1, 4, 8),
    threads=(1, 2),
    min_seconds: float = 3.0,
) -> list[Baseline]:
    data = [Path(f).read_bytes() for f in files]
    results = []
    for n_threads in threads:
        pipeline = InProcessPipeline(classifier_onnx, segmenter_onnx, n_threads)
        for batch in batches:
            rate, p50 = _timed(pipeline, _batches(data, batch), min_seconds)
            results.append(Baseline("in-process ONNX Runtime", batch, n_threads, rate, p50))
    return results


def keras_predict(
    classifier_keras: Path, segmenter_keras: Path, files: list[Path], min_seconds: float = 3.0
) -> Baseline:
    """The original app: one ``model.predict`` per network per image."""
    from brainscan.train.training import load_model

    classifier, segmenter = load_model(classifier_keras), load_model(segmenter_keras)
    cls_size, seg_size = tuple(classifier.input_shape[1:3]), tuple(segmenter.input_shape[1:3])

    def call(encoded):
        image = pixels_batch(encoded)[0]
        classifier.predict(to_model_input(image, cls_size)[None], verbose=0)
        return mask_from_probability(
            segmenter.predict(to_model_input(image, seg_size)[None], verbose=0)[0], image.shape[:2]
        )

    rate, p50 = _timed(call, _batches([Path(f).read_bytes() for f in files], 1), min_seconds)
    return Baseline("Keras model.predict", 1, 0, rate, p50)


def onnx_flops(path: Path) -> float:
    """Multiply-adds × 2 of the network's convolutions and matrix products for one image (the
    rest, activations and additions, is a few percent of it; the resize around a served
    network is left out, its size depends on the image's)."""
    import onnx
    from onnx import shape_inference

    from brainscan.export.served_graph import network_of, network_only

    model = onnx.load(str(path))
    model = network_only(model) if network_of(model) else model
    graph = model.graph
    for tensor in graph.input:  # batch 1 for the count
        dim = tensor.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    graph = shape_inference.infer_shapes(model).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input, *graph.output]
    }
    weights = {t.name: list(t.dims) for t in graph.initializer}
    flops = 0.0
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = weights.get(node.input[1])
            if w is None:
                continue
            if node.op_type == "Conv":
                out = shapes.get(node.output[0])
                if out:
                    flops += 2.0 * np.prod(out) * w[1] * np.prod(w[2:])
            else:
                inp = shapes.get(node.input[0])
                if inp:
                    flops += 2.0 * np.prod(inp) * w[1] * np.prod(w[2:])
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                flops += 2.0 * np.prod(out) * a[-1]
    return float(flops)
