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
from conftest import encode
from test_preprocessing import brain_like

from brainscan import contract

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

    utils.TritonError, utils.InferenceResponse, utils.Tensor = TritonError, InferenceResponse, Tensor
    utils.get_input_tensor_by_name = get_input_tensor_by_name
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
    model.initialize(
        {"model_config": json.dumps({"parameters": {contract.MAX_SIDE_PARAMETER: {"string_value": "95"}}})}
    )
    return module, model


def _request(data: bytes) -> dict:
    return {contract.IMAGE: np.array([[data]], dtype=object)}


def test_preprocess_sends_the_decoded_pixels_and_refuses_what_its_config_says_is_too_large(preprocess):
    _, model = preprocess
    small, wide = brain_like(60, 70), brain_like(60, 100)
    (answered, refused) = model.execute([_request(encode(small, "PNG")), _request(encode(wide, "PNG"))])
    assert [t.name for t in answered.output_tensors] == [contract.PIXELS]
    np.testing.assert_array_equal(answered.output_tensors[0].array, small[None, :, :, None].astype(np.float32))
    assert (
        "100x60" in str(refused.error) and "95 per side" in str(refused.error) and refused.error.code == "INVALID_ARG"
    )


@pytest.mark.parametrize(
    "failure,words",
    [
        (MemoryError(), "not enough memory to decode this image"),
        (RuntimeError("libpng: broken chunk"), "cannot decode this image (RuntimeError: libpng: broken chunk)"),
    ],
)
def test_any_failure_of_one_request_leaves_the_others_of_its_batch_answered(preprocess, monkeypatch, failure, words):
    module, model = preprocess
    good, poison = encode(brain_like(), "PNG"), encode(brain_like(seed=9), "PNG")
    real = module.pixels_batch

    def sometimes_failing(encoded, *args):
        if bytes(np.asarray(encoded, dtype=object).reshape(-1)[0]) == poison:
            raise failure
        return real(encoded, *args)

    monkeypatch.setattr(module, "pixels_batch", sometimes_failing)
    responses = model.execute([_request(good), _request(poison), _request(b""), _request(good)])
    assert len(responses) == 4  # one per request, in order
    assert responses[0].error is None and responses[3].error is None
    assert [t.name for t in responses[0].output_tensors] == [contract.PIXELS]
    assert words in str(responses[1].error) and responses[1].error.code == "INVALID_ARG"
    assert "empty input" in str(responses[2].error)
