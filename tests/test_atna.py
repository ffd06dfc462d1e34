"""IHE ATNA audit: messages in the format of DICOM PS3.15 A.5 over RFC 5424 syslog, received
by a syslog collector on loopback (UDP, TCP, and TLS with the sender's certificate required)
and each checked against the audit message schema of PS3.15 A.5.1 (tests/atna_message.rng,
its transcription). The real node and `predict --dicomweb` report to it while they work with
a real Triton and a real Orthanc: start and stop, instances received and results sent, the
QIDO search, refused associations and refused credentials; the patient's name appears only
where the schema asks for a name, in the patient's own participant object."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from syslog_collector import BOM, Received, SyslogCollector
from tls_certs import make_certificates

from brainscan.client.hospital import atna
from brainscan.client.hospital.atna_events import AtnaAudit, node, remote, web

SCHEMA = Path(__file__).with_name("atna_message.rng")
RSYSLOGD = shutil.which("rsyslogd") or next((p for p in ["/usr/sbin/rsyslogd"] if Path(p).exists()), None)
NO_RSYSLOG = "needs rsyslog (apt-get install rsyslog; .ci/run installs it)"
MR_CLASS, SEG_CLASS, SR_CLASS = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.34",
)


@pytest.fixture(scope="module")
def schema():
    etree = pytest.importorskip("lxml.etree", reason="needs lxml (the dev extra: pip install -e '.[dev]')")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def checked(schema, received: Received):
    """The message's XML, after checking the syslog header PS3.15 A.6/A.7 ask for and the schema."""
    from lxml import etree

    assert received.priority in (10 * 8 + 5, 10 * 8 + 4)  # security/authorization; notice or warning
    assert received.msgid == "DICOM+RFC3881" and received.app == "brainscan"
    assert received.message.startswith(BOM) and b"\n" not in received.message  # one line: collectors escape newlines
    document = etree.fromstring(received.xml)
    assert schema.validate(document), schema.error_log.last_error
    return document


def event_of(document) -> tuple[str, str, list[str]]:
    identification = document.find("EventIdentification")
    types = [t.get("csd-code") for t in identification.findall("EventTypeCode")]
    return identification.find("EventID").get("csd-code"), identification.get("EventActionCode"), types


def every_event(audit: AtnaAudit) -> None:
    """One message of each kind the kit sends."""
    me, pacs = node("BRAINSCAN", "127.0.0.1"), remote("ORTHANC", "127.0.0.1")
    transfer = atna.Transfer("1.2.3.4", "PID-7", "Doe^Jane", {MR_CLASS: 12})
    audit.application(True, me)
    audit.transferred([transfer], pacs, me, received=True)
    audit.transferred([transfer], me, pacs, received=False, outcome=atna.SERIOUS_FAILURE, description="refused")
    audit.query(me, web("https://user:secret@pacs.example:8042/dicom-web"), "/studies/1.2.3.4/series", atna.SUCCESS)
    audit.security_alert(me, "127.0.0.1:40000", "calling AE title 'X' not allowed")
    audit.refused_credentials(me, web("https://pacs.example/dicom-web"), "answered 401")
    audit.application(False, me)


@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
def test_every_event_reaches_a_collector_over_each_transport_and_matches_the_schema(schema, certificates, scheme):
    (cert, key), (ca, _) = certificates["orthanc"], certificates["ca"]
    with SyslogCollector(scheme, tls=(cert, key, ca) if scheme == "tls" else None) as collector:
        node_cert = certificates["node"] if scheme == "tls" else None
        audit = AtnaAudit.open(collector.url, "BRAINSCAN", ca if scheme == "tls" else None, node_cert)
        every_event(audit)
        audit.close()
        documents = [checked(schema, r) for r in collector.wait(7)]
    assert [event_of(d) for d in documents] == [
        ("110100", "E", ["110120"]),
        ("110104", "C", []),
        ("110104", "R", []),
        ("110112", "E", []),
        ("110113", "E", ["110126"]),
        ("110114", "E", ["110122"]),
        ("110100", "E", ["110121"]),
    ]
    outcomes = [d.find("EventIdentification").get("EventOutcomeIndicator") for d in documents]
    assert outcomes == ["0", "0", "8", "0", "4", "4", "0"]
    text = b"".join(r.message for r in collector.received)
    assert b"secret" not in text and b"user:" not in text  # no credentials from a URL
    # the patient's name only in the patient's participant object, where the schema needs a name
    received = documents[1]
    patient = [
        o for o in received.findall("ParticipantObjectIdentification") if o.get("ParticipantObjectTypeCode") == "1"
    ]
    assert [(p.get("ParticipantObjectID"), p.findtext("ParticipantObjectName")) for p in patient] == [
        ("PID-7", "Doe^Jane")
    ]
    assert text.count(b"Doe^Jane") == 2  # the received and the sent message, once each
    study = next(
        o for o in received.findall("ParticipantObjectIdentification") if o.get("ParticipantObjectTypeCode") == "2"
    )
    assert study.get("ParticipantObjectID") == "1.2.3.4"
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in study.iter("SOPClass")] == [(MR_CLASS, "12")]


RSYSLOG_CONFIG = """
global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="audit")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="audit")
template(name="fields" type="string"
         string="%syslogfacility% %syslogseverity% %app-name% %procid% %msgid% %structured-data% %msg%\\n")
ruleset(name="audit") {{ action(type="omfile" file="{work}/audit.log" template="fields") }}
"""


def test_rsyslog_a_real_collector_reads_every_message_over_udp_and_tcp(schema, tmp_path):
    """rsyslog's own RFC 5424 parser takes each message apart: facility, severity, APP-NAME,
    PROCID, MSGID, no structured data, and a MSG that is the audit message, on one line."""
    from lxml import etree

    from brainscan.serving import free_port

    if RSYSLOGD is None:
        pytest.skip(reason=NO_RSYSLOG)
    tcp, udp = free_port(), free_port()
    config = tmp_path / "rsyslog.conf"
    config.write_text(RSYSLOG_CONFIG.format(work=tmp_path, tcp=tcp, udp=udp))
    log = tmp_path / "audit.log"
    rsyslogd = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "rsyslogd.err", "w"),
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for scheme, port in (("tcp", tcp), ("udp", udp)):
            audit = AtnaAudit.open(f"{scheme}://127.0.0.1:{port}", "BRAINSCAN")
            every_event(audit)
            audit.close()
        while time.monotonic() < deadline and (not log.exists() or len(log.read_bytes().splitlines()) < 14):
            time.sleep(0.2)
    finally:
        rsyslogd.terminate()
        rsyslogd.wait(20)
    lines = log.read_bytes().splitlines()
    assert len(lines) == 14, (tmp_path / "rsyslogd.err").read_text()
    for line in lines:
        facility, severity, app, process, msgid, structured, message = line.split(b" ", 6)
        assert (facility, app, msgid, structured) == (b"10", b"brainscan", b"DICOM+RFC3881", b"-")
        assert severity in (b"5", b"4") and process.isdigit()
        assert message.startswith(BOM) and schema.validate(etree.fromstring(message[len(BOM) :]))


def test_a_tls_repository_refuses_a_sender_without_a_certificate_and_the_sender_goes_on(certificates, schema):
    (cert, key), (ca, _) = certificates["orthanc"], certificates["ca"]
    with SyslogCollector("tls", tls=(cert, key, ca)) as collector:
        lines = []
        audit = AtnaAudit.open(collector.url, "BRAINSCAN", ca, None, log=lines.append)
        audit.application(True, node("BRAINSCAN"))
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.1)
        audit.sender.close(timeout=1)
    assert collector.received == [] and collector.refused
    assert lines and "unreachable" in lines[0] and collector.url.replace("tls://", "") in lines[0]


def test_the_schema_refuses_what_ps3_15_does_not_allow(schema):
    """The transcription is a real check: a participant object with neither a name nor a query,
    an outcome outside 0/4/8/12, or no active participant are refused."""
    from lxml import etree

    frames = []

    class Keep:
        def put(self, frame):
            frames.append(frame)

    every_event(AtnaAudit(Keep(), "BRAINSCAN"))
    good = etree.fromstring(frames[1][frames[1].index(b"<?xml") :])
    assert schema.validate(good)
    for spoil in (
        lambda d: d.find("ParticipantObjectIdentification").remove(
            d.find("ParticipantObjectIdentification").find("ParticipantObjectName")
        ),
        lambda d: d.find("EventIdentification").set("EventOutcomeIndicator", "1"),
        lambda d: [d.remove(p) for p in d.findall("ActiveParticipant")],
        lambda d: d.find("EventIdentification").set("EventDateTime", "yesterday"),
    ):
        document = etree.fromstring(etree.tostring(good))
        spoil(document)
        assert not schema.validate(document)


def test_messages_wait_for_a_repository_that_is_away_and_arrive_in_order(schema):
    from brainscan.serving import free_port

    port, lines = free_port(), []
    audit = AtnaAudit.open(f"tcp://127.0.0.1:{port}", "BRAINSCAN", log=lines.append)
    me = node("BRAINSCAN")
    for k in range(3):
        audit.security_alert(me, f"127.0.0.1:{40000 + k}", f"refusal {k}")
    time.sleep(1.5)  # the repository is away: the messages wait
    assert any("unreachable" in line for line in lines)
    with SyslogCollector("tcp", port=port) as collector:
        received = collector.wait(3, seconds=20)
        audit.close()
    peers = [checked(schema, r).find("ParticipantObjectIdentification").get("ParticipantObjectID") for r in received]
    assert peers == ["127.0.0.1:40000", "127.0.0.1:40001", "127.0.0.1:40002"]
    assert any("reachable again" in line for line in lines)


def test_a_wrong_atna_address_is_a_usage_error():
    from brainscan.errors import UsageError

    for wrong in ("syslog://127.0.0.1", "udp://", "tcp://127.0.0.1:99999", "udp://127.0.0.1/path"):
        with pytest.raises(UsageError, match="--atna"):
            AtnaAudit.open(wrong, "BRAINSCAN")
    with pytest.raises(UsageError, match="--atna-ca"):
        AtnaAudit.open("udp://127.0.0.1", "BRAINSCAN", ca=Path("ca.pem"))


# --- the node and predict --dicomweb, with a real Triton and a real Orthanc ----------------------


def objects_of(document, type_code: str) -> list:
    return [
        o
        for o in document.findall("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCode") == type_code
    ]


def classes(document) -> dict[str, str]:
    return {c.get("UID"): c.get("NumberOfInstances") for c in document.iter("SOPClass")}


def roles(document) -> dict[str, tuple[str, str]]:
    """Each active participant's role code: (UserID, UserIsRequestor)."""
    found = {}
    for participant in document.findall("ActiveParticipant"):
        role = participant.find("RoleIDCode")
        found[role.get("csd-code") if role is not None else "-"] = (
            participant.get("UserID"),
            participant.get("UserIsRequestor"),
        )
    return found


@pytest.mark.server
def test_the_node_reports_start_stop_what_it_received_and_sent_and_whom_it_refused(
    bright_server, pacs, schema, tmp_path
):
    from dicom_cases import PATIENT_ID, PATIENT_NAME, lesion_images
    from pynetdicom import AE
    from test_node import node as listen
    from test_node import send_series, wait_for
    from volume_files import write_mr_series

    from brainscan.serving import free_port

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "listen.log"
    written = write_mr_series(tmp_path / "series", lesion_images(6), number=61)
    series, study = str(written[0].SeriesInstanceUID), str(written[0].StudyInstanceUID)
    with SyslogCollector("tcp") as collector:
        extra = ("--atna", collector.url, "--allow-ae", "SCANNER")
        with listen(port, bright_server.grpc_url, pacs.dicom_port, spool, log, *extra):
            assert send_series(port, tmp_path / "series") == [0] * 6
            wait_for(lambda: f"series {series}: SEG and SR sent" in log.read_text(), 120, log)
            intruder = AE(ae_title="INTRUDER")
            intruder.add_requested_context(MR_CLASS)
            assert intruder.associate("127.0.0.1", port, ae_title="BRAINSCAN").is_rejected
            wait_for(lambda: "'INTRUDER'" in log.read_text(), 30, log)
        documents = [checked(schema, r) for r in collector.wait(5)]
    assert [event_of(d) for d in documents] == [
        ("110100", "E", ["110120"]),  # start
        ("110104", "C", []),  # the series received
        ("110104", "R", []),  # its SEG and SR sent
        ("110113", "E", ["110126"]),  # the intruder refused
        ("110100", "E", ["110121"]),  # stop
    ]
    start, received, sent, alert, _ = documents
    assert roles(start)["110150"][0] == "BRAINSCAN"
    assert roles(received) == {"110153": ("SCANNER", "true"), "110152": ("BRAINSCAN", "false")}
    assert [o.get("ParticipantObjectID") for o in objects_of(received, "2")] == [study]
    assert classes(received) == {MR_CLASS: "6"}
    patient = objects_of(received, "1")
    assert [(p.get("ParticipantObjectID"), p.findtext("ParticipantObjectName")) for p in patient] == [
        (PATIENT_ID, PATIENT_NAME)
    ]
    assert roles(sent) == {"110153": ("BRAINSCAN", "true"), "110152": ("ORTHANC", "false")}
    assert classes(sent) == {SEG_CLASS: "1", SR_CLASS: "1"}
    assert "INTRUDER" in alert.findtext("EventIdentification/EventOutcomeDescription")
    # the patient's name: in the two patient objects only (received, sent); nothing else names the patient
    text = b"".join(r.message for r in collector.received).decode()
    assert text.count(PATIENT_NAME) == 2 and text.count(PATIENT_ID) == 2


@pytest.fixture(scope="module")
def guarded_pacs(tmp_path_factory):
    from dicom_cases import PASSWORD, USER
    from orthanc import Orthanc

    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), users={USER: PASSWORD}).start()
    yield orthanc
    orthanc.stop()


@pytest.mark.server
def test_predict_dicomweb_reports_its_search_retrieval_store_and_refused_credentials(
    bright_server, guarded_pacs, schema, tmp_path
):
    from dicom_cases import PASSWORD, USER, brainscan, lesion_images
    from test_pacs import stow
    from volume_files import write_mr_series

    written = write_mr_series(tmp_path / "series", lesion_images(5), number=62)
    study = stow(guarded_pacs, written)
    auth = tmp_path / "auth"
    auth.write_text(f"basic {USER}:{PASSWORD}\n")
    with SyslogCollector("udp") as collector:
        env = {"BRAINSCAN_DICOMWEB_AUTH_FILE": str(auth), "BRAINSCAN_ATNA": collector.url}
        arguments = ["predict", "--dicomweb", guarded_pacs.dicomweb, "--study", study, "--url", bright_server.grpc_url]
        done = brainscan(*arguments, "--store", "--out", tmp_path / "out", env=env)
        assert done.returncode == 0, done.stderr
        auth.write_text(f"basic {USER}:wrong\n")
        refused = brainscan(*arguments, env=env)
        assert refused.returncode == 1 and "answered 401" in refused.stderr
        documents = [checked(schema, r) for r in collector.wait(5)]
        time.sleep(0.5)
        documents = [checked(schema, r) for r in collector.received]
    events = [event_of(d) for d in documents]
    queries = [d for d, e in zip(documents, events) if e[0] == "110112"]
    assert queries and all(roles(q)["110153"][1] == "true" for q in queries)
    fetched = [d for d, e in zip(documents, events) if e[:2] == ("110104", "C")]
    assert len(fetched) == 1 and classes(fetched[0]) == {MR_CLASS: "5"}
    assert roles(fetched[0])["110152"][1] == "true"  # pulled: the destination asked (WADO-RS)
    stored = [d for d, e in zip(documents, events) if e[:2] == ("110104", "R")]
    assert len(stored) == 1 and classes(stored[0]) == {SEG_CLASS: "1", SR_CLASS: "1"}
    assert roles(stored[0])["110152"][0] == guarded_pacs.dicomweb
    # the refused run: the refused credentials, and its search, failed
    assert events[-2:] == [("110114", "E", ["110122"]), ("110112", "E", [])]
    assert [d.find("EventIdentification").get("EventOutcomeIndicator") for d in documents[-2:]] == ["4", "8"]
    assert PASSWORD not in b"".join(r.message for r in collector.received).decode()
