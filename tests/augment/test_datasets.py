"""SliceDataset, MixedDataset (folder and live generator) and collation."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from augment.datasets import Collate, MixedDataset, SliceDataset, collate, load_samples
from augment.errors import ConfigError, DataError
from augment.folder import write_dataset
from augment.sample import Sample
from augment.window import Window


def _sample(i: int, synthetic: bool = False) -> Sample:
    rng = np.random.default_rng(i)
    image = rng.normal(30, 5, (12, 12)).astype(np.float32)
    mask = np.zeros((12, 12), np.uint8)
    mask[i % 8 : i % 8 + 3, 2:5] = 1
    prefix = "syn" if synthetic else "p"
    return Sample(image, mask, meta={"id": f"{prefix}{i:03d}", "patient_id": f"p{i // 2}", "synthetic": synthetic})


@pytest.fixture
def real_dir(tmp_path):
    return write_dataset(tmp_path / "real", [_sample(i) for i in range(12)], provenance="t")


@pytest.fixture
def syn_dir(tmp_path):
    return write_dataset(tmp_path / "syn", [_sample(100 + i, True) for i in range(5)], provenance="synthetic")


def _shift(s: Sample, rng: np.random.Generator) -> Sample:
    """A toy augmenter: adds a random HU offset and records it."""
    offset = float(rng.uniform(-10, 10))
    out = s.replace(image=s.image + offset)
    out.meta["offset"] = offset
    return out


def test_slice_dataset_reads_folder_and_splits_by_patient(real_dir):
    ds = SliceDataset(real_dir)
    assert len(ds) == 12 and ds[0].id == "p000"
    parts = ds.split((0.5, 0.25, 0.25), seed=0)
    pats = {k: set(v.patient_ids) for k, v in parts.items()}
    assert not pats["train"] & pats["test"] and sum(len(v) for v in parts.values()) == 12
    assert len(set(ds.label_budget(2, seed=0).patient_ids)) == 2
    assert len(load_samples(real_dir)) == 12


def test_slice_dataset_cache_returns_copies(real_dir):
    ds = SliceDataset(real_dir)
    a = ds[0]
    a.image += 1000
    assert ds[0].image.max() < 500


def test_transform_is_deterministic_per_index_and_epoch(real_dir):
    ds = SliceDataset(real_dir, transform=_shift, seed=4)
    first = [ds[i].meta["offset"] for i in range(4)]
    assert first == [ds[i].meta["offset"] for i in range(4)]
    ds.set_epoch(1)
    assert first != [ds[i].meta["offset"] for i in range(4)]


def test_mixed_dataset_ratio_and_tags(real_dir, syn_dir):
    mixed = MixedDataset(SliceDataset(real_dir), SliceDataset(syn_dir), ratio=0.5, length=400, seed=1)
    tags = [mixed[i].meta["synthetic"] for i in range(len(mixed))]
    # 400 Bernoulli(0.5) draws: the fraction lies within 0.5 +- 0.1 with probability > 0.9999.
    assert 0.4 < np.mean(tags) < 0.6
    synthetic_ids = {mixed[i].id for i in range(len(mixed)) if mixed[i].meta["synthetic"]}
    assert all(i.startswith("syn") for i in synthetic_ids)
    assert MixedDataset(SliceDataset(real_dir), SliceDataset(syn_dir), ratio=0.0)[3].meta["synthetic"] is False


class _LiveGenerator:
    """Implements the Generator.sample contract: pastes a 90 HU square into the host."""

    def sample(self, n, *, seed, conditions=None):
        rng = np.random.default_rng(seed)
        out = []
        for host in conditions[:n]:
            mask = np.zeros_like(host.mask)
            r, c = rng.integers(0, 8, size=2)
            mask[r : r + 3, c : c + 3] = 2
            image = np.where(mask > 0, 90.0, host.image)
            out.append(Sample(image, mask, meta={"id": f"live_{seed}", "patient_id": host.patient_id}))
        return out


def test_mixed_dataset_live_generator_is_worker_independent(real_dir):
    mixed = MixedDataset(SliceDataset(real_dir), _LiveGenerator(), ratio=0.5, length=16, seed=2)
    loader0 = DataLoader(mixed, batch_size=4, num_workers=0, collate_fn=Collate(Window(40, 200)))
    loader2 = DataLoader(mixed, batch_size=4, num_workers=2, collate_fn=Collate(Window(40, 200)))
    a, b = list(loader0), list(loader2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    synth = torch.cat([x["synthetic"] for x in a])
    assert synth.any() and not synth.all()
    masks = torch.cat([x["mask"] for x in a])
    assert (masks[synth] == 2).any() and not (masks[~synth] == 2).any()


def test_mixed_dataset_rejects_bad_ratio(real_dir):
    with pytest.raises(ConfigError):
        MixedDataset(SliceDataset(real_dir), [], ratio=1.5)
    with pytest.raises(DataError):
        MixedDataset(SliceDataset(real_dir), [], ratio=0.5)


def test_collate_windows_and_records_it():
    s = _sample(0)
    s.image[0, 0], s.image[0, 1] = -60.0, 140.0  # the edges of window 40/200
    batch = collate([s, _sample(1)], Window(40, 200))
    assert batch["image"].shape == (2, 1, 12, 12) and batch["mask"].dtype == torch.int64
    assert batch["image"][0, 0, 0, 0] == -1.0 and batch["image"][0, 0, 0, 1] == 1.0
    assert batch["window"] == {"center": 40.0, "width": 200.0}
    assert len(batch["boxes"]) == 2 and batch["boxes"][0].shape[1] == 4
