"""The 2D training recipe shared by the task models, on the lines nnU-Net established.

* **Patches with foreground oversampling** (`PatchDataset`): each item is a ``patch`` ×
  ``patch`` crop of a (mixed, augmented) slice; a fraction ``fg_fraction`` of items is
  drawn from slices that hold a lesion and cropped around a random lesion pixel, the rest
  are random crops of any slice. Lesions cover ~1 % of a CT slice: without this, most
  batches hold no lesion pixel and a small budget is spent learning "background".
  nnU-Net forces one third of every batch to contain foreground (Isensee et al. 2021).
* **Poly learning-rate schedule** ``lr · (1 − t/T)^0.9`` (`poly_lr`), nnU-Net's default.
* **Checkpoint chosen on the validation split** (`Validator`): every ``val_every`` steps
  the model predicts the validation slices whole and the state with the best
  *exponentially smoothed* validation metric is kept (nnU-Net keeps its best checkpoint
  by an EMA of the validation pseudo-Dice for the same reason: a validation split of a few
  patients has lucky spikes, and a spike early in training is not the best model); the raw
  curve is recorded, and a run whose metric was still rising at the end is flagged
  ``undertrained`` (`still_rising`).

Randomness is per item (``default_rng([seed, 1, i])``), as in `augment.datasets`, so the
batches do not depend on DataLoader workers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from augment.errors import ConfigError
from augment.sample import Sample

RISING_MARGIN = 0.02  # absolute gain of the validation metric that counts as "still rising"
# Weight of the past in the validation EMA the checkpoint is chosen by. nnU-Net uses 0.9 per
# epoch over ~1000 epochs; our runs have 8-25 evaluations, so 0.5 (a half-life of one
# evaluation): it damps a single-evaluation spike by half and lags a real rise by ~1 point.
VAL_SMOOTHING = 0.5


def poly_lr(base_lr: float, step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: ``base_lr · (1 − step/total)^exponent``."""
    return base_lr * (1.0 - min(step, total) / max(total, 1)) ** exponent


def crop_sample(s: Sample, top: int, left: int, size: int) -> Sample:
    """The ``size`` × ``size`` window of ``s`` at (top, left); boxes re-derived from the mask."""
    from augment.sample import boxes_from_mask

    img = s.image[top : top + size, left : left + size]
    mask = s.mask[top : top + size, left : left + size]
    boxes, labels = boxes_from_mask(mask)
    meta = dict(s.meta)
    meta["patch"] = [int(top), int(left), int(size)]
    return Sample(image=np.ascontiguousarray(img), mask=np.ascontiguousarray(mask), boxes=boxes,
                  labels=labels, meta=meta)


def patch_origin(mask: np.ndarray, size: int, rng: np.random.Generator, *, foreground: bool) -> tuple[int, int]:
    """Top-left corner of a patch: around a random lesion pixel when ``foreground`` and the
    slice has one (the pixel lands anywhere inside the patch), uniform otherwise."""
    h, w = mask.shape
    if foreground:
        ys, xs = np.nonzero(mask)
        if len(ys):
            k = int(rng.integers(len(ys)))
            top = int(ys[k]) - int(rng.integers(size))
            left = int(xs[k]) - int(rng.integers(size))
            return int(np.clip(top, 0, h - size)), int(np.clip(left, 0, w - size))
    return int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))


class PatchDataset(Dataset):
    """Patches of training slices with foreground oversampling (module docstring).

    Args:
        any_slice: items of every slice (e.g. a `MixedDataset` of real + synthetic).
        lesion_slice: items drawn only from slices that hold a lesion (same mixture), or
            None when no training slice has one.
        patch: patch side in pixels (None: whole slices, no cropping).
        fg_fraction: fraction of items centred on a lesion.
        seed: per-item draws use ``default_rng([seed, 1, i])``.
    """

    def __init__(
        self, any_slice: Dataset, lesion_slice: Dataset | None, *, patch: int | None, fg_fraction: float,
        seed: int,
    ) -> None:
        if not 0.0 <= fg_fraction <= 1.0:
            raise ConfigError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self.any_slice, self.lesion_slice = any_slice, lesion_slice
        self.patch, self.fg_fraction, self.seed = patch, fg_fraction, seed

    def __len__(self) -> int:
        return len(self.any_slice)

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng([self.seed, 1, i])
        forced = self.lesion_slice is not None and rng.random() < self.fg_fraction
        s = self.lesion_slice[i] if forced else self.any_slice[i]
        if self.patch is None:
            return s
        h, w = s.image.shape
        if self.patch > min(h, w):
            raise ConfigError(f"patch {self.patch} px is larger than the {h}x{w} slices")
        top, left = patch_origin(s.mask, self.patch, rng, foreground=forced)
        return crop_sample(s, top, left, self.patch)


def lesion_only(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if s.has_lesion]


class Validator:
    """Keeps the best model state by a validation metric and the metric's curve.

    ``evaluate(model) -> float`` scores the model on the validation split (higher is
    better). Call `step` every ``every`` training steps and at the last one; `restore`
    loads the best state back into the model. The state kept is the one where the
    exponential moving average of the metric (weight ``smoothing`` on the past; 0 = the raw
    metric) peaked, so that one lucky evaluation does not choose the model.
    """

    def __init__(
        self, evaluate: Callable[[torch.nn.Module], float] | None, every: int, smoothing: float = VAL_SMOOTHING
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"validation smoothing must be in [0, 1), got {smoothing}")
        self.evaluate, self.every, self.smoothing = evaluate, max(int(every), 1), float(smoothing)
        self.curve: list[tuple[int, float]] = []
        self.smoothed: float | None = None
        self.best_smoothed = -float("inf")
        self.best_value = -float("inf")  # the raw metric at the step kept
        self.best_step = -1
        self._best_state: dict[str, Any] | None = None

    def due(self, step: int, total: int) -> bool:
        return self.evaluate is not None and (step % self.every == 0 or step == total)

    def step(self, model: torch.nn.Module, step: int) -> float:
        value = float(self.evaluate(model))
        self.curve.append((int(step), value))
        if not np.isfinite(value):
            return value
        a = self.smoothing
        self.smoothed = value if self.smoothed is None else a * self.smoothed + (1.0 - a) * value
        if self.smoothed > self.best_smoothed:
            self.best_smoothed, self.best_value, self.best_step = self.smoothed, value, int(step)
            self._best_state = copy.deepcopy(model.state_dict())
        return value

    def restore(self, model: torch.nn.Module) -> None:
        if self._best_state is not None:
            model.load_state_dict(self._best_state)

    def summary(self) -> dict[str, Any]:
        values = [v for _, v in self.curve]
        return {
            "val_curve": [[s, v] for s, v in self.curve],
            "val_best": self.best_value if self.curve else float("nan"),
            "val_best_step": self.best_step,
            "val_best_smoothed": self.best_smoothed if self.curve else float("nan"),
            "val_smoothing": self.smoothing,
            "undertrained": still_rising(values),
        }


def still_rising(values: Sequence[float], margin: float = RISING_MARGIN) -> bool:
    """True when the validation metric was still rising at the end of training: its best
    value lies in the last third of the evaluations (at least 3), and its least-squares
    trend over that third gained more than ``margin`` (absolute). Then more steps would likely have
    helped, and the run's numbers are not those of a trained model. A trend, not the
    last two points, so that the noise of a small validation set on a plateau is not
    read as progress.
    """
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if len(v) < 4:
        return False
    tail = v[-max(3, -(-len(v) // 3)) :]
    slope = np.polyfit(np.arange(len(tail), dtype=float), tail, 1)[0]
    return bool(tail.max() >= v.max() and slope * (len(tail) - 1) > margin)
