"""Volumes without a server: NIfTI and DICOM geometry, lossless 16-bit slices, masks back
on the source grid, the tumour summary, and output names that cannot leave --out."""

from __future__ import annotations

import gzip
import io
import shutil

import nibabel
import numpy as np
import pytest
from PIL import Image
from volume_files import axial_dicom_pixels, write_dicom_series, write_multiframe_dicom, write_nifti

from brainscan.client.imaging.dicom import group_series, is_dicom, read_dicom_series
from brainscan.client.imaging.files import collect_inputs, inside, safe_stem, safe_stems
from brainscan.client.imaging.volumes import VolumeError, read_nifti, to_uint16
from brainscan.preprocessing import decode_image


def twelve_bit_slices(count=5, height=48, width=40, seed=0) -> list[np.ndarray]:
    """MR-like 12-bit slices: more levels than 8 bits can hold."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for k in range(count):
        head = ((yy - height / 2) / (height * 0.42)) ** 2 + ((xx - width / 2) / (width * 0.42)) ** 2 < 1
        out.append((head * rng.integers(200, 4000, (height, width)) + k).astype(np.uint16))
    return out


def decoded(slices: list[bytes]) -> list[np.ndarray]:
    return [decode_image(data) for data in slices]


def test_nifti_stored_in_any_axis_order_is_cut_into_its_axial_slices_losslessly(tmp_path):
    images = twelve_bit_slices()
    write_nifti(tmp_path / "scan.nii.gz", images)
    volume = read_nifti(tmp_path / "scan.nii.gz")
    assert volume.slices == 5 and volume.data.shape == (5, 40, 48)  # (S, R, A): width runs along R
    slices = decoded(volume.axial_png_slices())
    assert all(s.dtype == np.uint16 for s in slices)
    for got, want in zip(slices, images):  # every 12-bit level survives: no 8-bit squeeze
        np.testing.assert_array_equal(got, want)
    assert len(np.unique(slices[0])) > 256


def test_float_and_negative_intensities_keep_their_place_in_the_volume_range():
    data = np.linspace(-1000.0, 3000.0, 2 * 3 * 4).reshape(2, 3, 4)
    mapped = to_uint16(data)
    assert mapped.min() == 0 and mapped.max() == 65535
    assert (np.diff(mapped.reshape(-1).astype(int)) > 0).all()  # order kept, no level merged
    with pytest.raises(VolumeError, match="NaN"):
        to_uint16(np.array([[[np.nan]]]))


def test_the_mask_volume_lands_on_the_source_grid_with_its_affine_and_header(tmp_path):
    images = twelve_bit_slices()
    source, affine = write_nifti(tmp_path / "scan.nii", images)
    volume = read_nifti(tmp_path / "scan.nii")
    masks = [np.zeros((48, 40), np.uint8) for _ in images]
    masks[1][10:20, 5:9] = 1  # 40 pixels on axial slice 1
    masks[3][30:32, 20:25] = 1  # 10 pixels on axial slice 3
    mask = volume.mask_volume(masks)
    assert mask.shape == source.shape and mask.dtype == np.uint8
    # the SRA storage puts axial slice k at source[k]; write_nifti stored image k there
    expected, _ = write_nifti(tmp_path / "expected.nii", [m.astype(np.uint16) for m in masks])
    np.testing.assert_array_equal(mask, expected)

    volume.write_mask(tmp_path / "scan.mask.nii.gz", mask)
    written = nibabel.load(str(tmp_path / "scan.mask.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask)
    assert written.get_data_dtype() == np.uint8 and written.header.get_xyzt_units()[0] == "mm"
    assert nibabel.aff2axcodes(written.affine) == nibabel.aff2axcodes(affine) == ("S", "R", "A")

    summary = volume.summary(mask)
    voxel_mm3 = 0.9 * 0.8 * 3.0
    assert summary.tumour_voxels == 50
    assert summary.tumour_volume_ml == pytest.approx(50 * voxel_mm3 / 1000)
    assert summary.tumour_slices == [1, 3]
    assert summary.largest_cross_section_slice == 1
    assert summary.largest_cross_section_mm2 == pytest.approx(40 * 0.9 * 0.8)


def test_nifti_scaling_is_applied_and_bad_volumes_are_named(tmp_path):
    images = twelve_bit_slices(count=2)
    write_nifti(tmp_path / "scaled.nii", images, slope=0.5)
    volume = read_nifti(tmp_path / "scaled.nii")
    assert volume.data.max() == pytest.approx(max(i.max() for i in images) * 0.5)

    four_d = nibabel.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4))
    nibabel.save(four_d, str(tmp_path / "fmri.nii.gz"))
    with pytest.raises(VolumeError, match=r"fmri.nii.gz: a 4-D image"):
        read_nifti(tmp_path / "fmri.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(VolumeError, match="broken.nii.gz: not a readable NIfTI"):
        read_nifti(tmp_path / "broken.nii.gz")


def test_a_dicom_series_is_sorted_by_position_and_gets_the_affine_its_geometry_implies(tmp_path):
    images = twelve_bit_slices(count=6)
    affine = write_dicom_series(tmp_path / "series", images, suffix="", rescale=(2.0, -1024.0))
    files = sorted((tmp_path / "series").iterdir())
    assert all(is_dicom(f) for f in files)  # no suffix: found by the DICM marker
    series, rejected, ignored = group_series(files)
    assert len(series) == 1 and not rejected and not ignored and series[0].description == "T1 axial"
    volume = read_dicom_series(series[0])
    np.testing.assert_allclose(volume.affine, affine)
    assert nibabel.aff2axcodes(volume.affine) == ("L", "P", "S")
    # the modality LUT (slope 2, intercept -1024) is applied: values are the real ones
    assert volume.data.min() == pytest.approx(min(int(i.min()) for i in images))
    slices = decoded(volume.axial_png_slices())
    for got, want in zip(slices, images):  # same picture up to the volume-wide linear map
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9999
    masks = [np.zeros_like(i, dtype=np.uint8) for i in images]
    masks[2][5:9, 3:7] = 1
    mask = volume.mask_volume(masks)
    np.testing.assert_array_equal(mask[:, :, 2], axial_dicom_pixels(masks[2]).T)  # voxel [col, row, slice]


def test_dicom_series_that_are_not_one_volume_are_refused_with_the_reason(tmp_path):
    images = twelve_bit_slices(count=3)
    write_dicom_series(tmp_path / "a", images)
    import pydicom

    files = sorted((tmp_path / "a").iterdir())
    ds = pydicom.dcmread(str(files[0]))
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal localizer in the same series
    ds.save_as(str(files[0]))
    with pytest.raises(VolumeError, match="mixes 2 slice orientations"):
        read_dicom_series(group_series(files)[0][0])

    write_dicom_series(tmp_path / "b", images)
    files = sorted((tmp_path / "b").iterdir())
    ds = pydicom.dcmread(str(files[1]))
    ds.ImagePositionPatient = pydicom.dcmread(str(files[0])).ImagePositionPatient
    ds.save_as(str(files[1]))
    with pytest.raises(VolumeError, match="2 slices share a position"):
        read_dicom_series(group_series(files)[0][0])

    # a DICOM file without an image (a DICOMDIR, a report) is set aside with the reason,
    # a broken one is refused, and a copy of a slice is read once
    report = pydicom.dcmread(str(files[2]))
    del report.PixelData, report.Rows, report.ImagePositionPatient
    report.save_as(str(tmp_path / "report.dcm"))
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 10)
    shutil.copy(files[0], tmp_path / "copy.dcm")
    series, rejected, ignored = group_series(
        [*files, tmp_path / "copy.dcm", tmp_path / "report.dcm", tmp_path / "broken.dcm"]
    )
    assert len(series) == 1 and series[0].copies == [tmp_path / "copy.dcm"]
    assert [p.name for p, _ in ignored] == ["report.dcm"] and "without image geometry" in ignored[0][1]
    assert [p.name for p, _ in rejected] == ["broken.dcm"] and "not a readable DICOM" in rejected[0][1]


def test_output_names_never_leave_the_output_folder(tmp_path):
    hostile = ["../../etc/passwd", "/abs/path", "..", ".hidden", "a/../../b", "C:\\windows\\x", "", "ok name"]
    stems = safe_stems(hostile)
    for stem in stems:
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert inside(tmp_path, f"{stem}.mask.png").resolve().parent == tmp_path.resolve()
    assert len(set(stems)) == len(stems)
    assert safe_stem("PHANTOM_0_001_3") == "PHANTOM_0_001_3"
    with pytest.raises(ValueError, match="would leave"):
        inside(tmp_path, "../escape.png")

    # a DICOM header that names a path: the series' outputs are still named inside --out
    write_dicom_series(tmp_path / "in" / "study", twelve_bit_slices(count=2), description="../../../escape")
    (inputs, rejected, _) = collect_inputs([tmp_path / "in"])
    assert len(inputs) == 1 and inputs[0].kind == "dicom" and not rejected
    name = safe_stems([inputs[0].stem])[0]
    assert inside(tmp_path / "out", f"{name}.mask.nii.gz").resolve().parent == (tmp_path / "out").resolve()


def test_folders_mix_images_volumes_and_series_in_the_order_found(tmp_path):
    images = twelve_bit_slices(count=2)
    Image.fromarray(images[0]).save(tmp_path / "a_slice.png")
    write_nifti(tmp_path / "b_volume.nii.gz", images)
    write_dicom_series(tmp_path / "c_series", images, description="flair")
    (tmp_path / "notes.txt").write_text("not an input")
    inputs, rejected, _ = collect_inputs([tmp_path])
    assert [i.kind for i in inputs] == ["image", "nifti", "dicom"]
    assert [i.stem for i in inputs] == ["a_slice", "b_volume", "c_series_3_flair"]
    assert "series 3 flair" in inputs[2].display and not rejected
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).dtype == np.uint16  # 16-bit PNG is what the server decodes


def test_an_enhanced_multiframe_dicom_file_is_one_volume_with_its_per_frame_geometry(tmp_path):
    images = twelve_bit_slices(count=4)
    affine = write_multiframe_dicom(tmp_path / "enhanced.dcm", images)
    inputs, rejected, ignored = collect_inputs([tmp_path / "enhanced.dcm"])
    assert [i.kind for i in inputs] == ["dicom"] and not rejected and not ignored
    volume = read_dicom_series(inputs[0].series)
    np.testing.assert_allclose(volume.affine, affine)
    for got, want in zip(decoded(volume.axial_png_slices()), images):
        np.testing.assert_array_equal(got, want)


# --- hostile and malformed volumes: refused with the reason, from the header where possible ----


def test_an_enhanced_dicom_with_empty_functional_groups_is_refused_not_crashed(tmp_path):
    import pydicom
    from pydicom.sequence import Sequence

    path = tmp_path / "enhanced.dcm"
    write_multiframe_dicom(path, twelve_bit_slices(count=3))
    ds = pydicom.dcmread(str(path))
    ds.SharedFunctionalGroupsSequence = Sequence([])  # present, but no item
    ds.save_as(str(path))
    with pytest.raises(VolumeError, match="ImageOrientationPatient is missing or malformed"):
        read_dicom_series(group_series([path])[0][0])


def test_a_multi_valued_rescale_slope_is_refused_by_name(tmp_path):
    import pydicom

    write_dicom_series(tmp_path / "s", twelve_bit_slices(count=3))
    files = sorted((tmp_path / "s").iterdir())
    ds = pydicom.dcmread(str(files[1]))
    ds.RescaleSlope = [1, 2]
    ds.save_as(str(files[1]))
    with pytest.raises(VolumeError, match=r"RescaleSlope must hold one number, it holds 1\.0\\2\.0$"):
        read_dicom_series(group_series(files)[0][0])


def test_a_nifti_header_claiming_too_many_voxels_is_refused_before_reading(tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))  # 4 G voxels, in a file of a few hundred bytes
    header.set_data_dtype(np.int16)
    path = tmp_path / "claims.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\x01\x02" * 64)
    with pytest.raises(VolumeError, match=r"2048x2048x1024 = 4294967296 voxels; the limit is 134217728"):
        read_nifti(path)


def test_a_deflated_dicom_that_inflates_past_the_limit_is_refused_unread(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from brainscan import contract

    write_dicom_series(tmp_path / "s", twelve_bit_slices(count=1))
    (source,) = sorted((tmp_path / "s").iterdir())
    ds = pydicom.dcmread(str(source))
    ds.add_new(0x00091010, "OB", bytes(4 << 20))  # 4 MB of zeros, a few KB once deflated
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(str(bomb), enforce_file_format=True)
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(contract, "MAX_INFLATED_DICOM_BYTES", 1 << 20)
    series, rejected, _ = group_series([bomb])
    assert not series and "inflates past 1 MB" in rejected[0][1] and "refused before reading it" in rejected[0][1]
    monkeypatch.setattr(contract, "MAX_INFLATED_DICOM_BYTES", 64 << 20)
    assert read_dicom_series(group_series([bomb])[0][0]).data.shape[2] == 1  # under the limit it reads


def test_a_file_named_and_inside_a_named_folder_is_one_input(tmp_path):
    from conftest import encode
    from test_preprocessing import brain_like

    (tmp_path / "a.png").write_bytes(encode(brain_like(), "PNG"))
    (tmp_path / "odd.webp").write_bytes(b"RIFF0000WEBP")
    inputs, _, _ = collect_inputs([tmp_path, tmp_path / "odd.webp", tmp_path / "a.png", tmp_path / "a.png"])
    assert [(i.path.name, i.stem) for i in inputs] == [("a.png", "a"), ("odd.webp", "odd")]
