"""A real tritonserver on loopback serving the `local` repository with tiny trained
networks: the served contract, bad input, train/serve parity, batching, the python models."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import encode, phantom_slices
from test_preprocessing import _tiff_float, brain_like, png_header_claiming
from tritonclient.utils import InferenceServerException

from brainscan import contract
from brainscan.client.triton.inference import BrainscanClient, Connection, InferenceError, image_input
from brainscan.export.served_graph import network_only
from brainscan.onnx_runtime import cpu_session
from brainscan.preprocessing import decode_image, mask_from_probability, to_model_input
from brainscan.train import datasets
from brainscan.train.training import load_run

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


def _up_to(model, tensor: str):
    """The part of a served graph from PIXELS to ``tensor``, as an ONNX Runtime session."""
    import onnx
    import onnx.utils

    inferred = onnx.shape_inference.infer_shapes(model)
    return cpu_session(onnx.utils.Extractor(inferred).extract_model([contract.PIXELS], [tensor]).SerializeToString())


def test_the_served_path_gives_the_tensor_training_uses(triton, runs, phantom_dir, local_repository):
    """Train/serve skew: the same file through training's input path and through the served
    `preprocess` model and the served classifier's own preprocessing gives the same tensor,
    bit for bit."""
    import onnx

    config = load_run(runs["classifier"])
    samples = datasets.find_kaggle3m(phantom_dir)[:3]
    trained_on = datasets.load_images(samples, config.image_size)
    served_classifier = onnx.load(str(local_repository / contract.CLASSIFIER / "1" / "model.onnx"))
    preprocessing = _up_to(served_classifier, contract.CLASSIFIER_INPUT)
    for sample, expected in zip(samples, trained_on):
        pixels = triton.infer(contract.PREPROCESS, [image_input(sample.image.read_bytes())]).as_numpy(contract.PIXELS)
        assert pixels.shape == (1, 256, 256, 1) and pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels[0, :, :, 0], decode_image(sample.image.read_bytes()))
        (served,) = preprocessing.run(None, {contract.PIXELS: pixels})
        np.testing.assert_array_equal(served[0], expected)


def test_served_results_equal_the_networks_run_in_process(triton, onnx_models, phantom_dir):
    """What the server answers is what the trained networks compute on training's input
    tensors, with the mask brought back to the image's size."""
    import onnx

    networks = {n: onnx.load(str(onnx_models[n])) for n in contract.NETWORKS}
    sessions = {n: cpu_session(network_only(m).SerializeToString()) for n, m in networks.items()}
    sizes = {n: tuple(s.get_inputs()[0].shape[1:3]) for n, s in sessions.items()}
    for path in phantom_slices(phantom_dir, 3):
        data = path.read_bytes()
        image = decode_image(data)

        def run(network, image=image):
            return sessions[network].run(
                None, {contract.NETWORK_INPUT[network]: to_model_input(image, sizes[network])[None]}
            )[0]

        expected_mask = mask_from_probability(run(contract.SEGMENTER)[0], image.shape[:2])
        probability, mask = infer(triton, data)
        np.testing.assert_allclose(probability, run(contract.CLASSIFIER), atol=1e-5)
        assert (mask[0] != expected_mask).mean() < 1e-3  # pixels within float noise of 0.5 may flip


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


def test_concurrent_requests_of_many_sizes_are_all_answered_at_their_own_size(triton, server):
    """Requests of different sizes arrive together; Triton batches only those of one shape,
    and each gets its mask at its own size."""
    shapes = [(90, 70), (64, 64), (90, 70), (120, 33), (64, 64), (90, 70)] * 2
    data = [encode(brain_like(*shape, seed=s), "PNG") for s, shape in enumerate(shapes)]
    results = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        handles = []
        for item in data:
            handles.append(
                client.async_infer(
                    contract.ENSEMBLE,
                    [image_input(item)],
                    callback=lambda result, error: results.append((result, error)),
                )
            )
        deadline = time.monotonic() + 60
        while len(results) < len(data) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    assert len(results) == len(data)
    assert all(error is None for _, error in results)
    assert sorted(r.as_numpy(contract.MASK).shape[1:] for r, _ in results) == sorted(shapes)


def test_client_library_reports_refusals_and_health(server):
    with BrainscanClient(Connection(server.grpc_url)) as client:
        prediction = client.infer(encode(brain_like(), "JPEG"))
        assert prediction.mask.shape == (90, 70) and prediction.label in ("tumour", "no tumour")
        with pytest.raises(InferenceError, match="not an image") as caught:
            client.infer(b"\x00" * 64)
        assert "INVALID_ARGUMENT" in caught.value.status
        state = client.health()
    assert state["live"] and state["ready"] and all(state["models"].values())
