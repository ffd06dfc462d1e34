"""A prediction run over many inputs: requests in flight concurrently, answers reported in
input order, outputs written atomically, resumable, and a server that goes away mid-run
is waited for (with back-off) instead of losing the run.

Inputs are prepared lazily (a volume is read and sliced only when its turn comes) and at
most ``window`` inputs are held between preparation and reporting, so memory stays flat
on runs of thousands of slices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainscan.client.batch.audit import AuditLog
from brainscan.client.batch.records import NOT_SENT, Failure, Outcome, already_done, finish, header_reasons
from brainscan.client.batch.series_gate import SeriesGate
from brainscan.client.imaging.files import Input, safe_stems
from brainscan.client.imaging.volumes import SliceBatch
from brainscan.client.triton.inference import (
    AsyncBrainscanClient,
    Connection,
    InferenceError,
    Prediction,
    ServerUnavailableError,
)
from brainscan.contract import SlicePath
from brainscan.errors import BrainscanError
from brainscan.intended_use import IntendedUse, Reason
from brainscan.layout import InputKind
from brainscan.site_rules import narrow

AUDIT_FILE = "audit.jsonl"

VOLUMES_IN_FLIGHT = 2  # volumes read and held at once (a DICOM series can take a GB while sliced)


def read_error(item: Input, exc: BaseException) -> str:
    """One line for an input that could not be read, whatever raised."""
    if isinstance(exc, MemoryError):
        return f"{item.display}: not enough memory to read it"
    if isinstance(exc, (OSError, ValueError)) and str(exc):  # unreadable file, VolumeError (names the file)
        return str(exc.strerror if isinstance(exc, OSError) and exc.strerror and not exc.filename else exc)
    return f"{item.display}: cannot read it ({type(exc).__name__}: {exc})"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    out: Path | None = None
    concurrency: int = 4
    skip_existing: bool = False
    evaluate: bool = False
    audit: Path | None = None  # JSON lines, one per DICOM series (default: OUT/audit.jsonl)
    # Called in a worker thread with each DICOM series' outcome once its files are written and
    # before it is audited and reported (e.g. the SEG and SR stored in a PACS); returns it.
    deliver: Callable[[Outcome], Outcome] | None = None
    rules: Path | None = None  # a site's rules file, narrowing the served models' intended use
    slices: SlicePath = SlicePath.PIXELS  # how a volume's slices travel
    # on the pixels path, the segmenter on every slice of a series, not only where the
    # classifier does not rule a tumour out (contract.SEGMENTER_RULE_OUT_PARAMETER)
    segment_all: bool = False
    outside_intended_use: bool = False  # research: analyse refused inputs too, marked in every output

    @property
    def audit_path(self) -> Path | None:
        return self.audit or (self.out / AUDIT_FILE if self.out is not None else None)


@dataclass
class _Job:
    index: int
    input: Input
    name: str
    # its requests: encoded files (an image; a volume's slices as 16-bit PNGs through the
    # ensemble of files), or SliceBatches (a volume's slices through the pixels ensemble)
    payloads: list[bytes | SliceBatch] = field(default_factory=list)
    context: object = None  # the raw image bytes, or the Volume
    results: list[Prediction | None] = field(default_factory=list)  # one per image or slice
    errors: list[tuple[int, InferenceError]] = field(default_factory=list)  # (slice, error)
    remaining: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome | None = None
    holds_slot: bool = False
    header_reasons: list[Reason] = field(default_factory=list)  # why its headers are outside the intended use
    segmented: list[int] | None = None  # a gated series: the slices the segmenter ran on

    def finish_one(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


def _prepare(job: _Job, use: IntendedUse, research: bool, batch: int) -> None:
    """Read the input and check its headers against the intended use; what it must send
    (runs in a worker thread). A DICOM series outside it is refused from its headers alone,
    before any pixel is read; an image from its header's size. A volume's slices go as
    pixels, ``batch`` a request, or as PNGs when ``batch`` is 0."""
    from brainscan.client.imaging.dicom import read_dicom_series
    from brainscan.client.imaging.volumes import read_nifti

    item = job.input
    if item.kind is InputKind.IMAGE:
        data = item.path.read_bytes()
        job.context = data
        job.header_reasons = header_reasons(item, data, use)
        job.payloads = [data] if research or not job.header_reasons else []
        return
    if item.kind is InputKind.DICOM:
        job.header_reasons = header_reasons(item, None, use)
        if job.header_reasons and not research:
            return
    volume = read_nifti(item.path) if item.kind is InputKind.NIFTI else read_dicom_series(item.series)
    if item.kind is InputKind.NIFTI:
        job.header_reasons = header_reasons(item, volume, use)
        if job.header_reasons and not research:
            return
    job.context = volume
    job.payloads = volume.axial_batches(batch) if batch else volume.axial_png_slices()


def slices_of(payload: bytes | SliceBatch, k: int) -> range:
    """The images (slices) request ``k`` carries."""
    return payload.slices if isinstance(payload, SliceBatch) else range(k, k + 1)


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
        use = await served_intended_use(client, options.rules)
        dicom = any(item.kind is InputKind.DICOM for item in inputs)
        identity = await client.model_identity() if dicom else None
        audit = AuditLog(options.audit_path) if dicom and options.audit_path is not None else None
        batch = 0
        if options.slices is SlicePath.PIXELS and any(item.is_volume for item in inputs):
            batch = await client.pixels_batch_size()  # 0: an earlier kit's server, the PNG path then
        run = _Run(inputs, client, options, identity, audit, use, batch)
        if batch and not options.segment_all:  # the classifier's rule-out, when it declares one
            run.rule_out = await client.segmenter_rule_out()
        return await run.run(report)


async def served_intended_use(client, rules: Path | None = None) -> IntendedUse:
    """The intended use the server declares, narrowed by a site's ``rules`` file."""
    use = await client.intended_use()
    return narrow(use, rules) if rules is not None else use


AUDITED = ("seg", "sr", "stored", "store_attempts", "outside_intended_use")  # a series' audit line names


class _Run:
    """One run of ``run_inputs``: a producer reads and sends the inputs, bounded by three
    semaphores (requests in flight, inputs ahead of the one being reported, volumes held in
    memory); one finisher per input writes its outputs as soon as it is answered; the
    outcomes are reported in input order."""

    def __init__(
        self, inputs: list[Input], client, options: RunOptions, identity, audit, use: IntendedUse, pixels_batch: int
    ) -> None:
        names = safe_stems([i.stem for i in inputs])
        self.jobs = [_Job(k, item, name) for k, (item, name) in enumerate(zip(inputs, names))]
        self.client, self.options, self.identity, self.audit = client, options, identity, audit
        self.use, self.pixels_batch = use, pixels_batch
        self.rule_out: float | None = None  # a series' segmenter skips slices under it (send_series)
        self.in_flight = asyncio.Semaphore(options.concurrency)
        self.window = asyncio.Semaphore(max(4 * options.concurrency, 16))
        self.volume_slots = asyncio.Semaphore(VOLUMES_IN_FLIGHT)
        self.abort = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def send(self, job: _Job, k: int, payload: bytes | SliceBatch) -> None:
        slices = slices_of(payload, k)
        try:
            if not self.abort.is_set():
                if isinstance(payload, SliceBatch):
                    answers = await self.client.infer_pixels(await asyncio.to_thread(payload.pixels))
                else:
                    answers = [await self.client.infer(payload)]
                for i, answer in zip(slices, answers):
                    job.results[i] = answer
        except ServerUnavailableError:
            self.abort.set()
        except InferenceError as exc:
            job.errors.append((slices.start, exc))
        finally:
            self.in_flight.release()
            job.finish_one()

    async def _requested(self, call):
        """One request, counted against --concurrency."""
        async with self.in_flight:
            return await call()

    async def send_series(self, job: _Job) -> None:
        """A series on the pixels path with the segmenter gated: the classifier on every
        slice, and the segmenter, as soon as a request's worth of slices is chosen
        (``SeriesGate``), on those; requests of up to the server's batch, all counted against
        --concurrency; the other slices' masks are empty."""
        batches: list[SliceBatch] = job.payloads  # type: ignore[assignment]
        stack = batches[0].stack
        gate = SeriesGate(len(stack), self.rule_out)  # type: ignore[arg-type]
        parts: list[list[int]] = []
        segmenting: list[asyncio.Task] = []  # one a part
        classifying: list[asyncio.Task] = []

        def segment_ready(final: bool) -> None:
            while (part := gate.take(self.pixels_batch, final)) is not None:
                parts.append(part)
                segmenting.append(asyncio.create_task(self._requested(lambda p=part: self._segment(stack, p))))

        async def classify(batch: SliceBatch) -> None:  # holds one of --concurrency's requests
            try:
                answers = await self._classify(batch)
            finally:
                self.in_flight.release()
            gate.add(batch.slices, answers)
            segment_ready(final=False)

        try:
            if self.abort.is_set():
                return
            for batch in batches:  # one at a time, so that the segmenter's requests queue between them
                await self.in_flight.acquire()
                classifying.append(asyncio.create_task(classify(batch)))
            await asyncio.gather(*classifying)
            segment_ready(final=True)
            found = await asyncio.gather(*segmenting)
            masks = {k: mask for part, masks in zip(parts, found) for k, mask in zip(part, masks)}
            empty = np.zeros(stack.shape[1:], np.uint8)
            job.results = [Prediction(p, masks.get(k, empty), score) for k, (p, score) in enumerate(gate.answers)]
            job.segmented = sorted(gate.chosen)
        except ServerUnavailableError:
            self.abort.set()
        except InferenceError as exc:
            job.errors.append((0, exc))
        finally:
            for task in classifying + segmenting:  # after a failure, the rest is not waited for
                task.cancel()
            job.finish_one()

    async def _classify(self, batch: SliceBatch) -> list[tuple[float, float]]:
        return await self.client.classify_pixels(await asyncio.to_thread(batch.pixels))

    async def _segment(self, stack: np.ndarray, slices: list[int]) -> list[np.ndarray]:
        pixels = await asyncio.to_thread(lambda: stack[slices][..., None])  # FP32 where it is sent
        return await self.client.segment_pixels(pixels)

    def _settled(self, job: _Job) -> bool:
        """Settle ``job`` without sending it when the server is gone or its outputs exist."""
        options = self.options
        if self.abort.is_set():
            job.outcome = Outcome(job.input, job.name, error=NOT_SENT, status=Failure.UNAVAILABLE)
        elif options.skip_existing and options.out is not None and already_done(options.out, job.input, job.name):
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
                await asyncio.to_thread(_prepare, job, self.use, self.options.outside_intended_use, self.pixels_batch)
            except Exception as exc:  # any failure to read is that input's failure, never the run's
                job.outcome = Outcome(job.input, job.name, error=read_error(job.input, exc), status=Failure.READ)
                job.done.set()
                continue
            job.results = [None] * sum(len(slices_of(p, k)) for k, p in enumerate(job.payloads))
            job.remaining = len(job.payloads)
            if not job.payloads:  # refused on its headers: nothing to send
                job.done.set()
            elif isinstance(job.payloads[0], SliceBatch) and self.rule_out is not None:
                job.remaining = 1  # one task for the series: the classifier's requests, then the segmenter's
                task = asyncio.create_task(self.send_series(job))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                continue
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
            outcome = await asyncio.to_thread(finish, job, self.options, self.identity, self.use)
        except OSError as exc:  # disk full, unwritable --out
            error = f"cannot write the outputs: {exc.strerror or exc}"
            outcome = Outcome(job.input, job.name, error=error, status=Failure.WRITE, requests=len(job.results))
        except BrainscanError as exc:  # results that cannot be built (a SEG, a mask volume; names the series)
            outcome = Outcome(job.input, job.name, error=str(exc), status=Failure.WRITE, requests=len(job.results))
        except Exception as exc:  # a bug: still this input's failure alone, its type named
            error = f"cannot finish: {type(exc).__name__}: {exc}"
            outcome = Outcome(job.input, job.name, error=error, status=Failure.WRITE, requests=len(job.results))
        if self.options.deliver is not None and outcome.ok and job.input.kind is InputKind.DICOM:
            outcome = await asyncio.to_thread(self.options.deliver, outcome)
        return outcome

    def audited(self, outcome: Outcome) -> Outcome:
        if self.audit is not None and outcome.input.kind is InputKind.DICOM and not outcome.skipped:
            series, record, verdict = outcome.input.series, outcome.record, outcome.verdict
            what = "failed" if record is None else "ok" if record.analysed else "not-analysed"
            # what the record says of the results: their UIDs, where they went, research use
            results = {} if record is None else {k: getattr(record, k) or None for k in AUDITED}
            self.audit.write(
                series.study,
                series.uid,
                what,
                self.identity,
                error=outcome.error,
                intended_use=verdict.codes if verdict is not None and not verdict.accepted else None,
                **results,
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
                job.outcome = Outcome(job.input, job.name, status=Failure.READ, error=error)
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
