"""Datasets for training: a folder of slices, real+synthetic mixtures, and collation.

``SliceDataset`` yields `Sample`s (HU). Turning them into model input is an explicit,
recorded step: `collate` windows with a named `Window` and writes it into the batch,
so a model never silently sees a different intensity mapping than the one recorded.

Randomness is per index: item ``i`` of epoch ``e`` draws from
``np.random.default_rng([seed, e, i])``, so results do not depend on the number of
DataLoader workers or on the order workers fetch items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from augment.errors import ConfigError, DataError
from augment.folder import dataset_anatomy, dataset_classes, load_sample, read_dataset
from augment.io.info import HuAudit, report
from augment.sample import Sample
from augment.splits import budget_patients, split_by_patient
from augment.window import Window, get_window

log = logging.getLogger(__name__)

Augmenter = Callable[[Sample, np.random.Generator], Sample]


class SliceDataset(Dataset):
    """The slices of a dataset folder (see `augment.sample`), as `Sample`s.

    Args:
        folder: a dataset folder (``dataset.json`` + ``manifest.jsonl``).
        transform: an augmenter applied to each sample with a per-index generator.
        seed: seed of the per-index generators.
        indices: a subset of manifest positions (e.g. one split).
        cache: keep loaded slices in memory (small 2D sets fit easily).
        verify: read every file now and check it against the manifest's sha256.
        strict: read every file now; implausible HU or a constant image is a
            `DataError` (with ``verify`` alone they are logged as warnings).

    A mask value that is not one of ``dataset.json``'s classes is a `DataError` when
    the slice is loaded.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        transform: Augmenter | None = None,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        cache: bool = True,
        verify: bool = False,
        strict: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.info, records = read_dataset(self.folder)
        self.classes = dataset_classes(self.info)
        self.records = records if indices is None else [records[i] for i in indices]
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, Sample] | None = {} if cache else None
        if verify or strict:
            self._check(verify=verify, strict=strict)

    def _check(self, *, verify: bool, strict: bool) -> None:
        """Read every listed file once (filling the cache): sha256, HU and constant images."""
        audit = HuAudit("image")
        for i, record in enumerate(self.records):
            sample = load_sample(self.folder, record, verify=verify, classes=self.classes)
            audit.add(str(self.folder), record["image"], sample.image)
            if self._cache is not None:
                self._cache[i] = sample
        report(audit.pop(), strict=strict, logger=log)

    @property
    def anatomy(self) -> str | None:
        """What the slices show (``head-ich``/``liver``) when the folder records it."""
        return dataset_anatomy(self.info)

    @property
    def patient_ids(self) -> list[str]:
        return [str(r.get("patient_id", r["id"])) for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws of ``transform`` from one epoch to the next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> Sample:
        """Item ``i`` without augmentation."""
        if self._cache is None:
            return load_sample(self.folder, self.records[i], classes=self.classes)
        if i not in self._cache:
            self._cache[i] = load_sample(self.folder, self.records[i], classes=self.classes)
        return self._cache[i].copy()

    def __getitem__(self, i: int) -> Sample:
        s = self.load(i)
        if self.transform is not None:
            s = self.transform(s, np.random.default_rng([self.seed, self.epoch, i]))
        return s

    def subset(self, indices: Sequence[int]) -> SliceDataset:
        """A dataset over some of these items (same folder, transform and seed)."""
        out = SliceDataset.__new__(SliceDataset)
        out.folder, out.info, out.classes, out.transform, out.seed, out.epoch = (
            self.folder,
            self.info,
            self.classes,
            self.transform,
            self.seed,
            self.epoch,
        )
        out.records = [self.records[i] for i in indices]
        out._cache = {} if self._cache is not None else None
        return out

    def split(
        self, fractions: Sequence[float] = (0.6, 0.2, 0.2), *, seed: int = 0
    ) -> dict[str, SliceDataset]:
        """Patient-level train/val/test split (no patient in two parts)."""
        parts = split_by_patient(self.patient_ids, fractions, seed=seed)
        return {name: self.subset(idx) for name, idx in parts.items()}

    def label_budget(self, k: int, *, seed: int = 0) -> SliceDataset:
        """The slices of ``k`` patients drawn with ``seed`` (nested across k)."""
        keep = set(budget_patients(self.patient_ids, k, seed=seed))
        return self.subset([i for i, p in enumerate(self.patient_ids) if p in keep])

    def samples(self) -> list[Sample]:
        """All items, unaugmented, each tagged with the folder it came from
        (``meta["source_folder"]``, for messages; never written to a manifest)."""
        source = str(self.folder.resolve())
        out = [self.load(i) for i in range(len(self))]
        for s in out:
            s.meta["source_folder"] = source
        return out


def load_samples(folder: str | os.PathLike) -> list[Sample]:
    """Every slice of a dataset folder, unaugmented."""
    return SliceDataset(folder, cache=False).samples()


class MixedDataset(Dataset):
    """Real and synthetic samples mixed at a set ratio, each tagged ``meta["synthetic"]``.

    Args:
        real: a sequence of real `Sample`s (e.g. a `SliceDataset`).
        synthetic: a sequence of synthetic samples (e.g. a `SliceDataset` over a
            ``lesionforge synthesize`` folder) or a live generator with
            ``sample(n, *, seed, conditions)`` (a `gan.base.GanModule`), which then
            generates on the fly using a real sample as host (e.g. ``GanModule.load`` of a
            run, or of a ``lesionforge gan export`` file). Each live item gets its own id,
            ``syn_s{seed}_e{epoch}_{index:06d}`` (the generator's own is kept as ``model_id``).
        ratio: fraction of items that are synthetic, in [0, 1].
        length: number of items per epoch (default: ``len(real)``, or
            ``len(real) / (1 - ratio)`` so every real slice can appear once).
        transform: augmenter applied after mixing, to real and synthetic alike.
        seed: every draw of item ``i`` in epoch ``e`` uses ``default_rng([seed, e, i])``,
            so samples are identical whatever ``num_workers`` is.

    A live generator is moved to CPU per worker by the DataLoader's fork; keep
    ``num_workers=0`` if it lives on a GPU.
    """

    def __init__(
        self,
        real: Sequence[Sample],
        synthetic: Sequence[Sample] | Any,
        ratio: float,
        *,
        length: int | None = None,
        transform: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"synthetic ratio must be in [0, 1], got {ratio}")
        if len(real) == 0 and ratio < 1.0:
            raise DataError("MixedDataset: no real samples")
        self.live = hasattr(synthetic, "sample") and not isinstance(synthetic, Sequence | Dataset)
        if not self.live and len(synthetic) == 0 and ratio > 0:
            raise DataError("MixedDataset: no synthetic samples")
        if self.live and len(real) == 0:
            raise DataError("MixedDataset: a live generator needs real host slices")
        self.real, self.synthetic, self.ratio = real, synthetic, ratio
        self.transform, self.seed, self.epoch = transform, seed, 0
        if length is None:
            length = len(real) if ratio >= 1.0 else int(round(len(real) / (1.0 - ratio)))
        self.length = max(1, length)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if rng.random() < self.ratio:
            if self.live:
                host = self.real[int(rng.integers(len(self.real)))]
                seed = int(rng.integers(2**31 - 1))
                s = self.synthetic.sample(1, seed=seed, conditions=[host])[0]
                # A generator numbers what one call returns (syn_00000 each time); the item is
                # what is unique and reproducible: (dataset seed, epoch, index).
                s.meta["model_id"] = s.meta.get("id")
                s.meta["id"] = f"syn_s{self.seed}_e{self.epoch}_{i:06d}"
            else:
                s = self.synthetic[int(rng.integers(len(self.synthetic)))].copy()
            s.meta["synthetic"] = True
        else:
            s = self.real[int(rng.integers(len(self.real)))].copy()
            s.meta["synthetic"] = bool(s.meta.get("synthetic", False))
        if self.transform is not None:
            s = self.transform(s, rng)
        return s


def to_model_input(image_hu: np.ndarray, window: Window) -> np.ndarray:
    """HU -> [-1, 1] float32 through ``window`` (the recorded model-input transform)."""
    return np.asarray(window.to_model(np.asarray(image_hu, np.float32)), np.float32)


def collate(samples: Sequence[Sample], window: str | Window = "head-model") -> dict[str, Any]:
    """Stack samples into model tensors.

    Returns a dict with ``image`` (B, 1, H, W) float32 in [-1, 1] through ``window``,
    ``mask`` (B, H, W) int64, ``boxes``/``labels`` lists of tensors (detection targets),
    ``synthetic`` (B,) bool, ``meta`` list, and ``window`` (the mapping used).
    """
    win = get_window(window)
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        raise DataError(f"cannot batch slices of different sizes {sorted(shapes)}; resample on import")
    image = np.stack([to_model_input(s.image, win) for s in samples])[:, None]
    return {
        "image": torch.from_numpy(image),
        "mask": torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.int64)),
        "boxes": [torch.from_numpy(s.boxes.copy()) for s in samples],
        "labels": [torch.from_numpy(s.labels.copy()) for s in samples],
        "synthetic": torch.tensor([bool(s.meta.get("synthetic", False)) for s in samples]),
        "meta": [s.meta for s in samples],
        "window": win.as_dict(),
    }


class Collate:
    """Picklable ``collate_fn`` for DataLoader workers: ``Collate("brain")``."""

    def __init__(self, window: str | Window = "head-model") -> None:
        self.window = get_window(window)

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return collate(samples, self.window)
