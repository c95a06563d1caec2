"""PASCAL VOC XML and COCO JSON boxes, in and out.

Box conventions (the easy place to be off by one):

- `Sample.boxes`: ``x1, y1, x2, y2`` pixel *edges*, 0-based, ``x2``/``y2`` exclusive.
- PASCAL VOC: 1-based *inclusive* pixel indices, so ``xmin = x1 + 1`` and ``xmax = x2``.
- COCO: ``[x, y, w, h]`` with ``x = x1``, ``w = x2 - x1`` (0-based edges, like ours).

Class ids are the mask values (1..255). COCO stores them directly as ``category_id``;
VOC stores class *names*, so writing and reading VOC needs the id -> name table
(``dataset.json`` "classes").

A COCO export is an instance-segmentation set: 8-bit PNG slices windowed with a stated
window (in the JSON's ``info`` and in every image entry) under ``coco/images/``, one
annotation per 8-connected component of each class (the rule that derives boxes) with
its mask as compressed RLE (the string ``pycocotools.mask.encode`` gives), its pixel
count as ``area`` and its box.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from augment.errors import ConfigError, DataError
from augment.folder import dataset_anatomy, load_sample, read_dataset
from augment.sample import Sample
from augment.storage import remove_stale_staging, staging_name, write_bytes_atomic
from augment.window import DISPLAY_WINDOW, WINDOWS, Window, get_window

ClassNames = Mapping[int, str] | Mapping[str, str] | Sequence[str]
WindowSpec = str | Window | tuple[float, float] | Mapping[str, float]

VOC_DIR = "voc"
COCO_FILE = "annotations_coco.json"
COCO_DIR = "coco"  # beside COCO_FILE; its images/ are the file_names' folder
COCO_IMAGES = f"{COCO_DIR}/images"


def class_table(class_names: ClassNames | None) -> dict[int, str]:
    """``{class id: name}`` from a mapping (int or str keys) or a sequence naming classes 1..n.

    Class 0 is background, so a sequence's first name is class 1.
    """
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        try:
            return {int(k): str(v) for k, v in class_names.items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"class names need integer class ids as keys, got {dict(class_names)}"
            ) from None
    if isinstance(class_names, str):
        raise ConfigError(
            f"class names must be a list or a mapping, got the string {class_names!r}"
        )
    return {i + 1: str(name) for i, name in enumerate(class_names)}


def _name(table: dict[int, str], label: int) -> str:
    return table.get(label, f"class_{label}")


def _num(value: float) -> str:
    """Integers without a decimal point (what VOC readers expect); fractions kept to 3 places."""
    value = float(value)
    if value == round(value):
        return str(int(round(value)))
    return f"{value:.3f}".rstrip("0")


# ------------------------------------------------------------------------------ VOC


def voc_xml(sample: Sample, class_names: ClassNames | None = None) -> bytes:
    """The PASCAL VOC XML annotation of one sample (see `write_voc`)."""
    table = class_table(class_names)
    height, width = sample.image.shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "img"
    ET.SubElement(root, "filename").text = f"{sample.id}.npy"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "lesionforge"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "1"
    # The pixel mask exists beside every annotation (mask/<id>.png).
    ET.SubElement(root, "segmented").text = "1"
    for (x1, y1, x2, y2), label in zip(sample.boxes, sample.labels, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = _name(table, int(label))
        ET.SubElement(obj, "pose").text = "Unspecified"
        touches_edge = x1 <= 0 or y1 <= 0 or x2 >= width or y2 >= height
        ET.SubElement(obj, "truncated").text = "1" if touches_edge else "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        ET.SubElement(box, "xmin").text = _num(x1 + 1)
        ET.SubElement(box, "ymin").text = _num(y1 + 1)
        ET.SubElement(box, "xmax").text = _num(x2)
        ET.SubElement(box, "ymax").text = _num(y2)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def write_voc(
    path: str | os.PathLike, sample: Sample, class_names: ClassNames | None = None
) -> Path:
    """Write one sample's boxes as a PASCAL VOC XML file (atomically).

    Args:
        path: the ``.xml`` file to write.
        sample: its ``boxes`` (pixel edges) become 1-based inclusive ``bndbox`` indices.
        class_names: ``{class id: name}`` or names of classes 1..n; a class without a
            name is written as ``class_<id>``.

    Returns:
        ``path``.
    """
    path = Path(path)
    write_bytes_atomic(path, voc_xml(sample, class_names))
    return path


def _voc_number(elem: ET.Element, tag: str, path: Path) -> float:
    text = elem.findtext(tag)
    if text is None:
        raise DataError(f"{path}: <{elem.tag}> has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: <{tag}> is not a number ({text.strip()!r})") from None


def read_voc(
    path: str | os.PathLike, class_names: ClassNames | None = None
) -> tuple[np.ndarray, np.ndarray | list[str], tuple[int, int]]:
    """Read a PASCAL VOC XML annotation.

    Args:
        path: the ``.xml`` file.
        class_names: ``{class id: name}``; when given, object names are turned into
            class ids (an unknown name is a `DataError`).

    Returns:
        ``(boxes, labels, (height, width))``: boxes float32 (N, 4) xyxy pixel edges
        (``x1 = xmin - 1``, ``x2 = xmax``); labels int64 class ids when ``class_names``
        is given, else the object names as a list of str.
    """
    path = Path(path)
    try:
        root = ET.fromstring(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except ET.ParseError as e:
        raise DataError(f"{path}: corrupt VOC XML ({e})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: not a VOC annotation (root element <{root.tag}>)")
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: no <size>")
    shape = (int(_voc_number(size, "height", path)), int(_voc_number(size, "width", path)))
    by_name = {name: k for k, name in class_table(class_names).items()}
    boxes: list[list[float]] = []
    names: list[str] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _voc_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise DataError(
                f"{path}: object {name!r} has max < min ({xmin}, {ymin}, {xmax}, {ymax})"
            )
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append(name)
    array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if class_names is None:
        return array, names, shape
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(f"{path}: unknown class name {unknown[0]!r} (known: {sorted(by_name)})")
    return array, np.asarray([by_name[n] for n in names], dtype=np.int64), shape


# ----------------------------------------------------------------------------- COCO


def parse_window(spec: WindowSpec) -> tuple[Window, str | None]:
    """``(window, name)`` from a name (``"brain"``), ``"CENTER,WIDTH"`` or a `get_window` spec."""
    if isinstance(spec, str) and "," in spec:
        try:
            center, width = (float(v) for v in spec.split(","))
        except ValueError:
            raise ConfigError(f"window {spec!r}: use a name or CENTER,WIDTH in HU") from None
        return Window(center, width), None
    return get_window(spec), spec if isinstance(spec, str) else None


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary (H, W) mask: ``{"size": [H, W], "counts": str}``.

    Byte for byte what ``pycocotools.mask.encode`` gives (column-major runs, first run
    of zeros, LEB128-like characters), without needing pycocotools to write it.
    """
    height, width = mask.shape
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist() if flat.size else []
    if flat.size and flat[0]:
        counts.insert(0, 0)
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": [int(height), int(width)], "counts": "".join(chars)}


def instances(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(class, boolean mask)`` per 8-connected component of each class, in box order."""
    found = []
    for cls in np.unique(mask):
        if cls == 0:
            continue
        components, n = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
        found.extend((int(cls), components == k) for k in range(1, n + 1))
    return found


def png_slice(image_hu: np.ndarray, window: Window) -> bytes:
    """An 8-bit greyscale PNG of a HU slice: ``round(255 * (HU - low) / width)``, clipped."""
    import io

    values = np.round(window.to_unit(np.asarray(image_hu, np.float64)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(values, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def coco_dict(
    samples: Iterable[Sample],
    class_names: ClassNames | None = None,
    *,
    window: WindowSpec,
    image_dir: str = COCO_IMAGES,
) -> dict[str, Any]:
    """COCO instance annotations of ``samples`` (see `write_coco`); writes no file."""
    table = class_table(class_names)
    win, win_name = parse_window(window)
    stated = {**win.as_dict(), **({"name": win_name} if win_name else {})}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used: set[int] = set()
    for image_id, sample in enumerate(samples, 1):
        height, width = sample.image.shape
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_dir}/{sample.id}.png",
                "width": int(width),
                "height": int(height),
                "sample_id": sample.id,
                "patient_id": sample.patient_id,
                "synthetic": bool(sample.meta.get("synthetic", False)),
                "window": stated,
            }
        )
        for label, component in instances(sample.mask):
            rows, cols = ndimage.find_objects(component.astype(np.uint8))[0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "segmentation": rle_encode(component),
                    "area": int(component.sum()),
                    "bbox": [
                        float(cols.start), float(rows.start),
                        float(cols.stop - cols.start), float(rows.stop - rows.start),
                    ],  # fmt: skip
                    "iscrowd": 0,
                }
            )
            used.add(label)
    categories = [
        {"id": k, "name": _name(table, k), "supercategory": "lesion"}
        for k in sorted(set(table) | used)
    ]
    return {
        "info": {
            "description": "lesionforge export: CT slices as 8-bit PNG, lesion instance masks",
            "version": "1.0",
            "window": stated,
            "png_to_hu": f"HU = {win.low:g} + value / 255 * {win.width:g} (clipped outside)",
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _is_coco_images(folder: Path) -> bool:
    """A ``coco/`` folder as lesionforge writes it: only ``images/*.png`` inside."""
    entries = list(folder.iterdir())
    if [e.name for e in entries] != ["images"] or not entries[0].is_dir():
        return not entries
    return all(p.suffix == ".png" and p.is_file() for p in entries[0].iterdir())


def write_coco(
    path: str | os.PathLike,
    samples: Iterable[Sample],
    class_names: ClassNames | None = None,
    *,
    window: WindowSpec,
) -> Path:
    """Write ``samples`` as a COCO instance-segmentation set beside ``path``.

    The PNGs go to ``coco/images/<id>.png`` next to ``path`` (staged, then renamed over
    an earlier export; a ``coco/`` folder holding anything else is refused), then the
    JSON, atomically. Images get ids 1..n in order; ``category_id`` is the class id;
    ``bbox = [x1, y1, x2 - x1, y2 - y1]`` (pixel edges); ``segmentation`` compressed RLE.

    Args:
        path: the JSON file to write.
        samples: HU slices with masks.
        class_names: ``{class id: name}`` or names of classes 1..n.
        window: the PNGs' window: a name (``"brain"``), ``"CENTER,WIDTH"``, ``(c, w)``.

    Returns:
        ``path``.
    """
    path = Path(path)
    images_dir = path.parent / COCO_DIR
    if images_dir.exists() and (not images_dir.is_dir() or not _is_coco_images(images_dir)):
        raise DataError(
            f"{images_dir}: holds files lesionforge did not write; move them to export COCO here"
        )
    win, _ = parse_window(window)
    remove_stale_staging(images_dir)
    staging = staging_name(images_dir, "partial")
    old = staging_name(images_dir, "old")
    shutil.rmtree(staging, ignore_errors=True)

    def saved(samples: Iterable[Sample]) -> Iterator[Sample]:  # one slice in memory at a time
        for sample in samples:
            (staging / "images" / f"{sample.id}.png").write_bytes(png_slice(sample.image, win))
            yield sample

    try:
        (staging / "images").mkdir(parents=True)
        coco = coco_dict(saved(samples), class_names, window=window)
        text = json.dumps(coco, indent=1, sort_keys=True)
        # The JSON names the images: drop the old one first, so a crash between the two
        # renames leaves no annotations rather than annotations of other images.
        path.unlink(missing_ok=True)
        if images_dir.exists():
            os.replace(images_dir, old)
        os.replace(staging, images_dir)
        write_bytes_atomic(path, (text + "\n").encode())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_coco(path: str | os.PathLike) -> dict[str | int, tuple[np.ndarray, np.ndarray]]:
    """Read COCO detection annotations.

    Returns:
        ``{file_name (or image id when an image has none): (boxes, labels)}``, boxes
        float32 (N, 4) xyxy pixel edges, labels int64 ``category_id``. Images without
        annotations map to empty arrays.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt COCO JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list)")
    keys: dict[Any, str | int] = {}
    for image in data["images"]:
        if "id" not in image:
            raise DataError(f"{path}: an image entry has no 'id'")
        keys[image["id"]] = image.get("file_name", image["id"])
    boxes: dict[Any, list[list[float]]] = {i: [] for i in keys}
    labels: dict[Any, list[int]] = {i: [] for i in keys}
    for ann in data.get("annotations", []):
        image_id, bbox = ann.get("image_id"), ann.get("bbox")
        if image_id not in keys:
            raise DataError(
                f"{path}: annotation {ann.get('id')} refers to unknown image {image_id}"
            )
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(
                f"{path}: annotation {ann.get('id')} has bbox {bbox!r}, expected [x, y, w, h]"
            )
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise DataError(f"{path}: annotation {ann.get('id')} has a negative width or height")
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(int(ann.get("category_id", 1)))
    return {
        keys[i]: (
            np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4),
            np.asarray(labels[i], dtype=np.int64),
        )
        for i in keys
    }


# --------------------------------------------------------------------------- export


def export_boxes(
    folder: str | os.PathLike, fmt: str, *, window: WindowSpec | None = None
) -> Path:
    """Write a dataset folder's labels as ``voc/<id>.xml`` or a COCO set (`write_coco`).

    Class names come from ``dataset.json`` ("classes"). Outputs are staged under a
    hidden name and renamed into place (replacing an older export), so they are never
    half-written.

    Args:
        folder: an existing dataset folder.
        fmt: ``"voc"`` or ``"coco"``.
        window: COCO: the PNGs' window (name or ``"CENTER,WIDTH"``); default the
            display window of the dataset's anatomy (brain 40/80, liver 60/150).

    Returns:
        The folder (VOC) or the JSON file (COCO: ``annotations_coco.json``, images in
        ``coco/images/``) written.
    """
    folder = Path(folder)
    if fmt not in ("voc", "coco"):
        raise ConfigError(f"unknown box format {fmt!r}; use 'voc' or 'coco'")
    if window is not None and fmt != "coco":
        raise ConfigError("a window is for COCO's PNG images; VOC stores no image")
    if window is not None:
        parse_window(window)  # a bad window fails before any file is read
    info, records = read_dataset(folder)
    names = class_table(info.get("classes") or {})
    samples = (load_sample(folder, r) for r in records)
    if fmt == "coco":
        if window is None:
            kind = dataset_anatomy(info)
            if kind is None:
                raise ConfigError(
                    f"{folder}: the dataset records no anatomy to take the PNG window from; "
                    f"give one (--window NAME or CENTER,WIDTH; names: {', '.join(sorted(WINDOWS))})"
                )
            window = DISPLAY_WINDOW[kind]
        return write_coco(folder / COCO_FILE, samples, names, window=window)
    target = folder / VOC_DIR
    staging = folder / f".{VOC_DIR}.partial-{os.getpid()}"
    old = folder / f".{VOC_DIR}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for sample in samples:
            (staging / f"{sample.id}.xml").write_bytes(voc_xml(sample, names))
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target
