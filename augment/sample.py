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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    ) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise DataError(f"{self.out}: already exists (use --overwrite to replace it)")
        self.kind = kind
        self.config = config or {}
        self.classes = classes or {}
        self.spacing = list(spacing) if spacing is not None else None
        self.extra = extra or {}
        self.records: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.staging: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        (self.staging / "img").mkdir(parents=True)
        (self.staging / "mask").mkdir()
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
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_dataset(
    out: str | os.PathLike, samples: Iterable[Sample], *, kind: str, **kwargs: Any
) -> Path:
    """Write ``samples`` as a dataset folder atomically; see `DatasetWriter`."""
    with DatasetWriter(out, kind=kind, **kwargs) as writer:
        for s in samples:
            writer.add(s)
    return Path(out)


def read_dataset(folder: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(dataset.json contents, manifest records)`` of a complete dataset folder."""
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
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{info_path}: corrupt JSON ({e})") from None
    if not manifest_path.exists():
        raise DataError(f"{manifest_path}: missing")
    records = []
    for n, line in enumerate(manifest_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest_path}:{n}: corrupt JSON line ({e})") from None
        for key in ("id", "image", "mask"):
            if key not in rec:
                raise DataError(f"{manifest_path}:{n}: record has no {key!r}")
        records.append(rec)
    if not records:
        raise DataError(f"{manifest_path}: no samples")
    return info, records


def _inside(folder: Path, rel: str, manifest: Path) -> Path:
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{manifest}: path {rel!r} leaves the dataset folder")
    return path


def load_sample(folder: str | os.PathLike, record: dict[str, Any], *, verify: bool = False) -> Sample:
    """Read one manifest record's files into a `Sample` (``verify`` checks sha256)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    img_path = _inside(folder, record["image"], manifest)
    mask_path = _inside(folder, record["mask"], manifest)
    for p in (img_path, mask_path):
        if not p.exists():
            raise DataError(f"{p}: missing (listed in {manifest})")
    if verify and "sha256" in record:
        for key, p in (("image", img_path), ("mask", mask_path)):
            if sha256_file(p) != record["sha256"].get(key):
                raise DataError(f"{p}: sha256 differs from the manifest (file changed or corrupt)")
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
    if not np.isfinite(image).all():
        raise DataError(f"{img_path}: contains NaN or infinite HU values")
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
