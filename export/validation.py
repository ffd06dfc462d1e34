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


@dataclass
class NetworkInputs:
    """What the gate of one network needs: its FP32 ONNX and real validation data at the
    network's input size (ground-truth masks for the segmenter when the data has them)."""

    onnx: Path
    images: np.ndarray
    truth: np.ndarray | None = None


def input_name(network: str) -> str:
    return contract.CLASSIFIER_INPUT if network == contract.CLASSIFIER else contract.SEGMENTER_INPUT


def validation_inputs(network: str, onnx: Path, data: Path | None = None, samples: int = 64) -> NetworkInputs:
    """The first ``samples`` validation slices of the training run whose ``run.json`` sits
    beside ``onnx`` (its validation patients), or of the dataset folder ``data``."""
    from brainscan.export.repository import onnx_input_size
    from brainscan.train import datasets
    from brainscan.train.training import load_run, split_samples

    onnx = Path(onnx)
    size = onnx_input_size(onnx, input_name(network))
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
        truth = datasets.load_masks(chosen, size)
    return NetworkInputs(onnx, datasets.load_images(chosen, size), truth)


def run_onnx(model: Path | bytes, images: np.ndarray) -> np.ndarray:
    """The single output of an ONNX network (a file or serialized bytes) on ``images``,
    with ONNX Runtime on CPU."""
    from brainscan.export.onnx import onnx_session

    session = onnx_session(model)
    return session.run(None, {session.get_inputs()[0].name: np.asarray(images, np.float32)})[0]
