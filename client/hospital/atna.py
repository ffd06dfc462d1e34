"""IHE ATNA audit of the DICOM work: audit messages in the format of DICOM PS3.15 A.5 (the
Audit Trail Message Format profile), sent over syslog (RFC 5424) to the hospital's audit
record repository: UDP (RFC 5426, PS3.15 A.7), TCP, or TLS (RFC 5425, PS3.15 A.6), both
with octet-counting framing.

Events: the node's start and stop (Application Activity), instances received and results
sent (DICOM Instances Transferred), the QIDO-RS search of `predict --dicomweb` (Query), and
security alerts (a refused association or TLS handshake: Node Authentication; credentials
a PACS refused: User Authentication). Messages go from a queue in a thread of their own: a
repository that is away never slows or stops the DICOM work; they wait (at most
``QUEUE_LENGTH``, the oldest dropped first, counted and logged) and are sent once it is back.

Patient data: the schema asks every participant object for a name or a query, and the
DICOM Instances Transferred message for the patient as a participant object (its ID). The
patient's ID and name appear there, in the patient's object only; nothing else about the
patient is sent (studies are named by UID).
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import os
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from brainscan.errors import UsageError

FACILITY = 10  # security/authorization messages (PS3.15 A.6, A.7)
SEVERITY = {0: 5, 4: 4, 8: 4, 12: 4}  # notice for a success, warning for a failure
MSGID = "DICOM+RFC3881"  # PS3.15 A.7
PORTS = {"udp": 514, "tcp": 514, "tls": 6514}  # PS3.15 A.7; RFC 5425
REFUSAL_WAIT = 0.5  # seconds a new TLS connection is watched for the repository's refusal
QUEUE_LENGTH = 10000  # messages waiting for an unreachable repository
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8  # EventOutcomeIndicator
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


@dataclass(frozen=True)
class Code:
    """A coded value: (csd-code, codeSystemName, originalText)."""

    code: str
    system: str
    meaning: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        attributes = {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.meaning}
        return ET.SubElement(parent, tag, attributes)


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


APPLICATION_ACTIVITY, APPLICATION_START = _dcm("110100", "Application Activity"), _dcm("110120", "Application Start")
APPLICATION_STOP, APPLICATION = _dcm("110121", "Application Stop"), _dcm("110150", "Application")
APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
INSTANCES_TRANSFERRED, QUERY = _dcm("110104", "DICOM Instances Transferred"), _dcm("110112", "Query")
SECURITY_ALERT, NODE_AUTHENTICATION = _dcm("110113", "Security Alert"), _dcm("110126", "Node Authentication")
USER_AUTHENTICATION, LOGIN = _dcm("110114", "User Authentication"), _dcm("110122", "Login")
SOURCE, DESTINATION = _dcm("110153", "Source Role ID"), _dcm("110152", "Destination Role ID")
STUDY_UID, SOP_CLASS_UID, NODE_ID = (
    _dcm("110180", "Study Instance UID"),
    _dcm("110181", "SOP Class UID"),
    _dcm("110182", "Node ID"),
)
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # the SOP class a study-level search stands for


@dataclass(frozen=True)
class Participant:
    """An active participant: a process (AE title, URL) at an address."""

    user_id: str
    requestor: bool
    role: Code | None = None
    address: str | None = None  # host name, IP address or URI
    alternative: str | None = None

    def element(self, parent: ET.Element) -> None:
        attributes = {"UserID": self.user_id, "UserIsRequestor": "true" if self.requestor else "false"}
        if self.alternative:
            attributes["AlternativeUserID"] = self.alternative
        if self.address:
            attributes["NetworkAccessPointID"] = self.address
            attributes["NetworkAccessPointTypeCode"] = _access_point_type(self.address)
        node = ET.SubElement(parent, "ActiveParticipant", attributes)
        if self.role is not None:
            self.role.element(node, "RoleIDCode")


def _access_point_type(address: str) -> str:
    if "://" in address:
        return "5"  # URI
    try:
        ipaddress.ip_address(address)
        return "2"  # IP address
    except ValueError:
        return "1"  # machine name


TAGS = ("StudyInstanceUID", "PatientID", "PatientName", "SOPClassUID")  # what a transfer's message names


@dataclass
class Transfer:
    """What moved of one study: its patient and how many instances of each SOP class."""

    study: str
    patient_id: str
    patient_name: str
    classes: dict[str, int]

    @staticmethod
    def of(datasets: Iterable) -> list[Transfer]:
        studies: dict[str, Transfer] = {}
        for ds in datasets:
            study = str(getattr(ds, "StudyInstanceUID", "") or "")
            found = studies.setdefault(
                study,
                Transfer(study, str(getattr(ds, "PatientID", "") or ""), str(getattr(ds, "PatientName", "") or ""), {}),
            )
            sop_class = str(getattr(ds, "SOPClassUID", "") or "")
            found.classes[sop_class] = found.classes.get(sop_class, 0) + 1
        return list(studies.values())

    @staticmethod
    def of_files(paths: Iterable[Path]) -> list[Transfer]:
        import pydicom

        return Transfer.of(pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=list(TAGS)) for p in paths)

    @staticmethod
    def tags_of(dataset) -> types.SimpleNamespace:
        """What a transfer keeps of one dataset (its pixels need not stay in memory)."""
        return types.SimpleNamespace(**{tag: dataset.get(tag) for tag in TAGS})

    def elements(self, parent: ET.Element) -> None:
        study = participant_object(parent, self.study, STUDY_UID, type_code="2", role="3", name=self.study)
        description = ET.SubElement(study, "ParticipantObjectDescription")
        for uid, count in sorted(self.classes.items()):
            ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
        if self.patient_id:  # unknown when a retrieval failed
            participant_object(parent, self.patient_id, PATIENT_NUMBER, "1", "1", name=self.patient_name)


def participant_object(
    parent: ET.Element,
    identifier: str,
    id_type: Code,
    type_code: str,
    role: str,
    name: str | None = None,
    query: bytes | None = None,
    details: dict[str, str] | None = None,
) -> ET.Element:
    node = ET.SubElement(
        parent,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": identifier,
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )
    id_type.element(node, "ParticipantObjectIDTypeCode")
    if query is not None:
        ET.SubElement(node, "ParticipantObjectQuery").text = base64.b64encode(query).decode()
    else:
        ET.SubElement(node, "ParticipantObjectName").text = name or ""
    for kind, value in (details or {}).items():
        encoded = base64.b64encode(value.encode()).decode()
        ET.SubElement(node, "ParticipantObjectDetail", {"type": kind, "value": encoded})
    return node


def message(
    event: Code,
    action: str,
    outcome: int,
    participants: list[Participant],
    source_id: str,
    types: tuple[Code, ...] = (),
    description: str | None = None,
    objects: Callable[[ET.Element], None] | None = None,
) -> bytes:
    """One audit message (PS3.15 A.5.1), UTF-8 XML."""
    root = ET.Element("AuditMessage")
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    attributes = {"EventActionCode": action, "EventDateTime": moment, "EventOutcomeIndicator": str(outcome)}
    identification = ET.SubElement(root, "EventIdentification", attributes)
    event.element(identification, "EventID")
    for code in types:
        code.element(identification, "EventTypeCode")
    if description:  # on one line (see below)
        ET.SubElement(identification, "EventOutcomeDescription").text = " ".join(description.split())
    for participant in participants:
        participant.element(root)
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # an application server process
    if objects is not None:
        objects(root)
    # one line: syslog collectors escape control characters (rsyslog writes a newline as #012)
    return XML_DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8")


@dataclass(frozen=True)
class SyslogTarget:
    """Where the messages go: udp://, tcp:// or tls://HOST[:PORT]."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        parts = urlsplit(text)
        if parts.scheme not in PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise UsageError(f"--atna {text!r}: write udp://HOST[:PORT], tcp://HOST[:PORT] or tls://HOST[:PORT]")
        try:
            port = parts.port or PORTS[parts.scheme]
        except ValueError:
            raise UsageError(f"--atna {text!r}: the port is not a number from 1 to 65535") from None
        return cls(parts.scheme, parts.hostname, port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def syslog_frame(xml: bytes, outcome: int, app: str = "brainscan") -> bytes:
    """An RFC 5424 SYSLOG-MSG carrying ``xml`` as its MSG (UTF-8, with the BOM)."""
    priority = FACILITY * 8 + SEVERITY.get(outcome, 4)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    host = (socket.gethostname() or "-")[:255]
    header = f"<{priority}>1 {stamp} {host} {app} {os.getpid()} {MSGID} -"
    return header.encode("ascii", "replace") + b" \xef\xbb\xbf" + xml


class AtnaSender:
    """Sends audit messages to one repository from a thread of its own, in order; reconnects
    (TCP, TLS) after a failure, keeping what is waiting."""

    def __init__(self, target: SyslogTarget, tls: ssl.SSLContext | None = None, log: Callable[[str], None] = print):
        self.target, self.tls, self.log = target, tls, log
        self.dropped = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._socket: socket.socket | None = None
        self._away_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="brainscan-atna", daemon=True)
        self._thread.start()

    def put(self, frame: bytes) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE_LENGTH:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    self.log(f"audit repository {self.target}: {self.dropped} messages dropped so far (queue full)")
            self._queue.append(frame)
            self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what waits (for at most ``timeout`` seconds), then stop."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _connect(self) -> socket.socket:
        if self.target.scheme == "udp":
            return socket.socket(socket.AF_INET6 if ":" in self.target.host else socket.AF_INET, socket.SOCK_DGRAM)
        raw = socket.create_connection((self.target.host, self.target.port), timeout=10)
        if self.tls is None:
            return raw
        connection = self.tls.wrap_socket(raw, server_hostname=self.target.host)
        # TLS 1.3 ends the client's handshake before the server has checked the client's
        # certificate: a refusal arrives as an alert just after. Wait for it briefly, so that
        # no message goes into a connection the repository is closing (a repository never
        # writes to a syslog sender, so silence is acceptance).
        connection.settimeout(REFUSAL_WAIT)
        try:
            if connection.recv(1) == b"":
                raise ConnectionError("the audit repository closed the connection")
        except TimeoutError:
            pass
        connection.settimeout(10)
        return connection

    def _send(self, frame: bytes) -> None:
        if self._socket is None:
            self._socket = self._connect()
        if self.target.scheme == "udp":
            self._socket.sendto(frame, (self.target.host, self.target.port))
        else:  # octet counting (RFC 5425 4.3; RFC 6587 3.4.1)
            self._socket.sendall(str(len(frame)).encode() + b" " + frame)

    def _run(self) -> None:
        wait = 1.0
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                frame = self._queue[0]
            try:
                self._send(frame)
            except (OSError, ssl.SSLError) as exc:
                if self._socket is not None:
                    self._socket.close()
                    self._socket = None
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    self.log(f"audit repository {self.target} unreachable ({exc}); messages wait and are sent later")
                with self._ready:
                    if self._closing:
                        return
                    self._ready.wait(wait)
                wait = min(wait * 2, 30.0)
                continue
            wait = 1.0
            if self._away_since is not None:
                self.log(f"audit repository {self.target} reachable again")
                self._away_since = None
            with self._ready:
                self._queue.popleft()
