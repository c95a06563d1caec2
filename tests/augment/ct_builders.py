"""Small CT files made in code for the import tests: NIfTI volumes and DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def displayed(volume: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of a RAS+ voxel array as the importer shows it: anterior up, right on the left."""
    return volume[:, :, k].T[::-1, ::-1]


def phantom_volume(
    shape: tuple[int, int, int] = (48, 48, 6), lesion_slices: tuple[int, ...] = (2, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """``(hu, labels)`` in RAS+ voxel order: air -1000, a body disc of 30 HU, and on
    ``lesion_slices`` a 6x5 voxel lesion of 70 HU with label 1. HU are whole numbers.
    """
    ni, nj, nk = shape
    i, j = np.mgrid[:ni, :nj]
    body = (i - ni / 2) ** 2 + (j - nj / 2) ** 2 < (min(ni, nj) / 2 - 3) ** 2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(nk):
        hu[..., k][body] = 30 + k  # a different HU per slice, to tell slices apart
    for k in lesion_slices:
        labels[20:26, 14:19, k] = 1
        hu[20:26, 14:19, k] = 70
    return hu, labels


def write_nifti(
    path: Path,
    data: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    *,
    affine: np.ndarray | None = None,
    slope_inter: tuple[float, float] | None = None,
) -> Path:
    affine = np.diag([*spacing, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)
    return path


def series_affine(
    n: int, spacing: tuple[float, float], thickness: float, origin: tuple[float, float, float]
) -> np.ndarray:
    """RAS+ affine of an axial series (IOP 1,0,0,0,1,0) for arrays indexed [column, row, slice]."""
    row_mm, col_mm = spacing
    lps = np.array(
        [
            [col_mm, 0, 0, origin[0]],
            [0, row_mm, 0, origin[1]],
            [0, 0, thickness, origin[2]],
            [0, 0, 0, 1],
        ],
        dtype=float,
    )
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float] = (0.7, 0.6),
    thickness: float = 2.5,
    origin: tuple[float, float, float] = (-100.0, -120.0, 50.0),
    patient: str = "P1",
    seed: int = 0,
) -> list[Path]:
    """Write ``hu`` (n, rows, cols; slice 0 lowest) as a CT series with shuffled files.

    File names and InstanceNumber follow a random permutation, so only sorting by
    ImagePositionPatient recovers the slice order. Stored values are HU + 1024
    (RescaleSlope 1, RescaleIntercept -1024), as scanners store them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(len(hu))
    paths = []
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{file_index:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = file_index + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + float(k) * thickness]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (np.asarray(hu[k]) + 1024).astype("<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
