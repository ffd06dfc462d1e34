"""perf_analyzer --input-data made from real images: TYPE_STRING elements carry their
4-byte length prefix inside the base64."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys

from conftest import phantom_slices

from brainscan import contract
from brainscan.preprocessing import decode_image


def test_input_data_holds_each_file_length_prefixed(phantom_dir, tmp_path):
    files = phantom_slices(phantom_dir, 3)
    out = tmp_path / "perf.json"
    result = subprocess.run(
        [sys.executable, "-m", "brainscan.cli", "bench", "input-data", *map(str, files), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())["data"]
    assert len(data) == 3
    for entry, path in zip(data, files):
        element = base64.b64decode(entry[contract.IMAGE]["b64"])
        (length,) = struct.unpack("<I", element[:4])
        assert length == len(element) - 4 == path.stat().st_size
        assert element[4:] == path.read_bytes()
        assert decode_image(element[4:]).shape[:2] == (256, 256)  # a real image, not random bytes
        assert entry[contract.IMAGE]["shape"] == list(contract.IMAGE_SPEC.dims)


def test_input_data_refuses_an_empty_selection(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "brainscan.cli", "bench", "input-data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "no image files found" in result.stderr
