"""Each step of the README's "on its own" section, run as the `brainscan` command."""

from __future__ import annotations

import json

from test_cli import run

from brainscan.export.repository import validate_repository
from brainscan.train.datasets import find_kaggle3m


def test_data_phantom_and_split_commands(tmp_path):
    out = tmp_path / "phantom"
    result = run("data", "phantom", "--out", out, "--patients", 4, "--slices-per-patient", 2, "--seed", 9)
    assert result.returncode == 0 and "wrote 8 slices of 4 patients" in result.stdout
    assert len(find_kaggle3m(out)) == 8
    test = run("data", "split", "--data", out, "--part", "test").stdout.split()
    train = run("data", "split", "--data", out, "--part", "train").stdout.split()
    assert len(test) == 1 and len(train) == 2 and not set(test) & set(train)
    bad = run("data", "split", "--data", tmp_path / "nothing")
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_train_export_and_repository_commands(phantom_dir, tmp_path):
    run_dir = tmp_path / "seg"
    trained = run(
        "train",
        "segmenter",
        "--data",
        phantom_dir,
        "--out",
        run_dir,
        "--size",
        64,
        "--epochs",
        1,
        "--alpha",
        0.35,
        "--batch-size",
        8,
    )
    assert trained.returncode == 0, trained.stderr
    assert "dice_tumour_slices=" in trained.stdout
    assert "dice_tumour_slices" in json.loads((run_dir / "metrics.json").read_text())
    exported = run("export", "onnx", run_dir, "--samples", 4)
    assert exported.returncode == 0, exported.stderr
    assert "mask_probability" in exported.stdout and "ok" in exported.stdout
    repository = tmp_path / "repo"
    written = run(
        "export", "repository", "--flavour", "onnxruntime", "--out", repository, "--segmenter", run_dir / "model.onnx"
    )
    assert written.returncode == 0 and "no ONNX given for classifier" in written.stderr
    assert (repository / "segmenter" / "1" / "model.onnx").exists()
    assert validate_repository(repository)["segmenter"].platform == "onnxruntime_onnx"


def test_training_a_missing_dataset_is_one_line(tmp_path):
    result = run("train", "classifier", "--data", tmp_path / "nothing", "--out", tmp_path / "run")
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_unknown_flavour_is_a_usage_error_listing_the_flavours(tmp_path):
    result = run("export", "repository", "--flavour", "tflite", "--repository", tmp_path)
    text = " ".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    assert result.returncode == 2 and "'tflite' is not one of 'local', 'onnxruntime', 'tensorrt'" in text
