"""lesionforge samples in other frameworks' loaders: MONAI dict datasets.

`MonaiDict` wraps any dataset of `Sample`s (`SliceDataset`, `MixedDataset` with a
synthetic folder or a live generator, a list) so that each item is the dictionary MONAI's
dictionary transforms (``RandFlipd``, ``RandRotated``, ``ScaleIntensityRanged`` ...) and
``monai.data.Dataset``/``DataLoader`` expect::

    {"image": float32 (1, H, W), "label": int64 (1, H, W), "boxes": float32 (N, 4),
     "labels": int64 (N,), "id": str, "patient_id": str, "synthetic": bool}

Channel first. ``image`` is HU unless a window is given (then [-1, 1] through it, as
`augment.datasets.Collate` maps it). ``boxes`` follow MONAI's box convention (its
``StandardMode``): coordinates in the order of the tensor's spatial axes, i.e.
``[row1, col1, row2, col2]`` (lesionforge's ``[y1, x1, y2, x2]``, pixel edges), so
MONAI's box transforms move them with the image. MONAI itself is not imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from augment.sample import Sample
from augment.window import Window, get_window

MONAI_KEYS = ("image", "label", "boxes", "labels", "id", "patient_id", "synthetic")


def to_monai_dict(sample: Sample, window: str | Window | None = None) -> dict[str, Any]:
    """One `Sample` as a MONAI item (see the module docstring).

    Args:
        sample: a HU slice with its mask and boxes.
        window: ``None`` keeps HU (window with MONAI's own transforms, e.g.
            ``ScaleIntensityRanged``); a name or `Window` maps HU to [-1, 1].
    """
    image = np.asarray(sample.image, np.float32)
    if window is not None:
        image = np.asarray(get_window(window).to_model(image), np.float32)
    boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image[None])),
        "label": torch.from_numpy(sample.mask.astype(np.int64)[None]),
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
        "labels": torch.from_numpy(np.asarray(sample.labels, np.int64).copy()),
        "id": sample.id,
        "patient_id": sample.patient_id,
        "synthetic": bool(sample.meta.get("synthetic", False)),
    }


class MonaiDict(Dataset):
    """Any dataset of `Sample`s as MONAI dict items (`to_monai_dict`).

    Use it as the ``data`` of ``monai.data.Dataset(data, transform=...)`` or directly
    with a ``DataLoader``; batch with `monai_collate` (boxes differ in number per slice).

    Args:
        dataset: a `SliceDataset`, `MixedDataset`, list of `Sample`s...
        window: ``None`` for HU, or the window that maps HU to [-1, 1].
    """

    def __init__(self, dataset: Sequence[Sample], window: str | Window | None = None) -> None:
        self.dataset = dataset
        self.window = get_window(window) if window is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return to_monai_dict(self.dataset[i], self.window)

    def set_epoch(self, epoch: int) -> None:
        """Passed on to a `MixedDataset` or `SliceDataset` (per-epoch draws)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def monai_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch MONAI items: ``image``/``label`` stacked (B, 1, H, W), ``boxes``/``labels``
    as lists (one tensor per slice), ``synthetic`` a bool tensor, ids as lists."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("image", "label"):
            batch[key] = torch.stack([torch.as_tensor(v) for v in values])
        elif key == "synthetic":
            batch[key] = torch.tensor(values, dtype=torch.bool)
        else:
            batch[key] = values
    return batch


__all__ = ["MONAI_KEYS", "MonaiDict", "monai_collate", "to_monai_dict"]
