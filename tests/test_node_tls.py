"""DICOM over TLS with mutual authentication, with the tools a hospital uses: Orthanc (DICOM
TLS on, its certificate and the CA's, callers' certificates required) routes a series to
`brainscan listen` over TLS and gets the SEG and SR back over TLS; dcmtk's `storescu +tls`
sends one too; a peer whose certificate another CA signed, or one with no TLS at all, is
refused, logged and audited, and the node goes on."""

from __future__ import annotations

import json
import shutil
import subprocess

import pydicom
import pytest
from dicom_cases import lesion_images
from orthanc import Orthanc
from test_node import node, referenced, results_in, wait_for
from tls_certs import make_certificates
from volume_files import write_mr_series

from brainscan.serving import free_port

pytestmark = pytest.mark.server
STORESCU = shutil.which("storescu")
NO_DCMTK = "needs dcmtk's storescu built with OpenSSL (apt-get install dcmtk; .ci/run installs it)"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_options(certificates) -> list[str]:
    (cert, key), (ca, _) = certificates["node"], certificates["ca"]
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca), "--store-tls"]


def storescu(certificates, who: str, port: int, files) -> subprocess.CompletedProcess:
    if STORESCU is None:
        pytest.skip(reason=NO_DCMTK)
    (cert, key), (ca, _) = certificates[who], certificates["ca"]
    command = [STORESCU, "+tls", str(key), str(cert), "+cf", str(ca), "-aet", "SCANNER", "-aec", "BRAINSCAN"]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=120
    )


def tls_orthanc(tmp_path, certificates, modalities: dict | None = None) -> Orthanc:
    """Orthanc with DICOM TLS on: its certificate, the CA's, callers' certificates required."""
    (cert, key), (ca, _) = certificates["orthanc"], certificates["ca"]
    tls = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key)}
    tls |= {"DicomTlsTrustedCertificates": str(ca), "DicomTlsRemoteCertificateRequired": True}
    return Orthanc(tmp_path / "orthanc", modalities=modalities or {}, settings=tls).start()


def test_orthanc_and_the_node_talk_dicom_tls_both_ways(bright_server, certificates, tmp_path):
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    modality = {"AET": "BRAINSCAN", "Host": "127.0.0.1", "Port": port, "UseDicomTls": True}
    pacs = tls_orthanc(tmp_path, certificates, {"brainscan": modality})
    try:
        written = write_mr_series(tmp_path / "series", lesion_images(6), number=50)
        pacs.upload(sorted((tmp_path / "series").glob("*.dcm")))
        series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
        with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log, *tls_options(certificates)):
            orthanc_series = next(
                s
                for s in pacs.get("/series")
                if pacs.get(f"/series/{s}")["MainDicomTags"]["SeriesInstanceUID"] == series
            )
            pacs.post("/modalities/brainscan/store", {"Resources": [orthanc_series], "Synchronous": True})
            wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
        found = results_in(pacs, study)
    finally:
        pacs.stop()
    assert len(found["SEG"]) == len(found["SR"]) == 1, log.read_text()
    assert referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}
    assert "over TLS with a certificate the CA" in log.read_text()


def test_storescu_over_tls_is_answered_and_strangers_are_refused_and_audited(bright_server, certificates, tmp_path):
    from pynetdicom import AE

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(6), number=51)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    pacs = tls_orthanc(tmp_path, certificates)
    try:
        with node(port, bright_server.grpc_url, pacs.dicom_port, spool, log, *tls_options(certificates)):
            refused = storescu(certificates, "stranger", port, files[:1])
            assert refused.returncode != 0
            plain = AE(ae_title="PLAIN")
            plain.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
            assert not plain.associate("127.0.0.1", port, ae_title="BRAINSCAN").is_established  # no TLS at all
            sent = storescu(certificates, "scanner", port, files)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            series = str(written[0].SeriesInstanceUID)
            wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
        found = results_in(pacs, str(written[0].StudyInstanceUID))
    finally:
        pacs.stop()
    assert len(found["SEG"]) == 1 and referenced(found["SEG"][0]) == {str(d.SOPInstanceUID) for d in written}
    text = log.read_text()
    assert text.count("refused a TLS connection from 127.0.0.1") >= 2, text
    alerts = [
        a for a in map(json.loads, (spool / "audit.jsonl").read_text().splitlines()) if a["outcome"] == "security-alert"
    ]
    assert len(alerts) >= 2 and all(a["event"] == "tls-refused" and a["peer"].startswith("127.0.0.1:") for a in alerts)
    assert str(pydicom.dcmread(files[0]).PatientName) not in json.dumps(alerts)
