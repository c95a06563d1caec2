"""MONAI dict items from any lesionforge dataset; run with MONAI when it is installed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.datasets import MixedDataset, SliceDataset
from augment.folder import write_dataset
from augment.io.monai import MONAI_KEYS, MonaiDict, monai_collate, to_monai_dict
from augment.sample import Sample

README = Path(__file__).resolve().parents[2] / "README.md"


def sample(sid: str, synthetic: bool = False) -> Sample:
    mask = np.zeros((16, 20), np.uint8)
    mask[2:5, 3:9] = 1  # rows 2..4, columns 3..8
    mask[10:14, 15:17] = 2
    image = np.full((16, 20), 30.0, np.float32)
    image[mask > 0] = 70.0
    return Sample(image, mask, meta={"id": sid, "patient_id": sid[:2], "synthetic": synthetic})


@pytest.fixture
def folders(tmp_path):
    real = write_dataset(tmp_path / "real", [sample(f"p{i}_s000") for i in range(4)],
                         provenance="phantom", config={"kind": "head-ich"})  # fmt: skip
    syn = write_dataset(tmp_path / "syn", [sample(f"sy{i}", True) for i in range(3)],
                        provenance="synthetic")  # fmt: skip
    return real, syn


def test_to_monai_dict_is_channel_first_with_monai_box_order():
    item = to_monai_dict(sample("p0_s000"))
    assert set(item) == set(MONAI_KEYS)
    assert item["image"].shape == (1, 16, 20) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 20) and item["label"].dtype == torch.int64
    assert float(item["image"].max()) == 70.0  # HU without a window
    # lesionforge [x1, y1, x2, y2] -> MONAI's spatial-axis order [row1, col1, row2, col2].
    assert item["boxes"].tolist() == [[2, 3, 5, 9], [10, 15, 14, 17]]
    assert item["labels"].tolist() == [1, 2] and item["id"] == "p0_s000"
    windowed = to_monai_dict(sample("p0_s000"), "brain")["image"]
    assert float(windowed.min()) == -0.25 and float(windowed.max()) == 0.75  # 30, 70 HU in 40/80


def test_monai_dict_over_a_mixed_dataset(folders):
    real, syn = folders
    mixed = MixedDataset(SliceDataset(real), SliceDataset(syn), ratio=0.5, length=12, seed=0)
    items = MonaiDict(mixed, window="head-model")
    assert len(items) == 12
    batch = monai_collate([items[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 16, 20) and batch["label"].shape == (4, 1, 16, 20)
    assert batch["synthetic"].dtype == torch.bool and len(batch["boxes"]) == 4
    flags = [items[i]["synthetic"] for i in range(12)]
    assert any(flags) and not all(flags)
    items.set_epoch(1)
    assert mixed.epoch == 1


def test_monai_dataset_loader_and_box_transforms(folders):
    monai = pytest.importorskip("monai", reason="MONAI not installed (pip install '.[interop]')")
    from monai.apps.detection.transforms.box_ops import convert_box_to_mask
    from monai.apps.detection.transforms.dictionary import RandFlipBoxd
    from monai.transforms import Compose, RandFlipd

    real, syn = folders
    mixed = MixedDataset(SliceDataset(real), SliceDataset(syn), ratio=0.5, length=8, seed=0)
    flip = Compose([
        RandFlipd(keys="label", prob=1.0, spatial_axis=0),  # RandFlipBoxd flips the image
        RandFlipBoxd(image_keys="image", box_keys="boxes", box_ref_image_keys="image",
                     prob=1.0, spatial_axis=0),
    ])  # fmt: skip
    data = monai.data.Dataset(MonaiDict(mixed), transform=flip)
    loader = monai.data.DataLoader(data, batch_size=4, collate_fn=monai_collate, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 16, 20)
    for image, label, boxes, classes in zip(
        batch["image"], batch["label"], batch["boxes"], batch["labels"], strict=True
    ):
        # MONAI's boxes, flipped by MONAI with the image, still frame the flipped lesions.
        drawn = convert_box_to_mask(boxes, classes, (16, 20), bg_label=0)
        lesion = np.asarray(label[0]) > 0
        assert lesion.sum() and np.array_equal(np.asarray(drawn).max(axis=0) > 0, lesion)
        assert lesion[12].any() and np.array_equal(np.asarray(image[0]) == 70.0, lesion)


def test_readme_monai_example_runs(folders, capsys):
    pytest.importorskip("monai", reason="MONAI not installed (pip install '.[interop]')")
    text = README.read_text()
    section = text[text.index("## Generators in your own dataloader") :]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    example = next(b for b in blocks if "MonaiDict" in b)
    scope = {"DATA": folders[0]}
    exec(compile(example, str(README), "exec"), scope)  # noqa: S102 (our own README)
    assert scope["batch"]["image"].shape == (4, 1, 16, 20)
    assert "torch.Size([4, 1, 16, 20])" in capsys.readouterr().out
