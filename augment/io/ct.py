"""Import real CT into a dataset folder: NIfTI volumes, DICOM series, PNG/NPY slices.

`import_dataset` is the entry point. Volumes (see `augment.io.volumes`) are reoriented
to the closest canonical axes and cut into axial slices shown anterior up, patient's
right on the image's left, as a standard axial DICOM is.

Masks go through a label map (``lesion_labels``): ``None`` keeps every non-zero label
as its own class; a list ``[a, b]`` makes label ``a`` class 1 and ``b`` class 2 and
everything else background; a dict ``{src: dst}`` is strict: every non-zero label in
the mask must be a key (map to 0 to drop one), else "unknown label value".

Box formats (VOC/COCO) live in `augment.io.boxes` and are re-exported here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.transform import resize
from tqdm import tqdm

from augment.anatomy import check_anatomy
from augment.errors import ConfigError, DataError
from augment.folder import DatasetWriter
from augment.io.boxes import export_boxes, read_coco, read_voc, write_coco, write_voc
from augment.io.info import HuAudit, report
from augment.io.volumes import (
    NIFTI_RE,
    Case,
    RawSlice,
    dicom_cases,
    dicom_slices,
    is_dicom,
    load_npy,
    msd_label_names,
    nifti_cases,
    nifti_slices,
    one_line,
    rel_path,
    safe_id,
    visible_files,
)
from augment.sample import Sample
from augment.window import Window, get_window

__all__ = [
    "FORMATS",
    "SLICE_MODES",
    "LabelMap",
    "export_boxes",
    "import_dataset",
    "parse_lesion_labels",
    "read_coco",
    "read_voc",
    "write_coco",
    "write_voc",
]

log = logging.getLogger(__name__)

FORMATS = ("auto", "nifti", "dicom", "png", "npy")
SLICE_MODES = ("all", "lesion", "nonempty")

_IMAGE_DIRS = ("images", "image", "img")
_MASK_DIRS = ("masks", "mask", "labels")

LabelSpec = Sequence[int] | Mapping[int, int] | None
# Largest label value a lesion_labels source may name (NIfTI label maps are int16/int32).
MAX_LABEL = 2**31 - 1
# The forms of ``--lesion-labels``, as its help and its error message show them.
LESION_LABELS_FORMS = (
    "'2' (label 2 -> class 1), '1,2' (each its own class) or '1:0,2:1' (source:class)"
)


# ------------------------------------------------------------------------ label maps


@dataclass(frozen=True)
class LabelMap:
    """How mask label values become lesion classes (see the module docstring).

    Attributes:
        table: ``{label: class}``; ``None`` keeps each label as its own class.
        strict: a non-zero label missing from ``table`` is an error, not background.
    """

    table: dict[int, int] | None = None
    strict: bool = False

    @classmethod
    def from_spec(cls, spec: LabelSpec | LabelMap | str, what: str | None = None) -> LabelMap:
        """A map from a list, dict, int, or the ``--lesion-labels`` text; ``what`` names
        the spec in errors (default: ``lesion_labels <spec>``)."""
        if spec is None or isinstance(spec, LabelMap):
            return spec or cls()
        if isinstance(spec, (str, bytes)):
            text = spec.decode() if isinstance(spec, bytes) else spec
            return cls.from_spec(parse_lesion_labels(text), what or f"--lesion-labels {text!r}")
        what = what or f"lesion_labels {spec!r}"
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = [spec]
        try:
            if isinstance(spec, Mapping):
                table = {int(s): int(d) for s, d in spec.items()}
            else:
                values = [int(v) for v in spec]
                if len(set(values)) != len(values) or not values:
                    raise ValueError("empty or repeated label")
                table = {v: i + 1 for i, v in enumerate(values)}
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{what} is not a list or map of integers ({e})") from None
        if any(not 0 <= d <= 255 for d in table.values()):
            raise ConfigError(f"{what}: classes must be in 0..255")
        for src, dst in table.items():
            if src == 0 and dst:
                raise ConfigError(
                    f"{what}: label 0 is the background, it cannot be a lesion "
                    "label (give the non-zero label values of the lesions)"
                )
            if abs(src) > MAX_LABEL or (src < 0 and dst):
                raise ConfigError(f"{what}: {src} is not a lesion label value (1..{MAX_LABEL})")
        return cls(table, strict=isinstance(spec, Mapping))

    def spec_text(self) -> str:
        """The map in ``--lesion-labels`` form (``"1:0,2:1"``)."""
        return ",".join(f"{s}:{d}" for s, d in (self.table or {}).items())

    def classes(self) -> list[int]:
        """The classes this map can produce (empty for the identity map: data decides)."""
        return sorted({d for d in (self.table or {}).values() if d})

    def sources(self, cls: int) -> list[int]:
        return [s for s, d in (self.table or {cls: cls}).items() if d == cls]

    def apply(self, labels: np.ndarray, where: str) -> np.ndarray:
        """Map a label slice to a uint8 class mask; ``where`` names it in errors."""
        values = np.unique(labels)
        if values.dtype.kind == "f":
            if not np.isfinite(values).all() or (values != np.round(values)).any():
                raise DataError(f"{where}: mask has non-integer label values")
        values = values.astype(np.int64)
        if self.table is None:
            bad = values[(values < 0) | (values > 255)]
            if bad.size:
                raise DataError(
                    f"{where}: label value {bad[0]} is outside 0..255; map it with lesion_labels"
                )
            return labels.astype(np.uint8)
        if self.strict:
            unknown = [int(v) for v in values if v != 0 and int(v) not in self.table]
            if unknown:
                raise DataError(
                    f"{where}: unknown label value {unknown[0]} (lesion_labels maps {sorted(self.table)})"
                )
        out = np.zeros(labels.shape, np.uint8)
        for src, dst in self.table.items():
            if dst:
                out[labels == src] = dst
        return out

    def as_config(self) -> dict[str, Any]:
        return {"table": self.table, "strict": self.strict}


def parse_lesion_labels(text: str) -> list[int] | dict[int, int]:
    """Command-line form of ``lesion_labels``: ``"2"`` or ``"1,2"`` (list), ``"1:0,2:1"`` (strict map)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all(":" in p for p in parts):
            return {int(s): int(d) for s, d in (p.split(":", 1) for p in parts)}
        if parts and not any(":" in p for p in parts):
            return [int(p) for p in parts]
    except ValueError:
        pass
    raise ConfigError(f"--lesion-labels {text!r}: use {LESION_LABELS_FORMS}")


# ----------------------------------------------------------------------- slice files


def _slice_name(rel: Path) -> tuple[str, int | None]:
    """Patient and slice number from ``<patient>/<k>.png`` or ``<patient>_s<k>.png``."""
    if rel.parent.parts:
        patient = "_".join(rel.parent.parts)
        m = re.search(r"(\d+)$", rel.stem)
        return (patient, int(m.group(1))) if m else (f"{patient}_{rel.stem}", None)
    m = re.match(r"^(.+?)[_-]s?(\d+)$", rel.stem)
    return (m.group(1), int(m.group(2))) if m else (rel.stem, None)


def _slice_cases(src: Path, mask_dir: Path | None, fmt: str, use_masks: bool = True) -> tuple[str, list[Case]]:
    """One case per slice file under ``images/`` (or ``src``), masks matched by name
    (``use_masks`` False: none, even where a ``masks/`` folder exists)."""
    img_dir = next((src / d for d in _IMAGE_DIRS if (src / d).is_dir()), src)
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder does not exist")
    mdir = mask_dir or next((src / d for d in _MASK_DIRS if (src / d).is_dir() and use_masks), None)
    files = [
        p
        for p in visible_files(img_dir)
        if p.suffix.lower() == f".{fmt}" and (mdir is None or not p.is_relative_to(mdir))
    ]
    if not files:
        raise DataError(f"{img_dir}: no .{fmt} slices")
    cases = []
    for path in files:
        rel = path.relative_to(img_dir)
        patient, k = _slice_name(rel)
        mask = None
        if mdir is not None:
            candidates = (mdir / rel.with_suffix(".png"), mdir / rel.with_suffix(".npy"))
            mask = next((m for m in candidates if m.is_file()), None)
            if mask is None:
                raise DataError(f"{path}: missing mask (expected {candidates[0]} or .npy)")
        name = f"{patient}_s{k:03d}" if k is not None else patient
        cases.append(Case(safe_id(name), path, mask, safe_id(patient), index=k))
    return ("images+masks" if mdir else "images"), cases


def unlabelled_cases(src: Path, fmt: str) -> tuple[str, list[Case]]:
    """Every scan under ``src`` as a case without a mask (``import --unlabelled``)."""
    if fmt == "nifti":
        files = [p for p in visible_files(src, True) if NIFTI_RE.search(p.name)]
        if not files:
            raise DataError(f"{src}: no NIfTI files")
        names = [NIFTI_RE.sub("", p.relative_to(src).as_posix()).replace("/", "_") for p in files]
        return "unlabelled", [Case(safe_id(n), p, None) for n, p in zip(names, files, strict=True)]
    if fmt == "dicom":
        return "unlabelled", dicom_cases(src, None)[1]
    layout, cases = _slice_cases(src, None, fmt, use_masks=False)
    return "unlabelled", cases


def _read_png(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except Exception as e:
        raise DataError(f"{path}: cannot read {what} PNG ({one_line(e)})") from None
    if array.ndim == 3:  # grey exported as RGB(A)/LA: all colour channels must agree
        colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        if (colour != colour[..., :1]).any():
            raise DataError(f"{path}: {what} PNG is in colour, expected greyscale")
        array = colour[..., 0]
    return array.astype(np.uint8) if array.dtype == bool else array


def _file_slices(case: Case, root: Path, window: Window | None) -> Iterator[RawSlice]:
    meta: dict[str, Any] = {
        "id": case.name,
        "patient_id": case.patient or case.name,
        "source_file": rel_path(case.image, root),
        "slice_index": case.index,
        "spacing": None,
        "synthetic": False,
    }
    if case.image.suffix.lower() == ".png":
        if window is None:
            raise ConfigError(f"{case.image}: PNG slices need the window they were exported with")
        stored = _read_png(case.image, "image")
        full = 255.0 if stored.dtype == np.uint8 else 65535.0  # 8- or 16-bit PNG
        hu = window.low + stored.astype(np.float64) / full * window.width
        meta["window"] = window.as_dict()
    else:
        hu = load_npy(case.image)
        hu = hu[0] if hu.ndim == 3 and hu.shape[0] == 1 else hu
    if hu.ndim != 2:
        raise DataError(f"{case.image}: expected a 2D slice, got shape {hu.shape}")
    labels = None
    if case.mask is not None:
        png = case.mask.suffix.lower() == ".png"
        labels = _read_png(case.mask, "mask") if png else load_npy(case.mask)
    yield RawSlice(hu, labels, meta, str(case.image), str(case.mask))


def _detect(src: Path) -> str:
    files = visible_files(src)
    if not files:
        raise DataError(f"{src}: folder is empty")
    has_nifti = any(NIFTI_RE.search(p.name) for p in files)
    has_dicom = any(is_dicom(p) for p in files)
    if has_nifti and has_dicom:
        raise DataError(f"{src}: holds both NIfTI and DICOM files; choose one with --format nifti|dicom")
    if has_nifti or has_dicom:
        return "nifti" if has_nifti else "dicom"
    # Slice layouts: the images decide (NPY images with PNG masks is the usual one).
    img_dir = next((src / d for d in _IMAGE_DIRS if (src / d).is_dir()), src)
    mask_dirs = [src / d for d in _MASK_DIRS if (src / d).is_dir()]
    images = [p for p in files if p.is_relative_to(img_dir) and not any(p.is_relative_to(m) for m in mask_dirs)]
    kinds = {p.suffix.lower() for p in images} & {".png", ".npy"}
    if len(kinds) == 2:
        raise DataError(f"{img_dir}: holds both PNG and NPY slices; choose one with --format png|npy")
    if kinds:
        return kinds.pop()[1:]
    raise DataError(f"{src}: no NIfTI, DICOM, PNG or NPY files found")


# --------------------------------------------------------------------------- samples


def _make_sample(
    raw: RawSlice, label_map: LabelMap, slices: str, size: int | None
) -> Sample | None:
    """Map labels, select, resample: a `Sample`, or ``None`` when ``slices`` leaves it out."""
    image = np.asarray(raw.hu, dtype=np.float32)
    if not np.isfinite(image).all():
        raise DataError(f"{raw.where}: NaN or infinite HU values")
    if raw.labels is None:
        mask, nonempty = np.zeros(image.shape, np.uint8), False
    else:
        if raw.labels.shape != image.shape:
            raise DataError(
                f"{raw.mask_where}: mask shape {raw.labels.shape} differs from image shape {image.shape}"
            )
        mask = label_map.apply(raw.labels, raw.mask_where)
        nonempty = bool(np.any(raw.labels != 0))
    # Selection uses the full-resolution mask, before any resampling.
    if (slices == "lesion" and not mask.any()) or (slices == "nonempty" and not nonempty):
        return None
    meta = raw.meta
    if size is not None and image.shape != (size, size):
        h, w = image.shape
        image = resize(
            image, (size, size), order=1, mode="edge", anti_aliasing=True, preserve_range=True
        )
        mask = resize(
            mask, (size, size), order=0, mode="edge", anti_aliasing=False, preserve_range=True
        )
        meta["original_shape"] = [h, w]
        if meta.get("spacing"):
            row_mm, col_mm = meta["spacing"]
            meta["spacing"] = [round(row_mm * h / size, 6), round(col_mm * w / size, 6)]
    return Sample(image=image.astype(np.float32), mask=mask.astype(np.uint8), meta=meta)


def _class_names(label_map: LabelMap, seen: list[int], names: dict[int, str]) -> dict[int, str]:
    """``dataset.json`` classes: named after their source labels, or "lesion" when alone."""
    classes = label_map.classes() or seen
    if not names and len(classes) == 1:
        return {classes[0]: "lesion"}
    return {c: "+".join(names.get(s, f"label_{s}") for s in label_map.sources(c)) for c in classes}


def _without_ignore(label_map: LabelMap, names: dict[int, str], src: Path) -> LabelMap:
    """nnU-Net's "ignore" label marks unannotated pixels, not a lesion class: background."""
    ignore = [v for v, name in names.items() if name == "ignore"]
    if not ignore:
        return label_map
    log.warning("%s: nnU-Net 'ignore' label %d imported as background", src, ignore[0])
    return LabelMap({v: (0 if v in ignore else v) for v in names if v}, strict=True)


# ---------------------------------------------------------------------------- entry


_FORMAT_NAMES = {
    "nifti": "NIfTI volumes",
    "dicom": "DICOM series",
    "npy": "NPY slices",
    "png": "PNG slices",
}


def _window_text(window: Any) -> str:
    """A window spec as typed on the command line (``40 inf``), or its repr."""
    if isinstance(window, dict) and {"center", "width"} <= set(window):
        return (
            f"{window['center']:g} {window['width']:g}"
            if all(isinstance(window[k], (int, float)) for k in ("center", "width"))
            else repr(window)
        )
    if isinstance(window, Window):
        return f"{window.center:g} {window.width:g}"
    return repr(window)


# Largest slice side --size accepts: 4x a 1024 CT matrix; beyond it one float32 slice
# is > 256 MiB and a typo (100000) would ask for tens of GiB.
MAX_SLICE_SIZE = 4096


def import_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "auto",
    lesion_labels: LabelSpec | int | str = None,
    slices: str = "all",
    size: int | None = None,
    window: str | dict[str, float] | tuple[float, float] | Window | None = None,
    mask_dir: str | os.PathLike | None = None,
    anatomy: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    strict: bool = False,
    unlabelled: bool = False,
) -> Path:
    """Import scans into a dataset folder (float32 HU ``.npy``, mask ``.png``, manifest).

    Args:
        src: folder with NIfTI volumes (layouts: PhysioNet CT-ICH ``ct_scans/`` +
            ``masks/``; ``*_ct.nii.gz`` + ``*_label.nii.gz``; Decathlon ``imagesTr/`` +
            ``labelsTr/``; nnU-Net raw ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz``
            with its ``dataset.json`` label names (``imagesTs/`` has no labels: not
            imported); LiTS ``volume-N`` + ``segmentation-N``), DICOM series, or
            PNG/NPY slices (``images/`` with optional sibling ``masks/``).
        out: the dataset folder to create (written atomically, kind ``"import"``).
        fmt: ``"auto"`` (detect), ``"nifti"``, ``"dicom"``, ``"png"`` or ``"npy"``.
        lesion_labels: label map: ``None`` (each label its own class), a list (``[2]``:
            label 2 -> class 1, others background) or a strict dict ``{label: class}``.
        slices: ``"all"``, ``"lesion"`` (a mapped lesion present) or ``"nonempty"`` (any
            non-zero label in the original mask, e.g. the liver).
        size: resample every slice to ``size`` x ``size`` (image linear with
            anti-aliasing, mask nearest; spacing updated).
        window: the window PNG slices were exported with (name, ``{"center", "width"}``
            or ``(center, width)``); required for PNG, unused otherwise.
        mask_dir: NIfTI: folder of masks named like the images; DICOM: a NIfTI/NPY mask
            volume (one series) or a folder of ``<case>.nii.gz``/``.npy``; an NPY mask is
            (slices, rows, columns) in the series' sorted order. PNG/NPY: the mask folder.
        anatomy: ``"head-ich"`` or ``"liver"``: what the scans show, recorded as the
            dataset's ``kind``. The generators place lesions (and pick their HU window)
            by it; without it they refuse to guess.
        overwrite: replace an existing ``out``.
        progress: show a tqdm bar over cases.
        strict: make these warnings errors: imported slices with HU outside
            ``augment.io.info.HU_PLAUSIBLE`` or all pixels equal (reported once per volume
            or series, naming it), a ``lesion_labels`` value found in no mask, a DICOM
            file without RescaleSlope/RescaleIntercept.
        unlabelled: scans without masks, for the unlabelled pool of semi-supervised
            strategies (``data.unlabelled`` of an experiment): every NIfTI volume, DICOM
            series or slice file under ``src`` is an image, stored with an empty mask, and
            ``dataset.json`` says ``"unlabelled": true`` so that the harness never reads
            these empty masks as "no lesion".

    Returns:
        ``out``.

    Raises:
        DataError: unreadable, inconsistent or missing input; nothing is left at ``out``.
        ConfigError: invalid options (e.g. PNG without ``window``).
    """
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format {fmt!r}; use one of {', '.join(FORMATS)}")
    if slices not in SLICE_MODES:
        raise ConfigError(
            f"unknown slice selection {slices!r}; use one of {', '.join(SLICE_MODES)}"
        )
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= MAX_SLICE_SIZE
    ):
        raise ConfigError(f"--size must be an integer in 2..{MAX_SLICE_SIZE}, got {size!r}")
    label_map = LabelMap.from_spec(lesion_labels)
    if label_map.table is not None and not label_map.classes():
        report(
            [
                f"--lesion-labels {label_map.spec_text()} maps every label to class 0 "
                "(background): no lesion would be imported"
            ],
            strict=strict,
            logger=log,
        )
    if anatomy is not None:
        check_anatomy(anatomy, "import")
    if not src.is_dir():
        raise DataError(f"{src}: {'not a folder' if src.exists() else 'does not exist'}")
    if out.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"{out}: the output folder must not lie inside the source folder {src}")
    resolved = _detect(src) if fmt == "auto" else fmt
    if resolved == "png" and window is None:
        raise ConfigError(
            f"{src}: PNG slices need the window they were exported with (window=center/width)"
        )
    if resolved != "png" and window is not None:
        raise ConfigError(
            f"--window is only for PNG slices (the window they were exported with); {src} holds "
            f"{_FORMAT_NAMES[resolved]}, already in HU: leave --window out"
        )
    win = None
    if resolved == "png":
        try:
            win = get_window(window)
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"--window {_window_text(window)}: {e}") from None
    if unlabelled and (mask_dir is not None or slices != "all" or lesion_labels is not None):
        raise ConfigError("--unlabelled imports scans without masks: leave out --mask-dir, --slices and "
                          "--lesion-labels")
    masks = Path(mask_dir) if mask_dir is not None else None
    if unlabelled:
        layout, cases = unlabelled_cases(src, resolved)
    elif resolved == "nifti":
        layout, cases = nifti_cases(src, masks)
        if layout == "nnunet" and label_map.table is None:
            label_map = _without_ignore(label_map, msd_label_names(src), src)
    elif resolved == "dicom":
        layout, cases = dicom_cases(src, masks)
    else:
        layout, cases = _slice_cases(src, masks, resolved)
        if layout == "images":
            log.warning(
                "%s: no masks/ folder beside the images (nor --mask-dir): every slice is "
                "imported as lesion-free",
                src,
            )
    config = {
        "source": str(src.resolve()),
        "fmt": fmt,
        "lesion_labels": label_map.as_config(),
        "slices": slices,
        "size": size,
        "window": win.as_dict() if win else None,
        "mask_dir": str(masks.resolve()) if masks else None,
        "anatomy": anatomy,
        **({"unlabelled": True} if unlabelled else {}),
    }
    unit = "file" if resolved in ("png", "npy") else "case"
    with (
        DatasetWriter(
            out, provenance="import", anatomy=anatomy, config=config, overwrite=overwrite,
            inputs=[src] + ([masks] if masks else []),
        ) as writer,
        tqdm(cases, desc=f"import {src.name}", unit=unit, disable=not progress) as bar,
    ):
        seen: set[int] = set()
        spacings: set[tuple[float, ...]] = set()
        volumes = resolved in ("nifti", "dicom")
        hu_audit = HuAudit()
        # Mapped source labels not yet found in any mask, and the label values seen
        # while looking (only then: once all are found the search stops).
        unfound = {label for label, cls in (label_map.table or {}).items() if cls}
        present: set[int] = set()
        for case in bar:
            if resolved == "nifti":
                raws = nifti_slices(case, src)
            elif resolved == "dicom":
                raws = dicom_slices(case, src, strict=strict)
            else:
                raws = _file_slices(case, src, win)
            source = str(case.image) if volumes else str(src)
            for raw in raws:
                sample = _make_sample(raw, label_map, slices, size)  # validates the labels
                if unfound and raw.labels is not None:
                    present.update(int(v) for v in np.unique(raw.labels))
                    unfound -= present
                if sample is None:
                    continue
                item = f"slice {raw.meta['slice_index']}" if volumes else raw.meta["source_file"]
                hu_audit.add(source, item, raw.hu)
                writer.add(sample)
                seen.update(int(v) for v in np.unique(sample.mask) if v)
                spacings.add(tuple(sample.meta["spacing"] or ()))
            if volumes:  # one report per volume, as soon as it is read
                report(hu_audit.pop(source), strict=strict, logger=log)
        report(hu_audit.pop(), strict=strict, logger=log)
        if unfound:
            values = ", ".join(map(str, sorted(unfound)))
            found = ", ".join(map(str, sorted(present))) if present else "none: no masks"
            report(
                [
                    f"{src}: lesion label {values} (lesion_labels) matches no voxel in any "
                    f"mask (label values present: {found})"
                ],
                strict=strict,
                logger=log,
            )
        if not writer.records:
            raise DataError(f"{src}: no slices selected (slices={slices!r})")
        names = msd_label_names(src) if layout in ("msd", "nnunet") else {}
        writer.classes = _class_names(label_map, sorted(seen), names)
        # One spacing for the whole dataset only when every slice shares it.
        only = next(iter(spacings)) if len(spacings) == 1 else ()
        writer.spacing = list(only) or None
        writer.extra = {"source_format": resolved, "layout": layout, "n_cases": len(cases),
                        **({"unlabelled": True} if unlabelled else {})}
    log.info(
        "imported %d slices from %d %s cases into %s", len(writer.records), len(cases), layout, out
    )
    return out
