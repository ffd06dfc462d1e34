"""How the figures of README.md here were measured: the served graphs' resize steps alone, in
one process on one thread (ONNX Runtime, CPU), as the GPU flavours build them (one dense
product per axis, blocks 0) and as the CPU flavours do (the products in 2 to 16 bands), beside
OpenCV doing the resize alone as the previous design's python steps did. Median of 40 runs
after one warm-up; one image a run. Run from the checkout:

    .venv/bin/python benchmarks/results/2026-12-04-resize/measure.py"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from brainscan import contract
from brainscan.onnx_runtime import cpu_session
from brainscan.preprocessing_graph import SIZE, mask_model, preprocessing_model

BLOCKS = (0, 2, 4, 8, 16)
INPUTS = {  # image (H, W, C) -> network input size
    "512x512 colour -> 224": ((512, 512, 3), (224, 224)),
    "512x512 colour -> 256": ((512, 512, 3), (256, 256)),
    "512x512 grey -> 256": ((512, 512, 1), (256, 256)),
    "256x256 grey -> 224": ((256, 256, 1), (224, 224)),
    "256x256 grey -> 256": ((256, 256, 1), (256, 256)),
}


def preprocessing(size: tuple[int, int], blocks: int):
    return cpu_session(preprocessing_model(size, blocks).SerializeToString(), threads=1, inter_op_threads=1)


def mask_head(blocks: int):
    return cpu_session(mask_model(blocks).SerializeToString(), threads=1, inter_op_threads=1)


def median_ms(run, repeats: int = 40) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 2)


def timed_row(make_session, feed: dict, opencv) -> dict[str, float]:
    row = {f"blocks {k}": median_ms(partial(make_session(k).run, None, feed)) for k in BLOCKS}
    row["OpenCV resize alone"] = median_ms(opencv)
    return row


def main() -> None:
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    rows = {}
    for name, ((height, width, channels), size) in INPUTS.items():
        pixels = rng.uniform(0, 4095, (1, height, width, channels)).astype(np.float32)
        opencv = partial(cv2.resize, pixels[0], size[::-1], interpolation=cv2.INTER_AREA)
        rows[f"network input, {name}"] = timed_row(partial(preprocessing, size), {contract.PIXELS: pixels}, opencv)
    probability = rng.uniform(0, 1, (1, 256, 256, 1)).astype(np.float32)
    for side in (256, 512):
        feed = {contract.SEGMENTER_OUTPUT: probability, SIZE: np.array([side, side], np.int64)}
        opencv = partial(opencv_mask, probability[0, ..., 0], side)
        rows[f"mask, 256x256 -> {side}x{side}"] = timed_row(mask_head, feed, opencv)
    (Path(__file__).parent / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    for name, row in rows.items():
        print(name, row)


def opencv_mask(probability: np.ndarray, side: int) -> np.ndarray:
    return (cv2.resize(probability, (side, side), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)


if __name__ == "__main__":
    main()
