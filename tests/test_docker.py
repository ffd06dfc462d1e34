"""docker/: one pinned NGC release for every image, Dockerfiles that install what the
python models and the engine build import, and a compose file wired to the contract."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from brainscan import contract
from brainscan.cli import app
from brainscan.export.doctor import read_pin

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
IMAGE = re.compile(r"nvcr\.io/nvidia/([a-z-]+):([^\s\"'`]+)")
PIN = read_pin(DOCKER / ".env")


def _text_files():
    for path in ROOT.rglob("*"):
        skip = {".git", ".venv", "artifacts", "data", "__pycache__", ".pytest_cache"} & set(path.relative_to(ROOT).parts)
        if path.is_file() and not skip and path.suffix in {"", ".md", ".py", ".yaml", ".yml", ".toml", ".Dockerfile", ".env", ".txt"}:
            yield path


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_release_is_pinned_once():
    assert re.fullmatch(r"\d\d\.\d\d", PIN["NGC_RELEASE"]), PIN
    assert re.fullmatch(r"\d+\.\d+\.\d+", PIN["NGC_TENSORRT"]), PIN
    pinned_here = [p for p in _text_files() if re.search(r"^NGC_RELEASE=", p.read_text(errors="ignore"), re.M)]
    assert pinned_here == [DOCKER / ".env"]


def test_every_ngc_image_names_the_pinned_release():
    tag = re.compile(r"(\$\{NGC_RELEASE(:\?[^}\s]*)?\}|" + re.escape(PIN["NGC_RELEASE"]) + r")-(py3|py3-sdk)")
    seen = set()
    for path in _text_files():
        for name, found in IMAGE.findall(path.read_text(errors="ignore")):
            match = tag.fullmatch(found)
            assert match, f"{path.relative_to(ROOT)}: nvcr.io/nvidia/{name}:{found} is not the pinned release"
            seen.add((name, match.group(3)))
    assert {("tritonserver", "py3"), ("tensorrt", "py3"), ("tritonserver", "py3-sdk")} <= seen


@pytest.mark.parametrize("dockerfile,base", [("triton.Dockerfile", "tritonserver"), ("export.Dockerfile", "tensorrt")])
def test_dockerfiles_build_from_the_pinned_release_and_copy_real_paths(dockerfile, base):
    text = (DOCKER / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM"))
    assert "ARG NGC_RELEASE" in lines[:first_from]  # an ARG used in FROM must come before it
    assert lines[first_from] == f"FROM nvcr.io/nvidia/{base}:${{NGC_RELEASE}}-py3"
    assert "ARG NGC_TENSORRT" in lines and "${NGC_TENSORRT}" in text  # the image build checks the TensorRT version
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def test_images_install_what_their_code_imports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    export_file = (DOCKER / "export.Dockerfile").read_text()
    assert 'pip install ".[export]"' in export_file and "export" in extras
    assert "tensorflow-cpu" not in " ".join(extras["export"])  # engines are built from ONNX, not Keras
    triton_file = (DOCKER / "triton.Dockerfile").read_text()
    assert "pip install ." in triton_file and "import cv2, numpy, PIL, brainscan.preprocessing" in triton_file


def test_the_images_commands_exist():
    runner = CliRunner()
    for command in (["export", "tensorrt"], ["doctor"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
    compose = _compose()
    assert compose["services"]["export"]["command"] == ["brainscan", "export", "tensorrt"]
    assert "brainscan doctor --repository /models && exec tritonserver --model-repository=/models" in \
        (DOCKER / "triton.Dockerfile").read_text()


def test_compose_wires_the_gpu_services_to_the_contract():
    services = _compose()["services"]
    for name in ("export", "triton"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert services[name]["build"]["args"]["NGC_RELEASE"].startswith("${NGC_RELEASE")
        assert services[name]["build"]["context"] == ".."
    triton = services["triton"]
    assert triton["shm_size"] == "1g"
    assert "${BRAINSCAN_REPOSITORY:-../model_repository}:/models:ro" in triton["volumes"]
    ports = {p.rsplit(":", 1)[1] for p in triton["ports"]}
    assert ports == {str(contract.HTTP_PORT), str(contract.GRPC_PORT), str(contract.METRICS_PORT)}
    assert all(p.startswith("${BRAINSCAN_BIND:-127.0.0.1}:") for p in triton["ports"])  # loopback by default
    health = " ".join(triton["healthcheck"]["test"])
    assert f"127.0.0.1:{contract.HTTP_PORT}/v2/health/ready" in health
    export = services["export"]
    assert "..:/workspace" in export["volumes"] and export["working_dir"] == "/workspace"
    assert export["environment"]["BRAINSCAN_ARTIFACTS"] == "artifacts"
    sdk = services["sdk"]
    assert sdk["image"].endswith("-py3-sdk") and sdk["depends_on"]["triton"]["condition"] == "service_healthy"


def test_the_onnxruntime_engine_cache_has_a_volume():
    from brainscan.export.repository import ORT_TRT_CACHE

    triton = _compose()["services"]["triton"]
    mounts = {v.split(":")[1] for v in triton["volumes"]}
    assert any(ORT_TRT_CACHE.startswith(m) for m in mounts)


def test_build_context_leaves_out_environments_and_artifacts():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", "data", ".git", "model_repository"} <= set(ignored)


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "export.Dockerfile"])
def test_images_copy_every_package_folder_pip_needs(dockerfile):
    """`pip install .` in the image fails if a package-dir of pyproject.toml was not copied."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {path.split("/")[0] for path in tool["package-dir"].values()}
    copied = {source for line in (DOCKER / dockerfile).read_text().splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]}
    assert folders | {"pyproject.toml", "README.md"} <= copied, folders - copied
