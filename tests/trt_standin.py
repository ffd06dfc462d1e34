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

from brainscan.export.gpu import Gpu
from brainscan.export.precision import run_fp16
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

    def run(self, plan: bytes, input_name: str, images: np.ndarray, max_batch: int) -> np.ndarray:
        meta = json.loads(plan)
        low, high = meta["profile"]["min"][0], meta["profile"]["max"][0]
        model = onnx.load(meta["onnx"])
        outputs = []
        for start in range(0, len(images), max_batch):
            chunk = images[start:start + max_batch]
            if not low <= len(chunk) <= high:  # what an engine does with a batch outside its profile
                raise ValueError(f"batch {len(chunk)} is outside the profile {low}..{high}")
            self.batches.append(len(chunk))
            outputs.append(run_fp16(model, chunk))
        out = np.concatenate(outputs)
        return self.perturb(out) if self.perturb else out


def source_of(plan_path: Path) -> str:
    return json.loads(Path(plan_path).read_bytes())["onnx"]
