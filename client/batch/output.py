"""What predict prints and writes: the table, JSON-lines or CSV rows, the closing summary,
the retry notice and failures.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from brainscan import contract
from brainscan.client.batch.predict_record import PredictRecord
from brainscan.client.batch.records import OUTSIDE_NOTE, Failure
from brainscan.layout import InputKind

NAME_WIDTH = 40


class OutputFormat(contract.Choice):
    TABLE = "table"
    JSON = "json"  # one object per line
    CSV = "csv"


CSV_COLUMNS = (
    "file",
    "kind",
    "probability",
    "label",
    "area_pixels",
    "area_fraction",
    "height",
    "width",
    "slices",
    "tumour_volume_ml",
    "tumour_slices",
    "largest_cross_section_mm2",
    "largest_cross_section_slice",
    "truth",
    "dice",
    "accepted",
    "reasons",
    "score",
    "error",
    "status",
)


def shorten(text: str) -> str:
    """The file column: the path, cut from the left with an ellipsis when too long."""
    text = str(text)
    return text if len(text) <= NAME_WIDTH else "…" + text[-(NAME_WIDTH - 1) :]


def _intended_use_line(record: PredictRecord) -> str:
    """What the intended use says of an input, when there is something to say."""
    reasons = (record.intended_use or {}).get("reasons", [])
    codes, sentence = ", ".join(r["code"] for r in reasons), "; ".join(r["text"] for r in reasons)
    if not record.analysed:
        return f"\n  └ not analysed, outside the intended use ({codes}): {sentence}"
    if record.outside_intended_use:
        return f"\n  └ {OUTSIDE_NOTE} ({codes}), analysed for research: {sentence}"
    if record.slices_not_analysed:
        skipped = record.slices_not_analysed
        return f"\n  └ {len(skipped)} slice(s) unlike the training data not analysed: {skipped}"
    return ""


def row(record: PredictRecord) -> str:
    truth = f" {record.truth:<9} {'' if record.dice is None else record.dice:>6}" if record.truth is not None else ""
    if not record.analysed:
        line = f"{shorten(record.file):<{NAME_WIDTH}} {'-':>11} {'refused':<9} {'-':>8} {'-':>7}"
        return line + truth + _intended_use_line(record)
    line = (
        f"{shorten(record.file):<{NAME_WIDTH}} {record.probability:>11.4f} {record.label:<9} "
        f"{record.area_pixels:>8d} {100 * record.area_fraction:>6.2f}%"
    ) + truth
    volume = record.volume
    if volume is not None:
        largest = volume.largest_cross_section_slice
        line += (
            f"\n  └ volume: {volume.tumour_volume_ml:.2f} ml in {len(volume.tumour_slices)} of {volume.slices} "
            f"axial slices"
            + (
                f", largest cross-section {volume.largest_cross_section_mm2:.1f} mm² (slice {largest})"
                if largest is not None
                else ""
            )
        )
    return line + _intended_use_line(record)


def _figures(evaluations: list[dict]) -> tuple[float, int, float | None, int]:
    """Accuracy over labelled answers, and mean Dice over those with a tumour."""
    from brainscan.metrics import classification_metrics

    accuracy = classification_metrics(
        [e["probability"] for e in evaluations], [e["truth"] == "tumour" for e in evaluations]
    )["accuracy"]
    dices = [e["dice"] for e in evaluations if "dice" in e]
    return accuracy, len(evaluations), (sum(dices) / len(dices) if dices else None), len(dices)


def evaluation_text(outcomes) -> str:
    """Accuracy and Dice against the ground truth: on the inputs inside the intended use, and,
    when some were refused, on all of them (what the networks answered for every input)."""
    every = [o.evaluation for o in outcomes if o.evaluation]
    accepted = [o.evaluation for o in outcomes if o.evaluation and not o.refused]
    if not every:
        return ""
    accuracy, labelled, dice, tumours = _figures(accepted) if accepted else (float("nan"), 0, None, 0)
    text = f"; accuracy {accuracy:.3f} on {labelled} labelled images"
    if dice is not None:
        text += f", mean Dice {dice:.3f} on {tumours} tumour images"
    if len(every) != len(accepted):
        all_accuracy, all_labelled, all_dice, all_tumours = _figures(every)
        text += f" inside the intended use (all {all_labelled}: accuracy {all_accuracy:.3f}"
        text += f", mean Dice {all_dice:.3f} on {all_tumours})" if all_dice is not None else ")"
    return text


def summary(outcomes, elapsed: float, out: Path | None) -> str:
    records = [o.record for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.error]
    skipped = sum(o.skipped for o in outcomes)
    research = sum(o.ok and o.record.outside_intended_use for o in outcomes)
    refused = sum(o.refused for o in outcomes) - research
    sent = sum(o.requests for o in outcomes)
    text = (
        f"{len(records)} of {len(outcomes)} inputs in {elapsed:.1f} s "
        f"({sent} image{'s' if sent != 1 else ''} sent, {sent / max(elapsed, 1e-9):.1f} images/s)"
    )
    if refused:
        text += f", {refused} refused (outside the intended use: not analysed)"
    if research:
        text += f", {research} outside the intended use analysed for research"
    if failed:
        text += f", {len(failed)} failed"
    if skipped:
        text += f", {skipped} skipped (outputs exist)"
    text += evaluation_text(outcomes)
    if out is not None:
        text += f"; outputs in {out}"
    return text


def csv_row(record: PredictRecord) -> dict:
    """A record with its intended use flattened into columns."""
    use = record.intended_use or {}
    reasons = ";".join(r["code"] for r in use.get("reasons", []))
    return {**record.as_dict(), "accepted": use.get("accepted"), "reasons": reasons, "score": use.get("score")}


class Reporter:
    """Prints each outcome in the chosen format as it arrives (in input order)."""

    def __init__(self, fmt: OutputFormat | str, evaluate: bool):
        import csv
        import sys

        self.fmt, self.evaluate, self.started = OutputFormat(fmt), evaluate, False
        if self.fmt is OutputFormat.CSV:
            self.writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")

    def _header(self) -> None:
        self.started = True
        if self.fmt is OutputFormat.TABLE:
            header = f"{'file':<{NAME_WIDTH}} {'probability':>11} {'label':<9} {'area px':>8} {'area %':>7}"
            typer.echo(header + (f" {'truth':<9} {'dice':>6}" if self.evaluate else ""))
        elif self.fmt is OutputFormat.CSV:
            self.writer.writeheader()

    def __call__(self, outcome) -> None:
        if outcome.skipped:
            return
        if not self.started:
            self._header()
        if self.fmt is OutputFormat.JSON:
            typer.echo(json.dumps(outcome.record.as_dict() if outcome.ok else outcome.failure()))
        elif self.fmt is OutputFormat.CSV:
            self.writer.writerow(csv_row(outcome.record) if outcome.ok else outcome.failure())
        elif outcome.ok:
            typer.echo(row(outcome.record))
        else:
            typer.echo(f"{shorten(outcome.input.display)}  failed: {outcome.error}", err=True)


def retry_notice():
    """Tells the user, at most every 2 s, that the server is being waited for."""
    last = [0.0]

    def notice(error: str, delay: float, attempt: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            typer.echo(
                f"server unavailable ({error.splitlines()[0][:120]}); retrying in {delay:.1f} s "
                f"(attempt {attempt + 1})",
                err=True,
            )

    return notice


def write_failures(path: Path, conn, outcomes, rejected, aborted: bool) -> None:
    from brainscan.atomic import write_bytes_atomic

    failures = [o.failure() for o in outcomes if o.error]
    failures += [
        {"file": str(p), "kind": InputKind.DICOM, "error": reason, "status": Failure.READ} for p, reason in rejected
    ]
    report = {
        "server": conn.address,
        "model": conn.target,
        "inputs": len(outcomes),
        "done": sum(o.ok for o in outcomes),
        "skipped": sum(o.skipped for o in outcomes),
        "failed": len(failures),
        "server_unreachable": aborted,
        "failures": failures,
    }
    write_bytes_atomic(path, (json.dumps(report, indent=1) + "\n").encode())
