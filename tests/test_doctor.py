"""`brainscan doctor`: engines checked against the target server's TensorRT and GPU, their
config's batch range and their source ONNX; a plain answer on what to rebuild."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import trt_standin
from typer.testing import CliRunner

from brainscan import contract
from brainscan.cli import app
from brainscan.export import doctor
from brainscan.export.gpu import Gpu
from brainscan.export.repository import read_config, write_repository
from brainscan.export.tensorrt import build_repository_engines

PLAN, RECORD = "model.sm89.plan", "model.sm89.json"  # written by hand: what an engine for 8.9 is called

runner = CliRunner()


@pytest.fixture
def built(tmp_path, onnx_models, validation, fp16_models) -> Path:
    """A tensorrt repository whose engines were 'built' with TensorRT 11.3.0.99 for compute
    capability 8.9 (by the stand-in, so the records are the real writer's)."""
    repo = write_repository(tmp_path / "repo", "tensorrt", onnx_models["classifier"], onnx_models["segmenter"])
    build_repository_engines(repo, validation, toolkit=trt_standin.CpuToolkit("11.3.0.99"), log=lambda _: None)
    return repo


def _doctor(repo: Path, *args: str):
    return runner.invoke(app, ["doctor", "--repository", str(repo), *args])


def test_matching_engines_pass(built):
    result = _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", "8.9")
    assert result.exit_code == 0, result.output
    assert "MISMATCH" not in result.output and "no mismatch found" in result.output
    assert result.output.count(" ok ") >= 11  # layout + per network: an engine for this GPU, 4 checks of it


def test_another_tensorrt_version_is_a_mismatch_with_the_rebuild_command(built):
    result = _doctor(built, "--tensorrt-version", "11.4.0.18", "--compute-capability", "8.9")
    assert result.exit_code == 1
    assert "built with 11.3.0.99, target has 11.4.0.18 (given)" in result.output
    assert "build the classifier and segmenter engine(s) again" in result.output
    assert "docker compose -f docker/compose.yaml run --rm export" in result.output


def test_a_gpu_without_an_engine_is_named(built):
    result = _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", "9.0")
    assert result.exit_code == 1
    assert "none for compute capability 9.0 (given): the config lists 8.9; build one on such a GPU" in result.output


def test_one_repository_serves_a_mixed_fleet(built, validation, onnx_models):
    """Engines built on two GPU kinds in turn: the config lists both, rewriting the configs
    keeps them, and the doctor passes a server of either kind and names a third."""
    h100 = trt_standin.CpuToolkit("11.3.0.99", gpu=Gpu("Stand-in H100", "9.0"))
    build_repository_engines(built, validation, toolkit=h100, log=lambda _: None)
    write_repository(built, "tensorrt", onnx_models["classifier"], onnx_models["segmenter"])  # configs again
    for network in contract.NETWORKS:
        config = read_config(built / network / "config.pbtxt")
        assert dict(config.cc_model_filenames) == {"8.9": "model.sm89.plan", "9.0": "model.sm90.plan"}
        assert json.loads((built / network / "1" / "model.sm90.json").read_text())["gpu_name"] == "Stand-in H100"
    for capability in ("8.9", "9.0"):
        result = _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", capability)
        assert result.exit_code == 0, result.output
        assert result.output.count("built for 9.0 (Stand-in H100), listed for 9.0") == 2
    result = _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", "8.6")
    assert (
        result.exit_code == 1 and "none for compute capability 8.6 (given): the config lists 8.9, 9.0" in result.output
    )


def test_an_engine_listed_for_another_gpu_than_it_was_built_on_is_a_mismatch(built):
    record = json.loads((built / contract.CLASSIFIER / "1" / RECORD).read_text())
    record["compute_capability"], record["gpu_name"] = "8.6", "Stand-in A10"
    (built / contract.CLASSIFIER / "1" / RECORD).write_text(json.dumps(record))
    findings = doctor.diagnose(built, doctor.Target("11.3.0", "given", "8.9", "given"))
    (wrong,) = [f for f in findings if f.bad]
    assert (wrong.model, wrong.engine, wrong.check) == (contract.CLASSIFIER, PLAN, "compute capability")
    assert wrong.detail == "built for 8.6 (Stand-in A10), listed for 8.9"


def test_a_plan_for_any_gpu_is_still_checked_against_the_target(built):
    """A config without cc_model_filenames (an older repository): one model.plan that every
    server loads, so its compute capability is compared with the target's."""
    for network in contract.NETWORKS:
        version = built / network / "1"
        (version / PLAN).rename(version / "model.plan")
        (version / RECORD).rename(version / "engine.json")
        config = read_config(built / network / "config.pbtxt")
        config.ClearField("cc_model_filenames")
        from google.protobuf import text_format

        (built / network / "config.pbtxt").write_text(text_format.MessageToString(config))
    result = _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", "9.0")
    assert result.exit_code == 1
    assert "built for 8.9 (Stand-in GPU), target is 9.0 (given)" in result.output
    assert _doctor(built, "--tensorrt-version", "11.3.0", "--compute-capability", "8.9").exit_code == 0


def test_a_config_with_another_batch_range_is_a_mismatch(built, onnx_models):
    write_repository(built, "tensorrt", onnx_models["classifier"], onnx_models["segmenter"], max_batch_size=16)
    findings = doctor.diagnose(built, doctor.Target("11.3.0", "given", "8.9", "given"))
    profile = [f for f in findings if f.check == "optimization profile"]
    assert [f.status for f in profile] == ["MISMATCH", "MISMATCH"]
    assert "engine 1..8" in profile[0].detail and "config 1..16" in profile[0].detail


def test_a_changed_onnx_is_a_mismatch(built, tmp_path):
    record = json.loads((built / contract.SEGMENTER / "1" / RECORD).read_text())
    copy = tmp_path / "segmenter.onnx"
    shutil.copyfile(record["onnx_file"], copy)
    record["onnx_file"] = str(copy)
    (built / contract.SEGMENTER / "1" / RECORD).write_text(json.dumps(record))
    copy.write_bytes(copy.read_bytes() + b"\0")  # the model changed after the build
    findings = doctor.diagnose(built, doctor.Target())
    (changed,) = [f for f in findings if f.check == "source ONNX" and f.model == contract.SEGMENTER]
    assert changed.bad and "changed since the build" in changed.detail


def test_a_container_finds_the_source_onnx_under_sources_by_run_and_file_name(built, tmp_path):
    """The engines were built in the export container (the record holds its path, not one
    of this host) and the server sees the runs mounted elsewhere: the doctor still compares."""
    record_path = built / contract.SEGMENTER / "1" / RECORD
    record = json.loads(record_path.read_text())
    built_from = Path(record["onnx_file"])
    record["onnx_file"] = f"/brainscan/artifacts/runs/segmenter/{built_from.name}"  # the container's path
    record_path.write_text(json.dumps(record))
    sources = tmp_path / "mounted-runs"
    (sources / "segmenter").mkdir(parents=True)
    shutil.copyfile(built_from, sources / "segmenter" / built_from.name)

    def source_finding(**options):
        (found,) = [
            f
            for f in doctor.diagnose(built, doctor.Target(), **options)
            if f.check == "source ONNX" and f.model == contract.SEGMENTER
        ]
        return found

    assert source_finding().status == "not checked"  # nothing here at the recorded path
    unchanged = source_finding(sources=[sources])
    assert unchanged.status == "ok" and str(sources / "segmenter" / built_from.name) in unchanged.detail
    (sources / "segmenter" / built_from.name).write_bytes(built_from.read_bytes() + b"\0")  # retrained since
    assert source_finding(sources=[sources]).bad
    result = _doctor(built, "--sources", str(sources), "--tensorrt-version", "11.3.0", "--compute-capability", "8.9")
    assert result.exit_code == 1 and "changed since the build" in result.output


def test_missing_engines_and_records_are_named(built):
    (built / contract.CLASSIFIER / "1" / PLAN).unlink()
    (built / contract.SEGMENTER / "1" / RECORD).unlink()
    result = _doctor(built)
    assert result.exit_code == 1
    assert f"classifier/1/{PLAN} is missing: build it" in result.output
    assert f"segmenter/1/{RECORD} is missing" in result.output


def test_without_a_target_the_hardware_checks_are_skipped_not_passed(built, monkeypatch):
    monkeypatch.setattr(doctor, "PIN_FILE", built / "no-pin-here")
    findings = doctor.diagnose(built, doctor.detect_target())
    skipped = {(f.model, f.check) for f in findings if f.status == "not checked"}
    assert not any(f.bad for f in findings)
    if not shutil.which("nvidia-smi"):
        assert (contract.CLASSIFIER, "engine for this GPU") in skipped
    if importlib.util.find_spec("tensorrt") is None and doctor._tensorrt_from_library() is None:
        assert (contract.SEGMENTER, "TensorRT version") in skipped


def test_the_server_images_tensorrt_is_found_through_the_linker_cache(tmp_path, monkeypatch):
    """In the NGC image libnvinfer sits wherever its packages put it; the loader finds it
    through ldconfig's cache, and so does the doctor: `ldconfig -p` names libnvinfer.so.11,
    a link to the versioned file whose name holds the version."""
    libraries = tmp_path / "opt" / "somewhere"
    libraries.mkdir(parents=True)
    (libraries / "libnvinfer.so.11.3.0").write_bytes(b"\x7fELF")
    (libraries / "libnvinfer.so.11").symlink_to("libnvinfer.so.11.3.0")
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "ldconfig"
    fake.write_text(f"""#!/bin/sh
[ "$1" = "-p" ] || exit 2
echo "1234 libs found in cache \\`/etc/ld.so.cache'"
echo "	libnvonnxparser.so.11 (libc6,x86-64) => {libraries}/libnvonnxparser.so.11"
echo "	libnvinfer.so.11 (libc6,x86-64) => {libraries / "libnvinfer.so.11"}"
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    assert doctor._tensorrt_from_library() == ("11.3.0", str(libraries / "libnvinfer.so.11"))
    fake.write_text("#!/bin/sh\necho '0 libs found in cache'\n")
    assert doctor._tensorrt_from_library() is None


def test_the_pinned_release_is_the_fallback_target():
    pin = doctor.read_pin()
    target = doctor.detect_target()
    if target.tensorrt_source in ("tensorrt module",) or target.tensorrt_source.startswith("/"):
        pytest.skip(reason="TensorRT is installed here, so the pin is not the fallback")
    assert target.tensorrt_version == pin["NGC_TENSORRT"]
    assert target.tensorrt_source == f"NGC {pin['NGC_RELEASE']} images (docker/.env)"


@pytest.mark.parametrize("target", ["10.7.0", "10.7.0.23"])
def test_a_plan_fits_the_same_patch_release_whatever_its_build(target):
    assert doctor.same_tensorrt("10.7.0.23", target)


@pytest.mark.parametrize(
    "built_version,target", [("10.7.0.23", "10.8.0"), ("10.7.0.23", "10.7.1"), ("8.6.1", "10.7.0")]
)
def test_a_plan_does_not_fit_another_minor_or_patch_release(built_version, target):
    assert not doctor.same_tensorrt(built_version, target)


def test_a_local_repository_has_nothing_to_rebuild(local_repository):
    result = _doctor(local_repository)
    assert result.exit_code == 0
    assert "local flavour, every model's files are present" in result.output


def test_an_engine_record_of_the_previous_format_still_reads(tmp_path):
    """Engines built before records named their time `made_at` (EngineRecord format 3, as
    it wrote them) are read with every field the doctor compares, and their own build time."""
    from brainscan.export.records import EngineRecord

    written_by_format_3 = {
        "network": "segmenter",
        "fp32_nodes": [],
        "gate": {"passed": True},
        "tensorrt_version": "10.13.3.9",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "precision": "fp16 graph, strongly typed",
        "onnx_file": "model.fp16.onnx",
        "onnx_sha256": "ab" * 32,
        "fp32_onnx_sha256": "cd" * 32,
        "profile": {"IMAGE": {"min": [1, 256, 256, 3], "opt": [8, 256, 256, 3], "max": [8, 256, 256, 3]}},
        "workspace_mib": 1024,
        "build_seconds": 61.5,
        "built_at": "2026-11-02T10:00:00Z",
        "format": 3,
    }
    (tmp_path / "model.sm89.json").write_text(json.dumps(written_by_format_3))
    record = EngineRecord.of_plan(tmp_path, "model.sm89.plan")
    assert (record.tensorrt_version, record.compute_capability) == ("10.13.3.9", "8.9")
    assert record.onnx_sha256 == "ab" * 32 and record.profile["IMAGE"]["max"] == [8, 256, 256, 3]
    assert record.made_at == "2026-11-02T10:00:00Z"
    record.write(tmp_path / "again.json")  # written again in the current format
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["format"] == EngineRecord.FORMAT > 3 and again["made_at"] == "2026-11-02T10:00:00Z"
