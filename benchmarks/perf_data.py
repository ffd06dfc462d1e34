"""perf_analyzer input data made from real image files.

perf_analyzer's default random bytes are not an image, so every request to the ensemble
would fail in ``preprocess``. ``--input-data FILE.json`` gives it real files instead. The
``IMAGE`` input is TYPE_STRING: perf_analyzer decodes each element's ``b64`` as the
serialized tensor, i.e. a 4-byte little-endian length followed by the bytes, so the
prefix is part of what gets base64-encoded.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.errors import UsageError


def input_data(files: list[Path]) -> dict:
    """perf_analyzer's --input-data JSON, one request's data per file (batch 1 each)."""
    if not files:
        raise UsageError("no image files given for the perf_analyzer input data")
    entries = []
    for path in files:
        payload = base64.b64encode(contract.serialized_string(Path(path).read_bytes())).decode("ascii")
        entries.append({contract.IMAGE: {"b64": payload, "shape": list(contract.IMAGE_SPEC.dims)}})
    return {"data": entries}


def write_input_data(files: list[Path], out: Path) -> Path:
    write_bytes_atomic(Path(out), json.dumps(input_data(files)).encode())
    return Path(out)
