"""A modality or PACS that sends compressed images straight to `brainscan listen`: one series
per transfer syntax, compressed by dcmtk (JPEG baseline, JPEG lossless, JPEG-LS, RLE) or by
pydicom's OpenJPEG encoder (JPEG 2000), sent with that syntax alone proposed, is accepted,
predicted, and answered with a SEG referencing every instance."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import lesion_images
from orthanc import Orthanc
from test_node import node, referenced, results_in, wait_for
from volume_files import write_mr_series

from brainscan.serving import free_port

pytestmark = pytest.mark.server

DCMTK = "needs dcmtk's dcmcjpeg, dcmcjpls and dcmcrle (apt-get install dcmtk; .ci/run installs it)"
SYNTAXES = {
    "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
}


def compressed(source: Path, target: Path, kind: str) -> list[Path]:
    """Every file of ``source`` written to ``target`` in the transfer syntax ``kind``."""
    target.mkdir()
    tools = {"jpeg-baseline": ["dcmcjpeg", "+eb", "+un"], "jpeg-lossless": ["dcmcjpeg", "+e1"]}
    tools |= {"jpeg-ls": ["dcmcjpls", "+el"], "rle": ["dcmcrle"]}
    for path in sorted(source.glob("*.dcm")):
        out = target / path.name
        if kind == "jpeg-2000":
            from pydicom.uid import JPEG2000Lossless

            dataset = pydicom.dcmread(path)
            dataset.compress(JPEG2000Lossless)
            dataset.save_as(out, enforce_file_format=True)
            continue
        if shutil.which(tools[kind][0]) is None:
            pytest.skip(reason=DCMTK)
        if kind == "jpeg-baseline":  # 8-bit samples, as baseline JPEG holds
            dataset = pydicom.dcmread(path)
            dataset.PixelData = (dataset.pixel_array // 8).astype(np.uint8).tobytes()
            dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
            dataset.save_as(path, enforce_file_format=True)
        subprocess.run([*tools[kind], str(path), str(out)], check=True, capture_output=True, timeout=60)
        if kind == "jpeg-baseline":  # dcmtk marks its lossy copy DERIVED; a modality compressing at source does not
            dataset = pydicom.dcmread(out)
            dataset.ImageType = ["ORIGINAL", "PRIMARY", "M"]
            dataset.save_as(out, enforce_file_format=True)
    files = sorted(target.glob("*.dcm"))
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files} == {
        SYNTAXES[kind]
    }
    return files


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield orthanc
    orthanc.stop()


@pytest.mark.parametrize("kind", list(SYNTAXES))
def test_a_series_sent_compressed_is_accepted_and_answered(kind, bright_server, pacs, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    written = write_mr_series(tmp_path / "series", lesion_images(6), number=40)
    files = compressed(tmp_path / "series", tmp_path / kind, kind)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    port, log = free_port(), tmp_path / "listen.log"
    with node(port, bright_server.grpc_url, pacs.dicom_port, tmp_path / "spool", log):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MRImageStorage, [SYNTAXES[kind]])  # that syntax alone: no fallback
        assoc = ae.associate("127.0.0.1", port, ae_title="BRAINSCAN")
        assert assoc.is_established and [c.transfer_syntax[0] for c in assoc.accepted_contexts] == [SYNTAXES[kind]]
        assert [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files] == [0] * 6
        assoc.release()
        wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
    found = results_in(pacs, study)
    assert len(found["SEG"]) == 1, log.read_text()
    assert referenced(found["SEG"][0]) == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }
