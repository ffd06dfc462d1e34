"""The node's spool as a journal: each series' folder holds its objects and ``journal.json``,
its state, written durably as it changes, so that a node restarted on the spool resumes
what it had not stored. Every file is readable by the node's user only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from brainscan.errors import BrainscanError

JOURNAL = "journal.json"


class State(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    PREDICTED = "predicted"
    STORED = "stored"
    FAILED = "failed"


class RetryLater(BrainscanError):
    """Triton or the destination could not be reached: the series is tried again later."""


class SeriesFailed(BrainscanError):
    """A series the node cannot answer (no image slices, a run that failed): it goes to failed/."""


class ResultsRefused(BrainscanError):
    """The destination did not take a series' results (no association, a failure status):
    they wait in the spool and are sent again."""


def private_file(path: Path, data: bytes) -> None:
    """Write ``path`` readable by this user only, durably."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(handle, data)
        os.fsync(handle)
    finally:
        os.close(handle)


@dataclass
class SpooledSeries:
    """One series in the spool: its folder, what is known of it, and its journal."""

    folder: Path
    study: str
    bytes: int = 0
    last: float = field(default_factory=time.monotonic)
    state: State = State.RECEIVING
    results: list[str] | None = None  # the SEG and SR once predicted, until stored
    attempts: int = 0
    first_failure: float | None = None  # wall-clock time of the first failed try
    next_try: float = 0.0  # monotonic
    aborted: float | None = None  # monotonic: an association that brought objects of it was aborted
    released: bool = False  # every association that brought objects of it ended normally
    since: float = field(default_factory=time.monotonic)  # its first object (or the node's start)
    stored_at: float | None = None  # wall-clock time its results were stored (kept until the retention ends)
    sender: tuple[str, str] = ("", "")  # the calling AE title and address that last sent objects of it

    def set_released(self, released: bool) -> None:
        """Whether its associations all ended normally, journaled when that changes."""
        if released != self.released:
            self.released = released
            self.journal(self.state)

    def journal(self, state: State) -> None:
        """Record the state durably (a new file renamed over the old one)."""
        self.state = state
        entry = {"study": self.study, "state": state.value, "results": self.results, "attempts": self.attempts}
        entry["first_failure"], entry["stored_at"], entry["released"] = (
            self.first_failure,
            self.stored_at,
            self.released,
        )
        staging = self.folder / f".{JOURNAL}.partial"
        private_file(staging, json.dumps(entry).encode())
        staging.rename(self.folder / JOURNAL)

    @classmethod
    def resumed(cls, folder: Path) -> SpooledSeries | None:
        """A series folder found at start, as its journal left it (None: nothing to resume)."""
        for partial in folder.glob(".*.partial"):
            partial.unlink()  # an object or journal being written when the node stopped
        objects = list(folder.glob("*.dcm"))
        try:
            entry = json.loads((folder / JOURNAL).read_text())
        except (OSError, ValueError):
            entry = {}
        if not entry.get("study"):
            if not objects:
                return None
            import pydicom

            entry["study"] = str(pydicom.dcmread(objects[0], stop_before_pixels=True).StudyInstanceUID)
        series = cls(folder, entry["study"], sum(f.stat().st_size for f in objects))
        series.state = State(entry.get("state", State.RECEIVING))
        series.results, series.attempts = entry.get("results"), int(entry.get("attempts", 0))
        series.first_failure, series.stored_at = entry.get("first_failure"), entry.get("stored_at")
        series.released = bool(entry.get("released", False))
        if series.state is State.RECEIVING and not series.released:  # the node stopped mid-association
            series.aborted = time.monotonic()  # as an abort: it waits for the sender to send it again
        return series


class Answered:
    """The series the node has answered, as (series UID, its instances, the served models):
    one JSON line each in ``answered.jsonl``, appended durably once the results are sent. A
    series routed again with the same instances to the same models is not answered twice."""

    FILE = "answered.jsonl"

    def __init__(self, spool: Path):
        self.path = Path(spool) / self.FILE
        self.keys: set[tuple[str, str, str]] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(line)
                    self.keys.add((entry["series"], entry["instances"], entry["models"]))

    @staticmethod
    def key(series: str, results: list[Path]) -> tuple[str, str, str]:
        """The series, a digest of the instances its results cover (the SEG's referenced
        instances, the SR's evidence: what the run read, not what the spool holds by now),
        and the served models' digest they carry (their DeviceSerialNumber)."""
        import pydicom

        instances, models = set(), set()
        for path in results:
            result = pydicom.dcmread(path, stop_before_pixels=True)
            models.add(str(result.get("DeviceSerialNumber", "")))
            seen = list(result.get("ReferencedSeriesSequence", []))
            for study in result.get("CurrentRequestedProcedureEvidenceSequence", []):
                seen += list(study.get("ReferencedSeriesSequence", []))
            for item in (i for i in seen if str(i.get("SeriesInstanceUID", "")) == series):  # not the SEG an SR cites
                for sequence in ("ReferencedInstanceSequence", "ReferencedSOPSequence"):
                    instances |= {str(i.ReferencedSOPInstanceUID) for i in item.get(sequence, [])}
        digest = hashlib.sha256("\n".join(sorted(instances)).encode()).hexdigest()
        return series, digest[:32], ",".join(sorted(models))

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self.keys

    def add(self, key: tuple[str, str, str]) -> None:
        line = json.dumps({"series": key[0], "instances": key[1], "models": key[2], "time": time.time()}) + "\n"
        handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(handle, line.encode())
            os.fsync(handle)
        finally:
            os.close(handle)
        self.keys.add(key)


def unusable(dataset) -> str | None:
    """Why an image object cannot take its place in a volume (None: it can): no position or
    orientation, or uncompressed pixel data shorter than its rows, columns and frames need."""
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        if not dataset.get(keyword):
            return f"no {keyword}"
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        per_sample = -(-int(dataset.get("BitsAllocated", 16)) // 8)
        needed = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1)) * per_sample * frames
        if len(dataset.PixelData) < needed:
            return f"truncated pixel data ({len(dataset.PixelData)} of {needed} bytes)"
    return None
