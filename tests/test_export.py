"""Keras -> ONNX: names, dynamic batch, and a parity check that can fail."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SIZES

from brainscan import contract
from brainscan.export import onnx as onnx_export
from brainscan.export.onnx import ParityError, export_onnx
from brainscan.onnx_runtime import cpu_session


def test_exported_graphs_take_any_image_and_give_the_ensemble_outputs(onnx_models):
    """The served graphs: PIXELS of any batch, size and channel count in; the classifier's
    probability and out-of-distribution score, or the segmenter's mask at the image's own
    size, out."""
    import onnx

    from brainscan.export.served_graph import network_size

    outputs = {"classifier": [contract.CLASSIFIER_OUTPUT, contract.OOD_SCORE], "segmenter": [contract.MASK]}
    for task, names in outputs.items():
        session = cpu_session(onnx_models[task])
        assert [i.name for i in session.get_inputs()] == [contract.PIXELS]
        assert [o.name for o in session.get_outputs()] == names
        assert not any(isinstance(d, int) for d in session.get_inputs()[0].shape)  # all symbolic
        assert network_size(onnx.load(str(onnx_models[task]))) == (TINY_SIZES[task],) * 2
        for batch, height, width, channels in ((1, 50, 70, 1), (3, 300, 200, 3)):
            pixels = np.random.default_rng(0).uniform(0, 4000, (batch, height, width, channels)).astype(np.float32)
            out = session.run(None, {contract.PIXELS: pixels})
            if task == "classifier":
                assert [o.shape for o in out] == [(batch, 1), (batch, 1)]
                assert (out[1] > 1).all()  # uniform noise is far outside the intended use
            else:
                assert out[0].shape == (batch, height, width)


def test_parity_failure_is_loud_has_a_table_and_writes_nothing(runs, tmp_path, monkeypatch):
    """Give the checker the ONNX of a different network: it must refuse."""
    import keras

    from brainscan.train import datasets
    from brainscan.train.training import load_model, load_run, split_samples

    config = load_run(runs["classifier"])
    images = datasets.decode_images(split_samples(config)["val"][:4])
    trained = load_model(runs["classifier"] / "model.keras")
    stranger = keras.models.clone_model(trained)  # same graph, its head's bias moved
    stranger.set_weights(trained.get_weights())
    kernel, bias = stranger.get_layer("cell_logits").get_weights()
    stranger.get_layer("cell_logits").set_weights([kernel, bias + 1.0])
    real_convert = onnx_export.keras_to_onnx
    monkeypatch.setattr(onnx_export, "keras_to_onnx", lambda model, opset=17: real_convert(stranger, opset))
    target = tmp_path / "model.onnx"
    with pytest.raises(ParityError) as caught:
        export_onnx(trained, target, images)
    assert "FAIL" in str(caught.value) and "max |diff|" in str(caught.value)
    assert caught.value.report.value("max |diff|") > 1e-2
    assert not target.exists() and not list(tmp_path.iterdir())


def test_training_run_folder_holds_model_metrics_and_curves(runs):
    import json

    for task, keys in {
        "classifier": {"accuracy", "sensitivity", "specificity", "roc_auc"},
        "segmenter": {"dice_tumour_slices", "iou_tumour_slices", "sensitivity", "specificity", "pixel_accuracy"},
    }.items():
        run = runs[task]
        metrics = json.loads((run / "metrics.json").read_text())
        assert keys <= set(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in keys if metrics[k] == metrics[k])
        assert (run / "model.keras").stat().st_size > 0
        assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert set(json.loads((run / "run.json").read_text())["splits"]) == {"train", "val", "test"}


def test_imagenet_weights_without_internet_fail_with_a_clear_message(tmp_path, monkeypatch):
    """Offline for real, without touching the network: an empty Keras cache and a download
    function that fails as it does with no route out."""
    from urllib.error import URLError

    from keras.src.utils import file_utils

    from brainscan.train.models import WeightsUnavailableError, build_classifier

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(url, *args, **kwargs):
        raise URLError(f"network disabled in the tests ({url})")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setattr(
        file_utils.os.path, "expanduser", lambda p: str(tmp_path / "home") + p[1:] if p.startswith("~") else p
    )
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        build_classifier((128, 128, 3), weights="imagenet", alpha=0.5)
