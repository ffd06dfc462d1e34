"""perf_analyzer --input-data for the ensemble and for each composing model, all made from
the same real image files: the ensemble and ``preprocess`` get the encoded files, the
networks the pixels ``preprocess`` makes of them (at each image's own size)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.benchmarks.perf_data import input_data as image_input_data
from brainscan.preprocessing import pixels_batch


def _raw(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"b64": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape)}


def pixel_entries(files: list[Path]) -> list[dict]:
    """One perf_analyzer data entry per file for a model taking PIXELS: the file decoded, as
    ``preprocess`` would (FP32 [H, W, C]); with -b B each request carries B of them."""
    return [{contract.PIXELS: _raw(pixels_batch([Path(path).read_bytes()])[0])} for path in files]


def tensors(files: list[Path]) -> dict[str, list[dict]]:
    """Per model, one perf_analyzer data entry per file."""
    images = image_input_data(files)["data"]
    pixels = pixel_entries(files)
    return {
        contract.ENSEMBLE: images,
        contract.PIXELS_ENSEMBLE: pixels,
        contract.PREPROCESS: images,
        **{n: pixels for n in contract.NETWORKS},
    }


def write_all(entries: dict[str, list[dict]], folder: Path) -> dict[str, Path]:
    paths = {}
    for model, data in entries.items():
        paths[model] = Path(folder) / f"input-{model}.json"
        write_bytes_atomic(paths[model], json.dumps({"data": data}).encode())
    return paths
