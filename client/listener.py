"""`brainscan listen`: a DICOM node (C-STORE SCP, pynetdicom) that a PACS routes series to.

Each object received is checked and written, atomically, to the spool folder as
<series UID>/<SOP instance UID>.dcm (UIDs are digits and dots, so nothing is ever written
outside the spool). A series is complete once nothing new arrived for ``idle`` seconds; it
is then predicted like any DICOM series (one request per slice to the Triton ensemble), its
DICOM SEG and SR are sent back (C-STORE to ``store_to``, or STOW-RS), one audit line is
written, and its spool folder is removed. A series that fails keeps its files under
spool/failed/ with the reason, and the listener goes on.

What it accepts is bounded: calling AE titles (``allow_ae``; none given: any caller on
loopback, none from elsewhere), objects that are images, the size of a series and the whole
spool. Messages name series and objects by UID, never a patient.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from brainscan.client.dicomweb import UID
from brainscan.errors import UsageError

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of Resources"
NOT_IMAGE = 0xA900  # "Error: Data Set does not match SOP Class" (here: not an image we take)
CANNOT_UNDERSTAND = 0xC000  # "Error: Cannot understand"
FAILED_FOLDER = "failed"
RESULTS_FOLDER = "results"


@dataclass(frozen=True)
class Destination:
    """Where results go by C-STORE: AET@HOST:PORT."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        title, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not title or not host or not port.isdigit() or len(title) > 16:
            raise UsageError(f"{text!r}: write AET@HOST:PORT (an AE title of at most 16 characters)")
        return cls(title, host, int(port))


@dataclass
class ListenerConfig:
    ae_title: str
    port: int
    spool: Path
    host: str = "127.0.0.1"
    allow_ae: tuple[str, ...] = ()
    idle: float = 10.0  # seconds without a new object: the series is complete
    max_series_bytes: int = 2 << 30
    max_spool_bytes: int = 20 << 30
    store_to: Destination | None = None
    audit: Path | None = None  # default: SPOOL/audit.jsonl


@dataclass
class _Series:
    folder: Path
    study: str
    bytes: int = 0
    last: float = field(default_factory=time.monotonic)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Listener:
    """The SCP and the worker that predicts complete series. ``process(folder, study,
    series)`` returns the paths of the results to send (the SEG and SR; the SR alone for a
    series outside the intended use) and what became of it, or raises with the reason."""

    def __init__(
        self,
        config: ListenerConfig,
        process: Callable[[Path, str, str], tuple[list[Path], str]],
        send: Callable[[list[Path], str], None],
        log: Callable[[str], None] = print,
    ):
        self.config, self.process, self.send, self.log = config, process, send, log
        self.series: dict[str, _Series] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None
        self.spool = Path(config.spool).resolve()
        self.spool.mkdir(parents=True, exist_ok=True)

    # --- the SCP -------------------------------------------------------------------------------

    def _on_requested(self, event) -> None:
        """Refuse an association from a caller not allowed (before any object arrives)."""
        requestor = event.assoc.requestor
        calling = str(getattr(requestor.primitive, "calling_ae_title", "") or "").strip()
        if self.config.allow_ae:
            if calling not in self.config.allow_ae:
                self.log(f"refused an association from AE {calling!r} at {requestor.address}: not in --allow-ae")
                event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanently: calling AE not recognised
        elif not _loopback(requestor.address):
            self.log(
                f"refused an association from {requestor.address}: with no --allow-ae only loopback callers are taken"
            )
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)

    def _spool_bytes(self) -> int:
        return sum(s.bytes for s in self.series.values())

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            sop, series, study = (
                str(getattr(dataset, k, "") or "") for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
            )
        except Exception as exc:  # a malformed object: refuse it, keep listening
            self.log(f"refused an object that cannot be decoded ({type(exc).__name__})")
            return CANNOT_UNDERSTAND
        if not all(UID.fullmatch(uid) and len(uid) <= 64 for uid in (sop, series, study)):
            self.log(f"refused object {sop or '?'}: its study, series or instance UID is not a DICOM UID")
            return CANNOT_UNDERSTAND
        if "Rows" not in dataset or "PixelData" not in dataset:
            self.log(f"refused object {sop} of series {series}: not an image ({getattr(dataset, 'Modality', '?')})")
            return NOT_IMAGE
        encoded = event.encoded_dataset()
        with self._lock:
            known = self.series.get(series)
            size = (known.bytes if known else 0) + len(encoded)
            if size > self.config.max_series_bytes:
                self.log(f"refused object {sop}: series {series} would exceed {self.config.max_series_bytes >> 20} MB")
                return OUT_OF_RESOURCES
            if self._spool_bytes() + len(encoded) > self.config.max_spool_bytes:
                self.log(
                    f"refused object {sop} of series {series}: the spool is full "
                    f"({self.config.max_spool_bytes >> 20} MB)"
                )
                return OUT_OF_RESOURCES
            if known is None:
                known = self.series[series] = _Series(self.spool / series, study)
                self.log(f"receiving series {series} of study {study}")
            known.folder.mkdir(exist_ok=True)
            target = known.folder / f"{sop}.dcm"
            staging = known.folder / f".{sop}.partial"
            staging.write_bytes(encoded)
            staging.rename(target)  # a series read meanwhile never sees half an object
            known.bytes, known.last = size, time.monotonic()
        return SUCCESS

    # --- the worker ----------------------------------------------------------------------------

    def _complete(self) -> list[tuple[str, _Series]]:
        now = time.monotonic()
        with self._lock:
            done = [(uid, s) for uid, s in self.series.items() if now - s.last >= self.config.idle]
            for uid, _ in done:
                del self.series[uid]
        return done

    def _handle(self, uid: str, series: _Series) -> None:
        try:
            results, done = self.process(series.folder, series.study, uid)
            self.send(results, uid)
        except Exception as exc:  # this series fails alone; its files are kept
            failed = self.spool / FAILED_FOLDER / uid
            shutil.rmtree(failed, ignore_errors=True)
            failed.parent.mkdir(exist_ok=True)
            series.folder.rename(failed)
            (failed / "reason.txt").write_text(f"{exc}\n")
            self.log(f"series {uid}: failed, files kept in {failed}: {exc}")
            return
        shutil.rmtree(series.folder, ignore_errors=True)
        self.log(f"series {uid}: {done}")

    def _work(self) -> None:
        while not self._stop.wait(min(1.0, self.config.idle / 4)):
            for uid, series in self._complete():
                self._handle(uid, series)

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        self._worker = threading.Thread(target=self._work, name="brainscan-listener", daemon=True)
        self._worker.start()
        who = (
            f"calling AE titles {', '.join(self.config.allow_ae)}"
            if self.config.allow_ae
            else "any caller on loopback, none from elsewhere (--allow-ae to name callers)"
        )
        self.log(
            f"listening as {self.config.ae_title} on {self.config.host}:{self.config.port}; accepting {who}; "
            f"a series is complete after {self.config.idle:g} s without a new object; spool {self.spool}"
        )

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._worker is not None:
            self._worker.join(60)


# --- what the CLI plugs in -------------------------------------------------------------------


def predict_series(
    connection, spool: Path, audit_path: Path, rules: Path | None = None
) -> Callable[[Path, str, str], tuple[list[Path], str]]:
    """Predict one spooled series with the usual run (the served models' intended use,
    narrowed by ``rules``): the SEG and SR paths (the SR alone when it is refused) and what
    became of it, or an error."""
    from brainscan.client.batch import RunOptions, run_inputs
    from brainscan.client.files import collect_inputs

    def process(folder: Path, study: str, uid: str) -> list[Path]:
        inputs, rejected, _ = collect_inputs([folder])
        inputs = [i for i in inputs if i.kind == "dicom" and i.series.uid == uid]
        if not inputs:
            reason = rejected[0][1] if rejected else "no image slices"
            raise ValueError(f"series {uid}: {reason}")
        out = spool / RESULTS_FOLDER / uid
        options = RunOptions(out=out, audit=audit_path, rules=rules)
        outcome = asyncio.run(run_inputs(inputs, connection, options, lambda _: None))[0]
        if outcome.error:
            raise ValueError(outcome.error)
        paths = [Path(p) for p in outcome.record["outputs"] if p.endswith((".seg.dcm", ".sr.dcm"))]
        if outcome.refused:
            return paths, f"not analysed, outside the intended use ({', '.join(outcome.verdict.codes)}): its SR sent"
        return paths, "SEG and SR sent"

    return process


def c_store(destination: Destination, ae_title: str) -> Callable[[list[Path], str], None]:
    """Send files by C-STORE to ``destination``; raises naming what failed."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    def send(paths: list[Path], uid: str) -> None:
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(SegmentationStorage)
        ae.add_requested_context(Comprehensive3DSRStorage)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            raise ConnectionError(
                f"series {uid}: {destination.ae_title}@{destination.host}:{destination.port} "
                "refused or did not answer the association for the results"
            )
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(str(path)))
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    raise ConnectionError(
                        f"series {uid}: {destination.ae_title} answered status "
                        f"{'none' if code is None else hex(code)} to {path.name}"
                    )
        finally:
            assoc.release()

    return send


def stow(pacs) -> Callable[[list[Path], str], None]:
    import pydicom

    def send(paths: list[Path], uid: str) -> None:
        pacs.store([pydicom.dcmread(str(p)) for p in paths], f"the SEG and SR of series {uid}")

    return send


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []
