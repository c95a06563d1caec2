"""PASCAL VOC and COCO boxes: conventions, round trips, export into a dataset folder."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from augment.errors import ConfigError, DataError
from augment.folder import write_dataset
from augment.io.boxes import export_boxes, read_coco, read_voc, write_coco, write_voc
from augment.sample import Sample


def two_lesions(sid: str = "p1_s004") -> Sample:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:6] = 1  # columns 3..5, rows 2..4 -> edges x1=3, x2=6, y1=2, y2=5
    mask[10:20, 25:30] = 2  # touches the bottom-right border
    image = np.where(mask > 0, 60.0, 20.0).astype(np.float32)
    return Sample(image=image, mask=mask, meta={"id": sid, "patient_id": "p1"})


def test_voc_uses_one_based_inclusive_indices(tmp_path):
    path = write_voc(tmp_path / "a.xml", two_lesions(), {1: "hemorrhage", 2: "edema"})
    root = ET.parse(path).getroot()
    first = root.find("object/bndbox")
    # Edges (3, 2, 6, 5) -> VOC xmin = x1 + 1, xmax = x2 (1-based inclusive).
    assert [first.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")] == ["4", "3", "6", "5"]
    assert root.findtext("size/width") == "30" and root.findtext("size/height") == "20"
    assert [o.findtext("truncated") for o in root.iter("object")] == ["0", "1"]
    assert root.findtext("filename") == "p1_s004.npy"


def test_voc_round_trip(tmp_path):
    sample = two_lesions()
    names = {1: "hemorrhage", 2: "edema"}
    path = write_voc(tmp_path / "a.xml", sample, names)
    boxes, labels, size = read_voc(path, names)
    np.testing.assert_array_equal(boxes, sample.boxes)
    np.testing.assert_array_equal(labels, sample.labels)
    assert size == (20, 30)
    _, raw_names, _ = read_voc(path)
    assert raw_names == ["hemorrhage", "edema"]
    # Fractional boxes (after augmentation) survive too.
    moved = sample.replace(boxes=sample.boxes + 0.25)
    np.testing.assert_allclose(
        read_voc(write_voc(tmp_path / "b.xml", moved, names), names)[0], moved.boxes
    )


def test_voc_reader_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><size><width>3</width>")
    with pytest.raises(DataError, match=r"bad\.xml: corrupt VOC XML"):
        read_voc(bad)
    path = write_voc(tmp_path / "a.xml", two_lesions(), ["lesion", "edema"])
    with pytest.raises(DataError, match=r"a\.xml: unknown class name 'edema'"):
        read_voc(path, {1: "lesion"})
    with pytest.raises(DataError, match="missing"):
        read_voc(tmp_path / "none.xml")


def test_coco_round_trip_and_convention(tmp_path):
    samples = [two_lesions("p1_s004"), two_lesions("p1_s005")]
    empty = Sample(
        np.zeros((20, 30), np.float32), np.zeros((20, 30), np.uint8), meta={"id": "p2_s000"}
    )
    path = write_coco(tmp_path / "c.json", [*samples, empty], {1: "hemorrhage"}, window="brain")
    data = json.loads(path.read_text())
    # [x, y, w, h] with w = x2 - x1: edges (3, 2, 6, 5) -> [3, 2, 3, 3].
    assert data["annotations"][0]["bbox"] == [3.0, 2.0, 3.0, 3.0]
    assert data["categories"] == [
        {"id": 1, "name": "hemorrhage", "supercategory": "lesion"},
        {"id": 2, "name": "class_2", "supercategory": "lesion"},
    ]
    read = read_coco(path)
    names = ["coco/images/p1_s004.png", "coco/images/p1_s005.png", "coco/images/p2_s000.png"]
    assert list(read) == names
    for sample in samples:
        boxes, labels = read[f"coco/images/{sample.id}.png"]
        np.testing.assert_array_equal(boxes, sample.boxes)
        np.testing.assert_array_equal(labels, sample.labels)
    assert read[names[2]][0].shape == (0, 4)


def test_coco_reader_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        '{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 9, "bbox": [0, 0, 1, 1]}]}'
    )
    with pytest.raises(DataError, match=r"c\.json: annotation 1 refers to unknown image 9"):
        read_coco(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="corrupt COCO JSON"):
        read_coco(path)
    path.write_text('{"images": [{"id": 7}]}')  # no file_name: keyed by id
    assert list(read_coco(path)) == [7]


def test_export_boxes_into_a_dataset(tmp_path):
    samples = [two_lesions("p1_s004"), two_lesions("p1_s005")]
    folder = write_dataset(
        tmp_path / "ds", samples, provenance="phantom", classes={1: "ich", 2: "edema"},
        config={"kind": "head-ich"},
    )  # fmt: skip
    voc = export_boxes(folder, "voc")
    assert sorted(p.name for p in voc.iterdir()) == ["p1_s004.xml", "p1_s005.xml"]
    boxes, labels, _ = read_voc(voc / "p1_s005.xml", {1: "ich", 2: "edema"})
    np.testing.assert_array_equal(boxes, samples[1].boxes)
    np.testing.assert_array_equal(labels, [1, 2])
    coco = export_boxes(folder, "coco")
    assert coco.name == "annotations_coco.json"
    np.testing.assert_array_equal(read_coco(coco)["coco/images/p1_s004.png"][0], samples[0].boxes)
    export_boxes(folder, "voc")  # again: replaces the old export
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ConfigError, match="unknown box format"):
        export_boxes(folder, "yolo")
