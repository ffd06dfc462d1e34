"""Image sets for measuring the intended-use gate: inputs the models were not made for, and
in-distribution slices in other encodings that the gate must still take.

Out of distribution (the gate must refuse them):

- ``photos``: crops of the natural photographs bundled with scikit-learn and matplotlib;
- ``noise``: uniform, Gaussian and smooth noise, 8- and 16-bit;
- ``blank``: constant images at several levels and sizes;
- ``inverted``: in-distribution slices with their intensities inverted;
- ``rotated``: in-distribution slices turned a quarter turn (the training augmentation
  covers flips and about ±30°, not this);
- ``ct-like``: phantom patients rendered as a head CT in a brain window shows them (bone
  white, fat black, little grey/white-matter contrast);
- ``chest``: synthetic axial chest MR slices (lungs, heart, spine, fat): another body part.

In distribution, other encodings (the gate must accept them):

- ``png16``: slices as 16-bit PNGs (x 257);
- ``jpeg``: slices re-encoded as JPEG (quality 75);
- ``resized``: slices resampled to 384 x 384 and 200 x 200.

Every set is a list of ``Sample`` (a name and the encoded file), built deterministically
from a seed, so a report can be reproduced.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OUT_OF_DISTRIBUTION = ("photos", "noise", "blank", "inverted", "rotated", "ct-like", "chest")
ENCODINGS = ("png16", "jpeg", "resized")
SET_SIZE = 48


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes  # an encoded file (PNG or JPEG)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bundled_photographs() -> list[np.ndarray]:
    """The natural photographs that ship inside scikit-learn and matplotlib (RGB uint8)."""
    import matplotlib
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos.append(np.asarray(Image.open(hopper).convert("RGB")))
    return photos


def sagittal_mri() -> np.ndarray:
    """The real MR slice matplotlib ships (a sagittal head, 256 x 256, 16-bit): real anatomy
    in a plane the phantom-trained networks never saw."""
    import gzip

    import matplotlib

    data = gzip.decompress((Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz").read_bytes())
    return np.frombuffer(data, "<u2").reshape(256, 256).copy()


def photos(rng: np.random.Generator, count: int = SET_SIZE) -> list[Sample]:
    sources = bundled_photographs()
    out = []
    for i in range(count):
        photo = sources[i % len(sources)]
        side = int(rng.integers(120, min(photo.shape[:2]) + 1))
        top, left = (int(rng.integers(0, photo.shape[a] - side + 1)) for a in (0, 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((256, 256), Image.BICUBIC)
        if i % 2:
            crop = crop.convert("L")
        out.append(Sample(f"photo_{i:03d}.jpg", encode(np.asarray(crop), "JPEG", quality=90)))
    return out


def noise(rng: np.random.Generator, count: int = SET_SIZE) -> list[Sample]:
    from scipy import ndimage

    out = []
    for i in range(count):
        side = int(rng.choice([128, 256, 384]))
        kind = i % 3
        if kind == 0:
            values = rng.uniform(0, 1, (side, side))
        elif kind == 1:
            values = np.clip(rng.normal(0.5, 0.15, (side, side)), 0, 1)
        else:
            values = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), rng.uniform(2, 12))
            values = (values - values.min()) / max(float(np.ptp(values)), 1e-9)
        pixels = (values * 65535).astype(np.uint16) if i % 2 else (values * 255).astype(np.uint8)
        out.append(Sample(f"noise_{i:03d}.png", encode(pixels)))
    return out


def blank(rng: np.random.Generator, count: int = SET_SIZE) -> list[Sample]:
    out = []
    for i in range(count):
        side = int(rng.choice([64, 256, 512]))
        if i % 2:
            pixels = np.full((side, side), int(rng.integers(0, 65536)), np.uint16)
        else:
            pixels = np.full((side, side), int(rng.integers(0, 256)), np.uint8)
        out.append(Sample(f"blank_{i:03d}.png", encode(pixels)))
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image.max(axis=2)


def inverted(slices: Sequence[np.ndarray]) -> list[Sample]:
    return [Sample(f"inverted_{i:03d}.png", encode((255 - _grey(s)).astype(np.uint8))) for i, s in enumerate(slices)]


def rotated(slices: Sequence[np.ndarray]) -> list[Sample]:
    return [
        Sample(f"rotated_{i:03d}.png", encode(np.ascontiguousarray(np.rot90(_grey(s), 1 if i % 2 else 3))))
        for i, s in enumerate(slices)
    ]


def ct_like(seed: int, count: int = SET_SIZE) -> list[Sample]:
    from brainscan.train.phantom import render_patients

    patients = max(1, count // 4)
    rendered = render_patients(seed, patients, slices_per_patient=4, look="ct")
    return [Sample(f"ct_{name}_{k}.png", encode(image)) for name, k, image, _ in rendered][:count]


def chest_slice(rng: np.random.Generator, side: int = 256) -> np.ndarray:
    """A synthetic axial chest slice as T1-weighted MR shows it: the body outline with
    subcutaneous fat, two lungs (dark, with vessels), the heart, the aorta (a flow void),
    a vertebra with its spinal canal; smoothed, with a bias field and Rician noise."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5

    def ellipse(cy, cx, ry, rx, angle=0.0):
        c, s = np.cos(angle), np.sin(angle)
        y, x = yy - cy, xx - cx
        return ((c * x + s * y) / rx) ** 2 + ((-s * x + c * y) / ry) ** 2 <= 1

    body_rx, body_ry = rng.uniform(0.40, 0.47), rng.uniform(0.26, 0.33)
    image = np.zeros((side, side), np.float32)
    image[ellipse(0.0, 0.0, body_ry, body_rx)] = 0.9  # subcutaneous fat
    image[ellipse(0.0, 0.0, body_ry - 0.03, body_rx - 0.03)] = 0.35  # muscle and organs
    for sign in (-1, 1):
        lung = ellipse(
            rng.uniform(-0.04, 0.02), sign * rng.uniform(0.17, 0.22), rng.uniform(0.17, 0.22), 0.14, 0.2 * sign
        )
        image[lung] = 0.05
        vessels = lung & (ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), 1.5) > 0.35)
        image[vessels] = 0.3
    image[ellipse(-0.06, 0.05, 0.12, 0.11)] = 0.45  # heart
    image[ellipse(0.06, -0.03, 0.035, 0.035)] = 0.08  # descending aorta: flow void
    image[ellipse(0.2, 0.0, 0.055, 0.06)] = 0.62  # vertebral body (marrow)
    image[ellipse(0.28, 0.0, 0.02, 0.02)] = 0.15  # spinal canal
    image = ndimage.gaussian_filter(image, 0.8)
    field = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 40)
    image *= 1.0 + 0.2 * field / (np.abs(field).max() + 1e-6)
    sigma = rng.uniform(0.01, 0.04)
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return np.clip(image * 255.0 / max(float(np.percentile(image, 99.5)), 1e-6), 0, 255).astype(np.uint8)


def chest(rng: np.random.Generator, count: int = SET_SIZE) -> list[Sample]:
    return [Sample(f"chest_{i:03d}.png", encode(chest_slice(rng))) for i in range(count)]


def png16(slices: Sequence[np.ndarray]) -> list[Sample]:
    return [Sample(f"png16_{i:03d}.png", encode(_grey(s).astype(np.uint16) * 257)) for i, s in enumerate(slices)]


def jpeg(slices: Sequence[np.ndarray]) -> list[Sample]:
    return [Sample(f"jpeg_{i:03d}.jpg", encode(_grey(s), "JPEG", quality=75)) for i, s in enumerate(slices)]


def resized(slices: Sequence[np.ndarray]) -> list[Sample]:
    out = []
    for i, s in enumerate(slices):
        side = 384 if i % 2 else 200
        picture = Image.fromarray(_grey(s)).resize((side, side), Image.BICUBIC)
        out.append(Sample(f"resized_{side}_{i:03d}.png", encode(np.asarray(picture))))
    return out


def build_sets(slices: Sequence[np.ndarray], seed: int, count: int = SET_SIZE) -> dict[str, list[Sample]]:
    """Every set, out of distribution first. ``slices`` are decoded in-distribution slices
    (e.g. the test split) that the derived sets start from; ``count`` images per set at most."""
    rng = np.random.default_rng([seed, 7])
    chosen = list(slices)[:count]
    return {
        "photos": photos(rng, count),
        "noise": noise(rng, count),
        "blank": blank(rng, count),
        "inverted": inverted(chosen),
        "rotated": rotated(chosen),
        "ct-like": ct_like(seed + 1_000, count),
        "chest": chest(rng, count),
        "png16": png16(chosen),
        "jpeg": jpeg(chosen),
        "resized": resized(chosen),
    }


def write_sets(sets: dict[str, list[Sample]], out: Path) -> list[Path]:
    """Each set as a folder of its files under ``out``."""
    written = []
    for name, samples in sets.items():
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            (folder / sample.name).write_bytes(sample.data)
            written.append(folder / sample.name)
    return written
