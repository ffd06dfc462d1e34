"""The preprocessing graph, the one definition of resize and scaling that training runs and
the served networks carry: its answers on images small enough to work out by hand, its
agreement with the OpenCV path it replaced, and the parity gate that guards it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from known_networks import write_threshold_classifier, write_threshold_segmenter

from brainscan import contract
from brainscan.export.served_graph import (
    PARITY_SIZES,
    check_parity,
    resampled,
    serving_model,
)
from brainscan.opencv_path import mask as reference_mask
from brainscan.opencv_path import model_input as reference_model_input
from brainscan.preprocessing import mask_from_probability, mask_to_target, to_model_input
from brainscan.train import datasets


def test_shrinking_averages_the_area_each_output_pixel_covers():
    image = np.array([[0, 2, 4, 6], [2, 4, 6, 8], [10, 10, 0, 0], [10, 10, 0, 0]], np.uint8)
    # 2 x 2 means, by hand: [[2, 6], [10, 0]]; stretched to 0..255: x * 25.5
    tensor = to_model_input(image, (2, 2))
    np.testing.assert_allclose(tensor[:, :, 0], [[51.0, 153.0], [255.0, 0.0]], atol=1e-4)
    assert (tensor[:, :, 0] == tensor[:, :, 1]).all() and (tensor[:, :, 1] == tensor[:, :, 2]).all()


def test_a_pixel_cut_by_an_output_edge_counts_by_its_share_inside():
    row = np.array([[0, 30, 60]], np.uint8).repeat(2, axis=0)  # 3 columns into 2: each output covers 1.5
    # left: (0 + 0.5 * 30) / 1.5 = 10; right: (0.5 * 30 + 60) / 1.5 = 50 -> stretched 0 and 255
    resized = to_model_input(np.hstack([row, np.full((2, 3), 20, np.uint8)]), (1, 4))  # 6 -> 4 columns: 1.5 each
    expected = np.array([10.0, 50.0, 20.0, 20.0])
    np.testing.assert_allclose(resized[0, :, 0], (expected - 10) * 255 / 40, atol=1e-3)


def test_growing_interpolates_linearly_between_pixel_centres():
    image = np.array([[0, 100]], np.uint8)  # 1 x 2 -> 1 x 4: centres at 0.25, 0.75 of a pixel apart
    tensor = to_model_input(image, (1, 4))
    # output x centres map to input -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1 -> 0, 25, 75, 100
    np.testing.assert_allclose(tensor[0, :, 0], [0.0, 63.75, 191.25, 255.0], atol=1e-3)


def test_a_constant_image_gives_zeros_and_colour_keeps_its_channels():
    assert not to_model_input(np.full((30, 40), 77, np.uint16), (16, 16)).any()
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200  # red only
    tensor = to_model_input(colour, (4, 4))
    assert (tensor[..., 0] == 255).all() and (tensor[..., 1:] == 0).all()


def test_values_beyond_fp16_range_are_resized_exactly():
    image = np.array([[65535, 65535], [0, 0]], np.uint16)
    tensor = to_model_input(image, (1, 1))  # one pixel: the mean, then stretched: a constant image
    assert not tensor.any()
    tall = to_model_input(np.array([[65535], [65535], [0], [65534]], np.uint16), (2, 1))
    np.testing.assert_allclose(tall[:, 0, 0], [255.0, 0.0], atol=1e-6)  # 65535 and 32767 before the stretch


def test_the_mask_head_brings_a_square_back_to_the_image_size():
    probability = np.zeros((4, 4), np.float32)
    probability[1:3, 1:3] = 1.0  # the middle quarter of a 4 x 4 map
    mask = mask_from_probability(probability, (8, 8))
    # linear interpolation at half-pixel centres: output pixel x maps to (x + 0.5) / 2 - 0.5
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 1  # rows/columns 2..5 map to input 0.75..2.25, where the tent exceeds 0.5
    np.testing.assert_array_equal(mask, expected)
    assert mask_from_probability(probability, (3, 5)).shape == (3, 5)


def test_training_targets_keep_a_pixel_that_is_at_least_half_tumour():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0:2] = 255  # top-left 2 x 2 block half tumour, top-right none
    target = mask_to_target(mask, (2, 2))
    assert target.shape == (2, 2, 1) and target[:, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.fixture(scope="module")
def real_slices(phantom_dir):
    return datasets.decode_images([s for s in datasets.find_kaggle3m(phantom_dir)][:6])


@pytest.mark.parametrize("size", [(160, 160), (128, 128), (96, 64)])
def test_the_graph_matches_the_opencv_path_it_replaced(real_slices, size):
    for image in resampled(real_slices[:2]) + resampled([real_slices[2].astype(np.uint16) * 16], [(200, 300)]):
        np.testing.assert_allclose(to_model_input(image, size), reference_model_input(image, size), atol=0.01)
    probability = np.random.default_rng(0).random((*size, 1), dtype=np.float32)
    for shape in PARITY_SIZES:
        assert (mask_from_probability(probability, shape) != reference_mask(probability, shape)).sum() == 0


def test_the_parity_gate_passes_the_graph_and_fails_a_wrong_one(tmp_path, real_slices):
    classifier = onnx.load(str(write_threshold_classifier(tmp_path / "c.onnx", 96)))
    segmenter = onnx.load(str(write_threshold_segmenter(tmp_path / "s.onnx", 64)))
    images = resampled(real_slices[:3])
    for network in (classifier, segmenter):
        report = check_parity(network, serving_model(network), images)
        assert report.passed, report.table()
        assert report.samples == 3 * len(PARITY_SIZES) and "150x220" in report.table()
    # a served graph whose mask head thresholds at 0.1 instead of 0.5 changes masks: the gate sees it
    wrong = serving_model(segmenter)
    (threshold,) = [n.input[1] for n in wrong.graph.node if n.name.startswith("mask/") and n.op_type == "Greater"]
    for tensor in wrong.graph.initializer:
        if tensor.name == threshold:
            assert float(onnx.numpy_helper.to_array(tensor)) == contract.MASK_THRESHOLD
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(0.1, np.float32), tensor.name))
    report = check_parity(segmenter, wrong, images)
    assert not report.passed and "FAIL" in report.table()


# --- what a first TensorRT build and a TF32 GPU see, checked here --------------------------------

# ops that change no shape on the way from the network's input to its first convolution
_SHAPE_KEEPING = {"Transpose", "Mul", "Add", "Sub", "Div", "Identity", "Cast"}


def _served_graphs(onnx_models, fp16_models) -> dict[str, onnx.ModelProto]:
    graphs = {f"{name} FP32": onnx.load(str(path)) for name, path in onnx_models.items()}
    graphs.update({f"{name} FP16": onnx.load(str(path)) for name, path in fp16_models.items()})
    return graphs


def test_each_networks_input_channels_come_from_a_constant_in_every_served_graph(onnx_models, fp16_models):
    """Walking back from the first convolution towards PIXELS, the first op that can set a
    shape is a Reshape whose target is an initializer naming 3 channels: a TensorRT build
    sees the convolution's input channels fixed, not min(3, 3 C) of PIXELS' channel count."""
    for name, model in _served_graphs(onnx_models, fp16_models).items():
        graph = model.graph
        producer = {out: node for node in graph.node for out in node.output}
        constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        conv = next(node for node in graph.node if node.op_type == "Conv")
        tensor, seen = conv.input[0], []
        while tensor != contract.PIXELS:
            node = producer[tensor]
            seen.append(node.op_type)
            if node.op_type not in _SHAPE_KEEPING:
                break
            tensor = next(i for i in node.input if i not in constants)
        assert node.op_type == "Reshape" and node.input[1] in constants, (name, seen)
        target = constants[node.input[1]]
        assert target[-1] == contract.CHANNELS and (target[1:] > 0).all(), (name, target)


def test_no_served_graph_casts_a_bool_to_uint8(onnx_models, fp16_models):
    """TensorRT's headers list no kBOOL to kUINT8 conversion: the mask is cast from a float."""
    for name, model in _served_graphs(onnx_models, fp16_models).items():
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
        casts = [n for n in model.graph.node if n.op_type == "Cast"]
        to_uint8 = [n for n in casts if any(a.name == "to" and a.i == onnx.TensorProto.UINT8 for a in n.attribute)]
        assert all(types.get(n.input[0]) != onnx.TensorProto.BOOL for n in to_uint8), name
        if "segmenter" in name:
            assert [types.get(n.input[0]) for n in to_uint8] == [onnx.TensorProto.FLOAT], name


def test_the_served_graphs_keep_their_answers_when_their_products_run_in_tf32(onnx_models, real_slices):
    """The onnxruntime flavour on a GPU may run the FP32 steps' matrix products in TF32: with
    both inputs of each rounded to TF32 on CPU, the parity gate still passes on real slices
    at every parity size, and constant images still give zeros (by their input's own range:
    the resize's TF32 rounding alone would make one vary by 5e-4 of its level)."""
    from brainscan.export.fp16 import tf32_view
    from brainscan.export.served_graph import network_only
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing_graph import preprocessing_model, resize_model

    for path in onnx_models.values():
        served = onnx.load(str(path))
        report = check_parity(network_only(served), tf32_view(served), resampled(real_slices[:3]))
        assert report.passed, report.table()
    rounded = cpu_session(tf32_view(resize_model((160, 160))).SerializeToString())
    grown = rounded.run(None, {contract.PIXELS: np.full((1, 97, 97, 1), 1000.7, np.float32)})[0]
    assert (grown.max() - grown.min()) / 1000.7 > 1e-4  # what the guard alone would have stretched
    scaled = cpu_session(tf32_view(preprocessing_model((160, 160))).SerializeToString())
    for level, shape in ((1000.7, (97, 97, 1)), (65535.0, (241, 180, 3)), (0.0, (256, 256, 1))):
        out = scaled.run(None, {contract.PIXELS: np.full((1, *shape), level, np.float32)})[0]
        assert not out.any(), (level, shape)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_cpu_flavours_banded_resize_gives_the_same_pixels_as_the_gpus_products(channels):
    """The CPU flavours' resize (the rows' product in bands that skip the zero weights) against
    the one large product per axis a GPU runs: shrinking by a whole and by a fractional factor,
    growing, and a size smaller than the number of bands, each the same within float rounding."""
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing_graph import CPU_RESIZE_BLOCKS, resize_model

    def session(blocks: int, size: tuple[int, int]):
        return cpu_session(resize_model(size, blocks).SerializeToString())

    rng = np.random.default_rng(3)
    for size in ((160, 160), (128, 96), (20, 20)):
        dense, banded = session(0, size), session(CPU_RESIZE_BLOCKS, size)
        for height, width in ((512, 512), (256, 256), (300, 200), (97, 130), (512, 90)):
            pixels = rng.uniform(0, 65535, (2, height, width, channels)).astype(np.float32)
            want = dense.run(None, {contract.PIXELS: pixels})[0]
            got = banded.run(None, {contract.PIXELS: pixels})[0]
            assert got.shape == want.shape and np.abs(got - want).max() <= 65535 * 2e-7, (size, height, width)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_cpu_flavours_network_input_is_the_gpus(channels):
    """The whole preprocessing, as the CPU flavours serve it (banded resize, grey repeated into
    three channels by the resize) and as a GPU's does (dense products, then copies): the same
    network input, 0..255, and a grey slice's three channels identical."""
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing_graph import CPU_RESIZE_BLOCKS, preprocessing_model

    size = (224, 224)  # the demo networks' input

    def session(blocks: int):
        return cpu_session(preprocessing_model(size, blocks).SerializeToString())

    dense, banded = session(0), session(CPU_RESIZE_BLOCKS)
    rng = np.random.default_rng(5)
    for height, width in ((512, 512), (256, 256), (300, 217), (64, 40)):
        pixels = rng.uniform(0, 4095, (2, height, width, channels)).astype(np.float32)
        want = dense.run(None, {contract.PIXELS: pixels})[0]
        got = banded.run(None, {contract.PIXELS: pixels})[0]
        assert got.shape == want.shape == (2, *size, 3) and np.abs(got - want).max() <= 255 * 1e-5
        assert got.min() >= 0.0 and got.max() <= 255.0 * (1 + 1e-6)
        if channels == 1:
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()


def test_the_cpu_flavours_banded_mask_head_gives_the_gpus_mask():
    """The CPU flavours' mask head (the linear resize back to the image in bands, sizes known
    only at run time) against the one large product per axis a GPU runs: masks of a smooth
    probability map brought back to large, odd, thin and tiny images (fewer rows than bands,
    so some bands are empty) are the same, but for pixels within float rounding of 0.5."""
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing_graph import CPU_RESIZE_BLOCKS, SIZE, mask_model

    def session(blocks: int):
        return cpu_session(mask_model(blocks).SerializeToString())

    dense, banded = session(0), session(CPU_RESIZE_BLOCKS)
    y, x = np.mgrid[0:256, 0:256] / 255.0
    blob = np.exp(-((y - 0.45) ** 2 + (x - 0.6) ** 2) / 0.02)  # one lesion-like bump, 0..1
    probability = np.stack([blob, blob[::-1]])[..., None].astype(np.float32)
    for height, width in ((512, 512), (256, 256), (600, 451), (97, 130), (512, 3), (7, 5), (1, 1)):
        size = np.array([height, width], np.int64)
        want = dense.run(None, {contract.SEGMENTER_OUTPUT: probability, SIZE: size})[0]
        got = banded.run(None, {contract.SEGMENTER_OUTPUT: probability, SIZE: size})[0]
        assert got.shape == want.shape == (2, height, width), (height, width)
        assert np.count_nonzero(got != want) <= max(1, want.size // 10000), (height, width)
    big = dense.run(None, {contract.SEGMENTER_OUTPUT: probability, SIZE: np.array([512, 512], np.int64)})[0]
    assert 0.01 < big.mean() < 0.5  # the bump is a lesion, not all or nothing
