"""A series of 1600 slices of 256 x 256 through the PNG path, the pixels path and the pixels
path through system shared memory, free networks, on a local repository of max_batch_size 8
and one of 16, three rounds alternating: `python measure.py SCRATCH_FOLDER IMAGES_FOLDER`
(IMAGES: 256 x 256 grey slices)."""

import json
import sys
from pathlib import Path

from brainscan.benchmarks.series import measure_series

raw = Path(sys.argv[1])
files = sorted(Path(sys.argv[2]).glob("*"))[:64]
results = []
for round in range(3):
    for batch in (8, 16):
        folder = raw / f"batch{batch}-{round}"
        folder.mkdir(parents=True, exist_ok=True)
        for cost in measure_series(folder, files, 1600, max_batch_size=batch):
            results.append({"round": round, "max_batch_size": batch, **cost.as_dict()})
            print(json.dumps(results[-1]), flush=True)
Path(sys.argv[3] if len(sys.argv) > 3 else "results.json").write_text(json.dumps(results, indent=1) + "\n")
