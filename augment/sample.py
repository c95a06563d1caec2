"""`Sample`, the unit every part of lesionforge passes around, and the dataset folder format.

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

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from augment.errors import DataError

MANIFEST = "manifest.jsonl"
DATASET_JSON = "dataset.json"
FORMAT = "lesionforge-dataset"
FORMAT_VERSION = 1

# Keys of a manifest record that are not free-form metadata.
_RECORD_KEYS = ("id", "patient_id", "image", "mask", "boxes", "labels", "sha256")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class Sample:
    """One 2D CT slice with its labels. Always in HU, never windowed in storage.

    Attributes:
        image: float32 (H, W), Hounsfield units.
        mask: uint8 (H, W), 0 = background, k = lesion class k.
        boxes: float32 (N, 4), ``x1, y1, x2, y2`` in pixels, pixel *edges*: a lesion
            covering columns 3..5 has ``x1 = 3, x2 = 6``. Derived from the mask when
            not given (one box per connected component of each class).
        labels: int64 (N,), the class of each box.
        meta: id, patient_id, source, slice index, spacing (row, col mm), synthetic,
            generator, seed, augmentation parameters...
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        mask = np.asarray(self.mask)
        if self.image.ndim != 2:
            raise DataError(f"{self._where()}: image must be 2D, got shape {self.image.shape}")
        if mask.shape != self.image.shape:
            raise DataError(
                f"{self._where()}: mask shape {mask.shape} differs from image shape {self.image.shape}"
            )
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(f"{self._where()}: mask values must be class ids in 0..255")
        if not np.isfinite(self.image).all():
            raise DataError(f"{self._where()}: image contains NaN or infinite HU values")
        self.mask = mask.astype(np.uint8, copy=False)
        if self.boxes is None:
            self.boxes, derived = boxes_from_mask(self.mask)
            if self.labels is None:
                self.labels = derived
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.labels is None:
            self.labels = np.ones(len(self.boxes), dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.boxes):
            raise DataError(
                f"{self._where()}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )

    def _where(self) -> str:
        return str(self.meta.get("source") or self.meta.get("id") or "sample")

    @property
    def id(self) -> str:
        return str(self.meta.get("id", ""))

    @property
    def patient_id(self) -> str:
        return str(self.meta.get("patient_id", self.meta.get("id", "")))

    @property
    def has_lesion(self) -> bool:
        return bool(self.mask.any())

    def copy(self) -> Sample:
        """A deep copy (arrays and meta), so augmenting it never touches the original."""
        import copy

        return Sample(
            image=self.image.copy(),
            mask=self.mask.copy(),
            boxes=self.boxes.copy(),
            labels=self.labels.copy(),
            meta=copy.deepcopy(self.meta),
        )

    def replace(self, **changes: Any) -> Sample:
        """A copy with some fields changed; boxes are re-derived when only the mask changes."""
        if "mask" in changes and "boxes" not in changes:
            changes["boxes"] = None
            changes.setdefault("labels", None)
        changes.setdefault("meta", dict(self.meta))
        return dataclasses.replace(self, **changes)


def boxes_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of each lesion class.

    Returns:
        ``(boxes, labels)``: float32 (N, 4) xyxy with exclusive max edges, int64 (N,).
        Ordered by class, then by component label (row-major first pixel).
    """
    mask = np.asarray(mask)
    boxes: list[list[float]] = []
    labels: list[int] = []
    structure = np.ones((3, 3), dtype=bool)
    for cls in np.unique(mask):
        if cls == 0:
            continue
        components, n = ndimage.label(mask == cls, structure=structure)
        for sl in ndimage.find_objects(components, max_label=n):
            if sl is None:
                continue
            rows, cols = sl
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            labels.append(int(cls))
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- files


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def png_bytes(mask: np.ndarray) -> bytes:
    """Lossless 8-bit PNG of a label mask (deterministic bytes: no timestamps)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour shapes our outputs."""
    import platform

    out = {"python": platform.python_version()}
    for pkg in (
        "lesionforge",
        "numpy",
        "scipy",
        "scikit-image",
        "albumentations",
        "torch",
        "torchvision",
        "nibabel",
        "pydicom",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and Paths to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# Staging names beside an output NAME: ``.NAME.tmp-PID`` (a file being written),
# ``.NAME.partial-PID`` (a folder being written), ``.NAME.old-PID`` (the replaced
# output, deleted after the rename). PID is the writing process.
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|partial|old)-(?P<pid>\d+)$")


def staging_name(path: str | os.PathLike, role: str) -> Path:
    """``.NAME.<role>-PID`` beside ``path``: where this process stages it (role: tmp|partial|old)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{role}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def remove_stale_staging(path: str | os.PathLike) -> list[Path]:
    """Delete the staging files/folders of ``path`` left by processes that no longer run.

    A kill -9 during a write leaves ``.NAME.tmp-PID`` (or ``.partial-``/``.old-``)
    beside ``path``; the next writer of ``path`` removes them. Those of a live process
    (another writer at work) are left alone. Returns what was removed.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING_RE.match(entry.name)
        if not m or m["name"] != path.name or _pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


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
        m = _STAGING_RE.match(entry.name)
        if not m or not entry.name.rsplit(".", 1)[-1].startswith("partial-"):
            continue
        if entry.is_symlink() or not entry.is_dir() or _pid_alive(int(m["pid"])):
            continue
        try:
            names = {e.name for e in entry.iterdir()}
        except OSError:
            continue
        if names and names <= _DATASET_STAGING_ENTRIES and {"img", "mask"} <= names:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file name here")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path.parent}: cannot create the folder ({e.strerror or e})") from None
    remove_stale_staging(path)
    tmp = staging_name(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def human_bytes(n: float) -> str:
    """``1.2 GB``: decimal units, as ``df -H`` shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_free_space(out: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse (`DataError`) before any work when ``needed`` bytes will not fit where ``out``
    is written; ``what`` says what needs them (``"phantom: --n 500 slices of 128x128 px"``).

    The free space is that of the nearest existing folder above ``out``; a folder that
    cannot be asked is left to the write itself to report.
    """
    folder = Path(out).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    free = usage.free
    if usage.total and needed > free:  # total 0: a pseudo file system (/proc), no answer
        raise DataError(
            f"{what} need about {human_bytes(needed)} ({needed} bytes) but {folder} has "
            f"{human_bytes(free)} ({free} bytes) free"
        )


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode())


# ------------------------------------------------------------------------- datasets


class DatasetWriter:
    """Write a dataset folder atomically.

    Usage::

        with DatasetWriter(out, kind="phantom", config=cfg) as w:
            for s in samples:
                w.add(s)
        # out/ appears only here, complete, with dataset.json written last.

    If the ``with`` block raises, the staging folder is removed and ``out`` is untouched.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        kind: str,
        config: dict[str, Any] | None = None,
        classes: dict[int, str] | None = None,
        spacing: Sequence[float] | None = None,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        inputs: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.out = Path(out)
        check_replaceable(self.out, overwrite=overwrite, inputs=inputs)
        self.kind = kind
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
            "kind": self.kind,
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
            if e.name not in _DATASET_ENTRIES and not _STAGING_RE.match(e.name)
        )
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise DataError(
                f"{out}: holds {foreign[0]!r}{more}, which lesionforge did not write; "
                "--overwrite would delete it: move it out first or choose another output folder"
            )


def write_dataset(
    out: str | os.PathLike, samples: Iterable[Sample], *, kind: str, **kwargs: Any
) -> Path:
    """Write ``samples`` as a dataset folder atomically; see `DatasetWriter`."""
    with DatasetWriter(out, kind=kind, **kwargs) as writer:
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


def split_by_patient(
    patient_ids: Sequence[str],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[int]]:
    """Indices per split, with every slice of a patient in exactly one split.

    Patients are shuffled with ``seed`` and cut by ``fractions`` (normalised); each
    split with a non-zero fraction gets at least one patient when there are enough.
    """
    if len(fractions) != len(names):
        raise ValueError("fractions and names differ in length")
    patients = sorted(set(patient_ids))
    if len(patients) < sum(f > 0 for f in fractions):
        raise DataError(
            f"{len(patients)} patients cannot be split into {len(names)} non-empty parts"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    total = float(sum(fractions))
    counts = [int(round(f / total * len(patients))) for f in fractions]
    for i, f in enumerate(fractions):  # every wanted split gets a patient
        if f > 0 and counts[i] == 0:
            counts[i] = 1
    while sum(counts) > len(patients):
        counts[int(np.argmax(counts))] -= 1
    counts[0] += len(patients) - sum(counts)
    assignment: dict[str, str] = {}
    start = 0
    for name, c in zip(names, counts, strict=True):
        for p in shuffled[start : start + c]:
            assignment[p] = name
        start += c
    out: dict[str, list[int]] = {name: [] for name in names}
    for i, p in enumerate(patient_ids):
        out[assignment[p]].append(i)
    return out


def budget_patients(patient_ids: Sequence[str], k: int, *, seed: int = 0) -> list[str]:
    """``k`` patients drawn with ``seed`` (a label budget: "k labelled patients").

    Nested: the patients of budget k are a subset of those of budget k' > k for the
    same seed, so curves over budgets compare like with like.
    """
    patients = sorted(set(patient_ids))
    if k > len(patients):
        raise DataError(f"label budget {k} exceeds the {len(patients)} training patients")
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order[:k]]
