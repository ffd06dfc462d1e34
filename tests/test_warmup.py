"""Warm-up: every composing model's config carries samples that Triton runs on each
instance before the model is ready, the samples are real inputs (a PNG slice as Triton's
serialized bytes, a zero 256 x 256 grey image for the networks at batch 1 and the maximum), a real server
runs each of them on every instance, and a sample that fails keeps the model from loading."""

from __future__ import annotations

import io
import shutil
import struct

import pytest
from PIL import Image

from brainscan import contract
from brainscan.export.repository import RepositorySpec, model_configs, read_config, repository_files
from brainscan.serving import Ports, ServerError, TritonServer


@pytest.mark.parametrize("flavour", ["local", "onnxruntime", "tensorrt"])
def test_every_composing_model_has_warmup_samples_of_its_own_inputs(flavour):
    spec = RepositorySpec(flavour=flavour)
    configs = model_configs(spec)
    assert "model_warmup" not in configs[contract.ENSEMBLE]  # Triton runs none for ensembles
    for name in contract.COMPOSING_MODELS:
        samples = configs[name]["model_warmup"]
        inputs = {t["name"]: t for t in configs[name]["input"]}
        for sample in samples:
            assert set(sample["inputs"]) == set(inputs), (name, sample["name"])
            for tensor, given in sample["inputs"].items():
                declared = inputs[tensor]["dims"]
                assert given["data_type"] == inputs[tensor]["data_type"]
                assert len(given["dims"]) == len(declared)
                assert all(d == g for d, g in zip(declared, given["dims"]) if d != -1), (name, tensor)
    for network in contract.NETWORKS:
        assert sorted(s["batch_size"] for s in configs[network]["model_warmup"]) == [1, spec.max_batch_size]


def test_the_preprocess_sample_is_a_png_slice_in_tritons_string_serialization():
    files = repository_files(RepositorySpec())
    payload = files[f"{contract.PREPROCESS}/warmup/image"]
    (length,) = struct.unpack("<I", payload[:4])
    assert length == len(payload) - 4  # one element: uint32 length, then the bytes
    image = Image.open(io.BytesIO(payload[4:]))
    assert image.format == "PNG" and image.size[0] > 0
    assert sorted(f for f in files if "/warmup/" in f) == [f"{contract.PREPROCESS}/warmup/image"]


@pytest.mark.server
def test_a_real_server_runs_every_sample_on_every_instance_before_it_is_ready(local_repository, tmp_path):
    log = tmp_path / "triton.log"
    with TritonServer(local_repository, ports=Ports.free(), log_file=log, log_verbose=1):
        text = log.read_text()
    for name in contract.COMPOSING_MODELS:
        config = read_config(local_repository / name / "config.pbtxt")
        instances = sum(group.count for group in config.instance_group)
        for sample in config.model_warmup:
            ran = [
                line
                for line in text.splitlines()
                if f"model '{name}' instance" in line and f"running warmup sample '{sample.name}'" in line
            ]
            assert len(ran) == instances, (name, sample.name, len(ran))


@pytest.mark.server
def test_a_sample_that_fails_keeps_the_model_from_loading(local_repository, tmp_path):

    broken = shutil.copytree(local_repository, tmp_path / "repository")
    (broken / contract.PREPROCESS / "warmup" / "image").write_bytes(contract.serialized_string(b"not an image"))
    log = tmp_path / "triton.log"
    with (
        pytest.raises(ServerError, match="before it was ready"),
        TritonServer(broken, ports=Ports.free(), log_file=log),
    ):
        pass
    # the same repository with its real sample loads (the session's server); here preprocess
    # never does. Triton 2.51 usually says why and exits 1; now and then it dies by SIGSEGV
    # while unwinding the failed load, before it says so
    text = log.read_text()
    assert f"successfully loaded '{contract.PREPROCESS}'" not in text
    if f"failed to load '{contract.PREPROCESS}'" in text:
        assert (
            f"failed to load '{contract.PREPROCESS}' version 1: Invalid argument: failed to run warmup sample" in text
        )
