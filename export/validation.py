"""Real validation slices for the accuracy gates, and the FP32 reference they are judged
against (ONNX Runtime on CPU, on the FP32 ONNX the training run exported).

Both the CPU gate of ``brainscan export fp16`` and the engine gate of ``brainscan export
tensorrt`` read their inputs here, so they judge the same slices the same way. Nothing here
imports TensorFlow: the export image installs only the ``export`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.onnx_runtime import cpu_session
from brainscan.preprocessing import pixels


@dataclass
class NetworkInputs:
    """What the gate of one network needs: its FP32 served ONNX and real validation slices,
    decoded (``PIXELS`` of one image each, [H, W, C]), with their ground-truth masks at the
    same size for the segmenter when the data has them."""

    onnx: Path
    images: list[np.ndarray]
    truth: list[np.ndarray] | None = None


def validation_inputs(network: str, onnx: Path, data: Path | None = None, samples: int = 64) -> NetworkInputs:
    """The first ``samples`` validation slices of the training run whose ``run.json`` sits
    beside ``onnx`` (its validation patients), or of the dataset folder ``data``."""
    from brainscan.train import datasets
    from brainscan.train.training import load_run, split_samples

    onnx = Path(onnx)
    if data is not None:
        chosen = datasets.find_samples(data)[:samples]
    elif (onnx.parent / "run.json").exists():
        chosen = split_samples(load_run(onnx.parent))["val"][:samples]
    else:
        raise FileNotFoundError(f"no run.json beside {onnx}: give validation images with --data DIR")
    if not chosen:
        raise FileNotFoundError(f"no validation slices found for {network}")
    truth = None
    if network == contract.SEGMENTER and all(s.mask is not None for s in chosen):
        truth = datasets.load_truth(chosen)
    return NetworkInputs(onnx, [pixels(image) for image in datasets.decode_images(chosen)], truth)


def run_onnx(model: Path | bytes, images: list[np.ndarray]) -> list[np.ndarray]:
    """The first output of a served graph (a file or serialized bytes: the probability or the
    mask) for each of ``images`` (PIXELS, [H, W, C]), with ONNX Runtime on CPU."""
    from brainscan.export.served_graph import run_served

    return run_served(cpu_session(model), images)


def run_onnx_outputs(model: Path | bytes, images: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Every output of a served graph for each of ``images``, by output name."""
    from brainscan.export.served_graph import run_outputs

    return run_outputs(cpu_session(model), images)
