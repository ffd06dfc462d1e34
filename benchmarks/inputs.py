"""perf_analyzer --input-data for the ensemble and for each composing model, all made from
the same real image files: the ensemble and ``preprocess`` get the encoded files, the
networks the tensors ``preprocess`` makes of them, ``postprocess`` real segmenter outputs."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.atomic import write_bytes_atomic
from brainscan.client.perf import input_data as image_input_data
from brainscan.preprocessing import preprocess_batch


def _raw(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"b64": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape)}


def tensors(files: list[Path], classifier_size, segmenter_size, segmenter_session) -> dict[str, list[dict]]:
    """Per model, one perf_analyzer data entry per file."""
    cls, seg, sizes = [], [], []
    for path in files:
        c, s, size = preprocess_batch([Path(path).read_bytes()], classifier_size, segmenter_size)
        cls.append(c[0]), seg.append(s[0]), sizes.append(size[0])
    probabilities = segmenter_session.run(None, {contract.SEGMENTER_INPUT: np.stack(seg)})[0]
    images = image_input_data(files)["data"]
    return {
        contract.ENSEMBLE: images,
        contract.PREPROCESS: images,
        contract.CLASSIFIER: [{contract.CLASSIFIER_INPUT: _raw(x)} for x in cls],
        contract.SEGMENTER: [{contract.SEGMENTER_INPUT: _raw(x)} for x in seg],
        contract.POSTPROCESS: [{contract.SEGMENTER_OUTPUT: _raw(p), contract.ORIGINAL_SIZE: _raw(s.astype(np.int32))}
                               for p, s in zip(probabilities, sizes)],
    }


def write_all(entries: dict[str, list[dict]], folder: Path) -> dict[str, Path]:
    paths = {}
    for model, data in entries.items():
        paths[model] = Path(folder) / f"input-{model}.json"
        write_bytes_atomic(paths[model], json.dumps({"data": data}).encode())
    return paths
