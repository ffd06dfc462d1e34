"""The audit events the kit reports to an audit record repository (``atna``), one method a
kind, each building its PS3.15 A.5.3 message and queueing it for the sender."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from brainscan.client.hospital import atna
from brainscan.client.hospital.atna import (
    APPLICATION,
    APPLICATION_ACTIVITY,
    APPLICATION_LAUNCHER,
    APPLICATION_START,
    APPLICATION_STOP,
    DESTINATION,
    INSTANCES_TRANSFERRED,
    LOGIN,
    NODE_AUTHENTICATION,
    NODE_ID,
    QUERY,
    SECURITY_ALERT,
    SOP_CLASS_UID,
    SOURCE,
    STUDY_ROOT_FIND,
    USER_AUTHENTICATION,
    AtnaSender,
    Participant,
    SyslogTarget,
    Transfer,
)
from brainscan.errors import UsageError

SECURITY_RESOURCE = "13"  # ParticipantObjectTypeCodeRole
REPORT = "3"


def node(ae_title: str, host: str | None = None) -> Participant:
    """This kit as a DICOM node: its AE title at its host."""
    return Participant(ae_title, False, address=host or socket.gethostname(), alternative=f"AETITLES={ae_title}")


def this_process() -> Participant:
    """This kit run by hand (``predict --dicomweb``): its host and process."""
    host = socket.gethostname()
    return Participant(f"brainscan@{host}:{os.getpid()}", False, address=host)


def remote(ae_title: str, address: str) -> Participant:
    """A DICOM peer: an AE title at an address."""
    return Participant(ae_title or "unknown", False, address=address, alternative=f"AETITLES={ae_title}")


def web(url: str) -> Participant:
    """A DICOMweb service, named by its URL (no credentials in it)."""
    parts = urlsplit(url)
    clean = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "")
    return Participant(clean.geturl(), False, address=clean.geturl())


def _as(participant: Participant, requestor: bool, role) -> Participant:
    return dataclasses.replace(participant, requestor=requestor, role=role)


class AtnaAudit:
    """The events, sent by ``sender``; with none (``--atna`` not given) every method does nothing."""

    def __init__(self, sender: AtnaSender | None, source_id: str):
        self.sender, self.source_id = sender, source_id

    @classmethod
    def open(
        cls,
        target: str | None,
        source_id: str,
        ca: Path | None = None,
        certificate: tuple[Path, Path] | None = None,
        log: Callable[[str], None] = print,
    ) -> AtnaAudit:
        """The audit for ``--atna`` (None: none sent); TLS checks the repository against ``ca``
        and shows ``certificate`` (certificate, key) when the node has one."""
        if target is None:
            return cls(None, source_id)
        where = SyslogTarget.parse(target)
        context = None
        if where.scheme == "tls":  # the repository's certificate checked against --atna-ca, else the system's CAs
            import ssl

            if ca is not None and not Path(ca).is_file():
                raise UsageError(f"--atna-ca {ca}: no such file")
            context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if certificate is not None:  # mutual authentication (RFC 5425 5.1)
                context.load_cert_chain(*certificate)
        elif ca is not None:
            raise UsageError("--atna-ca is for --atna tls://…")
        return cls(AtnaSender(where, context, log), source_id)

    def _put(self, outcome: int, *args, **kwargs) -> None:
        if self.sender is None:
            return
        xml = atna.message(*args, source_id=self.source_id, **kwargs)
        self.sender.put(atna.syslog_frame(xml, outcome))

    def application(self, started: bool, application: Participant) -> None:
        launcher = Participant(getpass.getuser(), True, APPLICATION_LAUNCHER)
        kind = APPLICATION_START if started else APPLICATION_STOP
        participants = [_as(application, False, APPLICATION), launcher]
        self._put(atna.SUCCESS, APPLICATION_ACTIVITY, "E", atna.SUCCESS, participants, types=(kind,))

    def transferred(
        self,
        transfers: list[Transfer],
        source: Participant,
        destination: Participant,
        received: bool,
        outcome: int = atna.SUCCESS,
        description: str | None = None,
        pulled: bool = False,
    ) -> None:
        """Instances moved from ``source`` to ``destination``: received here ("C"), or sent
        ("R"); pushed by the source (C-STORE, STOW-RS) or ``pulled`` by the destination (WADO-RS)."""
        participants = [_as(source, not pulled, SOURCE), _as(destination, pulled, DESTINATION)]
        for transfer in transfers:
            self._put(
                outcome,
                INSTANCES_TRANSFERRED,
                "C" if received else "R",
                outcome,
                participants,
                description=description,
                objects=transfer.elements,
            )

    def files(self, paths: Iterable[Path], source: Participant, destination: Participant, received: bool, **kw) -> None:
        if self.sender is None:
            return
        self.transferred(Transfer.of_files(paths), source, destination, received, **kw)

    def query(self, requestor: Participant, responder: Participant, request: str, outcome: int, description=None):
        """A search (QIDO-RS): ``request`` is its path and parameters."""

        def queried(root):
            atna.participant_object(root, STUDY_ROOT_FIND, SOP_CLASS_UID, "2", REPORT, query=request.encode())

        participants = [_as(requestor, True, SOURCE), _as(responder, False, DESTINATION)]
        self._put(outcome, QUERY, "E", outcome, participants, description=description, objects=queried)

    def security_alert(self, reporter: Participant, peer: str, description: str) -> None:
        """A peer this node refused: an association from a caller not allowed, a failed TLS handshake."""

        def subject(root):
            atna.participant_object(
                root, peer, NODE_ID, "2", SECURITY_RESOURCE, name=peer, details={"Alert Description": description}
            )

        participants = [_as(reporter, False, None), Participant(peer, True, address=peer.rsplit(":", 1)[0])]
        self._put(
            atna.MINOR_FAILURE,
            SECURITY_ALERT,
            "E",
            atna.MINOR_FAILURE,
            participants,
            types=(NODE_AUTHENTICATION,),
            description=description,
            objects=subject,
        )

    def refused_credentials(self, user: Participant, authority: Participant, description: str) -> None:
        """Credentials a PACS refused (HTTP 401 or 403)."""
        participants = [_as(user, True, None), _as(authority, False, None)]
        self._put(
            atna.MINOR_FAILURE,
            USER_AUTHENTICATION,
            "E",
            atna.MINOR_FAILURE,
            participants,
            types=(LOGIN,),
            description=description,
        )

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
