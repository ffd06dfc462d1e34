"""A client-only install (`pip install .`, the core without extras) in a fresh environment
beside numpy 2: the server-side pins (numpy < 2, OpenCV < 4.12) belong to the `serve` extra.
It sends a hand-made slice to a real server and gets the answer worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import encode
from known_networks import hand_probability

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "numpy>=2", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr:
        pytest.skip(reason=f"no package index here to install the client from: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def test_the_core_installs_beside_numpy_2_without_the_server_pins(client_venv):
    versions = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", "import numpy, cv2; print(numpy.__version__, cv2.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert int(versions[0].split(".")[0]) >= 2, versions
    for absent in ("pytriton", "tensorflow", "gradio"):  # no extra came along
        found = subprocess.run([str(client_venv / "bin" / "python"), "-c", f"import {absent}"], capture_output=True)
        assert found.returncode != 0, absent


@pytest.mark.server
def test_the_numpy_2_client_gets_the_answer_worked_out_by_hand(client_venv, bright_server, tmp_path):
    image = np.full((256, 256), 30, np.uint8)
    image[:176] = 220  # the top 176 rows bright: tumour, by the threshold networks
    (tmp_path / "slice.png").write_bytes(encode(image, "PNG"))
    result = subprocess.run(
        [
            str(client_venv / "bin" / "brainscan"),
            "predict",
            str(tmp_path / "slice.png"),
            "-u",
            bright_server.grpc_url,
            "--format",
            "json",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["probability"] == pytest.approx(hand_probability(176 / 256), abs=1e-3)
    assert record["label"] == "tumour" and record["area_pixels"] == 176 * 256
