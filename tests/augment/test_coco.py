"""COCO export with instance masks: PNGs with a stated window, RLE masks that
pycocotools reads back, atomic re-export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from augment.errors import ConfigError, DataError
from augment.folder import write_dataset
from augment.io.boxes import export_boxes, read_coco, rle_encode
from augment.sample import Sample
from augment.window import Window
from downstream.cli import main


def lesions(sid: str, patient: str = "p1") -> Sample:
    """Two IPH components (one touching the border), one IVH, HU across the brain window."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:6] = 1
    mask[12:20, 0:4] = 1
    mask[8:11, 20:27] = 2
    mask[9, 27] = 2  # diagonal neighbour: same component (8-connected)
    image = np.linspace(-20, 100, 600, dtype=np.float32).reshape(20, 30)
    return Sample(image=image, mask=mask, meta={"id": sid, "patient_id": patient})


@pytest.fixture
def folder(tmp_path):
    samples = [lesions("p1_s000"), lesions("p1_s001"), lesions("p2_s000", "p2")]
    samples.append(Sample(np.zeros((20, 30), np.float32), np.zeros((20, 30), np.uint8),
                          meta={"id": "p2_s001", "patient_id": "p2"}))  # fmt: skip
    return write_dataset(
        tmp_path / "ds", samples, provenance="phantom", config={"kind": "head-ich"},
        classes={1: "IPH", 2: "IVH"},
    )  # fmt: skip


def test_rle_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools not installed (pip install '.[interop]')")
    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), rng.random((64, 48)) < 0.5]
    blob = np.zeros((300, 200), bool)
    blob[40:260, 30:170] = True  # long runs: multi-character counts
    cases += [blob, ~blob, rng.random((1, 9)) < 0.3]
    for mask in cases:
        expected = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle_encode(mask)
        assert ours["counts"] == expected["counts"].decode() and ours["size"] == expected["size"]
        np.testing.assert_array_equal(mask_api.decode({**ours, "counts": ours["counts"].encode()}), mask)


def test_coco_export_has_windowed_pngs_and_instance_masks(folder):
    path = export_boxes(folder, "coco")
    assert path == folder / "annotations_coco.json"
    data = json.loads(path.read_text())
    brain = {"center": 40.0, "width": 80.0, "name": "brain"}  # the head-ich display window
    assert data["info"]["window"] == brain
    assert [img["file_name"] for img in data["images"]][:2] == [
        "coco/images/p1_s000.png", "coco/images/p1_s001.png",
    ]  # fmt: skip
    assert all(img["window"] == brain for img in data["images"])
    assert data["categories"] == [
        {"id": 1, "name": "IPH", "supercategory": "lesion"},
        {"id": 2, "name": "IVH", "supercategory": "lesion"},
    ]
    png = Image.open(folder / data["images"][0]["file_name"])
    assert png.mode == "L" and png.size == (30, 20)
    hu = lesions("x").image
    expected = np.round(Window(40, 80).to_unit(hu.astype(np.float64)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(png), expected)
    assert len(data["annotations"]) == 9  # 3 components x 3 slices, none on the empty slice
    first = data["annotations"][0]
    assert first["bbox"] == [3.0, 2.0, 3.0, 3.0] and first["area"] == 9 and first["iscrowd"] == 0
    assert isinstance(first["segmentation"]["counts"], str)
    # Boxes read back as before (pixel edges), keyed by the PNG's file name.
    boxes, labels = read_coco(path)["coco/images/p2_s000.png"]
    np.testing.assert_array_equal(boxes, lesions("x").boxes)
    np.testing.assert_array_equal(labels, [1, 1, 2])


def test_pycocotools_reads_the_masks(folder):
    coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools not installed (pip install '.[interop]')")
    path = export_boxes(folder, "coco", window="50,100")
    coco = coco_api.COCO(str(path))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["IPH", "IVH"]
    assert coco.dataset["info"]["window"] == {"center": 50.0, "width": 100.0}
    mask = lesions("x").mask
    expected = []
    for cls in (1, 2):
        components, n = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
        expected += [components == k for k in range(1, n + 1)]
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if coco.imgs[img_id]["sample_id"] == "p2_s001":
            assert anns == []
            continue
        assert len(anns) == len(expected)
        for ann, component in zip(anns, expected, strict=True):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), component)
            assert ann["area"] == component.sum() == coco.annToMask(ann).sum()
            rows, cols = np.nonzero(component)
            assert ann["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
    # What a COCO consumer does with file_name: the image root is the JSON's folder.
    img = coco.loadImgs(coco.getImgIds()[0])[0]
    assert Image.open(path.parent / img["file_name"]).size == (img["width"], img["height"])


def test_reexport_replaces_only_its_own(folder, tmp_path):
    export_boxes(folder, "coco")
    (folder / "coco" / "images" / "p1_s000.png").unlink()
    export_boxes(folder, "coco", window="liver")
    assert len(list((folder / "coco" / "images").iterdir())) == 4
    assert json.loads((folder / "annotations_coco.json").read_text())["info"]["window"]["name"] == "liver"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    (folder / "coco" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds files lesionforge did not write"):
        export_boxes(folder, "coco")
    assert (folder / "coco" / "notes.txt").read_text() == "mine"


def test_window_is_required_when_the_anatomy_is_unknown(tmp_path):
    folder = write_dataset(tmp_path / "ds", [lesions("a")], provenance="import")
    with pytest.raises(ConfigError, match=r"records no anatomy .*\(--window NAME or CENTER,WIDTH"):
        export_boxes(folder, "coco")
    with pytest.raises(ConfigError, match="unknown window 'lungs'"):
        export_boxes(folder, "coco", window="lungs")
    with pytest.raises(ConfigError, match="CENTER,WIDTH"):
        export_boxes(folder, "coco", window="40,wide")
    with pytest.raises(ConfigError, match="VOC stores no image"):
        export_boxes(folder, "voc", window="brain")
    assert not (folder / "coco").exists()


def test_cli_coco(folder, capsys):
    assert main(["data", "export", str(folder), "--format", "coco", "--window", "40,80"]) == 0
    assert "COCO instance masks" in capsys.readouterr().out
    assert main(["data", "export", str(folder), "--format", "voc"]) == 0
    assert (folder / "voc" / "p1_s000.xml").is_file()
