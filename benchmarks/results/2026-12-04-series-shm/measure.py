"""A series of 1600 slices of 256 x 256 through the PNG path, the pixels path and the pixels
path through system shared memory, free networks, one server:
`python measure.py SCRATCH_FOLDER IMAGES_FOLDER` (IMAGES: 256 x 256 grey slices)."""

import json
import sys
from pathlib import Path

from brainscan.benchmarks.series import measure_series

raw = Path(sys.argv[1])
raw.mkdir(parents=True, exist_ok=True)
files = sorted(Path(sys.argv[2]).glob("*"))[:64]
for cost in measure_series(raw, files, 1600):
    print(json.dumps(cost.as_dict()))
