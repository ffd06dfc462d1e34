"""The hospital loop against a real PACS (Debian's Orthanc with its DICOMweb plugin, started
here on loopback) and a real Triton: DICOM SEG and SR written with highdicom, valid for
dciodvfy, their frames on the right source slices of series written by hand (shuffled,
reversed, oblique, with a slice missing); a study fetched over DICOMweb and its results
stored back; series routed by the PACS to `brainscan listen` and answered there; bad series,
bad objects and a failing PACS named, with nothing lost and nothing duplicated; and no
patient name or ID in any output a person or a log reads."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import hand_probability
from orthanc import Orthanc
from volume_files import PATIENT_ID, PATIENT_NAME, write_mr_series

from brainscan.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
BRAINSCAN = str(Path(sys.executable).with_name("brainscan"))
DCIODVFY = shutil.which("dciodvfy")
USER, PASSWORD = "brainscan", "correct-horse-battery-staple"
SHAPE = (96, 112)  # rows, columns of the hand-made slices
LESION = (slice(18, 42), slice(66, 98))  # rows, columns: off-centre, top right
LESION_SLICES = (3, 4, 5)
pytestmark = pytest.mark.server


def lesion_images(slices: int = 8) -> list[np.ndarray]:
    """Dark slices (no tumour for the bright-threshold networks), a bright box on some."""
    images = []
    for k in range(slices):
        image = np.full(SHAPE, 300, np.uint16)
        if k in LESION_SLICES:
            image[LESION] = 1500
        images.append(image)
    return images


def truth(k: int) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    if k in LESION_SLICES:
        mask[LESION] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def brainscan(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BRAINSCAN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def dciodvfy_errors(path: Path) -> list[str]:
    if DCIODVFY is None:
        pytest.skip(reason="needs dicom3tools' dciodvfy (apt-get install dicom3tools; .ci/run installs it)")
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def assert_private(*texts: str) -> None:
    for text in texts:
        for secret in (PATIENT_NAME, PATIENT_ID, "Doe", PASSWORD):
            assert secret not in text, f"{secret!r} appears in output"


def check_seg_on_sources(seg_path: Path, written: list) -> None:
    """The SEG, read back with highdicom, against the hand-made lesion of each source slice."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    sources = [ds for ds in written if ds is not None]
    frames = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in sources], segment_numbers=[1])
    for ds, frame in zip(sources, frames[..., 0].astype(bool)):
        k = written.index(ds)
        if k in LESION_SLICES:
            assert dice(frame, truth(k)) > 0.9, (k, dice(frame, truth(k)))
        else:
            assert not frame.any(), k
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [float(v) for v in sources[0].ImageOrientationPatient])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for item in seg.PerFrameFunctionalGroupsSequence:  # every frame sits where its source slice is
        # and names its segment itself: dwv 0.36 draws no mask when that is only shared (docs/pacs.md)
        assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in by_uid[source].ImagePositionPatient], atol=1e-4
        )
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SNOMED CT Neoplasm
    assert (
        segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    )  # Morphologically Abnormal Structure


def sr_content(sr_path: Path) -> dict:
    """Finding, probability and volume read from the SR's content tree."""
    found = {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                found[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                found[name] = item.ConceptCodeSequence[0].CodeMeaning
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(str(sr_path)).ContentSequence)
    return found


# --- the objects themselves ------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["axial", "reversed", "oblique", "missing-slice"])
def test_the_seg_frames_lie_on_their_source_slices_and_both_objects_are_valid(bright_server, tmp_path, geometry):
    options = {
        "axial": {},
        "reversed": {"reverse": True},
        # tilted 20 degrees about the patient's left-right axis: neither rows nor columns are axial
        "oblique": {"column_direction": (0.0, np.cos(np.radians(20)), np.sin(np.radians(20)))},
        "missing-slice": {"skip": (6,)},
    }[geometry]
    written = write_mr_series(tmp_path / "series", lesion_images(), **options)
    result = brainscan(
        "predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    seg_path, sr_path = (Path(p) for p in record["outputs"] if p.endswith((".seg.dcm", ".sr.dcm")))
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    check_seg_on_sources(seg_path, written)
    content = sr_content(sr_path)
    # by hand: the bright-threshold classifier's probability for the brightest slice, whose
    # bright part covers this share of it (far below the half it takes to say "tumour")
    expected_probability = hand_probability(truth(LESION_SLICES[0]).mean())
    assert content["Probability"] == pytest.approx(expected_probability, rel=0.5, abs=1e-6)
    assert content["Finding"] == "Absent" and record["label"] == "no tumour"
    voxel_mm3 = 0.9 * 0.8 * 3.0
    expected = sum(truth(k).sum() for k in LESION_SLICES) * voxel_mm3
    assert abs(content["Volume"] - expected) / expected < 0.1, (content["Volume"], expected)
    if geometry == "missing-slice":
        assert any("uneven slice spacing" in note for note in record["notes"])
    assert_private(result.stdout, result.stderr, (tmp_path / "out" / "audit.jsonl").read_text())


def test_a_series_without_tumour_gets_an_empty_seg_and_an_absent_finding(bright_server, tmp_path):
    images = [np.full(SHAPE, 300, np.uint16) for _ in range(4)]
    write_mr_series(tmp_path / "series", images)
    result = brainscan(
        "predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    sr_path = next(Path(p) for p in record["outputs"] if p.endswith(".sr.dcm"))
    seg_path = next(Path(p) for p in record["outputs"] if p.endswith(".seg.dcm"))
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    content = sr_content(sr_path)
    assert content["Finding"] == "Absent" and content["Volume"] == 0.0
    # provenance: the SHA-256 of each graph the server loaded, hashed here from the repository's
    # files, is in the SR's algorithm fields
    texts = [e.value for e in pydicom.dcmread(str(sr_path)).iterall() if e.keyword == "TextValue"]
    for network in ("classifier", "segmenter"):
        served = hashlib.sha256((bright_server.repository / network / "1" / "model.onnx").read_bytes()).hexdigest()
        assert any(network in text and served in text for text in texts), texts


def test_bad_series_and_objects_are_named_and_the_others_finish(bright_server, tmp_path):
    root = tmp_path / "inbox"
    good = write_mr_series(root / "good", lesion_images(6))
    mixed = write_mr_series(root / "mixed", lesion_images(4), number=5)
    tilted = pydicom.dcmread(root / "mixed" / "0002.dcm")
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a localizer among the axial slices
    tilted.save_as(root / "mixed" / "0002.dcm")
    write_mr_series(root / "truncated", lesion_images(4), number=6)
    broken = root / "truncated" / "0003.dcm"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    report = pydicom.dcmread(root / "good" / "0001.dcm", stop_before_pixels=True)
    report.SOPClassUID, report.Modality = "1.2.840.10008.5.1.4.1.1.88.22", "SR"  # an SR beside the images
    del report.Rows
    report.save_as(root / "report.dcm")
    result = brainscan("predict", root, "--url", bright_server.grpc_url, "--out", tmp_path / "out", "--format", "json")
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    errors = " | ".join(r.get("error", "") for r in records)
    assert f"series {mixed[0].SeriesNumber} mixes 2 slice orientations" in errors
    assert "0003.dcm: cannot decode the pixel data" in errors
    assert "ignored 1 DICOM file(s) that are not image slices" in result.stderr
    done = [r for r in records if r.get("outputs")]
    assert [r["series"] for r in done] == [str(good[0].SeriesInstanceUID)]  # the good series finished, once
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert len(failures["failures"]) == 2
    assert_private(result.stdout, result.stderr, json.dumps(failures))


# --- a real PACS ---------------------------------------------------------------------------------

LISTENER_PORT = free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("orthanc")
    orthanc = Orthanc(
        root, modalities={"brainscan": ["BRAINSCAN", "127.0.0.1", LISTENER_PORT]}, users={USER: PASSWORD}
    ).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture
def credentials(tmp_path) -> dict:
    path = tmp_path / "pacs-credentials"
    path.write_text(f"basic {USER}:{PASSWORD}\n")
    return {"BRAINSCAN_DICOMWEB_AUTH_FILE": str(path)}


def stow(pacs: Orthanc, written: list) -> str:
    from brainscan.client.dicomweb import Credentials, Pacs

    Pacs(pacs.dicomweb, Credentials("basic", f"{USER}:{PASSWORD}")).store(
        [d for d in written if d is not None], "a test series"
    )
    return str(next(d for d in written if d is not None).StudyInstanceUID)


@contextlib.contextmanager
def listening(port: int, triton_url: str, pacs: Orthanc, spool: Path, log: Path):
    """`brainscan listen` on ``port``, sending results back to ``pacs`` by C-STORE; ended by its pid."""
    listener = subprocess.Popen(
        [
            BRAINSCAN,
            "listen",
            "--port",
            str(port),
            "--url",
            triton_url,
            "--idle",
            "2",
            "--store-to",
            f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
            "--spool",
            str(spool),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    try:
        deadline = time.monotonic() + 30
        while "listening as BRAINSCAN" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        yield listener
    finally:
        listener.terminate()
        listener.wait(60)


def wait_for_results(pacs: Orthanc, study: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while modalities(pacs, study) != ["MR", "SEG", "SR"] and time.monotonic() < deadline:
        time.sleep(1)


def modalities(pacs: Orthanc, study: str) -> list[str]:
    from brainscan.client.dicomweb import Credentials, Pacs

    found = Pacs(pacs.dicomweb, Credentials("basic", f"{USER}:{PASSWORD}")).series_of(study)
    return sorted(item["00080060"]["Value"][0] for item in found)


def test_a_study_goes_round_the_loop_through_dicomweb(pacs, bright_server, credentials, tmp_path):
    written = write_mr_series(tmp_path / "series", lesion_images())
    study = stow(pacs, written)
    command = [
        "predict",
        "--dicomweb",
        pacs.dicomweb,
        "--study",
        study,
        "--store",
        "--url",
        bright_server.grpc_url,
        "--out",
        tmp_path / "out",
        "--format",
        "json",
    ]
    first = brainscan(*command, env=credentials)
    assert first.returncode == 0, first.stderr
    assert modalities(pacs, study) == ["MR", "SEG", "SR"]
    record = json.loads(first.stdout)
    assert record["stored"] == pacs.dicomweb and record["series"] == str(written[0].SeriesInstanceUID)
    check_seg_on_sources(next(Path(p) for p in record["outputs"] if p.endswith(".seg.dcm")), written)
    again = brainscan(*command, env=credentials)  # the same models: nothing to do, nothing stored twice
    assert again.returncode == 0 and "already has a result of these models" in again.stderr, again.stderr
    assert modalities(pacs, study) == ["MR", "SEG", "SR"]
    audit = (tmp_path / "out" / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 1 and json.loads(audit[0])["outcome"] == "ok" and json.loads(audit[0])["study"] == study
    assert_private(first.stdout, first.stderr, again.stderr, "\n".join(audit))


def test_a_wrong_password_is_named_without_echoing_it(pacs, bright_server, tmp_path):
    path = tmp_path / "wrong"
    path.write_text(f"basic {USER}:not-the-password\n")
    result = brainscan(
        "predict",
        "--dicomweb",
        pacs.dicomweb,
        "--study",
        "1.2.3.4",
        "--url",
        bright_server.grpc_url,
        env={"BRAINSCAN_DICOMWEB_AUTH_FILE": str(path)},
    )
    assert result.returncode == 1 and "answered 401" in result.stderr and "credentials were refused" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


class _Failing(http.server.BaseHTTPRequestHandler):
    mode = "500"

    def do_GET(self):  # noqa: N802
        if self.mode == "silent":
            time.sleep(8)  # longer than the client's timeout; the server thread ends by itself
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "mode,words",
    [
        ("500", "answered 500 to the search for the series of study"),
        ("silent", "did not answer the search for the series of study"),
    ],
)
def test_a_pacs_that_fails_or_never_answers_is_named(bright_server, tmp_path, mode, words):
    handler = type("Handler", (_Failing,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = brainscan(
            "predict",
            "--dicomweb",
            f"http://127.0.0.1:{server.server_address[1]}/dicom-web",
            "--study",
            "1.2.3.4",
            "--url",
            bright_server.grpc_url,
            "--dicomweb-timeout",
            "2",
        )
        assert time.monotonic() - started < 60
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and words in result.stderr, result.stderr


def test_the_listener_answers_a_routed_series_and_refuses_what_it_must(pacs, bright_server, tmp_path):
    from pynetdicom import AE

    written = write_mr_series(tmp_path / "series", lesion_images(), number=11)
    study = stow(pacs, written)
    log = tmp_path / "listen.log"
    with listening(LISTENER_PORT, bright_server.grpc_url, pacs, tmp_path / "spool", log):
        # an SR is not an image, and an object without valid UIDs cannot be filed: both refused
        ae = AE(ae_title="SOMEONE")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.22")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
        assoc = ae.associate("127.0.0.1", LISTENER_PORT, ae_title="BRAINSCAN")
        report = pydicom.dcmread(tmp_path / "series" / "0001.dcm", stop_before_pixels=True)
        report.SOPClassUID, report.file_meta.MediaStorageSOPClassUID = ("1.2.840.10008.5.1.4.1.1.88.22",) * 2
        report.Modality = "SR"
        del report.Rows
        assert assoc.send_c_store(report).Status == 0xA900
        bad = pydicom.dcmread(tmp_path / "series" / "0002.dcm")
        bad.SeriesInstanceUID = "../../etc"
        assert assoc.send_c_store(bad).Status == 0xC000
        assoc.release()
        # the PACS routes the series (Orthanc's REST, as its routing rules do)
        series = next(
            s
            for s in pacs.get("/series")
            if pacs.get(f"/series/{s}")["MainDicomTags"]["SeriesInstanceUID"] == written[0].SeriesInstanceUID
        )
        pacs.post("/modalities/brainscan/store", {"Resources": [series], "Synchronous": True})
        wait_for_results(pacs, study)
    text = log.read_text()
    assert modalities(pacs, study) == ["MR", "SEG", "SR"], text
    assert "not an image (SR)" in text and "is not a DICOM UID" in text
    assert f"series {written[0].SeriesInstanceUID}: SEG and SR sent" in text
    assert not any(p.is_dir() for p in (tmp_path / "spool").iterdir() if p.name not in ("results",)), list(
        (tmp_path / "spool").iterdir()
    )  # the spooled series is gone once answered; nothing written elsewhere
    audit = [json.loads(line) for line in (tmp_path / "spool" / "audit.jsonl").read_text().splitlines()]
    assert [(a["series"], a["outcome"]) for a in audit] == [(str(written[0].SeriesInstanceUID), "ok")]
    assert_private(text, json.dumps(audit))


def test_orthanc_routes_each_stable_mr_series_with_the_shipped_lua_script(bright_server, tmp_path):
    """deploy/orthanc/route-mr.lua, as docs/pacs.md tells a PACS administrator to install it:
    a series stored into Orthanc by a modality reaches the node by itself, and the SEG and SR
    that come back are not routed again."""
    port = free_port()
    orthanc = Orthanc(
        tmp_path / "orthanc",
        modalities={"brainscan": ["BRAINSCAN", "127.0.0.1", port]},
        users={USER: PASSWORD},
        lua_scripts=[ROOT / "deploy" / "orthanc" / "route-mr.lua"],
    ).start()
    log = tmp_path / "listen.log"
    try:
        with listening(port, bright_server.grpc_url, orthanc, tmp_path / "spool", log):
            written = write_mr_series(tmp_path / "series", lesion_images(), number=12)
            orthanc.upload(sorted((tmp_path / "series").glob("*.dcm")))  # as a scanner would store it
            study = str(written[0].StudyInstanceUID)
            wait_for_results(orthanc, study)
            time.sleep(4)  # StableAge (1 s) and the listener's idle time (2 s) again: nothing more arrives
            found = modalities(orthanc, study)
    finally:
        orthanc.stop()
    text = log.read_text()
    assert found == ["MR", "SEG", "SR"], text  # one SEG and one SR: nothing duplicated
    assert "not an image" not in text  # the SEG and SR were not sent back to the node
    audit = [json.loads(line) for line in (tmp_path / "spool" / "audit.jsonl").read_text().splitlines()]
    assert [(a["series"], a["outcome"]) for a in audit] == [(str(written[0].SeriesInstanceUID), "ok")]
