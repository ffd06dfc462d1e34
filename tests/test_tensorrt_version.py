"""What `brainscan export tensorrt` asks of the machine before any build: a TensorRT that
builds strongly typed networks (10.12+ on request, 11.x always, older refused in one
sentence), and one kind of GPU (nvidia-smi; none, or a mixed host, refused with what to do)."""

from __future__ import annotations

import os

import pytest

from brainscan.export.gpu import Gpu, GpuError, build_gpu, cuda_visible, visible_gpus
from brainscan.export.tensorrt import (
    needs_strongly_typed_flag,
)
from brainscan.export.tensorrt_version import TensorRTUnavailableError, check_version

# --- versions: 10.12+ strongly typed on request, 11.x always --------------------------------


@pytest.mark.parametrize(
    "version,flag",
    [("10.12.0.36", True), ("10.13.3.9", True), ("10.16.1.11", True), ("11.0.0.114", False), ("11.3.0.99", False)],
)
def test_supported_versions_build_strongly_typed_networks(version, flag):
    check_version(version)  # accepted
    assert needs_strongly_typed_flag(version) is flag  # 11.x: the only mode, its flag is deprecated and not set


@pytest.mark.parametrize("version", ["10.11.0.33", "10.7.0.23", "8.6.1"])
def test_tensorrt_before_10_12_is_refused_in_one_sentence(version):
    with pytest.raises(TensorRTUnavailableError) as refused:
        check_version(version)
    message = str(refused.value)
    assert message.count(". ") == 0 and "\n" not in message
    assert f"TensorRT {version} is too old" in message and "10.12 or newer" in message
    assert "docker compose -f docker/compose.yaml run --rm export" in message


# --- the GPU, from nvidia-smi ------------------------------------------------------------------


def test_the_gpu_comes_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '8.9, NVIDIA L4'\necho '8.9, NVIDIA L4'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert visible_gpus() == [Gpu("NVIDIA L4", "8.9"), Gpu("NVIDIA L4", "8.9")]
    assert build_gpu() == Gpu("NVIDIA L4", "8.9")


def test_no_gpu_or_a_mixed_host_is_refused_with_what_to_do():
    with pytest.raises(GpuError, match="no NVIDIA GPU is visible"):
        build_gpu([])
    mixed = [Gpu("NVIDIA H100", "9.0"), Gpu("NVIDIA L4", "8.9")]
    with pytest.raises(GpuError, match="different compute capabilities.*CUDA_VISIBLE_DEVICES"):
        build_gpu(mixed)
    chosen = cuda_visible(mixed, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"})
    assert build_gpu(chosen) == Gpu("NVIDIA L4", "8.9")
    assert cuda_visible(mixed, {"CUDA_VISIBLE_DEVICES": "1"}) == mixed  # CUDA's own order: nvidia-smi's may differ
