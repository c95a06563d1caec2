"""Train one task model under one strategy and evaluate it on the test slices."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, SequentialSampler

from augment.datasets import Collate, MixedDataset, SliceDataset
from augment.sample import Sample
from downstream.config import DetectSpec, SegmentSpec, Strategy


def training_loader(
    strategy: Strategy,
    labelled: SliceDataset,
    synthetic: Sequence[SliceDataset],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    window: str,
) -> DataLoader:
    """``steps`` batches: real labelled slices mixed with synthetic ones at the strategy's
    ratio, classical augmentation applied to both. Every draw has its own generator,
    so two draws of the same slice get different augmentations."""
    transform = None
    if strategy.augment:
        from augment.classical import build_augmenter

        transform = build_augmenter(strategy.augment)
    synth = ConcatDataset(list(synthetic)) if synthetic else []
    ratio = 1.0 if strategy.synthetic_only else (strategy.ratio if synthetic else 0.0)
    mixed = MixedDataset(labelled, synth, ratio, length=steps * batch_size, transform=transform, seed=seed)
    return DataLoader(
        mixed, batch_size=batch_size, sampler=SequentialSampler(mixed), collate_fn=Collate(window), num_workers=0
    )


def test_loader(samples: Sequence[Sample], window: str, batch_size: int = 16) -> DataLoader:
    return DataLoader(list(samples), batch_size=batch_size, shuffle=False, collate_fn=Collate(window))


def run_task(
    task: str,
    spec: SegmentSpec | DetectSpec,
    strategy: Strategy,
    labelled: SliceDataset,
    synthetic: Sequence[SliceDataset],
    test_samples: Sequence[Sample],
    *,
    seed: int,
    device: str,
    classes: dict[int, str],
) -> dict[str, Any]:
    """Train from scratch with ``seed`` and return the test metrics and timings."""
    from gan.base import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)  # network initialisation; data draws use their own generators
    loader = training_loader(
        strategy, labelled, synthetic, steps=spec.steps, batch_size=spec.batch_size, seed=seed, window=spec.window
    )
    t0 = time.perf_counter()
    if task == "segment":
        from downstream.evaluation import evaluate_segmentation
        from downstream.segment import UNet, predict, train_one_epoch

        model = UNet(1, max(classes) + 1, base=spec.base, depth=spec.depth,
                     attention=spec.arch == "attention-unet").to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr, foreach=True)
        losses = train_one_epoch(model, opt, loader, dev)
        train_s = time.perf_counter() - t0
        preds = predict(model, test_loader(test_samples, spec.window), dev)
        metrics = evaluate_segmentation(preds, test_samples, classes)
    else:
        from downstream.detect import (
            DetectorConfig,
            build_detector,
            kmeans_anchors,
            predict,
            train_one_epoch,
        )
        from downstream.evaluation import evaluate_detection

        size = int(test_samples[0].image.shape[0])
        boxes = np.concatenate([s.boxes for s in labelled.samples()] or [np.zeros((0, 4))])
        cfg = DetectorConfig(backbone=spec.backbone, image_size=size, cost_sensitive=spec.cost_sensitive,
                             alpha=spec.alpha, max_ratio=spec.max_ratio, lr=spec.lr,
                             representation_size=spec.representation_size,
                             box_batch_size_per_image=spec.box_batch_size_per_image)
        if spec.kmeans_anchors and len(boxes) >= 3:
            sizes, ratios = kmeans_anchors(boxes, seed=seed)
            cfg = DetectorConfig(**{**cfg.__dict__, "anchor_sizes": sizes, "aspect_ratios": ratios})
        # Class-agnostic: "lesion present here" (subtype classification is the segmenter's job).
        model = build_detector(cfg, num_classes=2).to(dev)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=spec.lr, foreach=True)
        losses = train_one_epoch(model, opt, _agnostic(loader), dev)
        train_s = time.perf_counter() - t0
        preds = predict(model, test_loader(test_samples, spec.window), dev)
        metrics = evaluate_detection(preds, test_samples, theta=spec.theta)
        metrics["anchors"] = {"sizes": list(cfg.anchor_sizes), "aspect_ratios": list(cfg.aspect_ratios)}
    return {
        "metrics": metrics,
        "final_loss": losses.get("loss"),
        "train_seconds": train_s,
        "eval_seconds": time.perf_counter() - t0 - train_s,
        "n_test_slices": len(test_samples),
    }


def _agnostic(loader):
    for batch in loader:
        batch["labels"] = [torch.ones_like(lab) for lab in batch["labels"]]
        yield batch
