"""A benchmark run's summary: what `brainscan bench run` measured, written as summary.json
beside report.md and read back from it, in one place (the JSON's fields are these, in this
order)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from brainscan.errors import DataError

FILE = "summary.json"


@dataclass
class BenchSummary:
    url: str  # the server measured
    repository: str | None = None  # its repository, when it is here
    served_platforms: dict[str, str] = field(default_factory=dict)  # network -> platform or backend
    baseline_onnx: dict[str, str] = field(default_factory=dict)  # network -> the ONNX the baselines ran
    files: int = 0  # real image files sent
    host: str = ""
    date: str = ""  # "%Y-%m-%d %H:%M"
    # model -> {"rows": perf_analyzer's CSV rows, "retries", "request_count", "server": Triton's statistics}
    served: dict[str, dict] = field(default_factory=dict)
    in_process: list[dict] = field(default_factory=list)  # the ONNX Runtime baselines (baselines.Baseline)
    keras: dict | None = None  # Keras's predict baseline
    flops_per_image: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> BenchSummary:
        """A summary.json, of this kit or an earlier one (fields added since are empty)."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"{path}: not a benchmark summary (unknown fields {', '.join(unknown)})")
        return cls(**data)
