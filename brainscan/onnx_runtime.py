"""ONNX Runtime sessions on CPU, made one way for the whole kit (the parity gates, the FP16
gate's inputs, the preprocessing graphs, the in-process baselines)."""

from __future__ import annotations

from pathlib import Path


def cpu_session(model, threads: int = 0, inter_op_threads: int = 0):
    """A CPU session for ``model``: a file, serialized bytes or an onnx ModelProto.
    ``threads`` (intra-op) and ``inter_op_threads``: 0 lets ONNX Runtime choose."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
