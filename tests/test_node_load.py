"""The node under the load the issue names: 20 series of 30 slices from 4 concurrent
associations (5 series each, one after the other), a real Triton and a real Orthanc taking
the results. Exactly 20 SEG and 20 SR come back, each valid for dciodvfy, each SEG
referencing its 30 instances; the time until the last result and the node's peak memory
are printed (figures, not assertions)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from dicom_cases import dciodvfy_errors, lesion_images
from test_node import node, referenced, send_series, wait_for
from volume_files import write_mr_series

from brainscan.serving import free_port

pytestmark = pytest.mark.server


def test_twenty_series_from_four_associations_get_twenty_valid_segs_and_srs(bright_server, pacs, tmp_path):
    import pydicom

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    series = {}
    for k in range(20):
        written = write_mr_series(tmp_path / f"series{k}", lesion_images(30), number=100 + k)
        series[str(written[0].SeriesInstanceUID)] = {str(d.SOPInstanceUID) for d in written}
    statuses: list[list[int]] = []

    def sender(first: int) -> None:
        for k in range(first, 20, 4):
            statuses.append(send_series(port, tmp_path / f"series{k}"))

    with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log) as running:
        started = time.monotonic()
        senders = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(300)
        wait_for(lambda: log.read_text().count("SEG and SR sent") >= 20, 300, log)
        seconds = time.monotonic() - started
        status = Path(f"/proc/{running.pid}/status").read_text()
        peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    figures = f"every result back after {seconds:.1f} s; node peak RSS {int(peak) // 1024} MB"
    print(f"\n20 series x 30 slices, 4 associations: {figures}")
    assert statuses == [[0] * 30] * 20
    found: dict[str, list] = {"SEG": [], "SR": []}
    for item in pacs.get("/instances?expand"):
        data = pacs.get_bytes(f"/instances/{item['ID']}/file")
        dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        if dataset.Modality in found:
            path = tmp_path / f"{dataset.Modality}-{len(found[dataset.Modality])}.dcm"
            path.write_bytes(data)
            found[dataset.Modality].append((dataset, path))
    assert len(found["SEG"]) == len(found["SR"]) == 20
    for seg, _ in found["SEG"]:
        (source,) = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
        assert referenced(seg) == series[source]
    for _, path in found["SEG"] + found["SR"]:
        assert dciodvfy_errors(path) == [], path
