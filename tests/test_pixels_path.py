"""The pixels path: the slices of a DICOM or NIfTI series sent as raw tensors to the
`brainscan_pixels` ensemble, many a request, with no PNG on either side and no Python step on
the server, answering exactly as the PNG path did (a real Triton, real series)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from dicom_cases import brainscan, lesion_images
from volume_files import write_mr_series

from brainscan import contract

pytestmark = pytest.mark.server


def _stats(server, model: str) -> tuple[int, int]:
    """(requests answered, executions) of ``model`` on ``server``: Triton's own statistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def _slices_seen(server, model: str) -> int:
    """Images ``model`` on ``server`` has run (each slice of a batch counting): Triton's inference_count."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0))


def _run(server, series: Path, out: Path, slices: str) -> dict:
    result = brainscan(
        "predict", series, "--url", server.grpc_url, "--out", out, "--format", "json", "--slices", slices
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    return record


def _mask(record: dict) -> np.ndarray:
    import nibabel

    return np.asarray(nibabel.load(next(p for p in record["outputs"] if p.endswith(".mask.nii.gz"))).dataobj)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def test_the_demo_series_answers_as_through_pngs_with_no_python_step_and_many_slices_a_request(
    server, phantom_dir, tmp_path
):
    """A phantom patient as the MR series `make demo` writes: the same decisions and the same
    mask through both paths; on the pixels path its 6 slices went in one request to
    brainscan_pixels, and preprocess (the server's Python step) ran for none of them."""
    from brainscan.train.datasets import find_kaggle3m
    from brainscan.train.phantom_dicom import write_phantom_series

    patient = find_kaggle3m(phantom_dir)[0].image.parent
    write_phantom_series(patient, tmp_path / "series")
    before_pixels, before_python = _stats(server, contract.PIXELS_ENSEMBLE), _stats(server, contract.PREPROCESS)
    pixels = _run(server, tmp_path / "series", tmp_path / "pixels", "pixels")
    after_pixels, after_python = _stats(server, contract.PIXELS_ENSEMBLE), _stats(server, contract.PREPROCESS)
    png = _run(server, tmp_path / "series", tmp_path / "png", "png")
    slices = pixels["slices"]
    assert slices == 6 and after_pixels[0] - before_pixels[0] == math.ceil(slices / contract.MAX_BATCH_SIZE)
    assert after_python == before_python  # no decoding on the server for the pixels path
    assert _stats(server, contract.PREPROCESS)[0] - after_python[0] == slices  # the PNG path decodes each slice
    for key in ("label", "slice_probabilities", "slice_scores", "tumour_volume_ml", "tumour_slice_indices"):
        assert pixels[key] == png[key], key
    assert _dice(_mask(pixels), _mask(png)) >= 0.99 and (_mask(pixels) == _mask(png)).all()


@pytest.mark.parametrize("geometry", ["oblique", "reversed"])
def test_oblique_and_reversed_series_answer_as_through_pngs(bright_server, tmp_path, geometry):
    """Series written by hand, tilted 20 degrees or stored from the last slice to the first,
    with a bright lesion the bright-threshold segmenter finds: the same masks either way, and
    more slices than one request takes (10, in requests of 8 and 2)."""
    options = {
        "oblique": {"column_direction": (0.0, np.cos(np.radians(20)), np.sin(np.radians(20)))},
        "reversed": {"reverse": True},
    }[geometry]
    write_mr_series(tmp_path / "series", lesion_images(10), **options)
    pixels = _run(bright_server, tmp_path / "series", tmp_path / "pixels", "pixels")
    png = _run(bright_server, tmp_path / "series", tmp_path / "png", "png")
    assert pixels["label"] == png["label"] and pixels["slice_probabilities"] == png["slice_probabilities"]
    assert pixels["tumour_slices"] == png["tumour_slices"] == 3  # the hand-drawn lesion's slices
    assert _dice(_mask(pixels), _mask(png)) >= 0.99


def test_the_client_library_answers_a_batch_of_pixels_as_it_answers_each_png(server, phantom_dir):
    """`AsyncBrainscanClient.infer_pixels` on slices of one size, and `infer` on each of them
    as a 16-bit PNG: the same probability, score and mask per slice."""
    import asyncio

    from brainscan.client.imaging.volumes import encode_png16
    from brainscan.client.triton.inference import AsyncBrainscanClient, Connection
    from brainscan.preprocessing import decode_image
    from brainscan.train.datasets import find_kaggle3m

    images = [decode_image(s.image.read_bytes()).astype(np.uint16) * 200 for s in find_kaggle3m(phantom_dir)[:5]]

    async def both():
        async with AsyncBrainscanClient(Connection(server.grpc_url)) as client:
            assert await client.pixels_batch_size() == contract.MAX_BATCH_SIZE
            batch = await client.infer_pixels(np.stack(images)[..., None].astype(np.float32))
            single = [await client.infer(encode_png16(image)) for image in images]
        return batch, single

    batch, single = asyncio.run(both())
    for a, b in zip(batch, single, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-6) and a.score == pytest.approx(b.score, abs=1e-5)
        assert a.mask.shape == b.mask.shape and (a.mask == b.mask).all()


# --- the segmenter only where the classifier does not rule a tumour out ------------------------------


def test_the_slices_to_segment_are_those_not_ruled_out_and_their_neighbours():
    from brainscan.client.batch.series_gate import slices_to_segment

    probabilities = [0.001, 0.2, 0.001, 0.001, 0.001, 0.05, 0.001, 0.001]
    assert slices_to_segment(probabilities, 0.01, margin=1) == [0, 1, 2, 4, 5, 6]  # by hand: 1 and 5, +-1
    assert slices_to_segment(probabilities, 0.01, margin=0) == [1, 5]
    assert slices_to_segment(probabilities, 0.5) == [] and slices_to_segment([], 0.01) == []


@pytest.mark.parametrize("seed", range(20))
def test_the_gate_chooses_the_same_slices_whatever_order_the_answers_come_in(seed):
    """A series' classifier answers arriving request by request, in any order (as concurrent
    requests do): once all have arrived the gate has chosen the slices it would with every
    answer at hand, and it hands out full requests before the last answer."""
    from brainscan.client.batch.series_gate import SeriesGate, slices_to_segment

    rng = np.random.default_rng(seed)
    n, size = int(rng.integers(1, 60)), int(rng.integers(1, 9))
    probabilities = np.where(rng.random(n) < 0.15, 0.5, 0.001)
    gate, sent = SeriesGate(n, 0.01), []
    requests = [range(start, min(start + size, n)) for start in range(0, n, size)]
    for k in rng.permutation(len(requests)):
        gate.add(requests[k], [(float(probabilities[i]), 0.0) for i in requests[k]])
        while (part := gate.take(size, final=False)) is not None:
            assert len(part) == size
            sent += part
    while (part := gate.take(size, final=True)) is not None:
        sent += part
    assert sorted(sent) == sorted(gate.chosen) == slices_to_segment(list(probabilities), 0.01)
    assert len(sent) == len(set(sent))


@pytest.fixture(scope="module")
def rule_out_server(tmp_path_factory):
    """The bright-threshold networks, the classifier declaring a rule-out threshold of 0.01 (as
    `export onnx` writes one into a trained classifier's graph)."""
    import onnx
    from known_networks import write_threshold_classifier, write_threshold_segmenter

    from brainscan.export.repository import write_repository
    from brainscan.export.served_graph import RULE_OUT_KEY
    from brainscan.serving import Ports, TritonServer

    root = tmp_path_factory.mktemp("rule-out")
    classifier = onnx.load(str(write_threshold_classifier(root / "classifier.onnx", contract.CLASSIFIER_SIZE)))
    classifier.metadata_props.add(key=RULE_OUT_KEY, value="0.01")
    onnx.save(classifier, str(root / "classifier.onnx"))
    segmenter = write_threshold_segmenter(root / "segmenter.onnx", contract.SEGMENTER_SIZE)
    repository = write_repository(root / "model_repository", "local", root / "classifier.onnx", segmenter)
    with TritonServer(repository, ports=Ports.free(), log_file=root / "tritonserver.log") as running:
        yield running


def test_a_series_segmenter_runs_only_where_the_classifier_does_not_rule_a_tumour_out(rule_out_server, tmp_path):
    """10 slices, a large bright lesion on slices 4 and 5 (probability sigmoid((255 x 0.42 -
    128) / 10) = 0.11, by hand) and dark constant slices elsewhere (probability 3e-6): the
    segmenter runs on slices 3 to 6 alone, as Triton's statistics count, and the masks are
    those of segmenting every slice."""
    from known_networks import hand_probability

    images = []
    for k in range(10):
        image = np.full((96, 112), 300, np.uint16)
        if k in (4, 5):
            image[:, :47] = 1500  # 47 of 112 columns: a bright share of 0.42
        images.append(image)
    assert hand_probability(47 / 112) > 0.01 > hand_probability(0.0)
    write_mr_series(tmp_path / "series", images)
    before, seen_before = _stats(rule_out_server, contract.SEGMENTER), _slices_seen(rule_out_server, contract.SEGMENTER)
    gated = _run(rule_out_server, tmp_path / "series", tmp_path / "gated", "pixels")
    middle, seen_middle = _stats(rule_out_server, contract.SEGMENTER), _slices_seen(rule_out_server, contract.SEGMENTER)
    result = brainscan(
        "predict", tmp_path / "series", "--url", rule_out_server.grpc_url, "--out", tmp_path / "all",
        "--format", "json", "--segment-all",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    every = json.loads(result.stdout)
    after, seen_after = _stats(rule_out_server, contract.SEGMENTER), _slices_seen(rule_out_server, contract.SEGMENTER)
    assert seen_middle - seen_before == 4 and seen_after - seen_middle == 10  # slices the segmenter ran on
    assert gated["segmented_slices"] == 4 and "segmented_slices" not in every
    inferences = lambda a, b: b[0] - a[0]  # noqa: E731  (requests answered, a batch counting once)
    # 4 slices in one request; 10 in as many as the server's batch needs
    assert inferences(before, middle) == 1 and inferences(middle, after) == math.ceil(10 / contract.MAX_BATCH_SIZE)
    assert gated["tumour_slice_indices"] == every["tumour_slice_indices"] == [4, 5]
    assert (_mask(gated) == _mask(every)).all()
