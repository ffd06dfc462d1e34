"""`brainscan export tensorrt`: profiles from the configs, the builder's settings (against a
recording stand-in for TensorRT, tests/trt_standin.py), the build → gate → write flow, the
CUDA runtime wrapper, and the clear failure where TensorRT is absent. Real engines need a
GPU: those tests are marked `gpu` and skip here."""
from __future__ import annotations

import glob
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trt_standin
from brainscan import contract
from brainscan.export.cuda import CudaError, CudaRuntime
from brainscan.export.fp16 import Tolerances
from brainscan.export.profiles import ProfileError, batch_profile, profile_from_config
from brainscan.export.repository import RepositoryError, RepositorySpec, model_configs, read_config, to_model_config, write_repository
from brainscan.export.tensorrt import (
    PLAN, RECORD, BuildSettings, EngineBuildError, GateFailedError, build_engine,
    build_repository_engines, network_profile,
)

COMMITTED = Path(__file__).resolve().parent.parent / "model_repository"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def trt():
    return trt_standin.module()


@pytest.fixture
def trt_repository(tmp_path, onnx_models) -> Path:
    """A tensorrt-flavour repository sized for the tiny test networks."""
    return write_repository(tmp_path / "repo", "tensorrt", onnx_models["classifier"], onnx_models["segmenter"])


# --- profiles ---------------------------------------------------------------------------

@pytest.mark.parametrize("network", [contract.CLASSIFIER, contract.SEGMENTER])
def test_committed_engines_profile_spans_batch_one_to_the_configs_max(network):
    config = read_config(COMMITTED / network / "config.pbtxt")
    profile = network_profile(COMMITTED, network)
    assert profile.input == config.input[0].name
    assert profile.min == (1, *config.input[0].dims)
    assert profile.max == (config.max_batch_size, *config.input[0].dims)
    assert profile.max_batch == config.max_batch_size > 1
    assert profile.opt == profile.max  # the documented default optimum


@pytest.mark.parametrize("max_batch", [1, 4, 16, 32])
def test_profile_and_max_batch_size_agree_for_any_repository(tmp_path, max_batch):
    write_repository(tmp_path, "tensorrt", max_batch_size=max_batch)
    for network in (contract.CLASSIFIER, contract.SEGMENTER):
        config = read_config(tmp_path / network / "config.pbtxt")
        assert network_profile(tmp_path, network).max_batch == config.max_batch_size == max_batch


def test_profile_refuses_what_cannot_be_served():
    with pytest.raises(ProfileError, match="optimum batch 9 is outside 1..8"):
        batch_profile("x", (4, 4, 3), 8, opt_batch=9)
    with pytest.raises(ProfileError, match="max_batch_size must be at least 1"):
        batch_profile("x", (4, 4, 3), 0)
    config = to_model_config(model_configs(RepositorySpec())[contract.POSTPROCESS])
    with pytest.raises(ProfileError, match="fixed"):
        profile_from_config(to_model_config({"name": "m", "max_batch_size": 8,
                                             "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}]}))
    with pytest.raises(ProfileError, match="one input"):
        profile_from_config(config)


def test_only_tensorrt_repositories_get_engines(tmp_path):
    write_repository(tmp_path, "local")
    with pytest.raises(RepositoryError, match="--flavour tensorrt"):
        network_profile(tmp_path, contract.CLASSIFIER)


# --- the builder's settings -------------------------------------------------------------

def test_builder_gets_fp16_workspace_one_profile_and_explicit_batch(trt, trt_repository, onnx_models):
    profile = network_profile(trt_repository, contract.SEGMENTER, opt_batch=4)
    built = build_engine(trt, onnx_models["segmenter"], profile, BuildSettings(workspace_mib=512))
    (build,) = trt.Builder.builds
    assert build.network.flags == 0  # TensorRT 10: explicit batch needs no flag
    assert build.config.flags == {trt.BuilderFlag.FP16}
    assert build.config.pools == {trt.MemoryPoolType.WORKSPACE: 512 << 20}
    assert len(build.config.profiles) == 1
    assert build.config.profiles[0].shapes == {contract.SEGMENTER_INPUT: ((1, 64, 64, 3), (4, 64, 64, 3), (8, 64, 64, 3))}
    assert built.fp32_layers == [] and built.plan


def test_timing_cache_is_read_before_and_written_after_every_build(trt, trt_repository, onnx_models, tmp_path):
    cache = tmp_path / "timing.cache"
    profile = network_profile(trt_repository, contract.CLASSIFIER)
    build_engine(trt, onnx_models["classifier"], profile, BuildSettings(timing_cache=cache))
    first = cache.read_bytes()
    build_engine(trt, onnx_models["classifier"], profile, BuildSettings(timing_cache=cache))
    first_build, second_build = trt.Builder.builds
    assert first_build.config.cache_given == b"" and first == b"|timed"
    assert second_build.config.cache_given == first  # the second build starts from the first's timings
    assert second_build.config.ignore_mismatch is False
    assert cache.read_bytes() == first + b"|timed"


def test_keep_fp32_pins_matching_layers_and_obeys_the_constraints(trt, trt_repository, onnx_models):
    profile = network_profile(trt_repository, contract.SEGMENTER)
    settings = BuildSettings(keep_fp32=("*mask_probability*", "type:DECONVOLUTION"))
    built = build_engine(trt, onnx_models["segmenter"], profile, settings)
    (build,) = trt.Builder.builds
    layers = build.network.layers
    pinned = [layer for layer in layers if layer.precision == trt.float32]
    assert {layer.name for layer in pinned} == set(built.fp32_layers)
    assert any("mask_probability" in name for name in built.fp32_layers)
    assert sum(layer.type == trt.LayerType.DECONVOLUTION for layer in pinned) == 5  # the decoder's up-convolutions
    assert all(layer.output_types == {0: trt.float32} for layer in pinned)
    assert all(layer.precision is None for layer in layers if layer not in pinned)
    assert build.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}


def test_a_keep_fp32_pattern_matching_nothing_is_an_error(trt, trt_repository, onnx_models):
    profile = network_profile(trt_repository, contract.SEGMENTER)
    with pytest.raises(EngineBuildError, match="'decoder9_\\*' matches no layer"):
        build_engine(trt, onnx_models["segmenter"], profile, BuildSettings(keep_fp32=("decoder9_*",)))


def test_parser_and_builder_failures_carry_tensorrts_reasons(trt, trt_repository, onnx_models, tmp_path):
    profile = network_profile(trt_repository, contract.CLASSIFIER)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00not a model")
    with pytest.raises(EngineBuildError, match="could not parse .*failed to parse the ONNX model"):
        build_engine(trt, not_onnx, profile)
    trt.Builder.fail_build = True
    with pytest.raises(EngineBuildError, match="could not build an engine"):
        build_engine(trt, onnx_models["classifier"], profile)


def test_an_onnx_of_another_size_than_the_config_is_refused(trt, onnx_models):
    profile = network_profile(COMMITTED, contract.CLASSIFIER)  # 160x160; the tiny network takes 96x96
    with pytest.raises(EngineBuildError, match=r"takes \[96, 96, 3\] per image; the model config says \[160, 160, 3\]"):
        build_engine(trt, onnx_models["classifier"], profile)


# --- build -> gate -> write ---------------------------------------------------------------

def test_engines_pass_the_gate_and_are_written_with_their_record(trt, onnx_models, validation, tmp_path):
    trt_repository = write_repository(tmp_path / "repo", "tensorrt", onnx_models["classifier"],
                                      onnx_models["segmenter"], max_batch_size=4)
    lines = []
    settings = BuildSettings(timing_cache=tmp_path / "cache" / "timing.cache")
    reports = build_repository_engines(trt_repository, validation, settings, trt=trt, cuda=trt_standin.FakeCuda(),
                                       log=lines.append)
    assert all(r.passed for r in reports)
    assert len(validation[contract.SEGMENTER].images) == 6  # one validation patient
    assert trt_standin.executed_batches == [4, 2, 4, 2]  # in chunks of the profile's maximum, per network
    for network, given in validation.items():
        version = trt_repository / network / "1"
        assert trt_standin.source_of(version / PLAN) == str(given.onnx)
        record = json.loads((version / RECORD).read_text())
        assert record["tensorrt_version"] == "10.7.0.23"
        assert (record["gpu_name"], record["compute_capability"]) == ("Stand-in GPU", "8.9")
        assert record["profile"]["max"][0] == read_config(trt_repository / network / "config.pbtxt").max_batch_size
        assert len(record["onnx_sha256"]) == 64 and record["gate"]["passed"] is True
    assert list((tmp_path / "cache").iterdir())[0].name == "timing-trt10.7.0.23-sm8.9.cache"
    assert any("FP16 gate, segmenter" in line for line in lines)


def test_an_engine_outside_the_tolerances_writes_nothing(trt, trt_repository, validation):
    trt_standin.set_perturbation(lambda out: np.full_like(out, np.nan) if out.shape[-1] == 1 and out.ndim == 4 else out)
    with pytest.raises(GateFailedError) as failed:
        build_repository_engines(trt_repository, validation, BuildSettings(), Tolerances(), trt=trt,
                                 cuda=trt_standin.FakeCuda(), log=lambda _: None)
    message = str(failed.value)
    assert "FP16 gate, segmenter" in message and "FAIL" in message and "--keep-fp32" in message
    assert [r.network for r in failed.value.reports if not r.passed] == [contract.SEGMENTER]
    for network in (contract.CLASSIFIER, contract.SEGMENTER):  # not even the classifier that passed
        assert not (trt_repository / network / "1" / PLAN).exists()
        assert not (trt_repository / network / "1" / RECORD).exists()


# --- what runs here without TensorRT -------------------------------------------------------

@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here, so the no-TensorRT message cannot show")
@pytest.mark.parametrize("args", [[], ["--classifier", "x.onnx", "--samples", "8"], ["--list-layers"]])
def test_export_tensorrt_without_tensorrt_says_to_use_the_export_container(args):
    result = subprocess.run([sys.executable, "-m", "brainscan.cli", "export", "tensorrt", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TensorRT is not installed" in lines[0]
    assert "docker compose -f docker/compose.yaml run --rm export" in lines[0]


def test_cuda_runtime_errors_name_the_cuda_failure():
    with pytest.raises(CudaError, match="libcudart.*not found.*export container"):
        CudaRuntime("/nonexistent/libcudart.so.12")
    shipped = glob.glob(str(Path(sys.prefix) / "lib" / "python3*" / "site-packages" / "nvidia_pytriton.libs" / "libcudart*"))
    if not shipped:
        pytest.skip(reason="no libcudart in this environment (it ships with nvidia-pytriton)")
    runtime = CudaRuntime(shipped[0])
    try:
        count = runtime.device_count()
    except CudaError as exc:  # no GPU, no driver here: the message names CUDA's error
        assert "cudaGetDeviceCount failed: cudaError" in str(exc)
    else:
        assert count >= 0


def test_the_export_path_needs_no_tensorflow(runs, onnx_models):
    """The export image installs only the `export` extra: loading validation slices and the
    FP32 reference must not import TensorFlow, Keras, tf2onnx or the phantom's libraries."""
    code = f"""
import sys
for name in ("tensorflow", "keras", "tf2onnx", "nilearn", "nibabel", "scipy", "matplotlib"):
    sys.modules[name] = None
from pathlib import Path
from brainscan.export.cli import _validation_inputs
from brainscan.export.tensorrt import reference_outputs
given = _validation_inputs("segmenter", Path({str(onnx_models['segmenter'])!r}), None, 4)
print(reference_outputs(given.onnx, given.images).shape, given.truth.shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(4, 64, 64, 1) (4, 64, 64, 1)"


# --- on a GPU host ---------------------------------------------------------------------------

DEMO_ONNX = {n: contract.demo_run(n) / "model.onnx" for n in (contract.CLASSIFIER, contract.SEGMENTER)}


def _gpu_skip_reason() -> str | None:
    if not HAS_TENSORRT:
        return ("needs TensorRT 10 and an NVIDIA GPU, absent here (ENVIRONMENT.md); "
                "run it in the export container (README, 'On a GPU host')")
    if not all(p.exists() for p in DEMO_ONNX.values()):
        return "needs the ONNX models of `make demo`"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))
def test_real_fp16_engines_of_the_demo_pass_the_gate(tmp_path):
    """Real TensorRT on a real GPU: builds both demo networks into a copy of the committed
    repository and requires the FP16 gate to pass (needs no TensorFlow, so it runs in the
    export image)."""
    from brainscan.export.cli import _validation_inputs
    from brainscan.export.tensorrt import import_tensorrt

    repository = shutil.copytree(COMMITTED, tmp_path / "model_repository")
    inputs = {n: _validation_inputs(n, path, None, 64) for n, path in DEMO_ONNX.items()}
    reports = build_repository_engines(repository, inputs, BuildSettings(timing_cache=tmp_path / "timing.cache"),
                                       trt=import_tensorrt(), log=print)
    assert all(r.passed for r in reports)
    for network in inputs:
        assert (repository / network / "1" / PLAN).stat().st_size > 0
