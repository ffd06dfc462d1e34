"""Synthetic ("phantom") brain-MRI slices with tumours, in the kaggle_3m LGG layout.

Built from the real MNI152 T1 volume that ships in the ``nilearn`` wheel. Each patient is
one random deformation of that brain with its own scanner look (gamma, bias field, noise,
skull and scalp); in part of the patients a 3-D tumour (irregular outline, enhancing rim,
darker necrotic core, surrounding oedema) crosses a run of consecutive slices.

Layout written (the same as kaggle_3m, so real data drops in unchanged)::

    OUT/<patient>/<patient>_<k>.tif        8-bit grey slice, 256 x 256
    OUT/<patient>/<patient>_<k>_mask.tif   8-bit mask, 0 or 255
    OUT/dataset.json                       what the slices are (brainscan.dataset_card.DatasetCard)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from brainscan.dataset_card import DatasetCard
from brainscan.errors import DataError
from brainscan.orientation import axial_image
from brainscan.series_header import Plane

SLICE_SIZE = 256
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Axial MNI slices with a large cross-section of brain (the volume has 189 slices, 1 mm).
Z_RANGE = (48, 128)
# Slices are 2-3 MNI slices apart, so a patient spans at most this many inside the volume.
MAX_SLICES_PER_PATIENT = 1 + (188 - Z_RANGE[0]) // 3
MIN_TUMOUR_RADIUS = 7.0  # pixels at 256 x 256; smaller cross-sections are not drawn
# A patient's scale (Patient.scale, 0.85 to 1.12) zooms the 1 mm MNI brain onto the canvas.
SCALE_RANGE = (0.85, 1.12)
_SPACING = (round(1 / SCALE_RANGE[1], 3), round(1 / SCALE_RANGE[0], 3))
PHANTOM_CARD = DatasetCard(
    description="synthetic axial T1-weighted brain MR slices (the MNI152 brain with skull, tumours and scanner looks)",
    modality="MR",
    plane=Plane.AXIAL,
    body_part="BRAIN",
    pixel_spacing_mm=_SPACING,
)
# what the phantom's look makes of the slices (``write_phantom_dataset(look=...)``)
PHANTOM_CARDS = {
    "mr": PHANTOM_CARD,
    "ct": DatasetCard(
        description="synthetic axial head CT slices in a brain window (the MNI152 phantom rendered as CT)",
        modality="CT",
        plane=Plane.AXIAL,
        body_part="HEAD",
        pixel_spacing_mm=_SPACING,
    ),
}


def load_mni_t1() -> np.ndarray:
    """The MNI152 T1 volume shipped in nilearn, as float32 (x, y, z), values 0..255."""
    import nibabel
    import nilearn.datasets

    path = Path(nilearn.datasets.__file__).parent / "data" / MNI_T1
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install nilearn (the 'train' extra)")
    return np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)


@dataclass
class Tumour:
    """A 3-D tumour: centre as fractions of the brain's extent, radius, z centre and half-height."""

    centre: tuple[float, float]
    radius: float
    z_centre: int
    z_half: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows shaping the outline
    core_fraction: float
    rim_brightness: float
    core_brightness: float
    tissue_brightness: float
    oedema_reach: float
    oedema_darkening: float


@dataclass
class Patient:
    """What stays the same across one patient's slices."""

    name: str
    z_slices: list[int]
    scale: float
    aspect: float
    angle: float
    shift: tuple[float, float]
    gamma: float
    contrast: float
    noise: float
    bias: float
    skull: tuple[float, ...]
    tumour: Tumour | None


def _random_patient(rng: np.random.Generator, name: str, n_slices: int, tumour_fraction: float) -> Patient:
    step = int(rng.integers(2, 4))
    span = step * (n_slices - 1)
    z0 = int(rng.integers(Z_RANGE[0], max(Z_RANGE[0] + 1, Z_RANGE[1] - span)))
    z_slices = [z0 + step * k for k in range(n_slices)]
    tumour = None
    if rng.random() < tumour_fraction:
        z_lo, z_hi = z_slices[0], z_slices[-1]
        n_harm = 4
        harmonics = np.stack(
            [
                np.arange(2, 2 + n_harm),
                rng.uniform(0.0, 0.14, n_harm) / np.arange(1, 1 + n_harm) ** 0.5,
                rng.uniform(0, 2 * np.pi, n_harm),
            ],
            axis=1,
        )
        tumour = Tumour(
            centre=(float(rng.uniform(-0.55, 0.55)), float(rng.uniform(-0.55, 0.55))),
            radius=float(rng.uniform(11, 36)),
            # anywhere in the span: which anatomy a slice shows must not predict its label
            z_centre=int(rng.integers(z_lo, z_hi + 1)),
            z_half=float(rng.uniform(0.25, 0.45) * span + 4),
            harmonics=harmonics,
            core_fraction=float(rng.uniform(0.2, 0.7)),
            rim_brightness=float(rng.uniform(1.05, 1.35)),
            core_brightness=float(rng.uniform(0.15, 0.4)),
            tissue_brightness=float(rng.uniform(0.55, 0.8)),
            oedema_reach=float(rng.uniform(1.25, 1.9)),
            oedema_darkening=float(rng.uniform(0.6, 0.85)),
        )
    return Patient(
        name=name,
        z_slices=z_slices,
        scale=float(rng.uniform(*SCALE_RANGE)),
        aspect=float(rng.uniform(0.9, 1.1)),
        angle=float(rng.uniform(-14, 14)),
        shift=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
        gamma=float(rng.uniform(0.75, 1.35)),
        contrast=float(rng.uniform(0.75, 1.0)),
        noise=float(rng.uniform(0.01, 0.045)),
        bias=float(rng.uniform(0.05, 0.3)),
        # CSF gap, inner table, diploe, outer table, muscle, fat (pixel thicknesses)
        skull=tuple(float(t) for t in rng.uniform([1.5, 1.5, 2, 1.5, 1, 3], [3, 3, 5, 3, 3, 7])),
        tumour=tumour,
    )


def _warp(image: np.ndarray, patient: Patient, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Place an MNI slice on the 256 x 256 canvas: affine (patient) + elastic (per slice)."""
    h, w = image.shape
    centre = (w / 2.0, h / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, patient.angle + rng.uniform(-2, 2), patient.scale)
    matrix[0, :2] *= patient.aspect
    matrix[0, 2] += SLICE_SIZE / 2.0 - centre[0] + patient.shift[0]
    matrix[1, 2] += SLICE_SIZE / 2.0 - centre[1] + patient.shift[1]
    placed = cv2.warpAffine(image, matrix, (SLICE_SIZE, SLICE_SIZE), flags=cv2.INTER_LINEAR)
    alpha, sigma = rng.uniform(150, 400), rng.uniform(10, 16)
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (SLICE_SIZE, SLICE_SIZE)), sigma) * alpha
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (SLICE_SIZE, SLICE_SIZE)), sigma) * alpha
    grid_y, grid_x = np.mgrid[0:SLICE_SIZE, 0:SLICE_SIZE].astype(np.float32)
    map_x, map_y = grid_x + dx.astype(np.float32), grid_y + dy.astype(np.float32)
    return cv2.remap(placed, map_x, map_y, cv2.INTER_LINEAR), (map_x, map_y)


# Intensities (0..1) of the layers around the brain: CSF gap, inner table, diploe, outer table,
# muscle, scalp fat. On T1 MR bone is dark, marrow and fat bright; a CT in a brain window
# (level 40, width 80 HU) shows the opposite: bone saturates white, fat is black.
SKULL_LEVELS = {"mr": (0.06, 0.04, 0.62, 0.05, 0.35, 0.9), "ct": (0.06, 1.0, 0.85, 1.0, 0.62, 0.0)}
# A T1 brain intensity (MNI, 0..1: CSF about 0.25, grey matter 0.6, white matter 0.85) ->
# its CT brain-window value (CSF 5 HU, grey matter 40, white matter 30: 0.06, 0.5, 0.375).
CT_BRAIN = ((0.0, 0.12, 0.25, 0.6, 0.85, 1.0), (0.0, 0.03, 0.06, 0.5, 0.375, 0.375))


def _skull(brain: np.ndarray, thickness: tuple[float, ...], rng: np.random.Generator, look: str = "mr") -> np.ndarray:
    """Intensity (0..1) of CSF gap, skull tables, marrow, muscle and scalp fat around the brain."""
    distance = ndimage.distance_transform_edt(~brain)
    # jitter the layer boundaries along the head so the outline is not a perfect offset
    distance = distance + ndimage.gaussian_filter(rng.normal(0, 1, brain.shape), 8) * 6
    levels = SKULL_LEVELS[look]
    out = np.zeros(brain.shape, np.float32)
    edge = 0.0
    for level, size in zip(levels, thickness):
        ring = (distance > edge) & (distance <= edge + size)
        out[ring] = level
        edge += size
    return out


def _tumour_layers(shape: tuple[int, int], centre: tuple[float, float], radius: float, tumour: Tumour) -> np.ndarray:
    """Normalised distance d from the tumour centre: d <= 1 inside the irregular outline."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx)
    outline = np.ones_like(theta)
    for k, amplitude, phase in tumour.harmonics:
        outline += amplitude * np.cos(k * theta + phase)
    return np.sqrt(dx * dx + dy * dy) / (radius * outline)


def render_slice(
    volume: np.ndarray, patient: Patient, index: int, rng: np.random.Generator, look: str = "mr"
) -> tuple[np.ndarray, np.ndarray]:
    """One slice of one patient -> (uint8 image 256x256, uint8 mask 0/255). ``look`` "ct"
    renders the same anatomy as a head CT in a brain window would show it (an
    out-of-distribution set for the intended-use gate, ``brainscan.train.ood``)."""
    z = patient.z_slices[index]
    mni = axial_image(volume, z) / 255.0
    warped, _ = _warp(mni, patient, rng)
    brain = ndimage.binary_fill_holes(warped > 0.04)
    brain = ndimage.binary_opening(brain, iterations=2)
    image = np.where(brain, warped, 0.0).astype(np.float32)
    mask = np.zeros(image.shape, bool)

    tumour = patient.tumour
    if tumour is not None and brain.any():
        dz = (z - tumour.z_centre) / tumour.z_half
        radius = tumour.radius * math.sqrt(max(0.0, 1.0 - dz * dz))
        if radius >= MIN_TUMOUR_RADIUS:
            ys, xs = np.nonzero(ndimage.binary_erosion(brain, iterations=int(radius * 0.6) + 3))
            if len(ys):
                cy, cx = ys.mean(), xs.mean()
                half_h, half_w = (ys.max() - ys.min()) / 2.0, (xs.max() - xs.min()) / 2.0
                target = np.array([cy + tumour.centre[0] * half_h, cx + tumour.centre[1] * half_w])
                nearest = np.argmin((ys - target[0]) ** 2 + (xs - target[1]) ** 2)
                centre = (float(ys[nearest]), float(xs[nearest]))
                d = _tumour_layers(image.shape, centre, radius, tumour)
                texture = 1.0 + ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 2) * 0.25
                # oedema: darkening that fades out smoothly towards oedema_reach
                fade = np.clip((tumour.oedema_reach - d) / (tumour.oedema_reach - 1.0), 0.0, 1.0)
                fade = ndimage.gaussian_filter(fade, 3.0)
                image *= np.where(brain, 1.0 - (1.0 - tumour.oedema_darkening) * fade, 1.0)
                lesion = brain & (d <= 1)
                rim_inner = 1.0 - rng.uniform(0.15, 0.3)
                tissue = np.where(d > rim_inner, tumour.rim_brightness, tumour.tissue_brightness)
                tissue = np.where(d <= tumour.core_fraction * rim_inner, tumour.core_brightness, tissue)
                image[lesion] = (tissue * texture)[lesion] * float(np.percentile(warped[brain], 90))
                mask = lesion

    if look == "ct":
        image = np.where(brain, np.interp(image, *CT_BRAIN), 0.0).astype(np.float32)
        image = image + _skull(brain, patient.skull, rng, look)
        image = ndimage.gaussian_filter(image, 0.6) + rng.normal(0, 0.02, image.shape)
        return np.clip(image * 255.0, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255
    image = image + _skull(brain, patient.skull, rng)
    image = ndimage.gaussian_filter(image, 0.6)
    # scanner look: gamma, smooth bias field, Rician noise, arbitrary scale
    image = np.clip(image, 0, None) ** patient.gamma
    field = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 40)
    field = field / (np.abs(field).max() + 1e-6)
    image *= 1.0 + patient.bias * field
    noise = patient.noise
    image = np.sqrt((image + rng.normal(0, noise, image.shape)) ** 2 + rng.normal(0, noise, image.shape) ** 2)
    image *= patient.contrast * 255.0 / max(float(np.percentile(image, 99.5)), 1e-6)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def render_patients(
    seed: int, patients: int, slices_per_patient: int = 10, tumour_fraction: float = 0.8, look: str = "mr"
):
    """Every slice of ``patients`` synthetic patients, as (patient name, slice number from 1,
    image, mask); the same seed gives the same slices."""
    if patients < 1 or slices_per_patient < 1:
        raise DataError("need at least one patient and one slice per patient")
    if slices_per_patient > MAX_SLICES_PER_PATIENT:
        raise DataError(
            f"at most {MAX_SLICES_PER_PATIENT} slices per patient: the MNI volume has 189 axial "
            f"slices and a patient's slices are 2-3 of them apart"
        )
    volume = load_mni_t1()
    for p in range(patients):
        rng = np.random.default_rng([seed, p])
        name = f"PHANTOM_{seed}_{p:03d}"
        patient = _random_patient(rng, name, slices_per_patient, tumour_fraction)
        for k in range(slices_per_patient):
            image, mask = render_slice(volume, patient, k, rng, look)
            yield name, k + 1, image, mask


def write_phantom_dataset(
    out: Path,
    patients: int,
    seed: int,
    slices_per_patient: int = 10,
    tumour_fraction: float = 0.8,
    look: str = "mr",
) -> list[Path]:
    """Write ``patients`` synthetic patients under ``out``, and the dataset's description
    (``dataset.json``: what the slices are, for the models' intended use); same seed -> same
    files. ``look`` "ct" renders them as head CT (a dataset of another modality)."""
    out = Path(out)
    written = []
    for name, k, image, mask in render_patients(seed, patients, slices_per_patient, tumour_fraction, look):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{name}_{k}"
        Image.fromarray(image).save(f"{stem}.tif")
        Image.fromarray(mask).save(f"{stem}_mask.tif")
        written.append(Path(f"{stem}.tif"))
    PHANTOM_CARDS[look].write(out)
    return written
