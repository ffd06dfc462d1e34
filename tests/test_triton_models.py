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


def _runner(monkeypatch, tmp_path: Path, served, resize: str):
    """The local flavour's network runner, initialised as Triton would on ``served``."""
    import onnx

    from brainscan.export.served_graph import network_of

    (tmp_path / "1").mkdir(parents=True)
    onnx.save(served, str(tmp_path / "1" / "model.onnx"))
    outputs = [{"name": o.name} for o in served.graph.output]
    config = {
        "input": [{"name": contract.PIXELS}],
        "output": outputs,
        "parameters": {contract.RESIZE_PARAMETER: {"string_value": resize}},
    }
    model = _load("onnx_runner", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    assert network_of(served) in contract.NETWORKS
    return model


def _lesion(height: int, width: int, box: tuple[slice, slice], channels: int = 1) -> np.ndarray:
    image = np.full((height, width, channels), 100.0, np.float32)  # 16-bit MR-like levels
    image[box] = 3000.0
    return image


@pytest.mark.parametrize("resize", [contract.OPENCV_RESIZE, contract.GRAPH_RESIZE])
def test_the_local_runner_answers_hand_made_lesions_resizing_with_opencv_or_the_graph(monkeypatch, tmp_path, resize):
    """Two requests of different sizes in one batch, grey and colour, and a constant image:
    each answered at its own size with what the threshold networks give by hand (the lesion's
    share of the image for the probability, the lesion's own pixels for the mask)."""
    import onnx
    from known_networks import hand_probability, write_threshold_classifier, write_threshold_segmenter

    from brainscan.export.served_graph import serving_model
    from brainscan.metrics import dice

    classifier = serving_model(onnx.load(str(write_threshold_classifier(tmp_path / "c.onnx", 96))))
    segmenter = serving_model(onnx.load(str(write_threshold_segmenter(tmp_path / "s.onnx", 64))))
    grey_box, colour_box = (slice(60, 180), slice(40, 120)), (slice(20, 100), slice(30, 90))
    grey, colour = _lesion(300, 200, grey_box), _lesion(128, 128, colour_box, channels=3)
    requests = [{contract.PIXELS: grey[None]}, {contract.PIXELS: np.stack([colour, np.full_like(colour, 7.0)])}]

    answered = _runner(monkeypatch, tmp_path / "c", classifier, resize).execute(requests)
    probabilities = [r.output_tensors[0].array[:, 0] for r in answered]
    assert [r.output_tensors[0].name for r in answered] == [contract.TUMOR_PROBABILITY] * 2
    np.testing.assert_allclose(probabilities[0], [hand_probability(120 * 80 / (300 * 200))], atol=2e-3)
    np.testing.assert_allclose(probabilities[1], [hand_probability(80 * 60 / 128**2), hand_probability(0)], atol=2e-3)

    runner = _runner(monkeypatch, tmp_path / "s", segmenter, resize)
    assert (runner.size is not None) == (resize == contract.OPENCV_RESIZE)  # OpenCV feeds the network part
    masks = [r.output_tensors[0].array for r in runner.execute(requests)]
    assert masks[0].shape == (1, 300, 200) and masks[1].shape == (2, 128, 128) and masks[0].dtype == np.uint8
    for mask, image, box in ((masks[0][0], grey, grey_box), (masks[1][0], colour, colour_box)):
        truth = np.zeros(image.shape[:2], np.uint8)
        truth[box] = 1
        assert dice(mask, truth) >= 0.97
    assert not masks[1][1].any()  # the constant image: no tumour
