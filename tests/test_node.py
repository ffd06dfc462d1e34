"""`brainscan listen` as a node a hospital leaves running, under faults injected by process id:
the real listener process, a real Triton and a real Orthanc on loopback. A series reaches
the node while Triton is away and the node is then killed (-9): restarted on its spool, it
resumes the series and answers it once Triton is back. The destination PACS is away when the
results are ready: they wait in the spool and reach it once it is up, once. Four senders at
once get every C-STORE answered. Callers not allowed get an A-ASSOCIATE-RJ. The spool is
private to the node's user."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from dicom_cases import BRAINSCAN, lesion_images
from orthanc import Orthanc
from test_alerts import node_metrics
from volume_files import write_mr_series

from brainscan.serving import Ports, TritonServer, free_port

pytestmark = pytest.mark.server


@contextlib.contextmanager
def node(port: int, triton_url: str, store_port: int, spool: Path, log: Path, *extra: str):
    """`brainscan listen`, results to ORTHANC@127.0.0.1:``store_port``; ended by its pid (-9 by
    the test when it says so)."""
    process = subprocess.Popen(
        [BRAINSCAN, "listen", "--port", str(port), "--url", triton_url, "--idle", "1", "--spool", str(spool)]
        + ["--store-to", f"ORTHANC@127.0.0.1:{store_port}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "a"),
    )
    try:
        wait_for(lambda: "listening as BRAINSCAN" in log.read_text(), 30, log)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)


def wait_for(condition, seconds: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.3)


def send_series(port: int, folder: Path, calling: str = "SCANNER") -> list[int]:
    """C-STORE every file of ``folder`` to the node on one association: the statuses."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    assoc = ae.associate("127.0.0.1", port, ae_title="BRAINSCAN")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(pydicom.dcmread(f)).Status for f in sorted(folder.glob("*.dcm"))]
    finally:
        assoc.release()


def send_half(port: int, folder: Path):
    """The first half of ``folder``'s files on an association left open: the association."""
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
    assoc = ae.associate("127.0.0.1", port, ae_title="BRAINSCAN")
    files = sorted(folder.glob("*.dcm"))
    assert [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files[: len(files) // 2]] == [0] * (len(files) // 2)
    return assoc


def half_waits_then_whole_is_answered(port: int, pacs, series: str, study: str, folder: Path, log: Path):
    """Inside a running node that holds half a series from a cut association: the half does
    not run; the whole sent again gets one SEG and one SR referencing every instance."""
    time.sleep(4)  # several idle times: the half does not run
    assert "SEG and SR sent" not in log.read_text() and results_in(pacs, study) == {}
    assert send_series(port, folder) == [0] * 8
    wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)


def results_in(pacs: Orthanc, study: str) -> dict[str, list]:
    """The study's series in ``pacs`` by modality, each a list of its instances' datasets."""
    found: dict[str, list] = {}
    try:
        study_id = pacs.find_study(study)
    except (StopIteration, OSError):
        return found
    for series in pacs.get(f"/studies/{study_id}/series"):
        modality = series["MainDicomTags"]["Modality"]
        for instance in series["Instances"]:
            data = pacs.get_bytes(f"/instances/{instance}/file")
            found.setdefault(modality, []).append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))
    return found


def referenced(seg) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }


def audit(spool: Path) -> list[tuple[str, str]]:
    return [(a["series"], a["outcome"]) for a in map(json.loads, (spool / "audit.jsonl").read_text().splitlines())]


def scrape(port: int) -> dict[str, float]:
    """The node's Prometheus text: each sample's value by name."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value)
    return values


def test_a_node_killed_while_triton_is_away_answers_the_series_once_after_restart(bright_networks, pacs, tmp_path):
    from brainscan.export.repository import write_repository

    ports, port, spool, log = Ports.free(), free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(10), number=21)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    with node(port, f"127.0.0.1:{ports.grpc}", pacs.dicom_port, spool, log) as first:
        assert send_series(port, tmp_path / "series") == [0] * 10
        wait_for(lambda: "is tried again" in log.read_text(), 60, log)  # Triton is not there
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    journal = json.loads((spool / series / "journal.json").read_text())
    assert journal["state"] == "complete" and journal["attempts"] >= 1
    held = list((spool / series).glob("*.dcm"))
    assert len(held) == 10
    assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in held)  # the patient's data: the node's user only
    assert os.stat(spool / series).st_mode & 0o777 == 0o700 and os.stat(spool).st_mode & 0o777 == 0o700

    repository = write_repository(
        tmp_path / "model_repository", "local", bright_networks["classifier"], bright_networks["segmenter"]
    )
    triton = TritonServer(repository, ports=ports, log_file=tmp_path / "tritonserver.log")
    with triton, node(port, f"127.0.0.1:{ports.grpc}", pacs.dicom_port, spool, log):
        wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
        time.sleep(3)  # more than the idle time: nothing else is sent
    text = log.read_text()
    assert f"resumed series {series} (complete, 10 objects)" in text
    found = results_in(pacs, study)
    assert sorted(found) == ["SEG", "SR"] and len(found["SEG"]) == len(found["SR"]) == 1, text
    assert referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}
    assert audit(spool)[0] == (series, "failed") and audit(spool)[-1] == (series, "ok")
    assert json.loads((spool / series / "journal.json").read_text())["state"] == "stored"  # kept for --keep-for
    assert not (spool / "failed").exists()


def test_results_wait_in_the_spool_while_the_destination_is_away_and_arrive_once(bright_server, tmp_path):
    destination = Orthanc(tmp_path / "orthanc")  # its ports are chosen; it is not started yet
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(8), number=22)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    try:
        with node(port, bright_server.grpc_url, destination.dicom_port, spool, log):
            assert send_series(port, tmp_path / "series") == [0] * 8
            wait_for(lambda: "is tried again" in log.read_text(), 60, log)
            journal = json.loads((spool / series / "journal.json").read_text())
            assert journal["state"] == "predicted" and len(journal["results"]) == 2
            destination.start()
            wait_for(lambda: f"series {series}: SEG and SR sent (try" in log.read_text(), 120, log)
            time.sleep(3)
        found = results_in(destination, study)
    finally:
        destination.stop()
    assert sorted(found) == ["SEG", "SR"] and len(found["SEG"]) == len(found["SR"]) == 1, log.read_text()
    assert referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}
    lines = audit(spool)
    assert lines[0] == (series, "failed") and lines[-1] == (series, "ok") and len(lines) >= 2
    assert "not sent" in json.loads((spool / "audit.jsonl").read_text().splitlines()[0])["error"]


def test_four_senders_at_once_get_every_object_answered_and_a_stranger_is_rejected(bright_server, pacs, tmp_path):
    """The stall of a node with an unlimited PDU size (1 C-STORE in 20 unanswered with four
    pynetdicom senders) does not happen with storescp's defaults; an AE title not allowed gets
    an A-ASSOCIATE-RJ, not an abort."""
    from pynetdicom import AE

    port, spool, log, metrics_port = free_port(), tmp_path / "spool", tmp_path / "listen.log", free_port()
    folders = []
    for k in range(4):
        write_mr_series(tmp_path / f"series{k}", lesion_images(20), number=30 + k)
        folders.append(tmp_path / f"series{k}")
    statuses: dict[int, list[int]] = {}
    extra = ("--allow-ae", "SCANNER", "--metrics-port", str(metrics_port))
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log, *extra):
        senders = [
            threading.Thread(target=lambda k=k: statuses.__setitem__(k, send_series(port, folders[k])))
            for k in range(4)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
        assoc = stranger.associate("127.0.0.1", port, ae_title="BRAINSCAN")
        assert assoc.is_rejected and not assoc.is_aborted
        wait_for(lambda: log.read_text().count("SEG and SR sent") == 4, 120, log)
        exported = scrape(metrics_port)
    assert statuses == {k: [0] * 20 for k in range(4)}
    assert exported["brainscan_node_objects_received_total"] == 80
    assert exported["brainscan_node_series_received_total"] == exported["brainscan_node_series_stored_total"] == 4
    assert exported["brainscan_node_associations_rejected_total"] == 1
    assert exported["brainscan_node_series_pending"] == exported["brainscan_node_oldest_pending_seconds"] == 0
    assert node_metrics() <= set(exported), node_metrics() - set(exported)  # what the alerts read
    assert "refused an association from AE 'STRANGER'" in log.read_text()


def test_a_series_routed_twice_is_answered_once(bright_server, pacs, tmp_path):
    """The same instances sent again (a re-route, a StableAge re-trigger) to the same models:
    predicted, but not sent again, and said so; the PACS holds one SEG and one SR."""
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(6), number=23)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log):
        send_series(port, tmp_path / "series")
        wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
        send_series(port, tmp_path / "series")
        wait_for(lambda: f"series {series}: already answered" in log.read_text(), 120, log)
    found = results_in(pacs, study)
    assert sorted(found) == ["SEG", "SR"] and len(found["SEG"]) == len(found["SR"]) == 1, log.read_text()


def test_what_an_aborted_association_brought_waits_for_the_series_to_be_sent_again(bright_server, pacs, tmp_path):
    """Half a series, then an A-ABORT: no SEG of the half; the whole series sent again on a new
    association gets one SEG referencing every instance."""

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(8), number=24)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log):
        assoc = send_half(port, tmp_path / "series")
        assoc.abort()
        wait_for(lambda: f"series {series}: its association was aborted" in log.read_text(), 30, log)
        half_waits_then_whole_is_answered(port, pacs, series, study, tmp_path / "series", log)
    found = results_in(pacs, study)
    assert sorted(found) == ["SEG", "SR"] and len(found["SEG"]) == len(found["SR"]) == 1, log.read_text()
    assert referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}


def test_late_objects_join_a_stored_series_and_everything_is_deleted_after_the_retention(bright_server, pacs, tmp_path):
    """Six slices answered; two more of the same series arrive within --keep-for: the series
    runs again over all eight (a second SEG, referencing the eight). After --keep-for the
    objects and results are deleted from the spool."""
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(8), number=25)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    (tmp_path / "first").mkdir(), (tmp_path / "late").mkdir()
    for k, path in enumerate(sorted((tmp_path / "series").glob("*.dcm"))):
        path.rename(tmp_path / ("first" if k < 6 else "late") / path.name)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log, "--keep-for", "8"):
        send_series(port, tmp_path / "first")
        wait_for(lambda: log.read_text().count(f"series {series}: SEG and SR sent") == 1, 120, log)
        assert (spool / series).is_dir() and (spool / "results" / series).is_dir()  # kept for now
        send_series(port, tmp_path / "late")
        wait_for(lambda: log.read_text().count(f"series {series}: SEG and SR sent") == 2, 120, log)
        wait_for(lambda: not (spool / series).exists() and not (spool / "results" / series).exists(), 30, log)
    segs = results_in(pacs, study)["SEG"]
    assert sorted(len(referenced(seg)) for seg in segs) == [6, 8], log.read_text()
    assert "a new object after its results were sent" in log.read_text()


def test_an_object_that_cannot_take_its_place_is_refused_at_c_store_with_the_reason(bright_server, pacs, tmp_path):
    """One slice without ImagePositionPatient and one with truncated pixel data: each refused
    with a failure status whose comment names why (the PACS keeps them); the rest is answered."""
    from pynetdicom import AE

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(6), number=26)
    datasets = [pydicom.dcmread(f) for f in sorted((tmp_path / "series").glob("*.dcm"))]
    del datasets[2].ImagePositionPatient
    datasets[4].PixelData = datasets[4].PixelData[:-100]
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log):
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
        assoc = ae.associate("127.0.0.1", port, ae_title="BRAINSCAN")
        statuses = [assoc.send_c_store(d) for d in datasets]
        assoc.release()
        series = str(written[0].SeriesInstanceUID)
        wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
    assert [s.Status for s in statuses] == [0, 0, 0xC000, 0, 0xC000, 0]
    assert statuses[2].ErrorComment == "no ImagePositionPatient"
    assert statuses[4].ErrorComment.startswith("truncated pixel data")
    (seg,) = results_in(pacs, str(written[0].StudyInstanceUID))["SEG"]
    assert referenced(seg) == {str(written[k].SOPInstanceUID) for k in (0, 1, 3, 5)}


def test_objects_arriving_during_a_prediction_join_it_and_a_canary_still_comes_back(bright_server, pacs, tmp_path):
    """40 slices, then 5 more of the same series as soon as its prediction starts (or just
    after its results went: then the kept objects take them), then another series: the node
    goes on, the series' last SEG references all 45, and the canary is answered."""
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(45), number=27)
    canary = write_mr_series(tmp_path / "canary", lesion_images(4), number=28)
    series = str(written[0].SeriesInstanceUID)
    (tmp_path / "first").mkdir(), (tmp_path / "late").mkdir()
    for k, path in enumerate(sorted((tmp_path / "series").glob("*.dcm"))):
        path.rename(tmp_path / ("first" if k < 40 else "late") / path.name)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log):
        send_series(port, tmp_path / "first")
        journal = spool / series / "journal.json"
        wait_for(lambda: journal.exists() and json.loads(journal.read_text())["state"] != "receiving", 60, log)
        send_series(port, tmp_path / "late")
        wait_for(lambda: log.read_text().count(f"series {series}: SEG and SR sent") == 2, 120, log)
        send_series(port, tmp_path / "canary")
        wait_for(lambda: f"series {canary[0].SeriesInstanceUID}: SEG and SR sent" in log.read_text(), 120, log)
    text = log.read_text()
    assert "objects arrived meanwhile" in text or "a new object after its results were sent" in text, text
    assert "Traceback" not in text
    segs = results_in(pacs, str(written[0].StudyInstanceUID))["SEG"]
    latest = max(segs, key=lambda seg: (seg.ContentDate, seg.ContentTime))
    assert referenced(latest) == {str(d.SOPInstanceUID) for d in written}


def test_a_node_killed_while_receiving_waits_for_the_series_to_be_sent_again(bright_server, pacs, tmp_path):
    """Four of eight objects received, the association still open, and the node killed (-9):
    restarted, it takes the half back but does not answer it; the PACS sends the whole
    series again, and one SEG referencing all eight comes back."""

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(8), number=29)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log) as first:
        send_half(port, tmp_path / "series")  # its association still open
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log):
        wait_for(lambda: f"resumed series {series} (receiving, 4 objects)" in log.read_text(), 30, log)
        half_waits_then_whole_is_answered(port, pacs, series, study, tmp_path / "series", log)
    found = results_in(pacs, study)
    assert sorted(found) == ["SEG", "SR"] and len(found["SEG"]) == len(found["SR"]) == 1, log.read_text()
    assert referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}
