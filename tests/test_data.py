"""Phantom generation and dataset readers: reproducible files, the kaggle_3m layout,
splits by patient."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainscan.train import datasets
from brainscan.train.phantom import write_phantom_dataset


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.tif"))}


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    write_phantom_dataset(tmp_path / "a", patients=2, seed=5, slices_per_patient=3)
    write_phantom_dataset(tmp_path / "b", patients=2, seed=5, slices_per_patient=3)
    write_phantom_dataset(tmp_path / "c", patients=2, seed=6, slices_per_patient=3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a").values()).isdisjoint(digest(tmp_path / "c").values())


def test_phantom_uses_the_kaggle_3m_layout(phantom_dir):
    patients = sorted(p.name for p in phantom_dir.iterdir() if p.is_dir())
    assert len(patients) == 6 and sorted(p.name for p in phantom_dir.iterdir() if p.is_file()) == ["dataset.json"]
    card = json.loads((phantom_dir / "dataset.json").read_text())  # what the slices are, for the intended use
    assert (card["modality"], card["plane"], card["body_part"]) == ("MR", "axial", "BRAIN")
    first = phantom_dir / patients[0]
    assert (first / f"{patients[0]}_1.tif").exists() and (first / f"{patients[0]}_1_mask.tif").exists()
    image = np.asarray(Image.open(first / f"{patients[0]}_1.tif"))
    mask = np.asarray(Image.open(first / f"{patients[0]}_1_mask.tif"))
    assert image.shape == (256, 256) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}


def test_phantom_has_tumour_and_tumour_free_slices_with_tumours_inside_the_head(phantom_dir):
    samples = datasets.find_kaggle3m(phantom_dir)
    labels = [s.label for s in samples]
    assert 0 < sum(labels) < len(labels)
    for sample in samples:
        if sample.label:
            image = np.asarray(Image.open(sample.image)).astype(float)
            mask = np.asarray(Image.open(sample.mask)) > 0
            # the lesion lies on tissue, and differs from what surrounds it
            assert image[mask].mean() > 20
            assert mask.sum() > 50


def test_kaggle_reader_orders_slices_and_reads_labels_from_masks(phantom_dir):
    samples = datasets.find_kaggle3m(phantom_dir)
    assert len(samples) == 36
    first = [s for s in samples if s.patient == samples[0].patient]
    assert [s.index for s in first] == list(range(1, 7))
    assert all(s.mask == datasets.mask_path_for(s.image) for s in samples)


def test_yes_no_reader(tmp_path):
    for folder, n in (("yes", 3), ("no", 2)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(tmp_path / folder / f"img{i}.jpg")
    samples = datasets.find_samples(tmp_path)
    assert sorted(s.label for s in samples) == [0, 0, 1, 1, 1]
    assert len({s.patient for s in samples}) == 5


def test_missing_or_empty_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.find_samples(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no images found"):
        datasets.find_samples(tmp_path)


def test_split_is_by_patient_deterministic_and_75_15_10():
    patients = [f"P{i:03d}" for i in range(40)]
    split = datasets.split_patients(patients, seed=3)
    assert [len(split[k]) for k in datasets.SPLITS] == [30, 6, 4]
    assert set().union(*split.values()) == set(patients)
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert split == datasets.split_patients(list(reversed(patients)), seed=3)
    assert split != datasets.split_patients(patients, seed=4)


def test_no_patient_has_slices_in_two_splits(phantom_dir):
    samples = datasets.find_kaggle3m(phantom_dir)
    split = datasets.split_patients([s.patient for s in samples], seed=0)
    owners = {}
    for name in datasets.SPLITS:
        for sample in datasets.select(samples, split[name]):
            assert owners.setdefault(sample.patient, name) == name


def test_a_patient_becomes_an_mr_series_read_back_in_slice_order(tmp_path):
    from brainscan.client.imaging.dicom import group_series, read_dicom_series
    from brainscan.train.phantom_dicom import write_phantom_series

    patient = tmp_path / "P"
    patient.mkdir()
    for k in (1, 2, 10):  # 10 sorts before 2 as text; slice k is filled with 20 * k
        Image.fromarray(np.full((8, 6), 20 * k, np.uint8)).save(patient / f"P_{k}.tif")
        Image.fromarray(np.zeros((8, 6), np.uint8)).save(patient / f"P_{k}_mask.tif")
    files = write_phantom_series(patient, tmp_path / "series")
    assert len(files) == 3
    series, rejected, ignored = group_series(files)
    assert len(series) == 1 and not rejected and not ignored
    volume = read_dicom_series(series[0])
    assert volume.slice_spacing == 5.0
    means = [float(volume.data[..., k].mean()) for k in range(volume.data.shape[-1])]
    assert means in ([20.0, 40.0, 200.0], [200.0, 40.0, 20.0])


def test_more_slices_than_the_volume_holds_is_named(tmp_path):
    from brainscan.train.phantom import MAX_SLICES_PER_PATIENT

    with pytest.raises(ValueError, match=f"at most {MAX_SLICES_PER_PATIENT} slices per patient"):
        write_phantom_dataset(tmp_path, 1, 0, slices_per_patient=MAX_SLICES_PER_PATIENT + 1)
    assert not list(tmp_path.rglob("*.tif"))  # refused before anything is written
