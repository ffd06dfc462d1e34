"""`brainscan export tensorrt`: strongly typed builds from the FP16 graphs. Here: the version
gate (10.12+ and 11.x), the build requests (FP16 graph, strong typing, the profile from the
config, workspace, timing cache), the build -> engine gate -> write flow with an engine that
computes what its FP16 graph computes (tests/trt_standin.py), the records, and the clear
failure where TensorRT is absent. The TensorRT calls themselves are type-checked against
NVIDIA's bindings (test_typecheck.py); real engines need a GPU: that test is marked `gpu`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trt_standin
from conftest import DEMO_ARTIFACTS

from brainscan import contract
from brainscan.export.gate import GateFailedError, Tolerances
from brainscan.export.gpu import Gpu
from brainscan.export.profiles import ProfileError, image_profile, profile_from_config
from brainscan.export.repository import (
    RepositoryError,
    RepositorySpec,
    model_configs,
    read_config,
    to_model_config,
    write_repository,
)
from brainscan.export.tensorrt import (
    BuildSettings,
    EngineBuildError,
    build_repository_engines,
    build_request,
    network_profile,
)
from brainscan.export.tensorrt_version import installed_version

PLAN, RECORD = "model.sm89.plan", "model.sm89.json"  # an engine for compute capability 8.9, by hand
COMMITTED = Path(__file__).resolve().parent.parent / "model_repository"
HAS_TENSORRT = installed_version() is not None
STUBS = Path(sys.prefix) / "tensorrt-stubs"


@pytest.fixture
def trt_repository(tmp_path, onnx_models) -> Path:
    """A tensorrt-flavour repository sized for the tiny test networks, batch 1..4."""
    return write_repository(
        tmp_path / "repo", "tensorrt", onnx_models["classifier"], onnx_models["segmenter"], max_batch_size=4
    )


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# --- profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("network", [contract.CLASSIFIER, contract.SEGMENTER])
def test_committed_engines_profile_spans_any_image_up_to_the_configs_side_and_batch(network):
    config = read_config(COMMITTED / network / "config.pbtxt")
    profile = network_profile(COMMITTED, network)
    side = contract.GPU_MAX_IMAGE_SIDE
    assert profile.input == config.input[0].name == contract.PIXELS
    assert profile.min == (1, 1, 1, 1)  # one pixel of one channel
    assert profile.max == (config.max_batch_size, side, side, 3)  # where preprocess refuses larger images
    assert profile.opt == (config.max_batch_size, 256, 256, 1)  # the common grey MRI slice, at full batches
    assert profile.max_batch == config.max_batch_size > 1


@pytest.mark.parametrize("max_batch", [1, 4, 16, 32])
def test_profile_and_max_batch_size_agree_for_any_repository(tmp_path, max_batch):
    write_repository(tmp_path, "tensorrt", max_batch_size=max_batch, max_image_side=512)
    for network in contract.NETWORKS:
        config = read_config(tmp_path / network / "config.pbtxt")
        profile = network_profile(tmp_path, network)
        assert profile.max_batch == config.max_batch_size == max_batch and profile.max[1:3] == (512, 512)


def test_profile_refuses_what_cannot_be_served():
    with pytest.raises(ProfileError, match="optimum batch 9 is outside 1..8"):
        image_profile("x", 8, 1024, opt_batch=9)
    with pytest.raises(ProfileError, match="max_batch_size must be at least 1"):
        image_profile("x", 0, 1024)
    with pytest.raises(ProfileError, match="largest side 100 is below the optimum image"):
        image_profile("x", 8, 100)
    with pytest.raises(ProfileError, match="no max_image_side parameter"):
        profile_from_config(
            to_model_config(
                {
                    "name": "m",
                    "max_batch_size": 8,
                    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, -1, -1]}],
                }
            )
        )
    config = to_model_config(model_configs(RepositorySpec())[contract.ENSEMBLE])
    with pytest.raises(ProfileError, match="one input"):
        profile_from_config(
            to_model_config(
                {
                    "name": "m",
                    "max_batch_size": 8,
                    "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [3]} for n in ("a", "b")],
                }
            )
        )
    assert config.name == contract.ENSEMBLE


def test_only_tensorrt_repositories_get_engines(tmp_path):
    write_repository(tmp_path, "local")
    with pytest.raises(RepositoryError, match="--flavour tensorrt"):
        network_profile(tmp_path, contract.CLASSIFIER)


# --- what a build asks for ---------------------------------------------------------------


def test_a_build_request_names_the_fp16_graph_the_config_profile_and_a_per_gpu_timing_cache(
    trt_repository, onnx_models, fp16_models, tmp_path
):
    profile = network_profile(trt_repository, contract.SEGMENTER, opt_batch=2)
    settings = BuildSettings(workspace_mib=512, timing_cache=tmp_path / "cache" / "timing.cache")
    request = build_request(
        contract.SEGMENTER, onnx_models["segmenter"], profile, settings, "10.13.3.9", Gpu("L4", "8.9")
    )
    assert request.onnx == fp16_models["segmenter"] and request.onnx.name == "model.fp16.onnx"
    side = contract.GPU_MAX_IMAGE_SIDE
    assert (request.profile.min, request.profile.opt, request.profile.max) == (
        (1, 1, 1, 1),
        (2, 256, 256, 1),
        (4, side, side, 3),
    )
    assert request.workspace_bytes == 512 << 20
    assert request.strongly_typed_flag is True
    assert request.timing_cache == tmp_path / "cache" / "timing-trt10.13.3.9-sm89.cache"
    eleven = build_request(
        contract.SEGMENTER, onnx_models["segmenter"], profile, settings, "11.3.0.99", Gpu("B200", "10.0")
    )
    assert eleven.strongly_typed_flag is False and eleven.timing_cache.name == "timing-trt11.3.0.99-sm100.cache"


def test_without_the_fp16_graph_the_build_says_how_to_make_it(trt_repository, tmp_path, onnx_models):
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    shutil.copyfile(onnx_models["classifier"], lone)
    profile = network_profile(trt_repository, contract.CLASSIFIER)
    with pytest.raises(EngineBuildError, match=r"model\.fp16\.onnx is missing.*brainscan export fp16 .*lone"):
        build_request(contract.CLASSIFIER, lone, profile, BuildSettings(), "11.3.0.99", trt_standin.STANDIN_GPU)


# --- build -> gate -> write ---------------------------------------------------------------


def test_engines_pass_the_gate_and_are_written_with_their_record(trt_repository, validation, fp16_models, tmp_path):
    toolkit = trt_standin.CpuToolkit("10.13.3.9")
    lines: list[str] = []
    reports = build_repository_engines(
        trt_repository,
        validation,
        BuildSettings(timing_cache=tmp_path / "timing.cache"),
        toolkit=toolkit,
        log=lines.append,
    )
    assert all(r.passed for r in reports)
    assert [r.network for r in toolkit.requests] == [contract.CLASSIFIER, contract.SEGMENTER]
    assert all(r.strongly_typed_flag for r in toolkit.requests)
    assert len(validation[contract.SEGMENTER].images) == 6  # one validation patient, 256 x 256 slices
    assert toolkit.batches == [4, 2, 4, 2]  # in chunks of the profile's maximum, per network
    for network in validation:
        version = trt_repository / network / "1"
        # the stand-in GPU has compute capability 8.9: its engine is named for it and listed
        assert dict(read_config(trt_repository / network / "config.pbtxt").cc_model_filenames) == {"8.9": PLAN}
        assert trt_standin.source_of(version / PLAN) == str(fp16_models[network])
        record = json.loads((version / RECORD).read_text())
        assert record["tensorrt_version"] == "10.13.3.9" and record["precision"] == "fp16 graph, strongly typed"
        assert (record["gpu_name"], record["compute_capability"]) == ("Stand-in GPU", "8.9")
        assert record["onnx_file"] == str(fp16_models[network])
        assert record["profile"]["max"][0] == read_config(trt_repository / network / "config.pbtxt").max_batch_size
        assert len(record["onnx_sha256"]) == 64 and record["onnx_sha256"] != record["fp32_onnx_sha256"]
        assert record["gate"]["passed"] is True
        for written in (version / PLAN, version / RECORD):  # readable by a Triton running as another user
            assert written.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert any("FP16 gate, segmenter" in line for line in lines)
    assert any("(strongly typed)" in line for line in lines)
    # the engine's classifier carries the intended use of the graph it was built from, for clients,
    # and its gate held: no validation slice crossed between accepted and refused
    import onnx

    from brainscan.intended_use import ONNX_METADATA_KEY, IntendedUse

    parameters = read_config(trt_repository / contract.CLASSIFIER / "config.pbtxt").parameters
    declared = IntendedUse.from_json(parameters[contract.INTENDED_USE_PARAMETER].string_value)
    graph = onnx.load(str(fp16_models[contract.CLASSIFIER]))
    shipped = next(p.value for p in graph.metadata_props if p.key == ONNX_METADATA_KEY)
    assert declared == IntendedUse.from_json(shipped) and declared.pixel_gate is not None
    segmenter = read_config(trt_repository / contract.SEGMENTER / "config.pbtxt")
    assert contract.INTENDED_USE_PARAMETER not in segmenter.parameters
    classifier_gate = next(r for r in reports if r.network == contract.CLASSIFIER)
    assert classifier_gate.value("accept/refuse decisions changed (OOD score)") == 0


def test_an_engine_outside_the_tolerances_writes_nothing(trt_repository, validation, fp16_models):
    # the segmenter's engine marks every pixel (its output is the 2-D one per image), the classifier's is fine
    toolkit = trt_standin.CpuToolkit(perturb=lambda out: np.ones_like(out) if out.ndim == 2 else out)
    with pytest.raises(GateFailedError) as failed:
        build_repository_engines(
            trt_repository, validation, BuildSettings(), Tolerances(), toolkit=toolkit, log=lambda _: None
        )
    message = str(failed.value)
    assert "FP16 gate, segmenter" in message and "FAIL" in message and "--keep-fp32" in message
    assert [r.network for r in failed.value.reports if not r.passed] == [contract.SEGMENTER]
    for network in contract.NETWORKS:  # not even the classifier that passed
        assert not (trt_repository / network / "1" / PLAN).exists()
        assert not (trt_repository / network / "1" / RECORD).exists()


# --- what runs here without TensorRT -------------------------------------------------------


def _export_tensorrt(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "brainscan.cli", "export", "tensorrt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here, so the no-TensorRT message cannot show")
@pytest.mark.parametrize("args", [[], ["--classifier", "x.onnx", "--samples", "8"]])
def test_export_tensorrt_without_tensorrt_says_to_use_the_export_container(args):
    result = _export_tensorrt(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TensorRT is not installed" in lines[0]
    assert "docker compose -f docker/compose.yaml run --rm export" in lines[0]


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here, so the no-TensorRT message cannot show")
def test_type_stubs_on_the_path_are_not_mistaken_for_tensorrt():
    """tensorrt-stubs installs a `tensorrt` folder of .pyi files, which Python imports as an
    empty namespace package: it must read as 'not installed', not crash."""
    if not (STUBS / "tensorrt").is_dir():
        pytest.skip(reason=f"tensorrt-stubs are not installed in {STUBS} (`make venv` installs them)")
    result = _export_tensorrt(pythonpath=str(STUBS))
    assert result.returncode == 1 and "TensorRT is not installed" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_export_path_needs_no_tensorflow(runs, onnx_models):
    """The export image installs only the `export` extra: loading validation slices, the FP32
    reference and the FP16 conversion must not import TensorFlow, Keras, tf2onnx or the
    phantom's libraries."""
    code = f"""
import sys
for name in ("tensorflow", "keras", "tf2onnx", "nilearn", "nibabel", "scipy", "matplotlib"):
    sys.modules[name] = None
import onnx
from pathlib import Path
from brainscan.export.fp16 import convert_to_fp16, run_fp16
from brainscan.export.validation import run_onnx, validation_inputs
given = validation_inputs("segmenter", Path({str(onnx_models["segmenter"])!r}), None, 4)
fp16, _ = convert_to_fp16(onnx.load(str(given.onnx)))
print(run_onnx(given.onnx, given.images)[0].shape, run_fp16(fp16, given.images)["MASK"][0].shape, given.truth[0].shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(256, 256) (256, 256) (256, 256)"  # masks at the slices' own size


# --- on a GPU host ---------------------------------------------------------------------------

DEMO_ONNX = {n: DEMO_ARTIFACTS / "runs" / n / "model.onnx" for n in contract.NETWORKS}


def _gpu_skip_reason() -> str | None:
    if not HAS_TENSORRT:
        return (
            "needs TensorRT 10.12+ and an NVIDIA GPU, neither of which this machine has; "
            "run it in the export container (docs/gpu.md, 'The GPU test')"
        )
    if not all(p.exists() and p.with_name("model.fp16.onnx").exists() for p in DEMO_ONNX.values()):
        return "needs the FP32 and FP16 ONNX graphs of `make demo`"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))
def test_real_fp16_engines_of_the_demo_pass_the_gate(tmp_path):
    """Real TensorRT on a real GPU: builds both demo networks, strongly typed from their FP16
    graphs, into a copy of the committed repository and requires the engine gate to pass
    (needs no TensorFlow, so it runs in the export image)."""
    from brainscan.export.validation import validation_inputs

    repository = shutil.copytree(COMMITTED, tmp_path / "model_repository")
    inputs = {n: validation_inputs(n, path, None, 64) for n, path in DEMO_ONNX.items()}
    reports = build_repository_engines(
        repository, inputs, BuildSettings(timing_cache=tmp_path / "timing.cache"), log=print
    )
    assert all(r.passed for r in reports)
    for network in inputs:
        (plan,) = read_config(repository / network / "config.pbtxt").cc_model_filenames.values()
        assert (repository / network / "1" / plan).stat().st_size > 0
        record = json.loads((repository / network / "1" / plan.replace(".plan", ".json")).read_text())
        assert record["precision"] == "fp16 graph, strongly typed"


# --- the command, with the CPU stand-in in TensorRT's place ---------------------------------


def _cli_with_standin(monkeypatch, toolkit):
    from typer.testing import CliRunner

    import brainscan.export.tensorrt as tensorrt_module
    from brainscan.cli import app

    monkeypatch.setattr(tensorrt_module, "TensorRT", lambda: toolkit)
    return lambda *args: CliRunner().invoke(app, ["export", "tensorrt", *map(str, args)])


def _build_args(repository: Path, onnx_models: dict) -> list:
    """`export tensorrt`'s arguments for the test repository and networks, 4 validation slices."""
    networks = [arg for n in contract.NETWORKS for arg in (f"--{n}", onnx_models[n])]
    return ["--repository", repository, *networks, "--samples", 4]


def test_export_tensorrt_through_the_cli_prints_the_gates_and_writes_the_engines(
    trt_repository, onnx_models, fp16_models, tmp_path, monkeypatch
):
    invoke = _cli_with_standin(monkeypatch, trt_standin.CpuToolkit("11.3.0.99"))
    result = invoke(*_build_args(trt_repository, onnx_models), "--timing-cache", tmp_path / "t.cache")
    assert result.exit_code == 0, result.output
    assert "TensorRT 11.3.0.99 on Stand-in GPU (compute capability 8.9)" in result.output
    for network in contract.NETWORKS:
        assert f"FP16 gate, {network}, 4 validation slices" in result.output
        assert (trt_repository / network / "1" / PLAN).exists()
    assert f"engines ready in {trt_repository}" in result.output


def test_export_tensorrt_through_the_cli_exits_1_on_a_failed_gate_or_a_missing_fp16_graph(
    trt_repository, onnx_models, fp16_models, tmp_path, monkeypatch
):
    failing = trt_standin.CpuToolkit(perturb=lambda out: np.ones_like(out) if out.ndim == 2 else out)
    invoke = _cli_with_standin(monkeypatch, failing)
    result = invoke(*_build_args(trt_repository, onnx_models))
    assert result.exit_code == 1
    assert "FAIL" in result.output and "--keep-fp32" in result.output
    assert not list(trt_repository.rglob("*.plan"))
    lone = tmp_path / "lone" / "model.onnx"  # an FP32 graph without its FP16 graph beside it
    lone.parent.mkdir()
    shutil.copyfile(onnx_models["classifier"], lone)
    shutil.copyfile(onnx_models["classifier"].parent / "run.json", lone.parent / "run.json")
    invoke = _cli_with_standin(monkeypatch, trt_standin.CpuToolkit())
    result = invoke("--repository", trt_repository, "--classifier", lone, "--segmenter", onnx_models["segmenter"])
    assert result.exit_code == 1 and "model.fp16.onnx is missing" in result.output
    assert "brainscan export fp16" in result.output
