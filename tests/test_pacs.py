"""The hospital loop against a real PACS (Debian's Orthanc with its DICOMweb plugin, started
here on loopback) and a real Triton: a study fetched over DICOMweb and its results stored
back; series routed by the PACS to `brainscan listen` (by Orthanc's REST call and by the Lua
script the kit ships) and answered there; a failing PACS and a wrong password named, with
nothing lost and nothing duplicated; no patient name or ID in any output."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
from dicom_cases import (
    BRAINSCAN,
    PASSWORD,
    REFUSED_SERIES,
    ROOT,
    USER,
    assert_private,
    brainscan,
    check_seg_on_sources,
    lesion_images,
    write_refused_series,
)
from orthanc import Orthanc
from volume_files import write_mr_series

from brainscan.client.hospital.node_metrics import send_body
from brainscan.serving import free_port

pytestmark = pytest.mark.server


# --- a real PACS ---------------------------------------------------------------------------------

LISTENER_PORT = free_port()
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


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
    from brainscan.client.hospital.dicomweb import Credentials, Pacs

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


def wait_for_results(pacs: Orthanc, study: str, seconds: float = 120, expected=("MR", "SEG", "SR")) -> None:
    deadline = time.monotonic() + seconds
    while modalities(pacs, study) != list(expected) and time.monotonic() < deadline:
        time.sleep(1)


def modalities(pacs: Orthanc, study: str) -> list[str]:
    from brainscan.client.hospital.dicomweb import Credentials, Pacs

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


def _not_analysed(pacs: Orthanc, study: str) -> list[str]:
    """The reason codes of the SRs stored in the study (the kit's coding scheme)."""
    found = []
    for series in pacs.get(f"/studies/{pacs.find_study(study)}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            for instance in series["Instances"]:
                ds = pydicom.dcmread(io.BytesIO(pacs.get_bytes(f"/instances/{instance}/file")))
                found += [e.value for e in ds.iterall() if e.keyword == "CodeValue" and e.value in REASON_CODES]
    return sorted(found)


REASON_CODES = {"modality", "plane", "image-type", "body-part", "slices", "pixel-spacing", "image-size", "pixels"}


def test_series_outside_the_intended_use_get_a_not_analysed_sr_in_the_pacs_and_no_seg(
    pacs, bright_server, credentials, tmp_path
):
    """`predict --dicomweb --store` on a study of a CT series, a localizer, a sagittal MR series,
    a CHEST one and DERIVED images: each refused from its headers with its code, an SR "not
    analysed" stored for each, no SEG; a second run finds those SRs and sends nothing again."""
    study = pydicom.uid.generate_uid()
    written = []
    for number, name in enumerate(REFUSED_SERIES, start=51):
        written += write_refused_series(tmp_path / name, name, number, study)
    stow(pacs, written)
    command = ["predict", "--dicomweb", pacs.dicomweb, "--study", study, "--store", "--url", bright_server.grpc_url]
    first = brainscan(*command, "--out", tmp_path / "out", "--format", "json", env=credentials)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    codes = sorted(code for _, _, code in REFUSED_SERIES.values())
    assert sorted(r["intended_use"]["reasons"][0]["code"] for r in records) == codes
    assert all(r["stored"] == pacs.dicomweb and "seg" not in r for r in records)
    stored = ["CT", *["MR"] * 4, *["SR"] * 5]
    assert modalities(pacs, study) == stored and _not_analysed(pacs, study) == codes
    again = brainscan(*command, env=credentials)
    assert again.returncode == 0 and again.stderr.count("already has a result of these models") == 5, again.stderr
    assert modalities(pacs, study) == stored
    audit = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert sorted((a["outcome"], a["intended_use"][0]) for a in audit) == [("not-analysed", c) for c in codes]
    assert_private(first.stdout, first.stderr, again.stderr, json.dumps(audit))


def test_the_listener_answers_series_outside_the_intended_use_with_a_not_analysed_sr(pacs, bright_server, tmp_path):
    """The same five series routed to `brainscan listen`: an SR "not analysed" comes back for
    each, with its code, and no SEG."""
    study = pydicom.uid.generate_uid()
    uids = {}
    for number, name in enumerate(REFUSED_SERIES, start=61):
        written = write_refused_series(tmp_path / name, name, number, study)
        stow(pacs, written)
        uids[name] = str(written[0].SeriesInstanceUID)
    log = tmp_path / "listen.log"
    expected = ("CT", *["MR"] * 4, *["SR"] * 5)
    with listening(LISTENER_PORT, bright_server.grpc_url, pacs, tmp_path / "spool", log):
        for series in pacs.get(f"/studies/{pacs.find_study(study)}/series"):
            pacs.post("/modalities/brainscan/store", {"Resources": [series["ID"]], "Synchronous": True})
        wait_for_results(pacs, study, expected=expected)
    text = log.read_text()
    codes = sorted(code for _, _, code in REFUSED_SERIES.values())
    assert modalities(pacs, study) == list(expected) and _not_analysed(pacs, study) == codes, text
    for name, (_, _, code) in REFUSED_SERIES.items():
        assert f"series {uids[name]}: not analysed, outside the intended use ({code}): its SR sent" in text
    audit = [json.loads(line) for line in (tmp_path / "spool" / "audit.jsonl").read_text().splitlines()]
    assert sorted((a["outcome"], a["intended_use"][0]) for a in audit) == [("not-analysed", c) for c in codes]
    assert_private(text, json.dumps(audit))


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
        if self.mode == "drip":  # an answer that never ends: one byte every 1.5 s, for 9 s at most
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(6):
                with contextlib.suppress(OSError):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                time.sleep(1.5)
            return
        self.send_response(503 if self.mode == "503" else 500)
        self.end_headers()

    def do_POST(self):  # noqa: N802  (STOW-RS: 200, but one instance named as failed, Out of Resources)
        self.rfile.read(int(self.headers["Content-Length"]))
        failed = {"00081150": {"vr": "UI", "Value": [SEG_CLASS]}, "00081155": {"vr": "UI", "Value": ["1.2.3.4.5.6"]}}
        failed["00081197"] = {"vr": "US", "Value": [0xA700]}
        send_body(self, json.dumps({"00081198": {"vr": "SQ", "Value": [failed]}}).encode(), "application/dicom+json")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "mode,words",
    [
        ("500", "answered 500 to the search for the series of study"),
        ("silent", "did not answer the search for the series of study"),
        ("503", "answered 503 to the search for the series of study 1.2.3.4 3 times"),
        ("drip", "did not finish the search for the series of study 1.2.3.4 within 5 s"),
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
            "--dicomweb-deadline",
            "5" if mode == "drip" else "60",
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
    folders = {p.name for p in (tmp_path / "spool").iterdir() if p.is_dir()}
    assert folders == {"results", str(written[0].SeriesInstanceUID)}, folders  # nothing written elsewhere
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


def test_a_stow_answer_that_names_a_failed_instance_is_a_failure(tmp_path):
    """A 200 whose FailedSOPSequence names an instance (here Out of Resources) is not a store."""
    from brainscan.client.hospital.dicomweb import DicomWebError, Pacs

    written = write_mr_series(tmp_path / "series", lesion_images(1), number=13)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(
            DicomWebError, match=r"did not store all of the SEG: 1\.2\.3\.4\.5\.6 \(failure reason 0xa700\)"
        ):
            Pacs(f"http://127.0.0.1:{server.server_address[1]}/dicom-web").store(written, "the SEG")
    finally:
        server.shutdown()
        server.server_close()


def test_a_study_the_pacs_does_not_hold_is_named_and_exits_1(pacs, bright_server, credentials):
    result = brainscan(
        "predict", "--dicomweb", pacs.dicomweb, "--study", "1.2.3.4.5", "--url", bright_server.grpc_url, env=credentials
    )
    assert result.returncode == 1 and "has no study 1.2.3.4.5" in result.stderr, result.stderr
    assert "already has a result" not in result.stderr
