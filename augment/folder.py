"""The dataset folder: how samples are stored, written, read back and checked.

A dataset folder (real import, phantom or synthetic) is self-describing::

    DIR/
      img/<id>.npy        float32 (H, W) Hounsfield units, never windowed
      mask/<id>.png       uint8 (H, W), 0 = background, k = lesion class k
      manifest.jsonl      one JSON object per sample (paths relative to DIR)
      dataset.json        kind, classes, spacing, config, versions; written last

`DatasetWriter` stages the whole folder under a hidden temporary name and renames it
into place only once `dataset.json` is written, so a crash never leaves a folder that
looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from augment.anatomy import ANATOMY_KINDS
from augment.errors import DataError
from augment.sample import Sample
from augment.storage import (
    STAGING_RE,
    npy_bytes,
    pid_alive,
    png_bytes,
    remove_stale_staging,
    sha256_bytes,
    sha256_file,
    staging_name,
    to_jsonable,
    versions,
)

MANIFEST = "manifest.jsonl"
DATASET_JSON = "dataset.json"
FORMAT = "lesionforge-dataset"
FORMAT_VERSION = 1

# Keys of a manifest record that are not free-form metadata.
_RECORD_KEYS = ("id", "patient_id", "image", "mask", "boxes", "labels", "sha256")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# What a `DatasetWriter` staging folder can hold: nothing else is ever in one.
_DATASET_STAGING_ENTRIES = {"img", "mask", MANIFEST, DATASET_JSON}
# What lesionforge writes into a dataset folder: the dataset, and `data export`'s VOC
# and COCO files (`augment.io_boxes`). Anything else there is the user's.
_DATASET_ENTRIES = _DATASET_STAGING_ENTRIES | {"voc", "annotations_coco.json", "coco"}


def remove_stale_dataset_staging(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.partial-PID`` dataset staging folders in ``folder`` whose
    process no longer runs, whatever NAME: an interrupted ``data phantom --out A`` is
    cleaned by a later write of B beside it. Only folders holding nothing but what a
    `DatasetWriter` stages (``img/``, ``mask/``, the manifest) are touched.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = STAGING_RE.match(entry.name)
        if not m or not entry.name.rsplit(".", 1)[-1].startswith("partial-"):
            continue
        if entry.is_symlink() or not entry.is_dir() or pid_alive(int(m["pid"])):
            continue
        try:
            names = {e.name for e in entry.iterdir()}
        except OSError:
            continue
        if names and names <= _DATASET_STAGING_ENTRIES and {"img", "mask"} <= names:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class DatasetWriter:
    """Write a dataset folder atomically.

    Usage::

        with DatasetWriter(out, provenance="phantom", anatomy="head-ich", config=cfg) as w:
            for s in samples:
                w.add(s)
        # out/ appears only here, complete, with dataset.json written last.

    If the ``with`` block raises, the staging folder is removed and ``out`` is untouched.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        provenance: str,
        anatomy: str | None = None,
        config: dict[str, Any] | None = None,
        classes: dict[int, str] | None = None,
        spacing: Sequence[float] | None = None,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        inputs: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.out = Path(out)
        check_replaceable(self.out, overwrite=overwrite, inputs=inputs)
        self.provenance, self.anatomy = provenance, anatomy
        self.config = config or {}
        self.classes = classes or {}
        self.spacing = list(spacing) if spacing is not None else None
        self.extra = extra or {}
        self.records: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.staging: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self.staging = staging_name(self.out, "partial")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.out)
            remove_stale_dataset_staging(self.out.parent)
            if self.staging.exists():
                shutil.rmtree(self.staging)
            (self.staging / "img").mkdir(parents=True)
            (self.staging / "mask").mkdir()
        except OSError as e:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise DataError(f"{self.out}: cannot write here ({e.strerror or e})") from None
        return self

    def add(self, sample: Sample) -> dict[str, Any]:
        """Write one sample's files into the staging folder and record it."""
        assert self.staging is not None, "use DatasetWriter as a context manager"
        sid = sample.id
        if not sid or not _ID_RE.match(sid):
            raise DataError(f"sample id {sid!r} is empty or not a safe file name")
        if sid in self._ids:
            raise DataError(f"sample id {sid!r} appears twice")
        self._ids.add(sid)
        img = npy_bytes(sample.image.astype(np.float32))
        msk = png_bytes(sample.mask)
        (self.staging / "img" / f"{sid}.npy").write_bytes(img)
        (self.staging / "mask" / f"{sid}.png").write_bytes(msk)
        record: dict[str, Any] = {
            "id": sid,
            "patient_id": sample.patient_id,
            "image": f"img/{sid}.npy",
            "mask": f"mask/{sid}.png",
            "boxes": [[round(float(v), 3) for v in b] for b in sample.boxes],
            "labels": [int(v) for v in sample.labels],
        }
        for key, value in sample.meta.items():
            if key not in _RECORD_KEYS and key != "source_folder":
                record[key] = to_jsonable(value)
        record.setdefault("synthetic", False)
        record["sha256"] = {"image": sha256_bytes(img), "mask": sha256_bytes(msk)}
        self.records.append(record)
        return record

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.staging is not None
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        return False

    def _commit(self) -> None:
        assert self.staging is not None
        lines = [json.dumps(r, sort_keys=True) for r in self.records]
        (self.staging / MANIFEST).write_text("".join(line + "\n" for line in lines))
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "provenance": self.provenance,
            "anatomy": self.anatomy,
            "n_samples": len(self.records),
            "n_patients": len({r["patient_id"] for r in self.records}),
            "classes": {str(k): v for k, v in sorted(self.classes.items())},
            "spacing": self.spacing,
            "config": self.config,
            "versions": versions(),
            **self.extra,
        }
        # dataset.json last: its presence marks the folder complete.
        (self.staging / DATASET_JSON).write_text(
            json.dumps(to_jsonable(info), indent=2, sort_keys=True) + "\n"
        )
        old = None
        if self.out.exists():
            old = staging_name(self.out, "old")
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def is_dataset_folder(path: Path) -> bool:
    """True when ``path`` is a folder lesionforge wrote (its ``dataset.json`` says so)."""
    try:
        info = json.loads((path / DATASET_JSON).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def check_replaceable(
    out: Path,
    *,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike] = (),
    ours: Any = is_dataset_folder,
    what: str = "a lesionforge dataset folder",
) -> None:
    """Refuse to write ``out`` unless it is new, or ``overwrite`` and lesionforge wrote it.

    ``--overwrite`` replaces only what lesionforge made (``ours(out)``, or an empty
    folder); never a user's folder or file, and never a folder that holds one of
    ``inputs`` (the scans being read).
    """
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DataError(f"{out}: already exists (use --overwrite to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; --overwrite replaces only {what}")
    resolved = out.resolve()
    for src in inputs:
        src_path = Path(src).resolve()
        if src_path == resolved or src_path.is_relative_to(resolved):
            raise DataError(f"{out}: holds the input {src}; choose another output folder")
    if not ours(out) and any(out.iterdir()):
        raise DataError(
            f"{out}: not {what}; --overwrite replaces only what lesionforge wrote "
            "(remove it yourself or choose another output folder)"
        )
    if ours is is_dataset_folder:
        foreign = sorted(
            e.name
            for e in out.iterdir()
            if e.name not in _DATASET_ENTRIES and not STAGING_RE.match(e.name)
        )
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise DataError(
                f"{out}: holds {foreign[0]!r}{more}, which lesionforge did not write; "
                "--overwrite would delete it: move it out first or choose another output folder"
            )


def write_dataset(
    out: str | os.PathLike, samples: Iterable[Sample], *, provenance: str, **kwargs: Any
) -> Path:
    """Write ``samples`` as a dataset folder atomically; see `DatasetWriter`."""
    with DatasetWriter(out, provenance=provenance, **kwargs) as writer:
        for s in samples:
            writer.add(s)
    return Path(out)


def read_dataset(folder: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(dataset.json contents, manifest records)`` of a complete dataset folder.

    Every record is checked before any file is read: a JSON object with a unique,
    file-safe ``id``; ``image``/``mask`` paths inside the folder; ``boxes`` as
    ``[x1, y1, x2, y2]`` finite numbers with ``x1 < x2``, ``y1 < y2``; one integer
    label >= 1 per box, among ``dataset.json``'s ``classes`` when it names any.

    Raises:
        DataError: naming ``manifest.jsonl:LINE`` (or ``dataset.json``) and the problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    info_path = folder / DATASET_JSON
    manifest_path = folder / MANIFEST
    if not info_path.exists():
        if not any(folder.iterdir()):
            raise DataError(f"{folder}: folder is empty")
        raise DataError(
            f"{folder}: no {DATASET_JSON} (not a lesionforge dataset, or an interrupted write); "
            "use `lesionforge data import` for raw scans"
        )
    try:
        info = json.loads(_read_text(info_path))
    except json.JSONDecodeError as e:
        raise DataError(f"{info_path}: corrupt JSON ({e})") from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: expected a JSON object, got {_json_type(info)}")
    _check_dataset_json(info, info_path)
    known = dataset_classes(info, info_path)
    if not manifest_path.exists():
        raise DataError(f"{manifest_path}: missing")
    records = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(_read_text(manifest_path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest_path}:{n}: corrupt JSON line ({e})") from None
        problem = _record_problem(rec, known)
        if problem:
            sid = rec.get("id") if isinstance(rec, dict) else None
            named = f"record {sid!r}: " if isinstance(sid, str) and _ID_RE.match(sid) else ""
            raise DataError(f"{manifest_path}:{n}: {named}{problem}")
        if rec["id"] in first_line:
            raise DataError(
                f"{manifest_path}:{n}: id {rec['id']!r} already used on line {first_line[rec['id']]}"
            )
        first_line[rec["id"]] = n
        records.append(rec)
    if not records:
        raise DataError(f"{manifest_path}: no samples")
    expected = info.get("n_samples")
    if expected is not None and expected != len(records):
        raise DataError(
            f"{info_path}: n_samples is {json.dumps(expected)} but {MANIFEST} lists "
            f"{len(records)} records (a hand-edited or mixed-up folder)"
        )
    return info, records


def _read_text(path: Path) -> str:
    """A dataset folder's text file; binary or unreadable content is a `DataError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (binary or corrupt: byte {e.object[e.start]:#04x} at "
            f"offset {e.start})"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _spacing_problem(value: Any) -> str | None:
    """Why ``value`` is not a pixel spacing (null, or [row_mm, col_mm] > 0), or None."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_number(v) and v > 0 for v in value)
    ):
        return (
            f"'spacing' must be null or [row_mm, col_mm], two positive numbers, "
            f"got {json.dumps(value)}"
        )
    return None


def _check_dataset_json(info: dict[str, Any], where: Path) -> None:
    """``dataset.json``'s own fields: a version this lesionforge reads, n_samples, spacing."""
    version = info.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(
            f"{where}: format_version must be an integer >= 1, got {json.dumps(version)}"
        )
    if version > FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version} was made by a newer lesionforge (this one reads "
            f"up to {FORMAT_VERSION}); upgrade lesionforge"
        )
    n = info.get("n_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise DataError(f"{where}: n_samples must be a count, got {json.dumps(n)}")
    problem = _spacing_problem(info.get("spacing"))
    if problem:
        raise DataError(f"{where}: {problem}")


def dataset_provenance(info: Mapping[str, Any]) -> str | None:
    """Where a dataset's slices came from (``phantom``, ``import``, ``synthetic``...): its
    ``provenance`` (folders written before it existed said ``kind``)."""
    value = info.get("provenance") or info.get("kind")
    return value if isinstance(value, str) else None


def dataset_anatomy(info: Mapping[str, Any], depth: int = 1) -> str | None:
    """What a dataset shows (``head-ich``/``liver``, `augment.anatomy.ANATOMY_KINDS`), or
    None: its ``anatomy``; for folders written before it was recorded, the phantom's
    ``config.kind``, a generator's ``model_config.anatomy`` or (synthetic sets) its hosts'."""
    config = info.get("config") or {}
    model = info.get("model_config") or {}
    for value in (info.get("anatomy"), info.get("kind"), config.get("kind"), model.get("anatomy")):
        if value in ANATOMY_KINDS:
            return value
    hosts = info.get("hosts")
    if depth and isinstance(hosts, str):
        try:
            return dataset_anatomy(json.loads((Path(hosts) / DATASET_JSON).read_text()), depth - 1)
        except (OSError, ValueError):
            return None
    return None


def dataset_classes(info: dict[str, Any], where: str | os.PathLike = DATASET_JSON) -> set[int]:
    """The class ids ``dataset.json`` names (``"classes": {"1": "IPH", ...}``); empty when none."""
    classes = info.get("classes") or {}
    if not isinstance(classes, dict):
        raise DataError(
            f"{where}: 'classes' must map class ids to names, got {_json_type(classes)}"
        )
    ids = set()
    for key in classes:
        try:
            cls = int(key)
        except (TypeError, ValueError):
            cls = -1
        if not 1 <= cls <= 255:
            raise DataError(f"{where}: class id {key!r} is not an integer in 1..255")
        ids.add(cls)
    return ids


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"the number {value}" if isinstance(value, int | float) else "?")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return bool(np.isfinite(value))


def _record_problem(rec: Any, known: set[int]) -> str | None:
    """What is wrong with one manifest record, or None."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {_json_type(rec)}"
    for key in ("id", "image", "mask"):
        if key not in rec:
            return f"record has no {key!r}"
    sid = rec["id"]
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        return f"id {sid!r} is not a safe file name (letters, digits, '_', '.', '-')"
    for key in ("image", "mask"):
        rel = rec[key]
        if not isinstance(rel, str) or not rel:
            return f"{key!r} must be a path relative to the folder, got {rel!r}"
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"path {rel!r} leaves the dataset folder"
    if "patient_id" in rec:  # absent: the sample is its own patient
        pid = rec["patient_id"]
        if not isinstance(pid, str) or not pid.strip():
            return f"'patient_id' must be a non-empty string, got {json.dumps(pid)}"
    if "spacing" in rec:
        problem = _spacing_problem(rec["spacing"])
        if problem:
            return problem
    sha = rec.get("sha256")
    if sha is not None and not (
        isinstance(sha, dict) and all(isinstance(sha.get(k), str) for k in ("image", "mask"))
    ):
        return "'sha256' must be an object with 'image' and 'mask' hex digests"
    if "boxes" not in rec:
        return "record has 'labels' but no 'boxes'" if "labels" in rec else None
    boxes, labels = rec["boxes"], rec.get("labels")
    if not isinstance(boxes, list):
        return f"'boxes' must be a list of [x1, y1, x2, y2], got {_json_type(boxes)}"
    for i, box in enumerate(boxes):
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            return f"box {i} {json.dumps(box)} is not 4 finite numbers [x1, y1, x2, y2]"
        if not (box[0] < box[2] and box[1] < box[3]):
            return f"box {i} {json.dumps(box)} is empty or inverted (needs x1 < x2, y1 < y2)"
    if not isinstance(labels, list) or len(labels) != len(boxes):
        count = len(labels) if isinstance(labels, list) else "no"
        return f"{len(boxes)} boxes but {count} labels"
    for i, label in enumerate(labels):
        if not isinstance(label, int) or isinstance(label, bool) or label < 1:
            return f"label {i} {json.dumps(label)} is not a class id >= 1"
        if known and label not in known:
            return (
                f"label {label} is not a class of {DATASET_JSON} "
                f"(classes {', '.join(map(str, sorted(known)))})"
            )
    return None


def _inside(folder: Path, rel: str, manifest: Path) -> Path:
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{manifest}: path {rel!r} leaves the dataset folder")
    return path


def load_sample(
    folder: str | os.PathLike,
    record: dict[str, Any],
    *,
    verify: bool = False,
    classes: Iterable[int] | None = None,
) -> Sample:
    """Read one manifest record's files into a `Sample`.

    Args:
        folder: the dataset folder.
        record: one record of `read_dataset`.
        verify: check both files against the record's sha256 (a record without one
            cannot be verified: an error).
        classes: the dataset's class ids (`dataset_classes`); when given and not empty,
            a mask value outside them is an error.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    img_path = _inside(folder, record["image"], manifest)
    mask_path = _inside(folder, record["mask"], manifest)
    for p in (img_path, mask_path):
        if not p.exists():
            raise DataError(f"{p}: missing (listed in {manifest})")
    if verify:
        sha = record.get("sha256")
        if not isinstance(sha, dict):
            raise DataError(f"{manifest}: record {record['id']!r} has no sha256 to verify against")
        for key, p in (("image", img_path), ("mask", mask_path)):
            if sha256_file(p) != sha.get(key):
                raise DataError(f"{p}: sha256 differs from {MANIFEST} (file changed or corrupt)")
    try:
        image = np.load(img_path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for truncated/corrupt files
        raise DataError(f"{img_path}: cannot read .npy ({e})") from None
    try:
        with Image.open(mask_path) as im:
            mask = np.asarray(im)
    except Exception as e:
        raise DataError(f"{mask_path}: cannot read mask PNG ({e})") from None
    if image.shape != mask.shape:
        raise DataError(f"{mask_path}: mask shape {mask.shape} differs from image shape {image.shape}")
    if image.ndim == 2:
        height, width = image.shape
        for i, box in enumerate(record.get("boxes") or []):
            x1, y1, x2, y2 = box
            if x1 < 0 or y1 < 0 or x2 > width + 1e-3 or y2 > height + 1e-3:
                raise DataError(
                    f"{manifest}: record {record['id']!r}: box {i} {json.dumps(box)} lies outside "
                    f"its {height}x{width} image {record['image']}"
                )
    if not np.isfinite(image).all():
        raise DataError(f"{img_path}: contains NaN or infinite HU values")
    known = set(classes or ())
    if known:
        # bincount over a uint8 mask is a fraction of np.unique's sort.
        values = (
            np.flatnonzero(np.bincount(mask.ravel())) if mask.dtype == np.uint8 else np.unique(mask)
        )
        unknown = sorted({int(v) for v in values} - known - {0})
        if unknown:
            raise DataError(
                f"{mask_path}: mask value {unknown[0]} is not a class of {DATASET_JSON} "
                f"(classes {', '.join(map(str, sorted(known)))})"
            )
    meta = {k: v for k, v in record.items() if k not in _RECORD_KEYS or k in ("id", "patient_id")}
    meta.setdefault("patient_id", record["id"])
    meta["source"] = str(img_path)
    boxes = np.asarray(record.get("boxes", []), dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(record.get("labels", []), dtype=np.int64)
    if "boxes" not in record:
        boxes, labels = None, None
    return Sample(image=image, mask=mask, boxes=boxes, labels=labels, meta=meta)


# --------------------------------------------------------------------------- splits
