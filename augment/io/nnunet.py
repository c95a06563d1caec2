"""Hand dataset folders to nnU-Net v2 or MONAI as NIfTI cases (`lesionforge data export`).

`export_nnunet` writes an nnU-Net v2 raw dataset::

    OUT/DatasetXXX_NAME/
      imagesTr/<case>_0000.nii.gz   float32 HU (channel 0, "CT": nnU-Net's CT normalisation)
      labelsTr/<case>.nii.gz        uint8, 0 = background, k = class k (consecutive)
      dataset.json                  channel_names, labels (our class names), numTraining,
                                    file_ending; provenance under "lesionforge"
      lesionforge_cases.jsonl       per case: patient, real/synthetic, source slices
      splits_final.json             folds by patient, synthetic cases only in training

`export_nifti` writes the same cases without the channel suffix, Decathlon style
(``imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz``) with a ``datalist.json`` that
MONAI's ``load_decathlon_datalist`` reads (``{"training": [{"image", "label"}, ...]}``).

A case is one slice (a volume of shape (W, H, 1); nnU-Net reads it as (1, H, W)) or,
with ``restack``, all slices of one patient of one folder in slice-index order. The
slice's row/column spacing is kept and z is the slice thickness where the data records
one, else 1 mm. Voxel (i, j) is column i, row j of the slice as lesionforge shows it
(anterior up, patient's right on the left), so the affine is LPS-like
(``diag(-col_mm, -row_mm, z)``) and `augment.io.ct.import_dataset` reads the same slices
back. Every output is staged under a hidden name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from augment.errors import ConfigError, DataError
from augment.folder import (
    DATASET_JSON,
    check_replaceable,
    dataset_classes,
    dataset_provenance,
    load_sample,
    read_dataset,
)
from augment.io.volumes import EXPORT_CASES, safe_id
from augment.storage import remove_stale_staging, staging_name, to_jsonable, versions

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lesionforge-export"
DATALIST = "datalist.json"
SPLITS = "splits_final.json"
N_FOLDS = 5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class _Input:
    folder: Path
    info: dict[str, Any]
    records: list[dict[str, Any]]
    classes: set[int]


@dataclass(frozen=True)
class _Case:
    name: str
    source: int  # index of its input folder
    records: tuple[dict[str, Any], ...]  # slices, in stack order
    patient_id: str
    synthetic: bool


# --------------------------------------------------------------------------- inputs


def _read_inputs(folders: Sequence[str | os.PathLike]) -> list[_Input]:
    if not folders:
        raise ConfigError("export: give at least one dataset folder")
    inputs = []
    for folder in map(Path, folders):
        info, records = read_dataset(folder)
        inputs.append(_Input(folder, info, records, dataset_classes(info, folder / DATASET_JSON)))
    resolved = [i.folder.resolve() for i in inputs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("export: the same dataset folder is given twice")
    return inputs


def _classes(inputs: Sequence[_Input]) -> dict[int, str]:
    """``{class id: name}`` over all inputs: named in dataset.json, or seen in a manifest."""
    names: dict[int, str] = {}
    for inp in inputs:
        declared = {int(k): str(v) for k, v in (inp.info.get("classes") or {}).items()}
        for k, name in declared.items():
            if names.get(k, name) != name:
                raise DataError(
                    f"{inp.folder / DATASET_JSON}: class {k} is {name!r} here but "
                    f"{names[k]!r} in another folder; export folders that share class names"
                )
            names[k] = name
        for rec in inp.records:
            for label in rec.get("labels", []):
                names.setdefault(int(label), f"class_{label}")
    taken = [n.strip().lower() for n in names.values()]
    clash = {"background", "ignore"} & set(taken) or {n for n in taken if taken.count(n) > 1}
    if clash:
        raise DataError(
            f"export: class name {sorted(clash)[0]!r} is reserved or repeated "
            f"(classes {names}); nnU-Net needs unique names other than background/ignore"
        )
    return dict(sorted(names.items()))


def _spacing(rec: dict[str, Any], info: dict[str, Any]) -> tuple[float, float, float] | None:
    """``(row_mm, col_mm, z_mm)``, z the slice thickness (1 mm when not recorded); None if unknown."""
    rc = rec.get("spacing") or info.get("spacing")
    if not rc:
        return None
    phantom = info.get("phantom") or {}
    z = rec.get("slice_thickness") or rec.get("slice_thickness_mm")
    z = z or phantom.get("slice_thickness_mm") or 1.0
    return float(rc[0]), float(rc[1]), float(z)


def _plan(inputs: Sequence[_Input], restack: bool) -> list[_Case]:
    """The cases to write, named by sample id (2D) or patient id (restacked)."""
    cases: list[_Case] = []
    used: dict[str, Path] = {}
    for n, inp in enumerate(inputs):
        if restack:
            groups: dict[str, list[dict[str, Any]]] = {}
            for rec in inp.records:
                groups.setdefault(str(rec.get("patient_id", rec["id"])), []).append(rec)
            planned = [(p, _stack_order(inp.folder, p, recs)) for p, recs in groups.items()]
        else:
            planned = [(rec["id"], [rec]) for rec in inp.records]
        renamed = []
        for name, recs in planned:
            case = safe_id(name)
            if case in used:  # e.g. the same patient ids in a real and a synthetic folder
                case = safe_id(f"{inp.folder.name}_{name}")
                renamed.append(case)
            if case in used:
                raise DataError(
                    f"{inp.folder}: case {case!r} also comes from {used[case]}; "
                    "rename one of the folders"
                )
            used[case] = inp.folder
            patient = str(recs[0].get("patient_id", recs[0]["id"]))
            synthetic = any(bool(r.get("synthetic", False)) for r in recs)
            cases.append(_Case(case, n, tuple(recs), patient, synthetic))
        if renamed:
            log.info("%s: %d case names prefixed with the folder name (e.g. %s)",
                     inp.folder, len(renamed), renamed[0])
    return cases


def _stack_order(folder: Path, patient: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One patient's slices sorted by slice index; a volume needs every index once."""
    missing = [r["id"] for r in recs if not isinstance(r.get("slice_index"), int)]
    if missing:
        raise DataError(
            f"{folder}: slice {missing[0]!r} (patient {patient}) has no slice_index; "
            "export without --restack"
        )
    ordered = sorted(recs, key=lambda r: r["slice_index"])
    index = [r["slice_index"] for r in ordered]
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a["slice_index"] == b["slice_index"]:
            raise DataError(
                f"{folder}: patient {patient} has two slices at index {a['slice_index']} "
                f"({a['id']}, {b['id']}; synthetic slices of one host?); export without --restack"
            )
    if index[-1] - index[0] + 1 != len(index):
        log.warning(
            "%s: patient %s has slices %d..%d with gaps; restacked without them, so its z "
            "spacing is not the distance between neighbours", folder, patient, index[0], index[-1],
        )
    return ordered


# ------------------------------------------------------------------------- writing


def nifti_pair(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], spacing: tuple[float, float, float]
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Slices (H, W) stacked into a float32 HU volume and a uint8 label volume (W, H, K).

    Voxel (i, j, k) is column i, row j of slice k; the affine ``diag(-col, -row, z)`` says
    columns run to the patient's left and rows to posterior, as the slices are shown.
    """
    row_mm, col_mm, z_mm = spacing
    affine = np.diag([-col_mm, -row_mm, z_mm, 1.0])
    out = []
    for arrays, dtype in ((images, np.float32), (masks, np.uint8)):
        volume = np.stack([np.asarray(a, dtype) for a in arrays], axis=-1).transpose(1, 0, 2)
        img = nib.Nifti1Image(np.ascontiguousarray(volume), affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        out.append(img)
    return out[0], out[1]


def _write_cases(
    staging: Path,
    inputs: Sequence[_Input],
    cases: Sequence[_Case],
    lut: np.ndarray,
    image_name: str,
    progress: bool,
) -> Iterator[dict[str, Any]]:
    """Write each case's image and label; yield its row for ``lesionforge_cases.jsonl``."""
    (staging / "imagesTr").mkdir(parents=True)
    (staging / "labelsTr").mkdir()
    for case in tqdm(cases, desc="export", unit="case", disable=not progress):
        inp = inputs[case.source]
        samples = [load_sample(inp.folder, r, classes=inp.classes) for r in case.records]
        shapes = {s.image.shape for s in samples}
        spacings = {_spacing(r, inp.info) for r in case.records}
        if len(shapes) > 1 or len(spacings) > 1:
            raise DataError(
                f"{inp.folder}: patient {case.patient_id} has slices of different "
                f"{'sizes' if len(shapes) > 1 else 'spacings'}; export without --restack"
            )
        spacing = spacings.pop()
        masks = [lut[s.mask] for s in samples]
        for s, m in zip(samples, masks, strict=True):
            if np.any((s.mask > 0) & (m == 0)):  # a folder naming no classes, unlisted value
                raise DataError(f"{s.meta.get('source')}: mask value not among the classes {list(lut.nonzero()[0])}")
        image, label = nifti_pair([s.image for s in samples], masks, spacing or (1.0, 1.0, 1.0))
        nib.save(image, staging / "imagesTr" / image_name.format(case.name))
        nib.save(label, staging / "labelsTr" / f"{case.name}.nii.gz")
        yield {
            "case": case.name,
            "patient_id": case.patient_id,
            "synthetic": case.synthetic,
            "source": str(inp.folder.resolve()),
            "samples": [s.id for s in samples],
            "slice_index": [r.get("slice_index") for r in case.records],
            "spacing": list(spacing) if spacing else None,
            **({"generator": inp.info["generator"]} if inp.info.get("generator") else {}),
        }


def _is_export(path: Path, marker: str) -> bool:
    """True when ``path`` is an export lesionforge wrote (its JSON says so)."""
    try:
        meta = json.loads((path / marker).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("lesionforge") or {}).get("format") == EXPORT_FORMAT


def _export(
    folders: Sequence[str | os.PathLike],
    target: Path,
    *,
    marker: str,
    restack: bool,
    overwrite: bool,
    progress: bool,
    image_name: str,
    finish: Any,
) -> Path:
    """Shared by both formats: check, stage, write the cases, ``finish`` the JSON, rename."""
    inputs = _read_inputs(folders)
    check_replaceable(
        target, overwrite=overwrite, inputs=[i.folder for i in inputs],
        ours=lambda p: _is_export(p, marker), what=f"an export lesionforge wrote ({marker})",
    )  # fmt: skip
    classes = _classes(inputs)
    cases = _plan(inputs, restack)
    # Labels must be consecutive for nnU-Net: class k becomes the k-th named class.
    lut = np.zeros(256, np.uint8)
    for new, old in enumerate(classes, 1):
        lut[old] = new
    staging = staging_name(target, "partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        rows = list(_write_cases(staging, inputs, cases, lut, image_name, progress))
        lines = "".join(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in rows)
        (staging / EXPORT_CASES).write_text(lines)
        provenance = {
            "format": EXPORT_FORMAT,
            "sources": [
                {"folder": str(i.folder.resolve()), "provenance": dataset_provenance(i.info),
                 "n_samples": len(i.records)}
                for i in inputs
            ],
            "restack": restack,
            "class_ids": {str(old): new for new, old in enumerate(classes, 1)},
            "n_real": sum(not r["synthetic"] for r in rows),
            "n_synthetic": sum(r["synthetic"] for r in rows),
            "z_spacing": "the slice thickness where the data records one, else 1 mm",
            "unknown_spacing": sum(r["spacing"] is None for r in rows),
            "versions": versions(),
        }
        finish(staging, rows, classes, provenance)  # writes ``marker`` last
        old = None
        if target.exists():
            old = staging_name(target, "old")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %d cases (%d slices) to %s", len(cases),
             sum(len(c.records) for c in cases), target)
    return target


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def patient_folds(rows: Sequence[dict[str, Any]], n_folds: int = N_FOLDS, seed: int = 0) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` folds: real patients split, never a patient on both
    sides; a synthetic case trains in every fold except those validating its (host) patient."""
    patients = sorted({r["patient_id"] for r in rows if not r["synthetic"]})
    n = min(n_folds, len(patients))
    if n < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(patients))
    folds = []
    for f in range(n):
        val_patients = {patients[i] for k, i in enumerate(order) if k % n == f}
        val = [r["case"] for r in rows if not r["synthetic"] and r["patient_id"] in val_patients]
        train = [r["case"] for r in rows if r["patient_id"] not in val_patients]
        folds.append({"train": train, "val": val})
    return folds


# ----------------------------------------------------------------------------- entry


def export_nnunet(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    dataset_id: int = 501,
    name: str = "Lesion",
    restack: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write dataset folders (real and synthetic) as one nnU-Net v2 raw dataset.

    Args:
        folders: lesionforge dataset folders; their class names must agree.
        out: the ``nnUNet_raw`` folder; ``DatasetXXX_NAME`` is written inside it.
        dataset_id: nnU-Net's dataset id, 1..999.
        name: the dataset name (letters, digits, ``_``, ``-``).
        restack: one volume per patient and folder (slices sorted by slice index)
            instead of one 2D case per slice.
        overwrite: replace an earlier export of the same dataset (only one lesionforge wrote).
        progress: a tqdm bar over cases.

    Returns:
        The ``DatasetXXX_NAME`` folder. nnU-Net uses ``splits_final.json`` when it is
        copied to ``$nnUNet_preprocessed/DatasetXXX_NAME/`` after planning.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConfigError(f"--dataset-id must be an integer in 1..999, got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_' and '-'")
    out = Path(out)
    folder = f"Dataset{dataset_id:03d}_{name}"
    if out.is_dir():  # nnU-Net finds a dataset by id: two names for one id are ambiguous
        others = sorted(
            p.name for p in out.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p.name != folder
        )
        if others:
            raise DataError(
                f"{out}: already holds {others[0]} with dataset id {dataset_id}; choose another --dataset-id"
            )

    def finish(staging: Path, rows, classes: dict[int, str], provenance: dict[str, Any]) -> None:
        folds = patient_folds(rows)
        if folds:
            _write_json(staging / SPLITS, folds)
        else:
            log.info("%s: fewer than 2 real patients: no %s", folder, SPLITS)
        meta = {
            "name": name,
            "description": "exported by lesionforge: float32 HU CT, lesion labels",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{n: k for k, n in enumerate(classes.values(), 1)}},
            "numTraining": len(rows),
            "file_ending": ".nii.gz",
            "lesionforge": {
                **provenance,
                "target": "nnunet",
                "splits": {"file": SPLITS, "folds": len(folds), "by": "patient", "seed": 0}
                if folds
                else None,
            },
        }
        _write_json(staging / DATASET_JSON, meta)

    return _export(
        folders, out / folder, marker=DATASET_JSON, restack=restack, overwrite=overwrite,
        progress=progress, image_name="{}_0000.nii.gz", finish=finish,
    )  # fmt: skip


def export_nifti(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    restack: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write dataset folders as NIfTI image/label pairs with a MONAI ``datalist.json``.

    ``monai.data.load_decathlon_datalist(OUT/"datalist.json")`` gives the ``training``
    list (``image``, ``label``, plus ``patient_id`` and ``synthetic``); the layout is the
    Decathlon's (``imagesTr/``, ``labelsTr/``), which ``lesionforge data import`` reads back.

    Args:
        folders: lesionforge dataset folders; their class names must agree.
        out: the folder to write.
        restack: one volume per patient and folder instead of one 2D case per slice.
        overwrite: replace an earlier export (only one lesionforge wrote).
        progress: a tqdm bar over cases.

    Returns:
        ``out``.
    """

    def finish(staging: Path, rows, classes: dict[int, str], provenance: dict[str, Any]) -> None:
        meta = {
            "name": Path(out).name,
            "description": "exported by lesionforge: float32 HU CT, lesion labels",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(k): n for k, n in enumerate(classes.values(), 1)}},
            "numTraining": len(rows),
            "training": [
                {
                    "image": f"imagesTr/{r['case']}.nii.gz",
                    "label": f"labelsTr/{r['case']}.nii.gz",
                    "patient_id": r["patient_id"],
                    "synthetic": r["synthetic"],
                }
                for r in rows
            ],
            "lesionforge": {**provenance, "target": "monai"},
        }
        _write_json(staging / DATALIST, meta)

    return _export(
        folders, Path(out), marker=DATALIST, restack=restack, overwrite=overwrite,
        progress=progress, image_name="{}.nii.gz", finish=finish,
    )  # fmt: skip


__all__ = ["export_nifti", "export_nnunet", "nifti_pair", "patient_folds"]
