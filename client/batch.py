"""A prediction run over many inputs: requests in flight concurrently, answers reported in
input order, outputs written atomically, resumable, and a server that goes away mid-run
is waited for (with back-off) instead of losing the run.

Inputs are prepared lazily (a volume is read and sliced only when its turn comes) and at
most ``window`` inputs are held between preparation and reporting, so memory stays flat
on runs of thousands of slices.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from brainscan.client.audit import AuditLog
from brainscan.client.files import Input, inside, safe_stems
from brainscan.client.inference import (
    AsyncBrainscanClient,
    Connection,
    InferenceError,
    Prediction,
    ServerUnavailableError,
)

NOT_SENT = "not sent: the server stayed unreachable"
AUDIT_FILE = "audit.jsonl"
VOLUMES_IN_FLIGHT = 2  # volumes read and held at once (a DICOM series can take a GB while sliced)


def read_error(item: Input, exc: BaseException) -> str:
    """One line for an input that could not be read, whatever raised."""
    if isinstance(exc, MemoryError):
        return f"{item.display}: not enough memory to read it"
    if isinstance(exc, (OSError, ValueError)) and str(exc):  # unreadable file, VolumeError (names the file)
        return str(exc.strerror if isinstance(exc, OSError) and exc.strerror and not exc.filename else exc)
    return f"{item.display}: cannot read it ({type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class RunOptions:
    out: Path | None = None
    concurrency: int = 4
    skip_existing: bool = False
    evaluate: bool = False
    audit: Path | None = None  # JSON lines, one per DICOM series (default: OUT/audit.jsonl)
    # Called in a worker thread with each DICOM series' outcome once its files are written and
    # before it is audited and reported (e.g. the SEG and SR stored in a PACS); returns it.
    deliver: Callable[[Outcome], Outcome] | None = None

    @property
    def audit_path(self) -> Path | None:
        return self.audit or (self.out / AUDIT_FILE if self.out is not None else None)


@dataclass
class Outcome:
    """What became of one input: a record (success), an error, or skipped."""

    input: Input
    name: str
    record: dict | None = None
    error: str | None = None
    status: str | None = None  # Triton's status code, TIMEOUT, UNAVAILABLE, READ, …
    skipped: bool = False
    requests: int = 0  # images sent for it (slices of a volume)

    @property
    def ok(self) -> bool:
        return self.record is not None

    def failure(self) -> dict:
        return {"file": self.input.display, "kind": self.input.kind, "error": self.error, "status": self.status}


def output_names(item: Input, name: str) -> list[str]:
    if item.kind == "dicom":  # the DICOM SEG and SR go back to where the series came from
        return [f"{name}.mask.nii.gz", f"{name}.summary.json", f"{name}.seg.dcm", f"{name}.sr.dcm"]
    if item.is_volume:
        return [f"{name}.mask.nii.gz", f"{name}.summary.json"]
    return [f"{name}.mask.png", f"{name}.overlay.png"]


@dataclass
class _Job:
    index: int
    input: Input
    name: str
    payloads: list[bytes] = field(default_factory=list)
    context: object = None  # the raw image bytes, or the Volume
    results: list[Prediction | None] = field(default_factory=list)
    errors: list[tuple[int, InferenceError]] = field(default_factory=list)
    remaining: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome | None = None
    holds_slot: bool = False

    def finish_one(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


def _prepare(job: _Job) -> None:
    """Read the input into the requests it needs (runs in a worker thread)."""
    from brainscan.client.dicom import read_dicom_series
    from brainscan.client.volumes import read_nifti

    item = job.input
    if item.kind == "image":
        data = item.path.read_bytes()
        job.context, job.payloads = data, [data]
    else:
        volume = read_nifti(item.path) if item.kind == "nifti" else read_dicom_series(item.series)
        job.context, job.payloads = volume, volume.axial_png_slices()


def _ground_truth(path: Path):
    """The kaggle_3m ground truth beside ``path`` as a boolean mask, if there is one."""
    from brainscan.client.files import ground_truth_for
    from brainscan.preprocessing import InvalidImageError, decode_image

    truth_path = ground_truth_for(path)
    if truth_path is None:
        return None
    try:
        truth = decode_image(truth_path.read_bytes())
    except InvalidImageError:
        return None
    return (truth.max(axis=2) if truth.ndim == 3 else truth) > 0


def _finish(job: _Job, options: RunOptions, identity=None) -> Outcome:
    """Turn the answers into a record and write the outputs (runs in a worker thread)."""
    from brainscan.client import files as io
    from brainscan.metrics import dice
    from brainscan.preprocessing import decode_image

    item, outcome = job.input, Outcome(job.input, job.name, requests=len(job.payloads))
    if job.errors:
        k, exc = job.errors[0]
        where = f"slice {k} of {len(job.payloads)}: " if item.is_volume else ""
        outcome.error, outcome.status = where + str(exc), exc.status
        return outcome
    if any(r is None for r in job.results):
        outcome.error, outcome.status = NOT_SENT, "UNAVAILABLE"
        return outcome
    out = options.out
    paths = [inside(out, n) for n in output_names(item, job.name)] if out is not None else []
    if item.kind == "image":
        prediction = job.results[0]
        record = {
            "file": str(item.path),
            "kind": "image",
            "probability": round(prediction.probability, 6),
            "label": prediction.label,
            "area_pixels": prediction.area_pixels,
            "area_fraction": round(prediction.area_fraction, 6),
            "height": int(prediction.mask.shape[0]),
            "width": int(prediction.mask.shape[1]),
        }
        truth = _ground_truth(item.path) if options.evaluate else None
        if truth is not None:
            record["truth"] = "tumour" if truth.any() else "no tumour"
            if truth.any():
                record["dice"] = round(dice(prediction.mask, truth), 4)
        if out is not None:
            io.save_png(paths[0], prediction.mask * 255)
            io.save_png(paths[1], io.overlay(decode_image(job.context), prediction.mask))
    else:
        volume = job.context
        mask = volume.mask_volume([r.mask for r in job.results])
        probability = max(r.probability for r in job.results)
        summary = volume.summary(mask).as_dict()
        record = {
            "file": item.display,
            "kind": item.kind,
            "probability": round(probability, 6),
            "label": "tumour" if any(r.tumour for r in job.results) else "no tumour",
            "area_pixels": int(mask.sum()),
            "area_fraction": round(float(mask.mean()), 6),
            **summary,
            "slice_probabilities": [round(r.probability, 4) for r in job.results],
        }
        if volume.notes:
            record["notes"] = volume.notes
        results = None
        if item.kind == "dicom":
            from brainscan.client.dicom_results import series_results

            results = series_results(volume, mask, probability, identity)
            record.update(
                study=item.series.study,
                series=item.series.uid,
                seg=str(results.seg.SOPInstanceUID),
                sr=str(results.sr.SOPInstanceUID),
                tumour_volume_mm3=round(results.tumour_volume_mm3, 3),
            )
        if out is not None:
            from brainscan.atomic import write_bytes_atomic

            volume.write_mask(paths[0], mask)
            if results is not None:
                from brainscan.client.dicom_results import write_dataset

                write_dataset(paths[2], results.seg)
                write_dataset(paths[3], results.sr)
            write_bytes_atomic(paths[1], (json.dumps(record, indent=1) + "\n").encode())
    if out is not None:
        record["outputs"] = [str(p) for p in paths]
    outcome.record = record
    return outcome


async def run_inputs(
    inputs: list[Input],
    connection: Connection,
    options: RunOptions,
    report: Callable[[Outcome], None],
    on_retry: Callable[[str, float, int], None] | None = None,
) -> list[Outcome]:
    """Predict every input; ``report`` is called once per input, in input order.

    Raises ServerUnavailableError / ModelNotReadyError before anything is sent when the
    server is not there. When the server goes away mid-run, each request retries with
    back-off; if it stays away, the inputs not answered come back as UNAVAILABLE failures.
    """
    async with AsyncBrainscanClient(connection, on_retry) as client:
        await client.check_ready()
        dicom = any(item.kind == "dicom" for item in inputs)
        identity = await client.model_identity() if dicom else None
        audit = AuditLog(options.audit_path) if dicom and options.audit_path is not None else None
        return await _Run(inputs, client, options, identity, audit).run(report)


class _Run:
    """One run of ``run_inputs``: a producer reads and sends the inputs, bounded by three
    semaphores (requests in flight, inputs ahead of the one being reported, volumes held in
    memory); one finisher per input writes its outputs as soon as it is answered; the
    outcomes are reported in input order."""

    def __init__(self, inputs: list[Input], client, options: RunOptions, identity, audit) -> None:
        names = safe_stems([i.stem for i in inputs])
        self.jobs = [_Job(k, item, name) for k, (item, name) in enumerate(zip(inputs, names))]
        self.client, self.options, self.identity, self.audit = client, options, identity, audit
        self.in_flight = asyncio.Semaphore(options.concurrency)
        self.window = asyncio.Semaphore(max(4 * options.concurrency, 16))
        self.volume_slots = asyncio.Semaphore(VOLUMES_IN_FLIGHT)
        self.abort = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def send(self, job: _Job, k: int, payload: bytes) -> None:
        try:
            if not self.abort.is_set():
                job.results[k] = await self.client.infer(payload)
        except ServerUnavailableError:
            self.abort.set()
        except InferenceError as exc:
            job.errors.append((k, exc))
        finally:
            self.in_flight.release()
            job.finish_one()

    def _settled(self, job: _Job) -> bool:
        """Settle ``job`` without sending it when the server is gone or its outputs exist."""
        options = self.options
        if self.abort.is_set():
            job.outcome = Outcome(job.input, job.name, error=NOT_SENT, status="UNAVAILABLE")
        elif (
            options.skip_existing
            and options.out is not None
            and all((options.out / n).exists() for n in output_names(job.input, job.name))
        ):
            job.outcome = Outcome(job.input, job.name, skipped=True)
        else:
            return False
        job.done.set()
        return True

    async def produce(self) -> None:
        for job in self.jobs:
            await self.window.acquire()
            if self._settled(job):
                continue
            if job.input.is_volume:  # at most VOLUMES_IN_FLIGHT volumes held in memory
                await self.volume_slots.acquire()
                job.holds_slot = True
            try:
                await asyncio.to_thread(_prepare, job)
            except Exception as exc:  # any failure to read is that input's failure, never the run's
                job.outcome = Outcome(job.input, job.name, error=read_error(job.input, exc), status="READ")
                job.done.set()
                continue
            job.results = [None] * len(job.payloads)
            job.remaining = len(job.payloads)
            for k, payload in enumerate(job.payloads):
                await self.in_flight.acquire()
                if self.abort.is_set():
                    self.in_flight.release()
                    job.remaining -= len(job.payloads) - k - 1
                    job.finish_one()
                    continue
                task = asyncio.create_task(self.send(job, k, payload))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def finish(self, job: _Job) -> Outcome:
        """Outputs are written as soon as an input is answered, several at once in worker
        threads (PNG and NIfTI encoding release the GIL); only the reporting waits for
        input order."""
        await job.done.wait()
        if job.outcome is not None:
            return job.outcome
        try:
            outcome = await asyncio.to_thread(_finish, job, self.options, self.identity)
        except OSError as exc:  # disk full, unwritable --out
            error = f"cannot write the outputs: {exc.strerror or exc}"
            outcome = Outcome(job.input, job.name, error=error, status="WRITE", requests=len(job.payloads))
        except ValueError as exc:  # a volume whose results cannot be built (names the series)
            outcome = Outcome(job.input, job.name, error=str(exc), status="WRITE", requests=len(job.payloads))
        except Exception as exc:  # whatever else, it is this input's failure
            error = f"cannot finish: {type(exc).__name__}: {exc}"
            outcome = Outcome(job.input, job.name, error=error, status="WRITE", requests=len(job.payloads))
        if self.options.deliver is not None and outcome.ok and job.input.kind == "dicom":
            outcome = await asyncio.to_thread(self.options.deliver, outcome)
        return outcome

    def audited(self, outcome: Outcome) -> Outcome:
        if self.audit is not None and outcome.input.kind == "dicom" and not outcome.skipped:
            series, record = outcome.input.series, outcome.record or {}
            self.audit.write(
                series.study,
                series.uid,
                "ok" if outcome.ok else "failed",
                self.identity,
                error=outcome.error,
                seg=record.get("seg"),
                sr=record.get("sr"),
                stored=record.get("stored"),
            )
        return outcome

    def producer_stopped(self, task: asyncio.Task) -> None:
        """A bug in preparing must end the run with errors, never leave it waiting."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        for job in self.jobs:
            if job.outcome is None and not job.results and not job.done.is_set():
                error = f"not sent: preparing the inputs failed ({type(exc).__name__}: {exc})"
                job.outcome = Outcome(job.input, job.name, status="READ", error=error)
                job.done.set()

    async def run(self, report: Callable[[Outcome], None]) -> list[Outcome]:
        producer = asyncio.create_task(self.produce())
        producer.add_done_callback(self.producer_stopped)
        finishers = [asyncio.create_task(self.finish(job)) for job in self.jobs]
        outcomes: list[Outcome] = []
        try:
            for job, finisher in zip(self.jobs, finishers):
                outcome = await finisher
                job.payloads, job.context, job.results = [], None, []
                if job.holds_slot:
                    self.volume_slots.release()
                outcomes.append(self.audited(outcome))
                report(outcome)
                self.window.release()
            await asyncio.wait([producer])  # a failed producer has already failed what it did not prepare
        finally:
            producer.cancel()
            for task in [*self.tasks, *finishers]:
                task.cancel()
        return outcomes
