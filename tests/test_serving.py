"""A real tritonserver on loopback serving the `local` repository with tiny trained
networks: the served contract, bad input, train/serve parity, batching, the python models."""
from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from brainscan import contract
from brainscan.client.inference import BrainscanClient, Connection, InferenceError, image_input
from brainscan.export.onnx import onnx_session
from brainscan.preprocessing import decode_image, postprocess_batch, preprocess_batch
from brainscan.train import datasets
from brainscan.train.training import load_run
from conftest import encode, phantom_slices
from test_preprocessing import _tiff_float, brain_like, png_header_claiming

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def triton(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def infer(client, data: bytes):
    result = client.infer(contract.ENSEMBLE, [image_input(data)])
    return result.as_numpy(contract.TUMOR_PROBABILITY), result.as_numpy(contract.MASK)


def sample_images() -> dict[str, bytes]:
    grey = brain_like(181, 217, seed=4)
    sixteen = grey.astype(np.uint16) * 250
    rgb = np.stack([grey, grey // 2, grey], -1)
    return {
        "png8-grey": encode(grey, "PNG"),
        "png16-grey": encode(sixteen, "PNG"),
        "png-rgb": encode(rgb, "PNG"),
        "png-rgba": encode(np.dstack([rgb, np.full_like(grey, 200)]), "PNG"),
        "jpeg-grey": encode(grey, "JPEG", quality=90),
        "jpeg-rgb": encode(rgb, "JPEG"),
        "tiff8-rgb": encode(rgb, "TIFF"),
        "tiff16-grey": encode(sixteen, "TIFF"),
        "tiny-png": encode(brain_like(9, 13), "PNG"),
        "wide-jpeg": encode(brain_like(300, 1200), "JPEG"),
    }


@pytest.mark.parametrize("name", list(sample_images()))
def test_ensemble_answers_the_contract_for_every_accepted_format(triton, name):
    data = sample_images()[name]
    height, width = decode_image(data).shape[:2]
    probability, mask = infer(triton, data)
    assert probability.dtype == np.float32 and probability.shape == (1, 1)
    assert 0.0 <= probability[0, 0] <= 1.0
    assert mask.dtype == np.uint8 and mask.shape == (1, height, width)
    assert set(np.unique(mask)) <= {0, 1}


BAD = {
    "empty": (b"", "empty input"),
    "text": (b"patient: 1234\nno pixels here\n", "not an image"),
    "truncated-png": (None, "truncated"),
    "gigapixel-header": (png_header_claiming(100_000, 100_000), "too large"),
    "nan-tiff": ("nan-tiff", "NaN or infinite"),
    "webp": ("webp", "unsupported image format WebP"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_invalid_argument_naming_the_problem_and_the_server_keeps_serving(triton, name):
    data, words = BAD[name]
    if data is None:
        full = encode(brain_like(300, 300), "PNG")
        data = full[: len(full) // 2]
    elif data == "nan-tiff":
        values = brain_like().astype(np.float32)
        values[5, 5] = np.nan
        data = _tiff_float(values)
    elif data == "webp":
        data = encode(brain_like(), "WEBP")
    with pytest.raises(InferenceServerException) as caught:
        infer(triton, data)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert words in caught.value.message()
    probability, _ = infer(triton, encode(brain_like(), "PNG"))
    assert probability.shape == (1, 1)
    assert triton.is_server_ready() and triton.is_model_ready(contract.ENSEMBLE)


def test_served_preprocess_gives_the_tensor_training_uses(triton, runs, phantom_dir):
    """Train/serve skew: the same file through training's input path and through the
    served `preprocess` model gives the same tensor, bit for bit."""
    config = load_run(runs["classifier"])
    samples = datasets.find_kaggle3m(phantom_dir)[:3]
    trained_on = datasets.load_images(samples, config.image_size)
    for sample, expected in zip(samples, trained_on):
        result = triton.infer(contract.PREPROCESS, [image_input(sample.image.read_bytes())])
        served = result.as_numpy(contract.CLASSIFIER_INPUT)[0]
        np.testing.assert_array_equal(served, expected)
        assert result.as_numpy(contract.ORIGINAL_SIZE).tolist() == [[256, 256]]


def test_served_results_equal_the_networks_run_in_process(triton, onnx_models, phantom_dir, local_repository):
    """What the server answers is what the exported ONNX networks compute on the same input."""
    from brainscan.export.repository import read_config

    configs = {n: read_config(local_repository / n / "config.pbtxt") for n in (contract.CLASSIFIER, contract.SEGMENTER)}
    sizes = {n: tuple(c.input[0].dims[:2]) for n, c in configs.items()}
    classifier, segmenter = onnx_session(onnx_models["classifier"]), onnx_session(onnx_models["segmenter"])
    for path in phantom_slices(phantom_dir, 3):
        data = path.read_bytes()
        cls, seg, original = preprocess_batch([data], sizes[contract.CLASSIFIER], sizes[contract.SEGMENTER])
        expected_probability = classifier.run(None, {contract.CLASSIFIER_INPUT: cls})[0]
        expected_mask = postprocess_batch(segmenter.run(None, {contract.SEGMENTER_INPUT: seg})[0], original)
        probability, mask = infer(triton, data)
        np.testing.assert_allclose(probability, expected_probability, atol=1e-5)
        assert (mask != expected_mask).mean() < 1e-3  # pixels within float noise of 0.5 may flip


def test_one_request_may_carry_a_batch_of_same_sized_images(triton):
    a, b = encode(brain_like(seed=1), "PNG"), encode(brain_like(seed=2), "PNG")
    tensor = grpcclient.InferInput(contract.IMAGE, [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[a], [b]], dtype=np.object_))
    result = triton.infer(contract.ENSEMBLE, [tensor])
    assert result.as_numpy(contract.TUMOR_PROBABILITY).shape == (2, 1)
    assert result.as_numpy(contract.MASK).shape == (2, 90, 70)
    mixed = grpcclient.InferInput(contract.IMAGE, [2, 1], "BYTES")
    mixed.set_data_from_numpy(np.array([[a], [encode(brain_like(50, 50), "PNG")]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="one height and width"):
        triton.infer(contract.ENSEMBLE, [mixed])


def test_concurrent_requests_are_all_answered(triton, server):
    data = [encode(brain_like(seed=s), "PNG") for s in range(12)]
    results = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        handles = []
        for item in data:
            handles.append(client.async_infer(contract.ENSEMBLE, [image_input(item)], callback=lambda result, error: results.append((result, error))))
        deadline = time.monotonic() + 60
        while len(results) < len(data) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    assert len(results) == len(data)
    assert all(error is None for _, error in results)


def test_client_library_reports_refusals_and_health(server):
    with BrainscanClient(Connection(server.grpc_url)) as client:
        prediction = client.infer(encode(brain_like(), "JPEG"))
        assert prediction.mask.shape == (90, 70) and prediction.label in ("tumour", "no tumour")
        with pytest.raises(InferenceError, match="not an image") as caught:
            client.infer(b"\x00" * 64)
        assert "INVALID_ARGUMENT" in caught.value.status
        state = client.health()
    assert state["live"] and state["ready"] and all(state["models"].values())
