"""Volumes for `augment.io.ct`: NIfTI layouts and DICOM series, cut into displayed slices.

Whatever the format, a volume is reoriented to the closest canonical (RAS+) axes, as
nibabel's ``as_closest_canonical`` does, and cut along the last axis (inferior ->
superior). Each slice is shown in the radiological convention of a standard axial
DICOM: anterior up, the patient's right on the image's left. A DICOM series is turned
into the same (array, RAS affine) pair a NIfTI file holds, so both share that code and
a NIfTI mask converted from a series (e.g. by dcm2niix) lines up with it.

The readers yield `RawSlice` objects: values as stored (HU, label values), not yet
label-mapped, selected or resampled; `augment.io.ct` does that.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from augment.errors import ConfigError, DataError
from augment.io.info import report

log = logging.getLogger(__name__)

NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


def one_line(e: BaseException) -> str:
    """An exception as one short line (library messages can span lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def natural_key(text: str) -> list[Any]:
    """Sort key putting "2" before "10" (case numbers are rarely zero-padded)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def safe_id(name: str) -> str:
    """``name`` as a dataset id: letters, digits, ``_ . -``, not starting with a dot."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip("._-") or "case"


def visible_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Files under ``folder`` in natural order, hidden names skipped."""
    # MSD archives ship "._liver_0.nii.gz" AppleDouble files next to the real ones.
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in found if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.as_posix()))


def rel_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError, EOFError, UnpicklingError for corrupt files
        raise DataError(f"{path}: cannot read .npy ({one_line(e)})") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: .npy holds {array.dtype}, expected numbers")
    return array


@dataclass(frozen=True)
class Case:
    """One unit of import: a volume, a DICOM series or a single slice file."""

    name: str
    image: Path
    mask: Path | None = None
    patient: str | None = None
    files: tuple[Path, ...] = ()  # DICOM series files
    index: int | None = None  # slice number parsed from a slice file name


@dataclass
class RawSlice:
    """A slice as stored: HU, raw label values (or no mask), its metadata so far."""

    hu: np.ndarray
    labels: np.ndarray | None
    meta: dict[str, Any]
    where: str  # names the image in errors
    mask_where: str  # names the mask in errors


# -------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Volume:
    """A volume in closest-canonical (RAS+) voxel order, values still unscaled."""

    data: np.ndarray  # (I, J, K): I -> patient right, J -> anterior, K -> superior
    slope: float
    inter: float
    zooms: tuple[float, float, float]
    ornt: np.ndarray  # nibabel orientation that took the stored axes here
    path: Path
    affine: np.ndarray | None = None  # voxel -> RAS+ mm of ``data`` (the canonical affine)

    def slice(self, k: int) -> np.ndarray:
        """Slice ``k`` as displayed: anterior up, patient's right on the left."""
        s = self.data[:, :, k].T[::-1, ::-1]
        if self.slope != 1 or self.inter != 0:
            s = s.astype(np.float64) * self.slope + self.inter
        return np.ascontiguousarray(s)


def canonical(
    data: np.ndarray, affine: np.ndarray, slope: float, inter: float, path: Path
) -> Volume:
    """The closest-canonical `Volume` of a stored array and its RAS+ affine."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise DataError(f"{path}: holds {data.dtype} values; expected real numbers (HU or labels)")
    check_affine(affine, path)
    # The transform of nibabel's as_closest_canonical, applied to the unscaled array as
    # views (no copy, no float64 blow-up of a 500-slice int16 volume).
    ornt = nib.orientations.io_orientation(affine)
    canon = nib.orientations.apply_orientation(data, ornt)
    canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    zooms = tuple(round(float(z), 6) for z in nib.affines.voxel_sizes(canon_affine))
    return Volume(canon, float(slope), float(inter), zooms, ornt, path, canon_affine)


def check_affine(affine: np.ndarray, path: Path) -> None:
    """A voxel -> mm affine with finite, positive voxel sizes on three independent axes."""
    affine = np.asarray(affine, dtype=np.float64)
    rzs = affine[:3, :3]
    if not np.isfinite(affine).all():
        raise DataError(f"{path}: the voxel-to-mm affine holds NaN or infinite values")
    zooms = np.sqrt((rzs**2).sum(axis=0))
    if (zooms <= 0).any():
        shown = ", ".join(f"{z:g}" for z in zooms)
        raise DataError(
            f"{path}: voxel spacing ({shown} mm) must be > 0 on every axis (a zero pixel "
            "spacing or a broken affine)"
        )
    if abs(np.linalg.det(rzs)) <= 1e-6 * float(np.prod(zooms)):
        raise DataError(
            f"{path}: the voxel axes of the affine are not independent (a broken orientation)"
        )


def check_mask_grid(img: Volume, msk: Volume) -> None:
    """The mask lies on the image's voxel grid: same shape and (canonical) affine.

    Both are compared after reorientation, so a mask stored in another axis order
    but covering the same voxels passes; a flipped, shifted (by half a voxel or
    more) or resampled one does not, as pairing it voxel by voxel would mislabel.
    """
    if msk.data.shape != img.data.shape:
        raise DataError(
            f"{msk.path}: mask shape {msk.data.shape} differs from image shape {img.data.shape} "
            f"(both in canonical RAS+ order; image {img.path.name})"
        )
    if img.affine is None or msk.affine is None:
        return
    a, b = np.asarray(img.affine, float), np.asarray(msk.affine, float)
    zooms = np.asarray(img.zooms, float)
    same_axes = np.allclose(a[:3, :3], b[:3, :3], rtol=0, atol=1e-3 * float(zooms.max()))
    shift = np.abs(np.linalg.solve(a[:3, :3], b[:3, 3] - a[:3, 3])) if same_axes else None
    if not same_axes or (shift >= 0.5).any():

        def grid(v: Volume) -> str:
            codes = "".join(nib.orientations.ornt2axcodes(v.ornt))
            zooms = "x".join(f"{z:g}" for z in v.zooms)
            return f"{codes} {zooms} mm, corner {np.round(v.affine[:3, 3], 1).tolist()}"

        raise DataError(
            f"{msk.path}: mask affine differs from the image {img.path.name}'s (mask {grid(msk)}; "
            f"image {grid(img)}): the mask is flipped, shifted or on another voxel grid; save it "
            "with the image's affine"
        )


def read_nifti(path: Path) -> Volume:
    """A NIfTI file as a canonical `Volume`; any read failure is a one-line `DataError`."""
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
        proxy = img.dataobj
        if nib.is_proxy(proxy):
            data = np.asanyarray(proxy.get_unscaled())
            slope, inter = float(proxy.slope), float(proxy.inter)
        else:
            data, slope, inter = np.asanyarray(proxy), 1.0, 0.0
        return canonical(data, img.affine, slope, inter, path)
    except DataError:
        raise
    except Exception as e:  # nibabel raises many types for truncated or foreign files
        raise DataError(f"{path}: cannot read NIfTI ({one_line(e)})") from None


def volume_slices(
    case: Case, img: Volume, msk: Volume | None, root: Path, sources: Sequence[Path], spacing: bool
) -> Iterator[RawSlice]:
    """The displayed slices of a volume (and its mask), with their metadata."""
    if msk is not None:
        check_mask_grid(img, msk)
    col_mm, row_mm, thickness = img.zooms
    n = img.data.shape[2]
    out_axis, flip = int(img.ornt[2][0]), int(img.ornt[2][1])
    for k in range(n):
        source = case.image
        if len(sources) == n and out_axis == 2:  # the stored slices are the axial slices
            source = sources[k if flip == 1 else n - 1 - k]
        meta = {
            "id": f"{case.name}_s{k:03d}",
            "patient_id": case.patient or case.name,
            "source_file": rel_path(source, root),
            "slice_index": k,
            "n_slices": n,
            "spacing": [row_mm, col_mm] if spacing else None,
            "slice_thickness": thickness,
            "synthetic": False,
        }
        where = f"{img.path} slice {k}"
        if msk is None:
            yield RawSlice(img.slice(k), None, meta, where, where)
        else:
            yield RawSlice(img.slice(k), msk.slice(k), meta, where, f"{msk.path} slice {k}")


# ---------------------------------------------------------------------------- NIfTI


def _pair(
    images: list[tuple[str, Path]], masks: list[tuple[str, Path]], expected: str, name: str = "{}"
) -> list[Case]:
    """Cases from (key, path) lists; ``expected`` and ``name`` are formatted with the key."""
    by_key = dict(masks)
    cases, seen = [], set()
    for key, img in images:
        if key in seen:
            raise DataError(f"{img}: a second image for case {key!r}")
        seen.add(key)
        if key not in by_key:
            raise DataError(f"{img}: missing mask (expected {expected.format(key)})")
        cases.append(Case(safe_id(name.format(key)), img, by_key[key]))
    return cases


def nifti_cases(src: Path, mask_dir: Path | None) -> tuple[str, list[Case]]:
    """``(layout, cases)`` of a NIfTI folder; `DataError` when no layout matches."""

    def nifti(folder: Path, recursive: bool = False) -> list[tuple[str, Path]]:
        files = visible_files(folder, recursive)
        return [(NIFTI_RE.sub("", p.name), p) for p in files if NIFTI_RE.search(p.name)]

    if mask_dir is not None:
        if not mask_dir.is_dir():
            raise DataError(f"{mask_dir}: mask folder does not exist")
        return "mask_dir", _pair(nifti(src), nifti(mask_dir), f"{mask_dir}/{{}}.nii[.gz]")
    for layout, img_sub, mask_sub in (
        ("ct-ich", "ct_scans", "masks"),
        ("msd", "imagesTr", "labelsTr"),
    ):
        if (src / img_sub).is_dir() and (src / mask_sub).is_dir():
            expected = f"{src / mask_sub}/{{}}.nii[.gz]"
            images, masks = nifti(src / img_sub), nifti(src / mask_sub)
            if layout == "msd" and is_nnunet(src, images, masks):
                return "nnunet", nnunet_cases(src, images, masks)
            patients = _exported_patients(src)
            cases = _pair(images, masks, expected)
            return layout, [replace(c, patient=patients.get(c.name)) for c in cases]
    files = [p for _, p in nifti(src, recursive=True)]

    def keyed(pattern: str) -> list[tuple[str, Path]]:
        matches = ((re.match(pattern, p.name, re.IGNORECASE), p) for p in files)
        return [(m.group(1), p) for m, p in matches if m]

    # (layout, image pattern, mask pattern, case name, expected mask): group 1 pairs them.
    for layout, img_re, mask_re, name, expected in (
        (
            "lits",
            r"^volume-(\d+)\.nii(\.gz)?$",
            r"^segmentation-(\d+)\.nii(\.gz)?$",
            "volume-{}",
            "segmentation-{}.nii",
        ),
        ("suffix", r"^(.+)_ct\.nii(\.gz)?$", r"^(.+)_label\.nii(\.gz)?$", "{}", "{}_label.nii.gz"),
    ):
        images = keyed(img_re)
        if images:
            return layout, _pair(images, keyed(mask_re), expected, name)
    if files:
        raise DataError(
            f"{src}: NIfTI files but no known layout (ct_scans/+masks/, imagesTr/+labelsTr/, "
            "volume-N/segmentation-N, *_ct/*_label); pass mask_dir to pair images and masks by name"
        )
    raise DataError(f"{src}: no NIfTI files")


def read_dataset_json(src: Path, name: str = "dataset.json") -> dict[str, Any]:
    """A Decathlon / nnU-Net ``dataset.json`` (or MONAI ``datalist.json``) beside the data; {} if none."""
    path = src / name
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s: unreadable (%s); using label numbers", path, one_line(e))
        return {}
    return meta if isinstance(meta, dict) else {}


def msd_label_names(src: Path) -> dict[int, str]:
    """Label names from ``dataset.json`` (or a MONAI ``datalist.json``).

    Decathlon writes ``"labels": {"1": "liver"}``, nnU-Net v2 ``{"liver": 1}``; an nnU-Net
    region (a name mapped to a list of labels) names no single label and is skipped.
    """
    meta = read_dataset_json(src) or read_dataset_json(src, "datalist.json")
    labels = meta.get("labels", {})
    names: dict[int, str] = {}
    try:
        for key, value in labels.items():
            if isinstance(value, int) and not isinstance(value, bool):
                names[value] = str(key)  # nnU-Net v2: name -> value
            elif not isinstance(value, (list, tuple)):
                names[int(key)] = str(value)  # Decathlon: "value" -> name
    except (AttributeError, TypeError, ValueError) as e:
        log.warning("%s: label names unreadable (%s); using label numbers", src, one_line(e))
        return {}
    return names


# ------------------------------------------------------------------------- nnU-Net

# nnU-Net names an image CASE_XXXX.nii.gz (XXXX: the channel) and its label CASE.nii.gz.
_CHANNEL_RE = re.compile(r"^(.+)_(\d{4})$")
NNUNET_ENDINGS = (".nii.gz", ".nii")
# Written by `augment.io.nnunet`: the patient of each exported case.
EXPORT_CASES = "lesionforge_cases.jsonl"


def is_nnunet(src: Path, images: list[tuple[str, Path]], masks: list[tuple[str, Path]]) -> bool:
    """An nnU-Net raw folder: a v2 ``dataset.json``, or channel-suffixed images whose
    unsuffixed names are the labels' (a Decathlon folder names both alike)."""
    meta = read_dataset_json(src)
    if "channel_names" in meta or "file_ending" in meta:
        return True
    label_keys = {k for k, _ in masks}
    return bool(images) and all(
        (m := _CHANNEL_RE.match(k)) and k not in label_keys and m.group(1) in label_keys
        for k, _ in images
    )


def nnunet_cases(
    src: Path, images: list[tuple[str, Path]], masks: list[tuple[str, Path]]
) -> list[Case]:
    """Cases of an nnU-Net raw folder: the CT channel of ``imagesTr`` paired with ``labelsTr``.

    ``imagesTs`` holds unlabelled cases; a lesionforge sample always has a mask (an empty
    one says "no lesion"), so they are not imported (logged).
    """
    meta = read_dataset_json(src)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NNUNET_ENDINGS:
        raise DataError(
            f"{src / 'dataset.json'}: file_ending {ending!r}; lesionforge imports NIfTI "
            "(.nii.gz, .nii) nnU-Net datasets"
        )
    by_channel: dict[str, list[tuple[str, Path]]] = {}
    for key, path in images:
        m = _CHANNEL_RE.match(key)
        if m is None:
            raise DataError(f"{path}: no channel suffix (nnU-Net names images CASE_0000{ending})")
        by_channel.setdefault(m.group(2), []).append((m.group(1), path))
    channel_names = meta.get("channel_names") or meta.get("modality") or {}
    try:
        named = {f"{int(k):04d}": str(v) for k, v in dict(channel_names).items()}
    except (TypeError, ValueError):
        named = {}
    channels = sorted(by_channel)
    if len(channels) > 1:
        ct = [c for c in channels if named.get(c, "").strip().lower() == "ct"]
        if len(ct) != 1:
            listed = ", ".join(f"{c} ({named.get(c, '?')})" for c in channels)
            raise DataError(
                f"{src}: {len(channels)} image channels ({listed}); lesionforge imports one CT "
                "channel: name exactly one 'CT' in dataset.json channel_names"
            )
        log.info("%s: importing channel %s (CT) of %s", src, ct[0], ", ".join(channels))
        channels = ct
    if not channels:
        raise DataError(f"{src / 'imagesTr'}: no NIfTI images")
    expected = f"{src / 'labelsTr'}/{{}}{ending}"
    cases = _pair(by_channel[channels[0]], masks, expected)
    tests = [p for p in visible_files(src / "imagesTs")] if (src / "imagesTs").is_dir() else []
    if tests:
        log.info(
            "%s: %d imagesTs files not imported (no labels; lesionforge samples need masks)",
            src, len(tests),
        )
    patients = _exported_patients(src)
    return [replace(c, patient=patients.get(c.name)) for c in cases]


def _exported_patients(src: Path) -> dict[str, str]:
    """``{case: patient id}`` of a folder lesionforge exported (else {}): 2D cases of one
    patient stay one patient, so a split never puts them on both sides."""
    path = src / EXPORT_CASES
    if not path.is_file():
        return {}
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {str(r["case"]): safe_id(str(r["patient_id"])) for r in rows}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); one patient per case", path, one_line(e))
        return {}


def nifti_slices(case: Case, root: Path) -> Iterator[RawSlice]:
    img = read_nifti(case.image)
    msk = read_nifti(case.mask) if case.mask is not None else None
    yield from volume_slices(case, img, msk, root, (case.image,), spacing=True)


# ---------------------------------------------------------------------------- DICOM


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom``/``.ima`` file, or an extensionless one with the DICM preamble."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    if path.suffix or path.name == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _dcmread(path: Path, headers_only: bool = False) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors...
        raise DataError(f"{path}: corrupt DICOM ({one_line(e)})") from None


def dicom_cases(src: Path, mask_dir: Path | None) -> tuple[str, list[Case]]:
    """One case per series (folder + SeriesInstanceUID), with its mask when given."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    patients: dict[tuple[Path, str], str] = {}
    for path in (p for p in visible_files(src) if is_dicom(p)):
        ds = _dcmread(path, headers_only=True)
        key = (path.parent, str(ds.get("SeriesInstanceUID", "")))
        groups.setdefault(key, []).append(path)
        patients.setdefault(key, str(ds.get("PatientID", "") or ""))
    if not groups:
        raise DataError(f"{src}: no DICOM files")
    numbered: dict[Path, int] = {}
    cases = []
    for (folder, uid), files in groups.items():
        base = folder.relative_to(src).as_posix().replace("/", "_") if folder != src else src.name
        numbered[folder] = numbered.get(folder, 0) + 1
        several = sum(f == folder for f, _ in groups) > 1
        name = safe_id(f"{base}_{numbered[folder]}" if several else base)
        # PatientID, when present, keeps two series of one patient in the same split.
        pid = patients[(folder, uid)]
        cases.append(Case(name, folder, None, safe_id(pid) if pid else None, tuple(files)))
    if mask_dir is None:
        return "dicom", cases
    if mask_dir.is_file():
        if len(cases) != 1:
            raise ConfigError(
                f"{mask_dir}: one mask file given but {src} holds {len(cases)} series"
            )
        return "dicom", [replace(cases[0], mask=mask_dir)]
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask file or folder does not exist")
    with_masks = []
    for case in cases:
        found = [mask_dir / f"{case.name}{ext}" for ext in (".nii.gz", ".nii", ".npy")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise DataError(
                f"{case.image}: missing mask for this series "
                f"(expected {mask_dir}/{case.name}.nii.gz, .nii or .npy)"
            )
        with_masks.append(replace(case, mask=found[0]))
    return "dicom", with_masks


def _series_volume(
    case: Case, strict: bool = False
) -> tuple[Volume, np.ndarray, tuple[int, ...], list[Path], bool]:
    """A series as ``(volume, RAS affine, stored (n, rows, cols), sorted files, spacing known)``.

    Files without RescaleSlope/RescaleIntercept (or a modality LUT) have their stored
    values taken as HU: a warning, or a `DataError` when ``strict``.
    """
    dss = [(p, _dcmread(p)) for p in case.files]
    p0, ds0 = dss[0]
    if int(ds0.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(
            f"{p0}: multi-frame DICOM is not supported; convert it to NIfTI (e.g. dcm2niix)"
        )
    unscaled = [
        p
        for p, ds in dss
        if not ("RescaleSlope" in ds and "RescaleIntercept" in ds)
        and "ModalityLUTSequence" not in ds
    ]
    if unscaled:
        some = "all" if len(unscaled) == len(dss) else f"{len(unscaled)} of"
        problem = (
            f"{case.image}: DICOM without RescaleSlope/RescaleIntercept ({some} {len(dss)} files, "
            f"e.g. {unscaled[0].name}); stored values taken as HU"
        )
        report([problem], strict=strict, logger=log)
    ps = ds0.get("PixelSpacing")  # (between rows, between columns) in mm
    if ps is not None:
        try:
            values = [float(v) for v in ps]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
            shown = f"[{', '.join(f'{v:g}' for v in values)}]" if values else repr(str(ps))
            raise DataError(f"{p0}: PixelSpacing {shown} is not two positive numbers (mm)")
    iop = np.asarray([float(v) for v in ds0.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])])
    row_cos, col_cos = iop[:3], iop[3:]  # directions of increasing column, increasing row
    normal = np.cross(row_cos, col_cos)
    positioned = all("ImagePositionPatient" in ds for _, ds in dss)
    if positioned:
        dss.sort(key=lambda t: float(np.dot(np.asarray(t[1].ImagePositionPatient, float), normal)))
        pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in dss])
        gaps = np.diff(pos @ normal)
        if (np.abs(gaps) < 1e-4).any():
            dup = dss[int(np.argmin(np.abs(gaps))) + 1][0]
            raise DataError(f"{dup}: two slices of the series at the same position")
    else:
        missing = [p for p, ds in dss if "InstanceNumber" not in ds]
        if missing:
            raise DataError(
                f"{missing[0]}: neither ImagePositionPatient nor InstanceNumber; cannot order the series"
            )
        dss.sort(key=lambda t: int(t[1].InstanceNumber))
    slices = []
    for p, ds in dss:
        try:
            hu = apply_modality_lut(ds.pixel_array, ds)  # RescaleSlope/Intercept (or LUT) -> HU
        except Exception as e:
            raise DataError(f"{p}: corrupt DICOM pixel data ({one_line(e)})") from None
        if slices and hu.shape != slices[0].shape:
            raise DataError(
                f"{p}: {hu.shape} pixels, other slices of the series have {slices[0].shape}"
            )
        slices.append(np.asarray(hu, dtype=np.float32))
    row_mm, col_mm = (float(ps[0]), float(ps[1])) if ps else (1.0, 1.0)
    n = len(dss)
    if positioned and n > 1:
        step = (pos[-1] - pos[0]) / (n - 1)
        if np.ptp(gaps) > 0.01 * abs(float(np.mean(gaps))):
            log.warning(
                "%s: uneven slice spacing (%.3g..%.3g mm)", case.image, gaps.min(), gaps.max()
            )
    else:
        step = normal * float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_cos * col_mm, col_cos * row_mm, step
    lps[:3, 3] = pos[0] if positioned else 0.0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient axes are LPS+, NIfTI's RAS+
    stack = np.stack(slices, axis=0)  # (n, rows, cols), the layout of a series-aligned NPY mask
    vol = canonical(stack.transpose(2, 1, 0), affine, 1.0, 0.0, case.image)
    return vol, affine, stack.shape, [p for p, _ in dss], ps is not None


def dicom_slices(case: Case, root: Path, *, strict: bool = False) -> Iterator[RawSlice]:
    vol, affine, shape, files, spacing = _series_volume(case, strict)
    msk = None
    if case.mask is not None and case.mask.suffix.lower() == ".npy":
        array = load_npy(case.mask)
        if array.shape != shape:
            raise DataError(
                f"{case.mask}: mask shape {array.shape} differs from the series shape {shape} "
                "(slices, rows, columns)"
            )
        msk = canonical(array.transpose(2, 1, 0), affine, 1.0, 0.0, case.mask)
    elif case.mask is not None:
        msk = read_nifti(case.mask)
    yield from volume_slices(case, vol, msk, root, files, spacing)
