"""`lesionforge demo`: the quick end-to-end run on the embedded head-ICH phantom."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def run_demo(out: str | Path = "out/demo", *, seed: int = 0, device: str = "auto") -> Path:
    """Generate a phantom dataset and an augmentation preview; returns the preview path."""
    from augment.classical import build_augmenter
    from augment.datasets import SliceDataset
    from augment.info import dataset_info, format_info
    from augment.phantom import write_phantom
    from augment.viz import preview_augmentations

    out = Path(out)
    data = out / "phantom_head_A"
    if not (data / "dataset.json").exists():
        write_phantom(data, "head-ich", 64, size=128, domain="A", seed=seed, progress=True)
    (out / "data_info.txt").write_text(format_info(dataset_info(data)) + "\n")
    ds = SliceDataset(data)
    lesion_slices = [s for s in ds.samples() if s.has_lesion][:4]
    rng = np.random.default_rng(seed)
    return preview_augmentations(
        lesion_slices, build_augmenter("standard"), rng, out / "augment_preview.png", n_aug=3, window="brain"
    )
