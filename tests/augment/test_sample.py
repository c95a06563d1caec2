"""Sample validation, box derivation, the dataset folder format and patient splits."""

import json
import os

import numpy as np
import pytest

from augment.errors import DataError
from augment.folder import DatasetWriter, load_sample, read_dataset, write_dataset
from augment.sample import Sample, boxes_from_mask
from augment.splits import budget_patients, split_by_patient


def make_sample(i: int = 0, patient: str = "p000") -> Sample:
    image = np.full((16, 20), 30.0, np.float32)
    mask = np.zeros((16, 20), np.uint8)
    mask[2:5, 3:6] = 1  # 3x3 lesion of class 1 at rows 2..4, cols 3..5
    mask[10, 15] = 2  # single-pixel lesion of class 2
    image[mask > 0] = 70.0
    return Sample(image, mask, meta={"id": f"{patient}_s{i:03d}", "patient_id": patient})


def test_boxes_from_mask_uses_pixel_edges():
    s = make_sample()
    # class 1: cols 3..5 -> x1=3, x2=6; rows 2..4 -> y1=2, y2=5. class 2: one pixel at (10, 15).
    np.testing.assert_array_equal(s.boxes, [[3, 2, 6, 5], [15, 10, 16, 11]])
    np.testing.assert_array_equal(s.labels, [1, 2])


def test_boxes_from_mask_separates_components_and_uses_8_connectivity():
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one lesion
    mask[6, 6] = 1  # a second lesion
    boxes, labels = boxes_from_mask(mask)
    assert len(boxes) == 2 and labels.tolist() == [1, 1]
    np.testing.assert_array_equal(boxes[0], [1, 1, 3, 3])


def test_sample_rejects_bad_input():
    with pytest.raises(DataError, match="differs from image shape"):
        Sample(np.zeros((4, 4)), np.zeros((4, 5)), meta={"id": "x"})
    with pytest.raises(DataError, match="NaN"):
        Sample(np.array([[np.nan, 0], [0, 0]]), np.zeros((2, 2)), meta={"id": "x"})
    with pytest.raises(DataError, match="inf"):
        Sample(np.array([[np.inf, 0], [0, 0]]), np.zeros((2, 2)), meta={"id": "x"})


def test_replace_rederives_boxes_from_new_mask():
    s = make_sample()
    t = s.replace(mask=np.zeros_like(s.mask))
    assert len(t.boxes) == 0 and len(t.labels) == 0
    assert len(s.boxes) == 2  # original untouched


def test_dataset_roundtrip_and_manifest(tmp_path):
    samples = [make_sample(i, f"p{i % 2:03d}") for i in range(4)]
    out = write_dataset(tmp_path / "ds", samples, provenance="test", classes={1: "a", 2: "b"}, spacing=[0.5, 0.5])
    info, records = read_dataset(out)
    assert info["n_samples"] == 4 and info["n_patients"] == 2 and info["provenance"] == "test" and info["anatomy"] is None
    assert records[0]["image"] == "img/p000_s000.npy" and records[0]["synthetic"] is False
    back = load_sample(out, records[1], verify=True)
    np.testing.assert_array_equal(back.image, samples[1].image)
    np.testing.assert_array_equal(back.mask, samples[1].mask)
    np.testing.assert_array_equal(back.boxes, samples[1].boxes)
    assert back.patient_id == "p001"


def test_same_samples_give_identical_bytes(tmp_path):
    samples = [make_sample(i) for i in range(3)]
    a = write_dataset(tmp_path / "a", samples, provenance="t")
    b = write_dataset(tmp_path / "b", samples, provenance="t")
    for name in ["manifest.jsonl", "dataset.json", "img/p000_s001.npy", "mask/p000_s001.png"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", provenance="t") as w:
            w.add(make_sample(0))
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    write_dataset(tmp_path / "ds", [make_sample(0)], provenance="t")
    with pytest.raises(DataError, match="already exists"):
        write_dataset(tmp_path / "ds", [make_sample(1)], provenance="t")
    write_dataset(tmp_path / "ds", [make_sample(1)], provenance="t", overwrite=True)
    _, records = read_dataset(tmp_path / "ds")
    assert [r["id"] for r in records] == ["p000_s001"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_read_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        read_dataset(tmp_path / "empty")
    out = write_dataset(tmp_path / "ds", [make_sample(0)], provenance="t")
    rec = read_dataset(out)[1][0]
    (out / rec["image"]).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="p000_s000.npy"):
        load_sample(out, rec)
    with pytest.raises(DataError, match="leaves the dataset folder"):
        load_sample(out, {**rec, "image": "../../etc/passwd"})
    (out / "manifest.jsonl").write_text('{"id": "x"\n')
    with pytest.raises(DataError, match="manifest.jsonl:1"):
        read_dataset(out)


def test_load_sample_detects_shape_mismatch(tmp_path):
    out = write_dataset(tmp_path / "ds", [make_sample(0)], provenance="t")
    rec = read_dataset(out)[1][0]
    np.save(out / rec["image"], np.zeros((5, 5), np.float32))
    with pytest.raises(DataError, match="differs from image shape"):
        load_sample(out, rec)


def test_split_by_patient_is_disjoint_and_seeded():
    pids = [f"p{i // 3}" for i in range(30)]  # 10 patients x 3 slices
    a = split_by_patient(pids, seed=1)
    assert sorted(sum(a.values(), [])) == list(range(30))
    groups = {name: {pids[i] for i in idx} for name, idx in a.items()}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    assert len(groups["train"]) == 6 and len(groups["val"]) == 2 and len(groups["test"]) == 2
    assert split_by_patient(pids, seed=1) == a and split_by_patient(pids, seed=2) != a


def test_label_budgets_are_nested():
    pids = [f"p{i}" for i in range(20)]
    b4, b8 = budget_patients(pids, 4, seed=3), budget_patients(pids, 8, seed=3)
    assert len(b4) == 4 and set(b4) <= set(b8)
    with pytest.raises(DataError, match="exceeds"):
        budget_patients(pids, 21)


def test_manifest_records_meta_as_json(tmp_path):
    s = make_sample(0)
    s.meta.update(spacing=(0.7, 0.7), synthetic=True, generator="dcgan", seed=np.int64(7))
    out = write_dataset(tmp_path / "ds", [s], provenance="t")
    rec = json.loads((out / "manifest.jsonl").read_text())
    assert rec["spacing"] == [0.7, 0.7] and rec["seed"] == 7 and rec["generator"] == "dcgan"
    assert set(rec["sha256"]) == {"image", "mask"}


def test_provenance_and_anatomy_are_explicit_and_old_folders_still_read():
    from augment.folder import dataset_anatomy, dataset_provenance

    new = {"provenance": "import", "anatomy": "liver", "config": {"anatomy": "liver"}}
    assert dataset_provenance(new) == "import" and dataset_anatomy(new) == "liver"
    # Folders written before 0.2 said `kind` for where slices came from, and put the
    # anatomy in the phantom's config (or in `kind` itself for imports).
    old_phantom = {"kind": "phantom", "config": {"kind": "head-ich"}}
    assert dataset_provenance(old_phantom) == "phantom" and dataset_anatomy(old_phantom) == "head-ich"
    assert dataset_anatomy({"kind": "import", "anatomy": "liver"}) == "liver"
    assert dataset_anatomy({"provenance": "import", "anatomy": None}) is None
