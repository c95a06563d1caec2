"""The training recipe: poly schedule, foreground-oversampled patches, validation-chosen
checkpoints and the undertrained flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.errors import ConfigError
from augment.sample import Sample
from downstream.harness.recipe import (
    PatchDataset,
    Validator,
    crop_sample,
    patch_origin,
    poly_lr,
    still_rising,
)


def test_poly_lr_hand_values():
    # nnU-Net: lr * (1 - t/T)^0.9
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


def test_foreground_patches_contain_a_lesion_pixel_and_boxes_follow_the_crop():
    mask = np.zeros((64, 64), np.uint8)
    mask[60:63, 2:5] = 2  # a lesion in a corner
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left = patch_origin(mask, 16, rng, foreground=True)
        assert 0 <= top <= 48 and 0 <= left <= 48
        assert mask[top : top + 16, left : left + 16].any()
    s = Sample(np.zeros((64, 64), np.float32), mask, meta={"id": "a"})
    c = crop_sample(s, 48, 0, 16)
    assert c.image.shape == (16, 16) and c.boxes.tolist() == [[2.0, 12.0, 5.0, 15.0]] and c.labels.tolist() == [2]


class _Items:
    def __init__(self, lesion: bool, n: int = 1000):
        self.lesion, self.n = lesion, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        mask = np.zeros((32, 32), np.uint8)
        if self.lesion:
            mask[3, 28] = 1
        return Sample(np.zeros((32, 32), np.float32), mask, meta={"id": f"x{i}"})


def test_patch_dataset_oversamples_lesions_at_the_set_fraction():
    ds = PatchDataset(_Items(False), _Items(True), patch=8, fg_fraction=0.33, seed=0)
    hits = np.mean([ds[i].mask.any() for i in range(len(ds))])
    # Forced items always hold the lesion pixel; the others never do (their slices have none).
    assert hits == pytest.approx(0.33, abs=0.04)
    assert [ds[i].meta["patch"] for i in range(5)] == [ds[i].meta["patch"] for i in range(5)]  # per-item seeds
    whole = PatchDataset(_Items(False), None, patch=None, fg_fraction=0.5, seed=0)
    assert whole[0].image.shape == (32, 32)


def test_still_rising_reads_the_trend_not_the_noise():
    assert still_rising([0.1, 0.3, 0.5, 0.6, 0.7, 0.8])  # climbing to the end
    assert not still_rising([0.0, 0.15, 0.37, 0.53, 0.72, 0.77, 0.77, 0.77])  # plateau at the end
    assert not still_rising([0.0, 0.43, 0.36, 0.5, 0.77, 0.67, 0.73, 0.74])  # noisy plateau
    assert not still_rising([0.5, 0.6, 0.7])  # too few evaluations to tell
    assert not still_rising([0.9, 0.8, 0.7, 0.6])  # falling


def test_validator_restores_the_best_state():
    model = torch.nn.Linear(1, 1, bias=False)
    scores = iter([0.2, 0.9, 0.4])
    v = Validator(lambda m: next(scores), every=10, smoothing=0.0)  # raw metric
    for step, w in ((10, 1.0), (20, 2.0), (30, 3.0)):
        with torch.no_grad():
            model.weight.fill_(w)
        assert v.due(step, 30)
        v.step(model, step)
    v.restore(model)
    assert model.weight.item() == 2.0
    summary = v.summary()
    assert summary["val_best"] == 0.9 and summary["val_best_step"] == 20 and not summary["undertrained"]
    assert summary["val_curve"] == [[10, 0.2], [20, 0.9], [30, 0.4]]


def test_validator_chooses_by_the_smoothed_metric_not_a_lucky_spike():
    # The curve of a real liver run (full-data ceiling, 5 validation patients): a spike at
    # step 150, then a plateau near 0.53-0.56. With smoothing 0.5 the EMA is
    # 0.32, 0.34, 0.47, 0.29, 0.39, 0.45, 0.48, 0.51, 0.50, 0.51, 0.52, 0.54, 0.55 (by hand):
    # the state kept is the plateau's, at step 650, not the spike's.
    curve = [0.32, 0.36, 0.60, 0.10, 0.49, 0.51, 0.52, 0.53, 0.49, 0.53, 0.53, 0.55, 0.56]
    scores = iter(curve)
    model = torch.nn.Linear(1, 1, bias=False)
    v = Validator(lambda m: next(scores), every=50, smoothing=0.5)
    for i in range(len(curve)):
        with torch.no_grad():
            model.weight.fill_(float(i))
        v.step(model, 50 * (i + 1))
    v.restore(model)
    assert v.best_step == 650 and model.weight.item() == 12.0
    assert v.summary()["val_best"] == 0.56  # the raw value at the step kept
    raw = Validator(lambda m: 0.0, every=50, smoothing=0.0)
    scores = iter(curve)
    raw.evaluate = lambda m: next(scores)
    for i in range(len(curve)):
        raw.step(model, 50 * (i + 1))
    assert raw.best_step == 150  # the raw maximum is the spike
    with pytest.raises(ConfigError):
        Validator(None, every=10, smoothing=1.0)
