"""The images' TensorRT: each image build stops when its TensorRT is not the pinned release's,
and `make gpu` refuses to build engines in one image for a server that holds another."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from test_docker import DOCKER


def _run_lines(dockerfile: str) -> list[str]:
    """The RUN instructions of a Dockerfile, continuation lines joined as Docker joins them."""
    text = re.sub(r"\\\n", "", (DOCKER / dockerfile).read_text())
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


def _sh(*arguments: str, **env: str) -> subprocess.CompletedProcess:
    """``sh ARGUMENTS`` as Docker and make run it, with only ``env`` for its environment."""
    return subprocess.run(["sh", *arguments], capture_output=True, text=True, timeout=60, env=env)


def _tensorrt_check(dockerfile: str) -> str:
    (check,) = [line for line in _run_lines(dockerfile) if "NGC_TENSORRT" in line]
    return check


@pytest.mark.parametrize(
    "found,ok", [("11.3.0.99", True), ("11.0.0.114", True), ("10.13.3.9", False), ("110.1.0", False)]
)
def test_the_export_image_build_stops_on_another_tensorrt(tmp_path, found, ok):
    """The check is run as Docker runs it (sh -c), on a stand-in `tensorrt` module."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(f"__version__ = {found!r}\n")
    (tmp_path / "python3").symlink_to(sys.executable)
    check = _tensorrt_check("export.Dockerfile").replace("/opt/brainscan", str(tmp_path / "recorded"))
    result = _sh("-c", check, PATH=f"{tmp_path}:/usr/bin:/bin", PYTHONPATH=str(tmp_path), NGC_TENSORRT="11")
    assert (result.returncode == 0) is ok, result.stderr
    if ok:  # recorded for docker/same-tensorrt.sh
        assert (tmp_path / "recorded" / "tensorrt-version").read_text().strip() == found
    else:
        assert f"expected TensorRT 11, image has {found}: fix NGC_TENSORRT in docker/.env" in result.stderr


@pytest.mark.parametrize(
    "library,ok", [("libnvinfer.so.11.3.0", True), ("libnvinfer.so.10.13.3", False), (None, False)]
)
def test_the_triton_image_build_finds_tensorrt_through_ldconfig_and_stops_on_another(tmp_path, library, ok):
    """Run as Docker runs it, with `ldconfig -p` answering what the image's linker cache would
    hold (a folder no source names) and the real files behind it; the version is recorded."""
    folder = tmp_path / "opt" / "nvidia" / "lib"
    folder.mkdir(parents=True)
    lines = ["12 libs found in cache `/etc/ld.so.cache'"]
    if library:
        (folder / library).write_bytes(b"\x7fELF")
        major = library.split(".so.")[1].split(".")[0]
        (folder / f"libnvinfer.so.{major}").symlink_to(library)
        lines.append(f"\tlibnvinfer.so.{major} (libc6,x86-64) => {folder / f'libnvinfer.so.{major}'}")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ldconfig").write_text("#!/bin/sh\ncat <<'LIST'\n" + "\n".join(lines) + "\nLIST\n")
    (tools / "ldconfig").chmod(0o755)
    check = _tensorrt_check("triton.Dockerfile").replace("/opt/brainscan", str(tmp_path / "recorded"))
    result = _sh("-c", check, PATH=f"{tools}:/usr/bin:/bin", NGC_TENSORRT="11")
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    if ok:
        assert (tmp_path / "recorded" / "tensorrt-version").read_text().strip() == "11.3.0"
    else:
        assert "expected TensorRT 11 in this image: fix NGC_TENSORRT in docker/.env" in result.stderr


@pytest.mark.parametrize(
    "export_version,triton_version,ok",
    [
        ("11.3.0.99", "11.3.0", True),
        ("11.3.0.99", "11.3.1", False),
        ("11.4.0.12", "11.3.0", False),
        ("11.3.0.99", "", False),
    ],
)
def test_make_gpu_refuses_images_that_hold_different_tensorrt_releases(tmp_path, export_version, triton_version, ok):
    """docker/same-tensorrt.sh as `make gpu` runs it, with `docker compose run … cat` answering
    what each image's build recorded."""
    compose = tmp_path / "compose"
    compose.write_text(f"""#!/bin/sh
for last; do :; done
case "$*" in *" export "*) echo "{export_version}";; *" triton "*) echo "{triton_version}";; *) exit 2;; esac
""")
    compose.chmod(0o755)
    result = _sh(str(DOCKER / "same-tensorrt.sh"), PATH="/usr/bin:/bin", COMPOSE=str(compose))
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    if ok:
        assert result.stdout.strip() == "TensorRT 11.3.0 in both images"
    elif triton_version:
        assert (
            f"the export image holds TensorRT {export_version} and the Triton image {triton_version}" in result.stderr
        )
    else:
        assert "could not read the TensorRT version recorded in the images" in result.stderr
