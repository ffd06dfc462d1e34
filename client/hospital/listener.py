"""`brainscan listen`: a DICOM node (C-STORE SCP, pynetdicom) that a PACS routes series to.

Each object received is checked and written, atomically and readable by this user only, to
the spool folder as <series UID>/<SOP instance UID>.dcm (UIDs are digits and dots, so
nothing is ever written outside the spool). A series is complete once nothing new arrived
for ``idle`` seconds; it is then predicted like any DICOM series, its DICOM SEG and SR are
sent back (C-STORE to ``store_to``, or STOW-RS), and its spool folder is removed.

The spool is a journal: each series' folder holds ``journal.json`` with its state
(receiving, complete, predicted, stored), written durably as it changes, so a node that is
killed resumes at start whatever it had not stored: series received wait for their idle time
and run, results predicted are sent again. A series that cannot be predicted because Triton
is unreachable, or whose results the destination does not take, is tried again with back-off
for ``retry_for`` seconds; only then, or at once for any other failure, it goes to
spool/failed/ with the reason. Every failure writes an audit line. Objects that arrive while
their series is predicted are kept, and the series is predicted again over all of them.

What it accepts is bounded: calling AE titles (``allow_ae``, refused with an
A-ASSOCIATE-RJ; none given: any caller on loopback, none from elsewhere), objects that are
images, the size of a series and the whole spool. Messages name series and objects by UID,
never a patient.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from brainscan.client.batch.audit import AuditLog
from brainscan.client.hospital.atna_events import AtnaAudit, node, remote
from brainscan.client.hospital.dicomweb import UID
from brainscan.client.hospital.node_config import COMPRESSED_SYNTAXES, LONGEST_WAIT, ListenerConfig
from brainscan.client.hospital.node_metrics import NodeMetrics
from brainscan.client.hospital.node_security import Gatekeeper
from brainscan.client.hospital.spool import Answered, RetryLater, SpooledSeries, State, private_file, unusable
from brainscan.errors import BrainscanError

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of Resources"
NOT_IMAGE = 0xA900  # "Error: Data Set does not match SOP Class" (here: not an image we take)
CANNOT_UNDERSTAND = 0xC000  # "Error: Cannot understand"
FAILED_FOLDER = "failed"
RESULTS_FOLDER = "results"
ALREADY_ANSWERED = "already answered with the same instances by the same models: not sent again"


def _status(code: int, comment: str):
    """A C-STORE status with its Error Comment (LO: at most 64 characters)."""
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status, status.ErrorComment = code, comment[:64]
    return status


class Listener(Gatekeeper):
    """The SCP and the worker that predicts complete series. ``process(folder, study,
    series, deliver)`` predicts a series, passes the paths of its results (the SEG and SR;
    the SR alone for a series outside the intended use) to ``deliver``, which journals and
    ``send``s them, and returns what became of it; it raises ``RetryLater`` when Triton or
    the destination could not be reached, anything else for a failure of the series."""

    def __init__(
        self,
        config: ListenerConfig,
        process: Callable[[Path, str, str, Callable[[list[Path]], bool]], str],
        send: Callable[[list[Path], str], None],
        log: Callable[[str], None] = print,
        atna: AtnaAudit | None = None,
    ):
        self.config, self.process, self.send, self.log = config, process, send, log
        self.atna = atna or AtnaAudit(None, config.ae_title)  # with --atna: the audit record repository's
        self.me = node(config.ae_title, config.host)
        self.series: dict[str, SpooledSeries] = {}
        self.busy: dict[str, SpooledSeries] = {}  # series being predicted or sent
        self.metrics = NodeMetrics(self._pending_since)
        self.kept: dict[str, SpooledSeries] = {}  # stored, deleted once ``keep_for`` has passed
        self._brought: dict[int, set[str]] = {}  # the series each open association brought objects of
        self.audit = AuditLog(config.audit_path)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None
        self.spool = Path(config.spool).resolve()
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool.chmod(0o700)  # received objects carry the patient module: this user only
        self.answered = Answered(self.spool)

    def _spool_bytes(self) -> int:
        """What the spool holds: series waiting or running, and those kept after storing."""
        held = (*self.series.values(), *self.busy.values(), *self.kept.values())
        return sum(s.bytes for s in held)

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
        reason = unusable(dataset)
        if reason is not None:  # refused now, named: the PACS sees the failure and keeps the object
            self.log(f"refused object {sop} of series {series}: {reason}")
            return _status(CANNOT_UNDERSTAND, reason)
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
                stored = self.kept.pop(series, None)  # answered already: the late object joins the others
                known = self.series[series] = SpooledSeries(self.spool / series, study, stored.bytes if stored else 0)
                self.metrics.count("series_received_total")
                if stored is not None:
                    self.log(f"series {series}: a new object after its results were sent; it runs again over all")
                known.folder.mkdir(exist_ok=True, mode=0o700)
                if series not in self.busy:  # else its journal is the run's, until it ends
                    known.journal(State.RECEIVING)
                self.log(f"receiving series {series} of study {study}")
            target = known.folder / f"{sop}.dcm"
            staging = known.folder / f".{sop}.partial"
            try:
                private_file(staging, encoded)
                staging.rename(target)  # a series read meanwhile never sees half an object
            except OSError as exc:  # a full or failing disk: refused, and the PACS keeps it
                staging.unlink(missing_ok=True)
                self.log(f"refused object {sop} of series {series}: cannot write it ({exc.strerror or exc})")
                return OUT_OF_RESOURCES
            known.bytes, known.last, known.aborted = size, time.monotonic(), None
            known.sender = (event.assoc.requestor.ae_title, event.assoc.requestor.address)
            if series not in self.busy:
                known.set_released(False)
            self.metrics.count("objects_received_total")
            self._brought.setdefault(id(event.assoc), set()).add(series)
        return SUCCESS

    def _on_aborted(self, event) -> None:
        """What an aborted association brought waits until another brings objects of it."""
        with self._lock:
            for uid in sorted(self._brought.pop(id(event.assoc), ())):
                if uid in self.series:
                    self.series[uid].aborted = time.monotonic()
                    self.log(f"series {uid}: its association was aborted; it waits to be sent again")

    def _on_released(self, event) -> None:
        with self._lock:
            for uid in self._brought.pop(id(event.assoc), ()):
                if uid in self.series and uid not in self.busy:
                    self.series[uid].set_released(True)

    def _complete(self) -> list[tuple[str, SpooledSeries]]:
        """The series due: idle long enough, past their next try, not being run, not waiting
        to be sent again after an abort (unless they waited ``retry_for``: then they fail)."""
        now = time.monotonic()
        with self._lock:
            done = [
                (uid, s)
                for uid, s in self.series.items()
                if uid not in self.busy
                and now - s.last >= self.config.idle
                and now >= s.next_try
                and (s.aborted is None or now - s.aborted >= self.config.retry_for)
            ]
            for uid, s in done:
                del self.series[uid]
                self.busy[uid] = s
        return done

    def _deliver(self, uid: str, series: SpooledSeries) -> Callable[[list[Path]], bool]:
        """Journal the results, then send them unless the same instances were answered by the
        same models before (a series routed twice): whether they were sent."""

        def deliver(paths: list[Path]) -> bool:
            if series.results is None:
                self.metrics.count("series_predicted_total")
            series.results = [str(p) for p in paths]
            series.journal(State.PREDICTED)  # from here on, a restart sends these again
            key = Answered.key(uid, paths)
            if key in self.answered:
                return False
            self.send(paths, uid)
            self.answered.add(key)
            self.metrics.count("series_stored_total")
            return True

        return deliver

    def _handle(self, uid: str, series: SpooledSeries) -> None:
        if series.aborted is not None:
            reason = f"its association was aborted and it was not sent again within {self.config.retry_for:g} s"
            self._fail(uid, series, f"series {uid}: {reason}")
            return
        try:
            if series.results is not None:  # predicted before: only the sending failed
                sent = self._deliver(uid, series)([Path(p) for p in series.results])
                done = "SEG and SR sent" + (f" (try {series.attempts + 1})" if series.attempts else "")
                done = done if sent else ALREADY_ANSWERED
                self.audit.write(series.study, uid, "ok", stored=sent, resent=True, attempts=series.attempts + 1)
            else:
                series.journal(State.COMPLETE)
                if not series.attempts:  # once a run, not at each try
                    self.atna.files(series.folder.glob("*.dcm"), remote(*series.sender), self.me, received=True)
                done = self.process(series.folder, series.study, uid, self._deliver(uid, series))
        except RetryLater as exc:
            self._retry(uid, series, str(exc))
            return
        except Exception as exc:  # noqa: BLE001  (this series fails alone, named; the node goes on)
            said = str(exc) if isinstance(exc, BrainscanError) else f"{type(exc).__name__}: {exc}"
            if series.results is not None:  # the destination refused or was away: the results wait
                self._retry(uid, series, f"series {uid}: the results were not sent: {said}")
            else:
                self._fail(uid, series, said)
            return
        with self._lock:
            series.stored_at = time.time()
            series.journal(State.STORED)
            self.busy.pop(uid, None)
            if uid in self.series:  # objects came in meanwhile: predicted again over all of them
                again = self.series[uid]
                again.bytes = sum(f.stat().st_size for f in series.folder.glob("*.dcm"))
                again.journal(State.RECEIVING)
                self.log(f"series {uid}: {done}; objects arrived meanwhile, it is predicted again over all of them")
                return
            series.bytes = sum(f.stat().st_size for f in series.folder.glob("*.dcm"))
            self.kept[uid] = series
        self.log(f"series {uid}: {done}")

    def _expire(self) -> None:
        """Delete the objects and results of series stored more than ``keep_for`` ago."""
        now = time.time()
        with self._lock:
            for uid in [u for u, s in self.kept.items() if now - (s.stored_at or 0) >= self.config.keep_for]:
                shutil.rmtree(self.kept.pop(uid).folder, ignore_errors=True)
                shutil.rmtree(self.spool / RESULTS_FOLDER / uid, ignore_errors=True)

    def _retry(self, uid: str, series: SpooledSeries, reason: str) -> None:
        """Try the series again after a back-off, or fail it once ``retry_for`` is spent."""
        now = time.time()
        series.first_failure = series.first_failure or now
        if now - series.first_failure >= self.config.retry_for:
            self._fail(uid, series, f"{reason} (still failing after {self.config.retry_for:g} s of tries)")
            return
        series.attempts += 1
        self.metrics.count("retries_total")
        wait = min(LONGEST_WAIT, self.config.idle * 2 ** (series.attempts - 1))
        series.next_try = time.monotonic() + wait
        with self._lock:
            series.journal(series.state)
            self.busy.pop(uid, None)
            late = self.series.pop(uid, None)
            if late is not None:  # objects came in meanwhile: all of them, predicted afresh
                series.results, series.bytes, series.last = None, series.bytes + late.bytes, late.last
            self.series[uid] = series
        self.audit.write(series.study, uid, "failed", error=reason, retry_in_s=round(wait, 1), attempts=series.attempts)
        self.log(f"{reason}; series {uid} is tried again in {wait:g} s (try {series.attempts + 1})")

    def _fail(self, uid: str, series: SpooledSeries, reason: str) -> None:
        failed = self.spool / FAILED_FOLDER / uid
        with self._lock:
            self.busy.pop(uid, None)
            self.series.pop(uid, None)
            shutil.rmtree(failed, ignore_errors=True)
            failed.parent.mkdir(exist_ok=True, mode=0o700)
            series.folder.rename(failed)
        series.folder = failed
        series.journal(State.FAILED)
        private_file(failed / "reason.txt", f"{reason}\n".encode())
        self.audit.write(series.study, uid, "failed", error=reason, kept=str(failed))
        self.metrics.count("series_failed_total")
        self.log(f"series {uid}: failed, files kept in {failed}: {reason}")

    def _pending_since(self) -> list[float]:
        with self._lock:
            return [s.since for s in (*self.series.values(), *self.busy.values())]

    def _work(self) -> None:
        while not self._stop.wait(min(1.0, self.config.idle / 4)):
            self._expire()
            for uid, series in self._complete():
                try:
                    self._handle(uid, series)
                except Exception as exc:  # noqa: BLE001  (a bug here must not stop the node)
                    self.log(f"series {uid}: the node could not settle it ({type(exc).__name__}: {exc})")
                    with self._lock:
                        self.busy.pop(uid, None)

    def resume(self) -> int:
        """Take back every series the spool holds that was not stored (at start)."""
        count = 0
        for folder in sorted(p for p in self.spool.iterdir() if p.is_dir() and UID.fullmatch(p.name)):
            series = SpooledSeries.resumed(folder)
            if series is None:
                shutil.rmtree(folder, ignore_errors=True)  # nothing in it
                continue
            if series.state is State.STORED:  # answered: kept until its retention ends
                series.stored_at = series.stored_at or time.time()
                self.kept[folder.name] = series
                continue
            self.series[folder.name] = series
            count += 1
            what = "its results are sent again" if series.results else "it runs after the idle time"
            what = "its association was cut: it waits to be sent again" if series.aborted else what
            objects = len(list(folder.glob("*.dcm")))
            self.log(f"resumed series {folder.name} ({series.state.value}, {objects} objects): {what}")
        return count

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import Verification

        self.resume()
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:  # uncompressed, and what the kit's reader decodes
            ae.add_supported_context(context.abstract_syntax, [*DEFAULT_TRANSFER_SYNTAXES, *COMPRESSED_SYNTAXES])
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = self.config.max_pdu
        ae.acse_timeout, ae.dimse_timeout = self.config.acse_timeout, self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        if self.config.allow_ae:
            ae.require_calling_aet = list(self.config.allow_ae)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self._on_released),
        ]
        tls = self.config.tls.server(self._on_tls_refused) if self.config.tls is not None else None
        address = (self.config.host, self.config.port)
        self._server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=tls)
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.host, self.config.metrics_port)
        self._worker = threading.Thread(target=self._work, name="brainscan-listener", daemon=True)
        self._worker.start()
        self.atna.application(True, self.me)
        who = (
            f"calling AE titles {', '.join(self.config.allow_ae)}"
            if self.config.allow_ae
            else "any caller on loopback, none from elsewhere (--allow-ae to name callers)"
        )
        if self.config.tls is not None:
            who += f", over TLS with a certificate the CA in {self.config.tls.ca} signed"
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
        self.metrics.stop()
        self.atna.application(False, self.me)
        self.atna.close()
