"""Volume geometry: NIfTI reorientation as nibabel does it, DICOM series order and masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from augment.errors import DataError
from augment.folder import load_sample, read_dataset
from augment.io.ct import import_dataset
from augment.io.volumes import read_nifti
from tests.augment.ct_builders import (
    displayed,
    series_affine,
    write_dicom_series,
    write_nifti,
)


def load_all(out):
    info, records = read_dataset(out)
    return info, [load_sample(out, r) for r in records]


def series_hu(n: int = 5, rows: int = 12, cols: int = 10) -> np.ndarray:
    """Whole-number HU that differ per slice, row and column (so any mix-up shows)."""
    k, r, c = np.mgrid[:n, :rows, :cols]
    return (k * 100 + r * 3 + c - 500).astype(np.float32)


def test_reorientation_matches_nibabel_as_closest_canonical(tmp_path):
    # Stored axes (superior, left, anterior) with a flip: nothing like RAS order.
    affine = np.array(
        [[0, -0.8, 0, 10], [0, 0, 0.7, -5], [2.5, 0, 0, 3], [0, 0, 0, 1]], dtype=float
    )
    data = np.random.default_rng(0).integers(-1000, 1000, (4, 20, 16)).astype(np.int16)
    path = write_nifti(tmp_path / "src" / "a_ct.nii.gz", data, affine=affine)
    write_nifti(tmp_path / "src" / "a_label.nii.gz", np.zeros_like(data), affine=affine)
    expected = nib.as_closest_canonical(nib.load(path)).get_fdata()
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.slice(0), displayed(expected, 0))
    info, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    assert len(samples) == 4  # the stored first axis is the axial one
    for s in samples:
        np.testing.assert_array_equal(s.image, displayed(expected, s.meta["slice_index"]))
        # Canonical axes: columns along x (0.8 mm), rows along y (0.7 mm), slices 2.5 mm.
        assert s.meta["spacing"] == [0.7, 0.8] and s.meta["slice_thickness"] == 2.5


def test_dicom_series_sorted_by_position_with_exact_hu(tmp_path):
    hu = series_hu()
    files = write_dicom_series(tmp_path / "src" / "series", hu, spacing=(0.7, 0.6))
    info, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    assert info["source_format"] == "dicom" and info["spacing"] == [0.7, 0.6]
    assert [s.id for s in samples] == [f"series_s{k:03d}" for k in range(5)]
    assert {s.patient_id for s in samples} == {"P1"}
    order = np.random.default_rng(0).permutation(5)  # the builder's file -> slice shuffle
    for k, s in enumerate(samples):
        # Standard axial orientation: the displayed slice is the stored pixel array.
        np.testing.assert_array_equal(s.image, hu[k])
        assert not s.has_lesion  # no mask given: unlabelled data
        assert s.meta["slice_thickness"] == 2.5
        assert s.meta["source_file"] == f"series/{files[int(np.flatnonzero(order == k)[0])].name}"


def test_dicom_without_positions_falls_back_to_instance_number(tmp_path):
    hu = series_hu(n=3)
    files = write_dicom_series(tmp_path / "src", hu)
    order = np.random.default_rng(0).permutation(3)
    for path, k in zip(files, order, strict=True):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.InstanceNumber = int(k) + 1
        ds.save_as(path)
    _, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    for k, s in enumerate(samples):
        np.testing.assert_array_equal(s.image, hu[k])


def _lesion_masks(n: int, rows: int, cols: int) -> np.ndarray:
    masks = np.zeros((n, rows, cols), np.uint8)
    masks[2, 1:4, 6:9] = 1  # off-centre and asymmetric, so a flip would show
    masks[3, 8:11, 1:3] = 2
    return masks


def test_dicom_mask_from_aligned_nifti_and_npy(tmp_path):
    hu = series_hu()
    masks = _lesion_masks(*hu.shape)
    write_dicom_series(tmp_path / "src" / "s", hu, spacing=(0.7, 0.6))
    affine = series_affine(5, (0.7, 0.6), 2.5, (-100.0, -120.0, 50.0))
    # NIfTI from a series (as dcm2niix writes it) is indexed [column, row, slice].
    nifti = write_nifti(tmp_path / "m.nii.gz", masks.transpose(2, 1, 0), affine=affine)
    np.save(tmp_path / "m.npy", masks)  # (slices, rows, columns) in position order
    for name, mask_file in (("nii", nifti), ("npy", tmp_path / "m.npy")):
        out = import_dataset(tmp_path / "src", tmp_path / name, mask_dir=mask_file)
        _, samples = load_all(out)
        for k, s in enumerate(samples):
            np.testing.assert_array_equal(s.mask, masks[k])
        assert [s.id for s in samples if s.has_lesion] == ["s_s002", "s_s003"]


def test_dicom_mask_folder_per_series(tmp_path):
    hu = series_hu(n=3)
    masks = _lesion_masks(4, 12, 10)[1:]
    for name in ("a", "b"):
        write_dicom_series(tmp_path / "src" / name, hu, patient=name.upper())
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "a.npy", masks)
    with pytest.raises(DataError, match=r"src/b: missing mask for this series"):
        import_dataset(tmp_path / "src", tmp_path / "out", mask_dir=tmp_path / "masks")
    assert not (tmp_path / "out").exists()
    np.save(tmp_path / "masks" / "b.npy", masks[::-1])
    _, samples = load_all(
        import_dataset(tmp_path / "src", tmp_path / "out", mask_dir=tmp_path / "masks")
    )
    assert [s.patient_id for s in samples] == ["A"] * 3 + ["B"] * 3
    np.testing.assert_array_equal(samples[4].mask, masks[1])
    np.testing.assert_array_equal(samples[3].mask, masks[2])


def test_dicom_mask_with_wrong_shape(tmp_path):
    write_dicom_series(tmp_path / "src", series_hu(n=3))
    np.save(tmp_path / "m.npy", np.zeros((3, 10, 12), np.uint8))  # rows and columns swapped
    with pytest.raises(
        DataError,
        match=r"m\.npy: mask shape \(3, 10, 12\) differs from the series shape \(3, 12, 10\)",
    ):
        import_dataset(tmp_path / "src", tmp_path / "out", mask_dir=tmp_path / "m.npy")


def test_two_series_in_one_folder_and_duplicate_positions(tmp_path):
    write_dicom_series(tmp_path / "src" / "x", series_hu(n=2), seed=1)
    for path in write_dicom_series(tmp_path / "tmp", series_hu(n=2) + 7, seed=2):
        path.rename(tmp_path / "src" / "x" / f"B{path.name}")
    _, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    assert sorted({s.id.rsplit("_s", 1)[0] for s in samples}) == ["x_1", "x_2"]
    dup = tmp_path / "dup"
    files = write_dicom_series(dup, series_hu(n=3))
    ds = pydicom.dcmread(files[0])
    ds.ImagePositionPatient = pydicom.dcmread(files[1]).ImagePositionPatient
    ds.save_as(files[0])
    with pytest.raises(DataError, match="two slices of the series at the same position"):
        import_dataset(dup, tmp_path / "out_dup")
