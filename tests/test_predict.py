"""`brainscan predict` on what deployment engineers send, against real tritonservers:
NIfTI volumes and DICOM series back as aligned mask volumes, concurrency that changes
nothing but speed, a server restarted mid-run, resumable runs, output formats, HTTP, and
mutual TLS with certificates made here."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
from conftest import cli_args, encode, phantom_slices, predict_until, serve_command
from PIL import Image
from test_cli import run
from test_preprocessing import brain_like
from volume_files import axial_dicom_pixels, write_dicom_series, write_nifti

from brainscan.client.imaging.volumes import axial_mask_to_ras
from brainscan.preprocessing import decode_image

pytestmark = pytest.mark.server


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def slice_masks(server, files: list[Path], out: Path) -> list[np.ndarray]:
    """Each slice's mask as the ensemble answers for the slice file on its own."""
    result = run("predict", *files, "--url", server.grpc_url, "--out", out, "--format", "json")
    assert result.returncode == 0, result.stderr
    return [np.asarray(Image.open(out / f"{f.stem}.mask.png")) // 255 for f in files]


def start_run_then_stop_its_server(local_repository, tmp_path, images: int, retries: int):
    """Start `brainscan predict` on ``images`` slices against a fresh server and stop that
    server as soon as the first output is written. Returns the running client, the input
    folder, --out, the server's ports and the command."""
    from brainscan.serving import Ports, TritonServer

    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(images):
        (folder / f"slice_{k:03d}.png").write_bytes(encode(brain_like(256, 256, seed=k), "PNG"))
    out = tmp_path / "out"
    ports = Ports.free()
    with TritonServer(local_repository, ports=ports, log_file=tmp_path / "first.log"):
        client = predict_until(out, 1, folder, url=f"127.0.0.1:{ports.grpc}", concurrency=2, retries=retries)
    return client, folder, out, ports, client.args


@pytest.fixture(scope="module")
def patient_slices(phantom_dir) -> list[Path]:
    """The six slices of the first phantom patient (tumour in most of them)."""
    patient = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    return sorted(
        (f for f in patient.glob("*.tif") if not f.stem.endswith("_mask")), key=lambda f: int(f.stem.rsplit("_", 1)[1])
    )


def test_a_nifti_volume_and_a_dicom_series_come_back_as_aligned_mask_volumes(bright_server, patient_slices, tmp_path):
    server = bright_server  # its segmenter marks bright pixels: every slice has a mask to align
    images = [decode_image(f.read_bytes()) for f in patient_slices]
    source, nifti_affine = write_nifti(tmp_path / "in" / "head.nii.gz", images)
    dicom_affine = write_dicom_series(tmp_path / "in" / "dicom" / "study1", images, description="T1 AX")
    out = tmp_path / "out"
    result = run("predict", tmp_path / "in", "--url", server.grpc_url, "--out", out, "--format", "json")
    assert result.returncode == 0, result.stderr
    by_kind = {r["kind"]: r for r in records(result.stdout)}
    assert set(by_kind) == {"nifti", "dicom"}
    truth = slice_masks(server, patient_slices, tmp_path / "slices")  # the same slices, one file each
    assert all(0 < m.mean() < 0.5 for m in truth)

    nifti = nibabel.load(str(out / "head.mask.nii.gz"))
    assert nifti.shape == source.shape
    np.testing.assert_allclose(nifti.affine, nifti_affine)
    mask = np.asarray(nifti.dataobj)
    for k, expected in enumerate(truth):  # source[k] holds axial slice k (S, R, A storage)
        np.testing.assert_array_equal(mask[k], axial_mask_to_ras(expected))

    dicom = nibabel.load(str(out / "study1_3_T1_AX.mask.nii.gz"))
    np.testing.assert_allclose(dicom.affine, dicom_affine)
    assert dicom.shape == (256, 256, len(images))
    dicom_mask = np.asarray(dicom.dataobj)
    for k, expected in enumerate(truth):  # voxel [column, row, slice] of the DICOM pixel grid
        np.testing.assert_array_equal(dicom_mask[:, :, k], axial_dicom_pixels(expected).T)

    voxel_ml = {"nifti": 0.9 * 0.8 * 3.0 / 1000, "dicom": 0.8 * 0.9 * 3.0 / 1000}
    for kind, volume_mask in (("nifti", mask), ("dicom", dicom_mask)):
        record = by_kind[kind]
        assert record["tumour_volume_ml"] == pytest.approx(volume_mask.sum() * voxel_ml[kind], abs=1e-4)
        assert record["tumour_slices"] == sum(m.any() for m in truth)
        assert record["slices"] == len(images) and len(record["slice_probabilities"]) == len(images)
        largest = int(np.argmax([m.sum() for m in truth]))
        assert record["largest_cross_section_slice"] == largest
    summary = json.loads((out / "head.summary.json").read_text())
    assert summary["tumour_volume_ml"] == by_kind["nifti"]["tumour_volume_ml"]


def test_concurrency_changes_speed_not_results(bright_server, phantom_dir, tmp_path):
    """Batched with others or sent alone, each file gets its own answer. On the server whose
    networks answer from brightness, every mask is non-empty and the slices differ, so an
    answer given to the wrong request of a batch would show."""
    server = bright_server
    files = phantom_slices(phantom_dir, count=24)
    outputs = {}
    for concurrency in (1, 8):
        out = tmp_path / f"c{concurrency}"
        result = run(
            "predict", *files, "--url", server.grpc_url, "--out", out, "--format", "json", "--concurrency", concurrency
        )
        assert result.returncode == 0, result.stderr
        assert "images/s" in result.stderr
        outputs[concurrency] = (records(result.stdout), out)
    (sequential, out1), (concurrent, out8) = outputs[1], outputs[8]
    assert [r["file"] for r in concurrent] == [str(f) for f in files]  # input order, not finishing order
    for a, b in zip(sequential, concurrent):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert (a["label"], a["area_pixels"]) == (b["label"], b["area_pixels"])
    masks = [(out1 / f"{f.stem}.mask.png").read_bytes() for f in files]
    for f, mask in zip(files, masks):
        assert mask == (out8 / f"{f.stem}.mask.png").read_bytes()
    assert all(r["area_pixels"] > 0 for r in sequential)
    assert len(set(masks)) == len(files)  # no two answers alike: a swap could not hide
    assert len({r["probability"] for r in sequential}) > len(files) // 2


def test_a_server_restarted_mid_run_still_ends_with_every_output_written_once(local_repository, tmp_path):
    from brainscan.serving import TritonServer

    client, folder, out, ports, _ = start_run_then_stop_its_server(local_repository, tmp_path, 400, retries=12)
    # the with-block has stopped the server; the run must still be going
    assert client.poll() is None, "the run finished before the server went down: make the run longer"
    time.sleep(1.0)
    with TritonServer(local_repository, ports=ports, log_file=tmp_path / "second.log"):
        stdout, stderr = client.communicate(timeout=300)
    assert client.returncode == 0, stderr
    assert "server unavailable" in stderr  # it did wait for the restart
    reported = [r["file"] for r in records(stdout)]
    assert sorted(reported) == sorted(str(p) for p in folder.iterdir())  # each input once
    assert len(list(out.glob("*.mask.png"))) == len(list(out.glob("*.overlay.png"))) == 400
    assert not list(out.glob(".*"))  # no half-written temporary file
    assert json.loads((out / "failures.json").read_text())["failures"] == []


def test_skip_existing_resumes_a_run_and_failures_are_reported_as_json(server, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(4):
        (inputs / f"img{k}.png").write_bytes(encode(brain_like(seed=k), "PNG"))
    (inputs / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    first = run("predict", inputs, "--url", server.grpc_url, "--out", out, "--format", "csv")
    assert first.returncode == 1  # one bad file; the four others finished
    rows = list(csv.DictReader(io.StringIO(first.stdout)))
    assert [Path(r["file"]).name for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png", "zz_broken.png"]
    assert rows[4]["status"] and "unreadable image header" in rows[4]["error"] and not rows[0]["error"]
    report = json.loads((out / "failures.json").read_text())
    assert report["done"] == 4 and [Path(f["file"]).name for f in report["failures"]] == ["zz_broken.png"]
    assert "INVALID_ARGUMENT" in report["failures"][0]["status"]

    (out / "img2.overlay.png").unlink()  # as if the first run had stopped before it
    (inputs / "zz_broken.png").unlink()
    second = run("predict", inputs, "--url", server.grpc_url, "--out", out, "--format", "json", "--skip-existing")
    assert second.returncode == 0, second.stderr
    assert [Path(r["file"]).name for r in records(second.stdout)] == ["img2.png"]
    assert "3 skipped" in second.stderr and (out / "img2.overlay.png").exists()
    assert json.loads((out / "failures.json").read_text())["failures"] == []


def test_hostile_names_in_a_dicom_header_stay_inside_out(server, phantom_dir, tmp_path):
    images = [decode_image(f.read_bytes()) for f in phantom_slices(phantom_dir, count=2)]
    write_dicom_series(tmp_path / "in" / "evil", images, description="../../../../tmp/escaped")
    out = tmp_path / "work" / "out"
    result = run("predict", tmp_path / "in", "--url", server.grpc_url, "--out", out)
    assert result.returncode == 0, result.stderr
    written = {
        p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and p.relative_to(tmp_path).parts[0] != "in"
    }
    assert written and all(p.parts[:2] == ("work", "out") for p in written), written
    assert not Path("/tmp/escaped.mask.nii.gz").exists()


def test_http_gives_the_grpc_answer_and_a_missing_model_or_version_is_named(server, tmp_path):
    image = tmp_path / "slice.png"
    image.write_bytes(encode(brain_like(), "PNG"))
    grpc = run("predict", image, "--url", server.grpc_url, "--format", "json")
    http = run(
        "predict", image, "--protocol", "http", "--url", server.http_url, "--format", "json", "--model-version", "1"
    )
    assert grpc.returncode == http.returncode == 0, http.stderr
    assert records(grpc.stdout)[0]["probability"] == pytest.approx(records(http.stdout)[0]["probability"], abs=1e-6)
    missing = run("predict", image, "--url", server.grpc_url, "--model-version", "7")
    assert missing.returncode == 1 and "version 7" in missing.stderr and "Traceback" not in missing.stderr
    other = run("predict", image, "--url", server.grpc_url, "--model", "brainscan_v2")
    assert other.returncode == 1 and "brainscan_v2" in other.stderr


def _openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=brainscan test CA",
        cwd=folder,
    )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={'127.0.0.1' if name == 'server' else 'brainscan client'}",
            cwd=folder,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test certificates")
def test_mutual_tls_round_trip_with_certificates_made_here(local_repository, tmp_path):
    """`brainscan serve` with its TLS options, as a user starts it, and the client's."""
    from brainscan.serving import Ports

    certs = make_certificates(tmp_path / "pki")
    image = tmp_path / "slice.png"
    image.write_bytes(encode(brain_like(), "PNG"))
    ports = Ports.free()
    tls = cli_args(tls_certificate=certs["server.pem"], tls_key=certs["server.key"], tls_client_ca=certs["ca.pem"])
    command = serve_command(local_repository, ports, tmp_path / "tls.log", *tls)
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"127.0.0.1:{ports.grpc}"
    client_tls = [
        "--root-certificates",
        certs["ca.pem"],
        "--private-key",
        certs["client.key"],
        "--certificate-chain",
        certs["client.pem"],
    ]
    try:
        assert run("health", "--url", url, "--ssl", *client_tls, "--wait", "120").returncode == 0, server.poll()
        secure = run("predict", image, "--url", url, "--format", "json", *client_tls)
        assert secure.returncode == 0, secure.stderr
        assert 0 <= records(secure.stdout)[0]["probability"] <= 1
        plain = run("predict", image, "--url", url, "--timeout", "10")
        assert plain.returncode == 3 and "no Triton server reachable" in plain.stderr
        no_client_cert = run("predict", image, "--url", url, "--ssl", "--root-certificates", certs["ca.pem"])
        assert no_client_cert.returncode == 3
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert "ready: gRPC+TLS" in stderr


def test_a_server_that_stays_away_ends_the_run_with_exit_3_and_skip_existing_resumes_it(local_repository, tmp_path):
    from brainscan.serving import TritonServer

    client, _, out, ports, command = start_run_then_stop_its_server(local_repository, tmp_path, 300, retries=2)
    stdout, stderr = client.communicate(timeout=120)  # it may give up while the server is still stopping
    assert client.returncode == 3, stderr
    assert "stayed unreachable" in stderr and "--skip-existing" in stderr
    report = json.loads((out / "failures.json").read_text())
    done = sorted(out.glob("*.mask.png"))
    assert report["server_unreachable"] and report["done"] == len(done) < 300
    assert len(report["failures"]) == 300 - len(done)
    assert all(f["status"] == "UNAVAILABLE" for f in report["failures"])
    assert len(list(out.glob("*.overlay.png"))) == len(done) and not list(out.glob(".*"))  # nothing half-written

    with TritonServer(local_repository, ports=ports, log_file=tmp_path / "second.log"):
        resumed = subprocess.run([*command, "--skip-existing"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(records(resumed.stdout)) == 300 - len(done)  # only what the first run had not finished
    assert len(list(out.glob("*.mask.png"))) == len(list(out.glob("*.overlay.png"))) == 300
    assert json.loads((out / "failures.json").read_text())["failures"] == []
