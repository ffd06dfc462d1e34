"""What predict prints and writes: the table, JSON-lines or CSV rows, the closing summary,
the retry notice and failures.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from brainscan import contract

NAME_WIDTH = 40


class OutputFormat(contract.Choice):
    TABLE = "table"
    JSON = "json"  # one object per line
    CSV = "csv"


FORMATS = tuple(f.value for f in OutputFormat)
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
    "error",
    "status",
)


def shorten(text: str) -> str:
    """The file column: the path, cut from the left with an ellipsis when too long."""
    text = str(text)
    return text if len(text) <= NAME_WIDTH else "…" + text[-(NAME_WIDTH - 1) :]


def row(record: dict) -> str:
    line = (
        f"{shorten(record['file']):<{NAME_WIDTH}} {record['probability']:>11.4f} {record['label']:<9} "
        f"{record['area_pixels']:>8d} {100 * record['area_fraction']:>6.2f}%"
    )
    if "truth" in record:
        line += f" {record['truth']:<9} {record.get('dice', ''):>6}"
    if "tumour_volume_ml" in record:
        largest = record["largest_cross_section_slice"]
        line += (
            f"\n  └ volume: {record['tumour_volume_ml']:.2f} ml in {record['tumour_slices']} of {record['slices']} "
            f"axial slices"
            + (
                f", largest cross-section {record['largest_cross_section_mm2']:.1f} mm² (slice {largest})"
                if largest is not None
                else ""
            )
        )
    return line


def summary(outcomes, elapsed: float, out: Path | None) -> str:
    from brainscan.metrics import classification_metrics

    records = [o.record for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.error]
    skipped = sum(o.skipped for o in outcomes)
    sent = sum(o.requests for o in outcomes)
    text = (
        f"{len(records)} of {len(outcomes)} inputs in {elapsed:.1f} s "
        f"({sent} image{'s' if sent != 1 else ''} sent, {sent / max(elapsed, 1e-9):.1f} images/s)"
    )
    if failed:
        text += f", {len(failed)} failed"
    if skipped:
        text += f", {skipped} skipped (outputs exist)"
    labelled = [r for r in records if "truth" in r]
    if labelled:
        accuracy = classification_metrics(
            [r["probability"] for r in labelled], [r["truth"] == "tumour" for r in labelled]
        )["accuracy"]
        text += f"; accuracy {accuracy:.3f} on {len(labelled)} labelled images"
        dices = [r["dice"] for r in labelled if "dice" in r]
        if dices:
            text += f", mean Dice {sum(dices) / len(dices):.3f} on {len(dices)} tumour images"
    if out is not None:
        text += f"; outputs in {out}"
    return text


class Reporter:
    """Prints each outcome in the chosen format as it arrives (in input order)."""

    def __init__(self, fmt: str, evaluate: bool):
        import csv
        import sys

        self.fmt, self.evaluate, self.started = fmt, evaluate, False
        if fmt == "csv":
            self.writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")

    def _header(self) -> None:
        self.started = True
        if self.fmt == "table":
            header = f"{'file':<{NAME_WIDTH}} {'probability':>11} {'label':<9} {'area px':>8} {'area %':>7}"
            typer.echo(header + (f" {'truth':<9} {'dice':>6}" if self.evaluate else ""))
        elif self.fmt == "csv":
            self.writer.writeheader()

    def __call__(self, outcome) -> None:
        if outcome.skipped:
            return
        if not self.started:
            self._header()
        if self.fmt == "json":
            typer.echo(json.dumps(outcome.record if outcome.ok else outcome.failure()))
        elif self.fmt == "csv":
            self.writer.writerow(outcome.record if outcome.ok else outcome.failure())
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
    failures += [{"file": str(p), "kind": "dicom", "error": reason, "status": "READ"} for p, reason in rejected]
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
