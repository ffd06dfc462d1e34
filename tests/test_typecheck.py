"""The TensorRT calls no machine here can run are type-checked against NVIDIA's bindings: mypy
on the modules that touch TensorRT, against the 10.x surface of `tensorrt-stubs` and the
11.x surface without weak typing (tests/tensorrt_surface.py). The checks are shown not to be
vacuous: a misspelt method, or a weak-typing call on TensorRT 11, fails them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from layout import installed_layout
from tensorrt_surface import REMOVED_IN_11, write_surfaces

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(sys.prefix) / "tensorrt-stubs"  # `make venv` installs them there, apart from site-packages
CHECKED = ["brainscan.export.tensorrt", "brainscan.export.gpu", "brainscan.export.fp16"]
TENSORRT_MODULE = ROOT / "export" / "tensorrt.py"


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> dict[str, Path]:
    if not (STUBS / "tensorrt_bindings" / "tensorrt.pyi").exists():
        pytest.skip(reason=f"tensorrt-stubs are not installed in {STUBS} (`make venv` installs them)")
    return write_surfaces(STUBS, tmp_path_factory.mktemp("tensorrt-surfaces"))


def mypy(layout: Path, surface: Path, cache: Path) -> subprocess.CompletedProcess:
    packages = [arg for module in CHECKED for arg in ("-p", module)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            "--no-error-summary",
            *packages,
        ],
        cwd=layout,
        env={"MYPYPATH": f"{layout}:{surface}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("major", ["10", "11"])
def test_the_tensorrt_calls_type_check_against_the_bindings(major, surfaces, tmp_path_factory):
    layout = installed_layout(tmp_path_factory.mktemp("layout"))
    result = mypy(layout, surfaces[major], tmp_path_factory.getbasetemp() / f"mypy-cache-{major}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_tensorrt_method_fails_the_check(surfaces, tmp_path_factory):
    source = TENSORRT_MODULE.read_text()
    assert source.count("network.get_input(") == 1
    layout = installed_layout(
        tmp_path_factory.mktemp("misspelt"),
        {TENSORRT_MODULE: source.replace("network.get_input(", "network.get_inptu(")},
    )
    result = mypy(layout, surfaces["10"], tmp_path_factory.getbasetemp() / "mypy-cache-10")
    assert result.returncode == 1
    assert '"INetworkDefinition" has no attribute "get_inptu"' in result.stdout


def test_weak_typing_fails_against_tensorrt_11_and_only_there(surfaces, tmp_path_factory):
    """The two surfaces differ where TensorRT 11 differs: a builder FP16 flag and a layer
    output type type-check on 10.x (deprecated there) and fail on 11.x."""
    weak = (
        "\n\ndef weak_typing(config: tensorrt.IBuilderConfig, layer: tensorrt.ILayer) -> None:\n"
        "    import tensorrt as trt\n\n"
        "    config.set_flag(trt.BuilderFlag.FP16)\n"
        "    layer.set_output_type(0, trt.DataType.HALF)\n"
    )
    layout = installed_layout(tmp_path_factory.mktemp("weak"), {TENSORRT_MODULE: TENSORRT_MODULE.read_text() + weak})
    ten = mypy(layout, surfaces["10"], tmp_path_factory.getbasetemp() / "mypy-cache-10")
    eleven = mypy(layout, surfaces["11"], tmp_path_factory.getbasetemp() / "mypy-cache-11")
    assert ten.returncode == 0, ten.stdout
    assert eleven.returncode == 1
    assert 'has no attribute "FP16"' in eleven.stdout and 'has no attribute "set_output_type"' in eleven.stdout


def test_no_weak_typing_api_is_left_in_the_project():
    names = [rf"\bBuilderFlag\.{flag}\b" for flag in REMOVED_IN_11["BuilderFlag"]]
    names += [r"\.precision\s*=[^=]", r"\bset_output_type\b", r"\bEXPLICIT_BATCH\b", r"\bset_dynamic_range\b"]
    pattern = re.compile("|".join(names))
    skip = {".git", ".venv", "artifacts", "data", "__pycache__", "build"}
    offenders = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if (
            path.is_file()
            and not parts & skip
            and not any(p.endswith(".egg-info") for p in parts)
            and path.suffix in {".py", ".md", ".yaml", ".toml", ".Dockerfile", ""}
            and path.name not in {"tensorrt_surface.py", "test_typecheck.py"}
        ):
            offenders += [
                f"{path.relative_to(ROOT)}: {line.strip()}"
                for line in path.read_text(errors="ignore").splitlines()
                if pattern.search(line)
            ]
    assert not offenders, "\n".join(offenders)
