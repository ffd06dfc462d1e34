"""What an answered input becomes: its record (what predict prints and writes as JSON), its
output files (masks, overlays, NIfTI masks, DICOM SEG and SR, each written atomically), and
its intended-use verdict (``brainscan.intended_use``).

An input outside the intended use gets no mask and no SEG: its record says why
(``"intended_use"``), and a DICOM series gets an SR saying it was not analysed. Slices of an
accepted series that fail the pixel gate are not analysed either: their masks stay empty and
the record lists them. With ``RunOptions.outside_intended_use`` (research), refused inputs
are analysed anyway and every output says they are outside the intended use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from brainscan.atomic import write_bytes_atomic
from brainscan.client.batch.predict_record import NOT_ANALYSED, PredictRecord
from brainscan.client.imaging.files import Input, inside
from brainscan.client.triton.inference import TIMEOUT
from brainscan.intended_use import IntendedUse, Reason, Verdict
from brainscan.layout import InputKind

NOT_SENT = "not sent: the server stayed unreachable"
OUTSIDE_NOTE = "OUTSIDE INTENDED USE"  # in every output of an input analysed anyway (research)


class Failure(StrEnum):
    """Why an input failed on this side of the server: the ``status`` of its failure record
    (a server's refusal carries the server's own status code instead)."""

    READ = "READ"  # its file or series could not be read
    UNAVAILABLE = "UNAVAILABLE"  # the server went away before it was answered
    TIMEOUT = TIMEOUT  # no answer within --timeout (the client's own status)
    WRITE = "WRITE"  # its outputs could not be built or written
    STORE = "STORE"  # its SEG and SR were not taken by the PACS


@dataclass
class Outcome:
    """What became of one input: a record (success or refusal), an error, or skipped."""

    input: Input
    name: str
    record: PredictRecord | None = None
    error: str | None = None
    status: Failure | str | None = None  # a Failure, or the server's status code
    skipped: bool = False
    requests: int = 0  # images sent for it (slices of a volume)
    verdict: Verdict | None = None
    # what --evaluate compares, for refused inputs too: probability, truth, dice (not printed)
    evaluation: dict | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None

    @property
    def refused(self) -> bool:
        """Outside the intended use (and not analysed, or analysed for research)."""
        return self.verdict is not None and not self.verdict.accepted

    def failure(self) -> dict:
        return {"file": self.input.display, "kind": self.input.kind, "error": self.error, "status": self.status}


def output_names(item: Input, name: str) -> list[str]:
    """The outputs of an analysed input."""
    if item.kind is InputKind.DICOM:  # the DICOM SEG and SR go back to where the series came from
        return [f"{name}.mask.nii.gz", f"{name}.summary.json", f"{name}.seg.dcm", f"{name}.sr.dcm"]
    if item.is_volume:
        return [f"{name}.mask.nii.gz", f"{name}.summary.json"]
    return [f"{name}.mask.png", f"{name}.overlay.png"]


def refusal_names(item: Input, name: str) -> list[str]:
    """The outputs of an input outside the intended use: its record, and a series' SR."""
    return [f"{name}.refused.json", *([f"{name}.sr.dcm"] if item.kind is InputKind.DICOM else [])]


def already_done(out: Path, item: Input, name: str) -> bool:
    """Whether a run before this one finished the input (analysed, or refused)."""
    return any(
        all((out / n).exists() for n in names) for names in (output_names(item, name), refusal_names(item, name))
    )


def _ground_truth(path: Path):
    """The kaggle_3m ground truth beside ``path`` as a boolean mask, if there is one."""
    from brainscan.client.imaging.files import ground_truth_for
    from brainscan.preprocessing import InvalidImageError, decode_image

    truth_path = ground_truth_for(path)
    if truth_path is None:
        return None
    try:
        truth = decode_image(truth_path.read_bytes())
    except InvalidImageError:
        return None
    return (truth.max(axis=2) if truth.ndim == 3 else truth) > 0


def _evaluation(item: Input, prediction) -> dict | None:
    """The answer against the ground truth beside an image (kaggle_3m layout)."""
    from brainscan.metrics import dice

    truth = _ground_truth(item.path)
    if truth is None:
        return None
    found = {"truth": "tumour" if truth.any() else "no tumour", "probability": prediction.probability}
    if truth.any():
        found["dice"] = round(dice(prediction.mask, truth), 4)
    return found


def _write_json(path: Path, record: PredictRecord) -> None:
    write_bytes_atomic(path, (json.dumps(record.as_dict(), indent=1) + "\n").encode())


def _refusal(job, options, identity, verdict: Verdict, slice_scores=None) -> Outcome:
    """The record and outputs of an input outside the intended use: no mask, no SEG; for a
    DICOM series an SR saying it was not analysed, and why."""
    item = job.input
    outcome = Outcome(item, job.name, requests=len(job.results), verdict=verdict)
    record = PredictRecord(item.display, item.kind, None, NOT_ANALYSED, intended_use=verdict.as_dict())
    if slice_scores is not None:
        record.slice_scores = [round(s, 4) for s in slice_scores]
    out = options.out
    paths = [inside(out, n) for n in refusal_names(item, job.name)] if out is not None else []
    if item.kind is InputKind.DICOM:
        from brainscan.client.imaging.dicom_results import not_analysed_results, write_dataset

        sr = not_analysed_results(item.series.files, verdict, identity)
        record.study, record.series, record.sr = item.series.study, item.series.uid, str(sr.SOPInstanceUID)
        if out is not None:
            write_dataset(paths[1], sr)
    if out is not None:
        record.outputs = [str(p) for p in paths]
        _write_json(paths[0], record)
    outcome.record = record
    return outcome


def _png_note(verdict: Verdict) -> str:
    return f"{OUTSIDE_NOTE} ({', '.join(verdict.codes)}): {verdict.sentence()}"


def _image(job, options, use: IntendedUse, prediction) -> Outcome:
    from brainscan.client.imaging import files as io
    from brainscan.preprocessing import decode_image

    item = job.input
    reasons = [*job.header_reasons, *use.check_score(prediction.score if prediction.score is not None else 0.0)]
    verdict = Verdict.of(reasons, prediction.score, use.threshold)
    evaluation = _evaluation(item, prediction) if options.evaluate else None
    if not verdict.accepted and not options.outside_intended_use:
        outcome = _refusal(job, options, None, verdict)
        if evaluation:
            outcome.record.truth = evaluation["truth"]
        outcome.evaluation = evaluation
        return outcome
    record = PredictRecord(
        str(item.path),
        InputKind.IMAGE,
        round(prediction.probability, 6),
        prediction.label,
        area_pixels=prediction.area_pixels,
        area_fraction=round(prediction.area_fraction, 6),
        height=int(prediction.mask.shape[0]),
        width=int(prediction.mask.shape[1]),
        intended_use=verdict.as_dict(),
    )
    note = None
    if not verdict.accepted:
        record.outside_intended_use, note = True, _png_note(verdict)
    if evaluation:
        record.truth, record.dice = evaluation["truth"], evaluation.get("dice")
    out = options.out
    if out is not None:
        paths = [inside(out, n) for n in output_names(item, job.name)]
        io.save_png(paths[0], prediction.mask * 255, note)
        io.save_png(paths[1], io.overlay(decode_image(job.context), prediction.mask), note)
        record.outputs = [str(p) for p in paths]
    return Outcome(item, job.name, record=record, requests=1, verdict=verdict, evaluation=evaluation)


def _volume(job, options, identity, use: IntendedUse) -> Outcome:
    item, volume, results = job.input, job.context, job.results
    scores = [r.score if r.score is not None else 0.0 for r in results]
    reasons = [*job.header_reasons, *use.check_series_scores(scores)]
    verdict = Verdict.of(reasons, use.series_score(scores) if use.threshold is not None else None, use.threshold)
    if not verdict.accepted and not options.outside_intended_use:
        return _refusal(job, options, identity, verdict, scores)
    research = not verdict.accepted
    # slices that fail the pixel gate in an accepted series are not analysed: no mask there
    skipped = [] if research else [k for k, s in enumerate(scores) if use.check_score(s)]
    masks = [np.zeros_like(r.mask) if k in skipped else r.mask for k, r in enumerate(results)]
    analysed = [r for k, r in enumerate(results) if k not in skipped]
    mask = volume.mask_volume(masks)
    probability = max(r.probability for r in analysed)
    record = PredictRecord(
        item.display,
        item.kind,
        round(probability, 6),
        "tumour" if any(r.tumour for r in analysed) else "no tumour",
        area_pixels=int(mask.sum()),
        area_fraction=round(float(mask.mean()), 6),
        volume=volume.summary(mask),
        slice_probabilities=[round(r.probability, 4) for r in results],
        intended_use=verdict.as_dict(),
        slice_scores=[round(s, 4) for s in scores],
        slices_not_analysed=skipped or None,
        # the classifier ruled a tumour out of the others
        segmented_slices=len(job.segmented) if job.segmented is not None else None,
        outside_intended_use=research,
        notes=volume.notes or None,
    )
    series = None
    if item.kind is InputKind.DICOM:
        from brainscan.client.imaging.dicom_results import series_results

        series = series_results(volume, mask, probability, identity, verdict)
        record.study, record.series = item.series.study, item.series.uid
        record.seg, record.sr = str(series.seg.SOPInstanceUID), str(series.sr.SOPInstanceUID)
    out = options.out
    if out is not None:
        from brainscan.client.imaging.dicom_results import write_dataset

        paths = [inside(out, n) for n in output_names(item, job.name)]
        volume.write_mask(paths[0], mask, OUTSIDE_NOTE if research else None)
        if series is not None:
            write_dataset(paths[2], series.seg)
            write_dataset(paths[3], series.sr)
        record.outputs = [str(p) for p in paths]
        _write_json(paths[1], record)
    return Outcome(item, job.name, record=record, requests=len(results), verdict=verdict)


def finish(job, options, identity, use: IntendedUse) -> Outcome:
    """Turn one input's answers into its record and outputs (runs in a worker thread).
    ``job`` holds the input, its requests (``payloads``), the read image or volume
    (``context``), the answers (``results``) or errors, and the reasons its headers are
    outside ``use`` (``header_reasons``)."""
    item = job.input
    if job.errors:
        k, exc = job.errors[0]
        where = f"slice {k} of {len(job.results)}: " if item.is_volume else ""
        return Outcome(item, job.name, error=where + str(exc), status=exc.status, requests=len(job.results))
    if not job.payloads:  # refused on its headers, before any pixel was sent
        return _refusal(job, options, identity, Verdict.of(job.header_reasons))
    if any(r is None for r in job.results):
        return Outcome(item, job.name, error=NOT_SENT, status=Failure.UNAVAILABLE, requests=len(job.results))
    if item.kind is InputKind.IMAGE:
        return _image(job, options, use, job.results[0])
    return _volume(job, options, identity, use)


def header_reasons(item: Input, context, use: IntendedUse) -> list[Reason]:
    """What the headers of a read input say against ``use``: an image's size, a DICOM series'
    rules (``IntendedUse.check_series``), a NIfTI volume's slices and spacing."""
    if item.kind is InputKind.IMAGE:
        from brainscan.preprocessing import image_size

        size = image_size(context)
        return use.check_image(*size) if size else []
    if item.kind is InputKind.DICOM:
        return use.check_series(item.series.header())
    return use.check_series(context.axial_header())
