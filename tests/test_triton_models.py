"""The python models' request loop, outside Triton: one response per request, in order, and
a failure of any kind fails only its own request. (Triton's `triton_python_backend_utils`
exists only inside the server; here a minimal module gives the few names the models use.)"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from brainscan import contract
from conftest import encode
from test_preprocessing import brain_like

MODELS = Path(__file__).resolve().parent.parent / "export" / "triton_models"


def _utils() -> types.ModuleType:
    utils = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code="UNKNOWN"):
            super().__init__(message)
            self.code = code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

    def get_input_tensor_by_name(request, name):
        return types.SimpleNamespace(as_numpy=lambda: request[name])

    def get_output_config_by_name(config, name):
        return next(o for o in config["output"] if o["name"] == name)

    def triton_string_to_numpy(name):  # Triton's mapping, for the two types a config here declares
        return {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8}[name]

    utils.triton_string_to_numpy = triton_string_to_numpy
    utils.TritonError, utils.InferenceResponse, utils.Tensor = TritonError, InferenceResponse, Tensor
    utils.get_input_tensor_by_name, utils.get_output_config_by_name = get_input_tensor_by_name, get_output_config_by_name
    return utils


def _load(name: str, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _utils())
    spec = importlib.util.spec_from_file_location(f"served_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def preprocess(monkeypatch):
    module = _load("preprocess", monkeypatch)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(_preprocess_config("TYPE_FP32"))})
    return module, model


def _preprocess_config(data_type: str) -> dict:
    return {"output": [{"name": contract.CLASSIFIER_INPUT, "dims": [32, 32, 3], "data_type": data_type},
                       {"name": contract.SEGMENTER_INPUT, "dims": [24, 24, 3], "data_type": data_type}]}


def test_preprocess_emits_the_dtype_its_config_declares(preprocess, monkeypatch):
    """UINT8 network inputs (the ceiling benchmark's variant): the same pixels, rounded."""
    _, fp32 = preprocess
    module = _load("preprocess", monkeypatch)
    uint8 = module.TritonPythonModel()
    uint8.initialize({"model_config": json.dumps(_preprocess_config("TYPE_UINT8"))})
    request = _request(encode(brain_like(), "PNG"))
    (wide,), (narrow,) = fp32.execute([request]), uint8.execute([request])
    for a, b in zip(wide.output_tensors[:2], narrow.output_tensors[:2]):
        assert a.array.dtype == np.float32 and b.array.dtype == np.uint8
        assert np.abs(a.array - b.array).max() <= 0.5
    np.testing.assert_array_equal(wide.output_tensors[2].array, narrow.output_tensors[2].array)


def _request(data: bytes) -> dict:
    return {contract.IMAGE: np.array([[data]], dtype=object)}


@pytest.mark.parametrize("failure,words", [
    (MemoryError(), "not enough memory to decode this image"),
    (RuntimeError("libpng: broken chunk"), "cannot decode this image (RuntimeError: libpng: broken chunk)"),
])
def test_any_failure_of_one_request_leaves_the_others_of_its_batch_answered(preprocess, monkeypatch, failure, words):
    module, model = preprocess
    good, poison = encode(brain_like(), "PNG"), encode(brain_like(seed=9), "PNG")
    real = module.preprocess_batch

    def sometimes_failing(encoded, *sizes):
        if bytes(np.asarray(encoded, dtype=object).reshape(-1)[0]) == poison:
            raise failure
        return real(encoded, *sizes)

    monkeypatch.setattr(module, "preprocess_batch", sometimes_failing)
    responses = model.execute([_request(good), _request(poison), _request(b""), _request(good)])
    assert len(responses) == 4  # one per request, in order
    assert responses[0].error is None and responses[3].error is None
    assert [t.name for t in responses[0].output_tensors] == [contract.CLASSIFIER_INPUT, contract.SEGMENTER_INPUT,
                                                               contract.ORIGINAL_SIZE]
    assert words in str(responses[1].error) and responses[1].error.code == "INVALID_ARG"
    assert "empty input" in str(responses[2].error)


def test_postprocess_fails_a_broken_request_alone(monkeypatch):
    module = _load("postprocess", monkeypatch)
    model = module.TritonPythonModel()
    good = {contract.SEGMENTER_OUTPUT: np.full((1, 8, 8, 1), 0.9, np.float32),
            contract.ORIGINAL_SIZE: np.array([[16, 12]], np.int32)}
    broken = {contract.SEGMENTER_OUTPUT: np.full((1, 8, 8, 1), 0.9, np.float32),
              contract.ORIGINAL_SIZE: np.array([[-5, 12]], np.int32)}  # cv2.resize raises on it
    responses = model.execute([good, broken, good])
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[0].output_tensors[0].array.shape == (1, 16, 12)
    assert str(responses[1].error).startswith("postprocess failed: error:") and responses[1].error.code == "INTERNAL"
