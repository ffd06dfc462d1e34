"""Answers checked against truths made by hand, through the whole served path.

The second server's networks (``bright_server``) answer from brightness alone, so what
they must answer is worked out here from the image, not from brainscan's code: the mask is
the bright region (every pixel of an L-shaped, off-centre lesion on a non-square slice, at
its own place), the tumour probability is sigmoid((255 f - 128) / 10) for a bright
fraction f, `--evaluate` prints the accuracy and Dice counted by hand on four slices, a
NIfTI volume's mask lands on the lesion's own voxels whatever the affine written here, and
calibration moves the classifier's decisions the right way. A mirrored, transposed or
shifted mask, an inverted decision or a sign error in the calibration fails one of them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import encode
from known_networks import hand_probability
from PIL import Image
from scipy import ndimage
from test_cli import run

pytestmark = pytest.mark.server

DARK, BRIGHT = 20, 235


def l_shaped_lesion(height: int = 150, width: int = 220) -> np.ndarray:
    """A boolean L in the upper right: no mirror, flip or transpose of it is itself."""
    lesion = np.zeros((height, width), bool)
    lesion[30:90, 140:200] = True  # the block
    lesion[75:90, 80:140] = True  # the arm, pointing left along its bottom edge
    return lesion


def test_the_served_mask_covers_the_lesion_at_its_own_pixels(bright_server, tmp_path):
    lesion = l_shaped_lesion()
    images = tmp_path / "in"
    images.mkdir()
    (images / "slice.png").write_bytes(encode(np.where(lesion, BRIGHT, DARK).astype(np.uint8), "PNG"))
    out = tmp_path / "out"
    result = run("predict", images, "--url", bright_server.grpc_url, "--out", out)
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(out / "slice.mask.png")) > 0
    assert mask.shape == lesion.shape  # (150, 220): a transposed mask cannot even fit
    # resizing to the network's 128 x 128 and back may move the edge by a pixel, no more
    inside, outside = ndimage.binary_erosion(lesion, iterations=2), ~ndimage.binary_dilation(lesion, iterations=2)
    assert mask[inside].all(), f"{(~mask[inside]).sum()} lesion pixels missed"
    assert not mask[outside].any(), f"{mask[outside].sum()} pixels marked away from the lesion"
    # the places a mirrored or flipped mask would mark, named
    assert mask[40, 190] and not mask[40, 220 - 1 - 190] and not mask[150 - 1 - 40, 190]
    overlay = np.asarray(Image.open(out / "slice.overlay.png")).astype(int)
    assert overlay[50, 170, 0] > overlay[50, 170, 1] + 50  # the lesion is tinted red
    assert overlay[120, 30, 0] == overlay[120, 30, 1] == overlay[120, 30, 2]  # the rest stays grey


def two_level(bright_rows: int, size: int = 256) -> np.ndarray:
    """A square slice whose top ``bright_rows`` rows are bright. With rows a multiple of 8,
    both resizes (to 160 for the classifier, 128 for the segmenter) keep the edge on a pixel
    boundary, so every answer below is exact."""
    image = np.full((size, size), DARK, np.uint8)
    image[:bright_rows] = BRIGHT
    return image


@pytest.mark.parametrize("bright_rows,label", [(176, "tumour"), (136, "tumour"), (120, "no tumour"), (80, "no tumour")])
def test_the_tumour_probability_and_label_are_the_ones_worked_out_by_hand(bright_server, tmp_path, bright_rows, label):
    (tmp_path / "slice.png").write_bytes(encode(two_level(bright_rows), "PNG"))
    result = run("predict", tmp_path / "slice.png", "--url", bright_server.grpc_url, "--format", "json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["probability"] == pytest.approx(hand_probability(bright_rows / 256), abs=1e-3)
    assert record["label"] == label


def test_evaluate_prints_the_accuracy_and_dice_counted_by_hand(bright_server, tmp_path):
    """Four slices with ground truth (kaggle_3m layout). By hand: slice 1 bright rows 0-175,
    truth the same: tumour, right, Dice 1. Slice 2 bright rows 0-79 (probability 0.008: no
    tumour), truth rows 40-119: wrong, Dice 2*40/(80+80) = 0.5. Slice 3 uniform, truth
    empty: right, no Dice. Slice 4 bright rows 0-135 (0.678: tumour), truth empty: wrong.
    Accuracy 2/4, mean Dice over the two tumour slices 0.75."""
    patient = tmp_path / "data" / "P1"
    patient.mkdir(parents=True)
    truth_rows = {1: (0, 176), 2: (40, 120), 3: None, 4: None}
    images = {1: two_level(176), 2: two_level(80), 3: np.full((256, 256), 90, np.uint8), 4: two_level(136)}
    for k, image in images.items():
        (patient / f"P1_{k}.tif").write_bytes(encode(image, "TIFF"))
        truth = np.zeros((256, 256), np.uint8)
        if truth_rows[k]:
            truth[truth_rows[k][0] : truth_rows[k][1]] = 255
        (patient / f"P1_{k}_mask.tif").write_bytes(encode(truth, "TIFF"))
    result = run("predict", patient, "--url", bright_server.grpc_url, "--evaluate", "--format", "json")
    assert result.returncode == 0, result.stderr
    records = {json.loads(line)["file"].rsplit("_", 1)[1]: json.loads(line) for line in result.stdout.splitlines()}
    assert {k: r["label"] for k, r in records.items()} == {
        "1.tif": "tumour",
        "2.tif": "no tumour",
        "3.tif": "no tumour",
        "4.tif": "tumour",
    }
    assert records["1.tif"]["dice"] == pytest.approx(1.0) and records["2.tif"]["dice"] == pytest.approx(0.5)
    assert "dice" not in records["3.tif"] and "dice" not in records["4.tif"]
    assert "accuracy 0.500 on 4 labelled images, mean Dice 0.750 on 2 tumour images" in result.stderr


def _rotation_about_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _affine(columns: np.ndarray, origin=(-30.0, -40.0, -20.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = columns, origin
    return affine


# (name, voxel-to-world affine written by hand, mm³ per voxel, axial slices, axial slices through the lesion)
AFFINES = [
    ("ras", _affine(np.diag([0.9, 0.8, 3.0])), 0.9 * 0.8 * 3.0, 16, 8),
    ("lps", _affine(np.diag([-0.9, -0.8, 3.0])), 0.9 * 0.8 * 3.0, 16, 8),
    # sagittal: i runs anterior, j runs inferior (rows go down), k runs to the right (3 mm slices)
    ("sagittal", _affine(np.array([[0, 0, 3.0], [1.0, 0, 0], [0, -1.0, 0]])), 1.0 * 1.0 * 3.0, 64, 20),
    ("oblique", _affine(_rotation_about_x(20) @ np.diag([0.9, 0.8, 3.0])), 0.9 * 0.8 * 3.0, 16, 8),
]


def lesion_volume() -> np.ndarray:
    """A 64 x 64 x 16 voxel grid, zero but for an L-shaped, off-centre lesion."""
    lesion = np.zeros((64, 64, 16), bool)
    lesion[8:30, 36:56, 4:12] = True
    lesion[30:44, 36:44, 4:7] = True  # the arm
    return lesion


@pytest.mark.parametrize("name,affine,voxel_mm3,slices,lesion_slices", AFFINES, ids=[a[0] for a in AFFINES])
def test_a_nifti_mask_lands_on_the_lesions_voxels_whatever_the_affine(
    bright_server, tmp_path, name, affine, voxel_mm3, slices, lesion_slices
):
    import nibabel

    lesion = lesion_volume()
    folder = tmp_path / "in"
    folder.mkdir()
    nibabel.save(nibabel.Nifti1Image(np.where(lesion, 1000, 0).astype(np.int16), affine), str(folder / "scan.nii.gz"))
    out = tmp_path / "out"
    result = run("predict", folder, "--url", bright_server.grpc_url, "--out", out, "--format", "json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    written = nibabel.load(str(out / "scan.mask.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    mask = np.asarray(written.dataobj) > 0
    assert mask.shape == lesion.shape
    assert mask[ndimage.binary_erosion(lesion)].all(), "lesion voxels missed"
    assert not mask[~ndimage.binary_dilation(lesion, iterations=2)].any(), "voxels marked away from the lesion"
    assert (mask & lesion).sum() / (mask | lesion).sum() > 0.8
    assert record["slices"] == slices and record["tumour_slices"] == lesion_slices
    assert record["tumour_volume_ml"] == pytest.approx(mask.sum() * voxel_mm3 / 1000, rel=1e-4)
