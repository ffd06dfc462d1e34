"""Series through system shared memory (`--shared-memory`): a client on the server's machine
holding its admin key writes the slices into a region the server maps, and gets the masks
back the same way; the answers are those of the socket, the region is gone afterwards, and
a client without the key is refused by name (a real Triton, real series)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ADMIN_KEY
from dicom_cases import brainscan

from brainscan import contract

pytestmark = pytest.mark.server


def _regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("brainscan-*")}


def _predict(server, series: Path, out: Path, *options) -> dict:
    result = brainscan("predict", series, "--url", server.grpc_url, "--out", out, "--format", "json", *options)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    return record


@pytest.fixture
def series(phantom_dir, tmp_path) -> Path:
    from brainscan.train.datasets import find_kaggle3m
    from brainscan.train.phantom_dicom import write_phantom_series

    write_phantom_series(find_kaggle3m(phantom_dir)[0].image.parent, tmp_path / "series")
    return tmp_path / "series"


def test_a_series_through_shared_memory_answers_as_through_the_socket(server, series, tmp_path):
    import nibabel

    key = tmp_path / "admin.key"
    key.write_text(ADMIN_KEY + "\n")
    before = _regions()
    socket = _predict(server, series, tmp_path / "socket")
    shared = _predict(server, series, tmp_path / "shared", "--shared-memory", "--admin-key-file", key)
    for field in ("label", "slices", "slice_probabilities", "slice_scores", "tumour_volume_ml", "tumour_slice_indices"):
        assert shared[field] == socket[field], field

    def mask(record):
        return np.asarray(nibabel.load(next(p for p in record["outputs"] if p.endswith(".mask.nii.gz"))).dataobj)

    assert (mask(shared) == mask(socket)).all()
    assert _regions() == before  # the client removed its region


def test_the_region_is_registered_while_the_client_works_and_gone_when_it_closes(server, tmp_path):
    """The library: a batch of slices with a hand-made bright square, through the region."""
    import tritonclient.grpc as grpcclient

    from brainscan.client.triton.inference import AsyncBrainscanClient, Connection

    key = tmp_path / "admin.key"
    key.write_text(ADMIN_KEY)
    headers = {contract.GRPC_ADMIN_HEADER: ADMIN_KEY}
    slices = np.zeros((3, 64, 48, 1), np.uint16)
    slices[:, 10:30, 5:25] = 4000

    async def run():
        connection = Connection(server.grpc_url, shared_memory=True, admin_key_file=key)
        async with AsyncBrainscanClient(connection) as client:
            answers = await client.infer_pixels(slices)
            with grpcclient.InferenceServerClient(server.grpc_url) as admin:
                registered = admin.get_system_shared_memory_status(headers=headers, as_json=True)["regions"]
            plain = await AsyncBrainscanClient(Connection(server.grpc_url)).infer_pixels(slices)
        return answers, registered, plain

    answers, registered, plain = asyncio.run(run())
    assert [r for r in registered if r.startswith("brainscan-")], registered
    assert [a.probability for a in answers] == [p.probability for p in plain]
    assert all((a.mask == p.mask).all() and a.mask.shape == (64, 48) for a, p in zip(answers, plain))
    with grpcclient.InferenceServerClient(server.grpc_url) as admin:
        left = admin.get_system_shared_memory_status(headers=headers, as_json=True).get("regions", {})
    assert not [r for r in left if r.startswith("brainscan-")]


def test_without_the_admin_key_shared_memory_is_refused_by_name_and_the_server_keeps_serving(server, series, tmp_path):
    missing = brainscan("predict", series, "--url", server.grpc_url, "--out", tmp_path / "a", "--shared-memory")
    assert missing.returncode == 2 and contract.ADMIN_KEY_ENV in missing.stderr
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-servers-key-at-all")
    before = _regions()
    refused = brainscan(
        "predict",
        series,
        "--url",
        server.grpc_url,
        "--out",
        tmp_path / "b",
        "--shared-memory",
        "--admin-key-file",
        wrong,
    )
    assert refused.returncode != 0 and "refused to map shared memory" in refused.stdout + refused.stderr
    assert _regions() == before
    assert _predict(server, series, tmp_path / "c")["slices"] == 6  # the server still answers
