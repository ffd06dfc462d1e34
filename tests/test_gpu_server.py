"""On a GPU host, against a running GPU server of the demo's networks: series slices through the
pixels ensemble get the CPU's answers (docs/gpu.md, 'The GPU test'). Skips here, with its reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import DEMO_ARTIFACTS

from brainscan import contract

DEMO_ONNX = {n: DEMO_ARTIFACTS / "runs" / n / "model.onnx" for n in contract.NETWORKS}

GPU_URL = os.environ.get("BRAINSCAN_GPU_URL")  # host:port of a GPU server of the demo's networks


def _gpu_server_skip_reason() -> str | None:
    if not GPU_URL:
        return (
            "needs a server of the demo's networks on an NVIDIA GPU, which this machine has none of; "
            "serve one and set BRAINSCAN_GPU_URL=host:port (docs/gpu.md, 'The GPU test')"
        )
    if not all(p.with_name("model.fp16.onnx").exists() for p in DEMO_ONNX.values()):
        return "needs the FP16 ONNX graphs of `make demo`"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_server_skip_reason() is not None, reason=str(_gpu_server_skip_reason()))
def test_a_gpu_server_answers_series_slices_as_the_cpu_does():
    """A GPU server (the onnxruntime flavour, whose TensorRT provider is free to run the FP32
    steps' products in TF32 with no option to stop it: onnxruntime #6427, #26029; or the
    tensorrt flavour's engines) sent validation slices of their own size and constant images
    (grey and colour, dark and saturated) through the pixels ensemble: every decision is the
    CPU's within the FP16 gate's limits, the masks agree, and constant images get an empty
    mask (TF32 rounding stretched to 0..255 would show there)."""
    import asyncio

    from brainscan.client.triton.inference import AsyncBrainscanClient, Connection
    from brainscan.export.validation import run_onnx, validation_inputs
    from brainscan.metrics import dice

    constant = [np.full((256, 256, 1), 0.0, np.float32), np.full((241, 180, 3), 65535.0, np.float32)]
    constant.append(np.full((97, 97, 1), 1000.7, np.float32))
    images = validation_inputs(contract.SEGMENTER, DEMO_ONNX[contract.SEGMENTER], None, 16).images + constant

    async def served():
        async with AsyncBrainscanClient(Connection(str(GPU_URL))) as client:
            return [(await client.infer_pixels(image[None]))[0] for image in images]

    answers = asyncio.run(served())
    fp16 = {n: p.with_name("model.fp16.onnx") for n, p in DEMO_ONNX.items()}
    probabilities = [float(p.ravel()[0]) for p in run_onnx(fp16[contract.CLASSIFIER], images)]
    masks = run_onnx(fp16[contract.SEGMENTER], images)
    for k, (answer, cpu_p, cpu_mask) in enumerate(zip(answers, probabilities, masks, strict=True)):
        assert abs(answer.probability - cpu_p) <= 0.02, k  # the FP16 gate's limits
        assert answer.tumour == (cpu_p > contract.DECISION_THRESHOLD) or abs(cpu_p - 0.5) <= 0.02, k
        assert dice(answer.mask > 0, np.squeeze(cpu_mask) > 0) >= 0.97, k
    assert not any(answer.mask.any() for answer in answers[-len(constant) :])
