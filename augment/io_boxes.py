"""PASCAL VOC XML and COCO JSON boxes, in and out.

Box conventions (the easy place to be off by one):

- `Sample.boxes`: ``x1, y1, x2, y2`` pixel *edges*, 0-based, ``x2``/``y2`` exclusive.
- PASCAL VOC: 1-based *inclusive* pixel indices, so ``xmin = x1 + 1`` and ``xmax = x2``.
- COCO: ``[x, y, w, h]`` with ``x = x1``, ``w = x2 - x1`` (0-based edges, like ours).

Class ids are the mask values (1..255). COCO stores them directly as ``category_id``;
VOC stores class *names*, so writing and reading VOC needs the id -> name table
(``dataset.json`` "classes").
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError, DataError
from augment.sample import Sample, load_sample, read_dataset, write_bytes_atomic

ClassNames = Mapping[int, str] | Mapping[str, str] | Sequence[str]

VOC_DIR = "voc"
COCO_FILE = "annotations_coco.json"


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


def coco_dict(samples: Iterable[Sample], class_names: ClassNames | None = None) -> dict[str, Any]:
    """COCO detection annotations of ``samples`` (see `write_coco`)."""
    table = class_table(class_names)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used: set[int] = set()
    for image_id, sample in enumerate(samples, 1):
        height, width = sample.image.shape
        images.append(
            {
                "id": image_id,
                "file_name": f"img/{sample.id}.npy",
                "width": int(width),
                "height": int(height),
                "sample_id": sample.id,
                "patient_id": sample.patient_id,
            }
        )
        for (x1, y1, x2, y2), label in zip(
            sample.boxes.tolist(), sample.labels.tolist(), strict=True
        ):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, w, h],
                    # Box area: masks live in mask/, not as COCO polygons.
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            used.add(int(label))
    categories = [
        {"id": k, "name": _name(table, k), "supercategory": "lesion"}
        for k in sorted(set(table) | used)
    ]
    return {
        "info": {"description": "lesionforge boxes", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(
    path: str | os.PathLike, samples: Iterable[Sample], class_names: ClassNames | None = None
) -> Path:
    """Write the boxes of ``samples`` as one COCO JSON file (atomically).

    Images get ids 1..n in order and ``file_name = "img/<id>.npy"`` (the dataset folder
    layout); ``category_id`` is the class id; ``bbox = [x1, y1, x2 - x1, y2 - y1]``.

    Returns:
        ``path``.
    """
    path = Path(path)
    text = json.dumps(coco_dict(samples, class_names), indent=1, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode())
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


def export_boxes(folder: str | os.PathLike, fmt: str) -> Path:
    """Write the boxes of a dataset folder as ``voc/<id>.xml`` or ``annotations_coco.json``.

    Class names come from ``dataset.json`` ("classes"). The VOC folder is staged under
    a hidden name and renamed into place (replacing an older export), so it is never
    half-written.

    Args:
        folder: an existing dataset folder.
        fmt: ``"voc"`` or ``"coco"``.

    Returns:
        The folder (VOC) or file (COCO) written.
    """
    folder = Path(folder)
    if fmt not in ("voc", "coco"):
        raise ConfigError(f"unknown box format {fmt!r}; use 'voc' or 'coco'")
    info, records = read_dataset(folder)
    names = class_table(info.get("classes") or {})
    samples = (load_sample(folder, r) for r in records)
    if fmt == "coco":
        return write_coco(folder / COCO_FILE, samples, names)
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
