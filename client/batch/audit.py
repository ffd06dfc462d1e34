"""The audit trail of DICOM work: one JSON line per series processed (when, which study and
series by UID, which served models, what came of it), appended to a file that is flushed
and synced line by line, so a crash loses at most the line being written. Patient names and
IDs never go into it: UIDs identify what was processed."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, study: str, series: str, outcome: str, identity=None, **details) -> None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "study": study,
            "series": series,
            "outcome": outcome,
        }
        if identity is not None:
            line["models"] = identity.as_dict()
        line.update({k: v for k, v in details.items() if v is not None})
        text = json.dumps(line, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
