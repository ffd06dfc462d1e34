"""A CPU stand-in for the machine that builds engines (``brainscan.export.tensorrt.Toolkit``).

It does not imitate TensorRT's API: the TensorRT calls are few, go through Polygraphy, and
are type-checked against NVIDIA's bindings (tests/test_typecheck.py). What it stands for is
what an engine built from an FP16 graph computes: its "plan" names the FP16 ONNX it was
built from, and running it runs that graph with FP16 storage on CPU (the same view as the
CPU gate), so the engine gate below compares real FP16 outputs with FP32. It records every
build request and every batch it runs, so the tests can check what the build asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from brainscan.export.fp16 import run_fp16
from brainscan.export.gpu import Gpu
from brainscan.export.served_graph import by_shape
from brainscan.export.tensorrt import BuildRequest

STANDIN_GPU = Gpu("Stand-in GPU", "8.9")


class CpuToolkit:
    def __init__(self, version: str = "11.3.0.99", gpu: Gpu = STANDIN_GPU, perturb=None):
        self.version, self._gpu, self.perturb = version, gpu, perturb
        self.requests: list[BuildRequest] = []
        self.batches: list[int] = []

    def gpu(self) -> Gpu:
        return self._gpu

    def build(self, request: BuildRequest) -> bytes:
        self.requests.append(request)
        return json.dumps({"onnx": str(request.onnx), "profile": request.profile.as_dict()}).encode()

    def run(self, plan: bytes, input_name: str, images: list[np.ndarray], max_batch: int) -> dict[str, list]:
        """Every output of the engine by name, one per image in order; ``perturb`` changes the
        decision output (the probability or the mask)."""
        meta = json.loads(plan)
        low, high = meta["profile"]["min"], meta["profile"]["max"]
        model = onnx.load(meta["onnx"])
        decision = model.graph.output[0].name
        outputs: dict[str, list] = {}
        for indices in by_shape(images).values():
            for start in range(0, len(indices), max_batch):
                chosen = indices[start : start + max_batch]
                chunk = [images[i] for i in chosen]
                shape = (len(chunk), *chunk[0].shape)
                if not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high)):  # what an engine does then
                    raise ValueError(f"input {list(shape)} is outside the profile {low}..{high}")
                self.batches.append(len(chunk))
                for name, values in run_fp16(model, chunk).items():
                    found = outputs.setdefault(name, [None] * len(images))
                    for i, value in zip(chosen, values):
                        found[i] = self.perturb(value) if self.perturb and name == decision else value
        return outputs


def source_of(plan_path: Path) -> str:
    return json.loads(Path(plan_path).read_bytes())["onnx"]
