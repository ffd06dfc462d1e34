"""A PACS over DICOMweb: find a study's image series (QIDO-RS), fetch them (WADO-RS) into a
folder the prediction run reads as usual, and send the results back (STOW-RS).

Credentials never come from the command line: a file (``--dicomweb-auth-file``) or the
environment (``BRAINSCAN_DICOMWEB_AUTH``) holds ``basic USER:PASSWORD`` or ``bearer TOKEN``;
TLS is verified against the system's CAs or a CA file. Every failure names the server, what
was asked and the series, never a patient.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from brainscan.client.hospital.atna import SERIOUS_FAILURE, SUCCESS, Participant, Transfer
from brainscan.client.hospital.atna_events import AtnaAudit, this_process, web
from brainscan.errors import BrainscanError

AUTH_ENV = "BRAINSCAN_DICOMWEB_AUTH"  # the credentials themselves: "basic USER:PASSWORD" or "bearer TOKEN"
AUTH_FILE_ENV = "BRAINSCAN_DICOMWEB_AUTH_FILE"  # a file holding them
CA_FILE_ENV = "BRAINSCAN_DICOMWEB_CA_FILE"
TIMEOUT = 60.0  # seconds for any one attempt of a request to the PACS
DEADLINE = 900.0  # seconds for a request in all: its attempts, a series' whole transfer
IMAGE_MODALITIES = ("MR", "CT", "PT", "OT")  # series worth predicting; SEG, SR, PR … are not images
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # a DICOM UID: digits and dots (PS3.5 9.1), used as a folder name


class DicomWebError(BrainscanError, RuntimeError):
    """The PACS could not be reached, refused, or answered something unusable."""


@dataclass(frozen=True)
class Credentials:
    kind: str  # "basic" or "bearer"
    value: str

    @classmethod
    def parse(cls, text: str, where: str) -> Credentials:
        kind, _, value = text.strip().partition(" ")
        kind, value = kind.lower(), value.strip()
        if kind not in ("basic", "bearer") or not value or (kind == "basic" and ":" not in value):
            raise DicomWebError(f"{where} must hold 'basic USER:PASSWORD' or 'bearer TOKEN'")
        return cls(kind, value)


def load_credentials(auth_file: Path | None) -> Credentials | None:
    """From ``auth_file``, else BRAINSCAN_DICOMWEB_AUTH_FILE, else BRAINSCAN_DICOMWEB_AUTH."""
    path = auth_file or (Path(os.environ[AUTH_FILE_ENV]) if os.environ.get(AUTH_FILE_ENV) else None)
    if path is not None:
        try:
            return Credentials.parse(Path(path).read_text(), f"the credentials file {path}")
        except OSError as exc:
            raise DicomWebError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    if os.environ.get(AUTH_ENV):
        return Credentials.parse(os.environ[AUTH_ENV], AUTH_ENV)
    return None


def check_uid(uid: str, what: str) -> str:
    if not UID.fullmatch(uid or "") or len(uid) > 64:
        raise DicomWebError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64)")
    return uid


ATTEMPTS = 3


class Pacs:
    """One DICOMweb server (dicomweb-client over a requests session)."""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
        timeout: float = TIMEOUT,
        deadline: float = DEADLINE,
    ):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url, self.deadline = url.rstrip("/"), deadline
        self.session = session = requests.Session()
        if credentials is not None and credentials.kind == "basic":
            session.auth = tuple(credentials.value.split(":", 1))
        elif credentials is not None:
            session.headers["Authorization"] = f"Bearer {credentials.value}"
        ca_file = ca_file or (Path(os.environ[CA_FILE_ENV]) if os.environ.get(CA_FILE_ENV) else None)
        if ca_file is not None:
            if not Path(ca_file).is_file():
                raise DicomWebError(f"the CA file {ca_file} does not exist")
            session.verify = str(ca_file)
        self.client = DICOMwebClient(url=self.url, session=session, timeout=timeout)
        # dicomweb-client retries a request on any exception and on 429/503/504 answers:
        # ATTEMPTS tries in all, so a silent PACS costs at most ATTEMPTS x timeout (+1.5 s waits)
        self.client.set_http_retry_params(retry=True, max_attempts=ATTEMPTS, wait_exponential_multiplier=500)
        self.audit_to(AtnaAudit(None, "brainscan"), this_process())

    def audit_to(self, atna: AtnaAudit, me: Participant) -> None:
        """Report searches, retrievals, stores and refused credentials to ``atna`` (ATNA), as ``me``."""
        self.atna, self.me, self.peer = atna, me, web(self.url)

    def _within_deadline(self, what: str, function, *args, **kwargs):
        """``function`` run in a worker thread for at most ``deadline`` seconds: past it the
        session's connections are closed (which ends the worker's read) and the request fails."""
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="brainscan-dicomweb")
        try:
            return pool.submit(function, *args, **kwargs).result(timeout=self.deadline)
        except concurrent.futures.TimeoutError:
            self.session.close()
            raise DicomWebError(
                f"the PACS at {self.url} did not finish {what} within {self.deadline:g} s (--dicomweb-deadline)"
            ) from None
        finally:
            pool.shutdown(wait=False)

    def _call(self, what: str, function, *args, **kwargs):
        import requests
        from retrying import RetryError

        try:
            return self._within_deadline(what, function, *args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = {401: ": the credentials were refused", 403: ": not allowed for these credentials"}.get(status, "")
            if hint:
                self.atna.refused_credentials(self.me, self.peer, f"answered {status} to {what}{hint}")
            raise DicomWebError(f"the PACS at {self.url} answered {status} to {what}{hint}") from None
        except requests.Timeout:
            raise DicomWebError(
                f"the PACS at {self.url} did not answer {what} within the timeout ({ATTEMPTS} attempts)"
            ) from None
        except requests.ConnectionError as exc:
            raise DicomWebError(f"cannot reach the PACS at {self.url} for {what} ({type(exc).__name__})") from None
        except ValueError as exc:  # an answer dicomweb-client cannot parse
            raise DicomWebError(f"the PACS at {self.url} answered {what} with something unreadable ({exc})") from None
        except RetryError as exc:  # dicomweb-client's retries spent on 429/503/504 answers
            attempt = exc.last_attempt
            status = getattr(getattr(attempt, "value", None), "status_code", None) if attempt is not None else None
            said = f"answered {status}" if status else "kept failing"
            raise DicomWebError(f"the PACS at {self.url} {said} to {what} {ATTEMPTS} times; try again later") from None

    def series_of(self, study: str) -> list[dict]:
        """The study's series, as QIDO-RS lists them (DICOM JSON)."""
        request = f"/studies/{study}/series"
        try:
            found = self._call(
                f"the search for the series of study {study}", self.client.search_for_series, study_instance_uid=study
            )
        except DicomWebError as exc:
            self.atna.query(self.me, self.peer, request, SERIOUS_FAILURE, str(exc))
            raise
        self.atna.query(self.me, self.peer, request, SUCCESS)
        return found or []

    def image_series(self, study: str, wanted: list[str] | None = None) -> list[str]:
        """UIDs of the study's image series (``wanted`` ones only, when given)."""
        found = {_value(s, "0020000E"): _value(s, "00080060") for s in self.series_of(study)}
        if not found:
            raise DicomWebError(f"the PACS at {self.url} has no study {study}")
        if wanted:
            missing = [uid for uid in wanted if uid not in found]
            if missing:
                raise DicomWebError(f"study {study} on {self.url} has no series {', '.join(missing)}")
            return list(wanted)
        return [uid for uid, modality in found.items() if modality in IMAGE_MODALITIES]

    def fetch_series(self, study: str, series: str, folder: Path) -> Path:
        """Every instance of one series into ``folder``/<series UID>/<SOP instance UID>.dcm,
        each written with its file meta header as it arrives: one WADO-RS request for the
        whole series (a multipart answer read as a stream), not one a slice."""
        check_uid(study, "study"), check_uid(series, "series")
        target = Path(folder) / series
        staging = Path(folder) / f".{series}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

        fetched = []  # what the audit names of each instance, kept as it arrives (no second read)

        def save_each() -> None:
            for dataset in self.client.iter_series(study_instance_uid=study, series_instance_uid=series):
                sop = check_uid(str(dataset.get("SOPInstanceUID", "")), "SOP instance")
                _with_file_meta(dataset).save_as(staging / f"{sop}.dcm", enforce_file_format=True)
                fetched.append(Transfer.tags_of(dataset))

        try:
            self._call(f"the retrieval of series {series}", save_each)
        except DicomWebError as exc:
            self.atna.transferred(
                [Transfer(study, "", "", {})], self.peer, self.me, True, SERIOUS_FAILURE, str(exc), pulled=True
            )
            raise
        self.atna.transferred(Transfer.of(fetched), self.peer, self.me, received=True, pulled=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def has_result(self, study: str, series: str, digest: str) -> bool:
        """Whether a result of ``series`` made by the same served models (its device serial
        number is the models' digest) is already stored in the study: a SEG, or the SR of a
        series that was not analysed (outside the intended use)."""
        for item in self.series_of(study):
            if _value(item, "00080060") not in ("SEG", "SR"):
                continue
            metadata = self._call(
                f"the metadata of {_value(item, '00080060')} series {_value(item, '0020000E')}",
                self.client.retrieve_series_metadata,
                study_instance_uid=study,
                series_instance_uid=_value(item, "0020000E"),
            )
            for instance in metadata or []:
                if _value(instance, "00181000") == digest and series in _referenced_series(instance):
                    return True
        return False

    def store(self, datasets: list, what: str) -> None:
        """STOW-RS; raises unless the answer stores every instance: a 200 or 202 whose
        FailedSOPSequence names some, or whose ReferencedSOPSequence carries a warning, is a
        failure for those it names."""
        try:
            self._store(datasets, what)
        except DicomWebError as exc:
            self.atna.transferred(Transfer.of(datasets), self.me, self.peer, False, SERIOUS_FAILURE, str(exc))
            raise
        self.atna.transferred(Transfer.of(datasets), self.me, self.peer, received=False)

    def _store(self, datasets: list, what: str) -> None:
        answer = self._call(f"the storage of {what}", self.client.store_instances, datasets=datasets)
        failed = [
            f"{item.get('ReferencedSOPInstanceUID', '?')} (failure reason {hex(int(item.get('FailureReason', 0)))})"
            for item in (answer or {}).get("FailedSOPSequence", [])
        ]
        warned = [
            f"{item.get('ReferencedSOPInstanceUID', '?')} (warning {hex(int(item.get('WarningReason', 0)))})"
            for item in (answer or {}).get("ReferencedSOPSequence", [])
            if "WarningReason" in item
        ]
        if failed or warned:
            raise DicomWebError(f"the PACS at {self.url} did not store all of {what}: {', '.join(failed + warned)}")
        # and it holds them: Orthanc 1.10 answers success for an instance its filter dropped
        missing = [str(d.SOPInstanceUID) for d in datasets if not self._holds(d, what)]
        if missing:
            raise DicomWebError(
                f"the PACS at {self.url} answered that it stored {what} but does not hold {', '.join(missing)}"
            )

    def _holds(self, dataset, what: str) -> bool:
        """Whether a QIDO-RS search finds the instance."""
        found = self._call(
            f"the check of {what}",
            self.client.search_for_instances,
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            search_filters={"SOPInstanceUID": str(dataset.SOPInstanceUID)},
        )
        return bool(found)


def _referenced_series(instance: dict) -> set[str]:
    """The series a result references (DICOM JSON): a SEG's ReferencedSeriesSequence, an SR's
    evidence (CurrentRequestedProcedureEvidenceSequence > ReferencedSeriesSequence)."""
    found = {_value(r, "0020000E") for r in instance.get("00081115", {}).get("Value", [])}
    for study in instance.get("0040A375", {}).get("Value", []):
        found |= {_value(r, "0020000E") for r in study.get("00081115", {}).get("Value", [])}
    return found


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _with_file_meta(dataset):
    """A dataset as WADO-RS returns it, made a Part-10 file (a file meta group)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
    return dataset
