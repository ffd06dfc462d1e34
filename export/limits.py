"""The export's checks and builds, their default limits in one place: what `brainscan export`
offers as option defaults and what the code falls back to are these."""

from __future__ import annotations

from brainscan import contract

OPSET = contract.ONNX_OPSET  # of the networks (tf2onnx) and of the served graphs
PARITY_ATOL = 1e-4  # ONNX Runtime against Keras: largest absolute difference of an output
FP16_MAX_PROB_DIFF = 0.02  # FP16 gate: tumour probability, FP16 against FP32
FP16_MIN_MASK_DICE = 0.97  # FP16 gate: mean Dice of FP16 masks against FP32 masks
WORKSPACE_MIB = 1024  # TensorRT's workspace memory-pool limit for a build
