"""The probe image: a small grey PNG with a bright blob, a valid slice for any brainscan
ensemble. The watchdog sends it, `health --infer` sends it, and the committed
repository's warm-up sample is its bytes."""

from __future__ import annotations

import functools
import io

import numpy as np

PROBE_SHAPE = (48, 64)  # height, width


@functools.cache
def probe_image() -> bytes:
    """The probe PNG's bytes."""
    from PIL import Image

    yy, xx = np.mgrid[: PROBE_SHAPE[0], : PROBE_SHAPE[1]]
    pixels = (60 + 120 * np.exp(-((yy - 20) ** 2 + (xx - 40) ** 2) / 60.0)).astype(np.uint8)
    buffer = io.BytesIO()
    # stored, not deflated: the same bytes whatever zlib Pillow bundles (the committed
    # repository's warm-up sample is this image)
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()
