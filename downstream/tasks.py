"""Train one task model under one strategy and evaluate it on the test slices.

Both tasks train with the recipe of `downstream.recipe` (patches with foreground
oversampling, poly learning rate, the checkpoint chosen on the validation split) and
return the same row shape: test metrics (also per test patient, for the paired
statistics of `downstream.stats`), the validation curve, and whether the run was still
improving when it stopped (``undertrained``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, SequentialSampler

from augment.datasets import Collate, MixedDataset, SliceDataset
from augment.sample import Sample
from downstream.config import DetectSpec, RecipeSpec, SegmentSpec, Strategy
from downstream.recipe import PatchDataset, Validator

LESION_STREAM = 7919  # seed offset of the lesion-slice draws (independent of the any-slice draws)


def _with_lesion(ds: SliceDataset) -> SliceDataset:
    return ds.subset([i for i, r in enumerate(ds.records) if r.get("labels")])


def training_loader(
    strategy: Strategy,
    labelled: SliceDataset,
    synthetic: Sequence[SliceDataset],
    *,
    spec: RecipeSpec,
    seed: int,
) -> DataLoader:
    """``spec.steps`` batches of ``spec.batch_size`` training items: real labelled slices
    mixed with synthetic ones at the strategy's ratio, classical augmentation applied to
    both, then cut into patches with foreground oversampling (`downstream.recipe`). Every
    item draws from its own generator, so two draws of the same slice differ."""
    transform = None
    if strategy.augment:
        from augment.classical import build_augmenter

        transform = build_augmenter(strategy.augment)
    ratio = 1.0 if strategy.synthetic_only else (strategy.ratio if synthetic else 0.0)
    n = spec.steps * spec.batch_size
    synth: Dataset | list = ConcatDataset(list(synthetic)) if synthetic else []
    any_slice = MixedDataset(labelled, synth, ratio, length=n, transform=transform, seed=seed)
    lesion_slice = None
    if spec.fg_fraction > 0:
        real_l = _with_lesion(labelled)
        synth_l = [d for d in (_with_lesion(s) for s in synthetic) if len(d)]
        les_ratio = ratio if synth_l else 0.0
        if synth_l and not len(real_l):
            les_ratio = 1.0  # no labelled slice has a lesion: lesion items are synthetic
        if len(real_l) or synth_l:
            lesion_slice = MixedDataset(real_l, ConcatDataset(synth_l) if synth_l else [], les_ratio, length=n,
                                        transform=transform, seed=seed + LESION_STREAM)
    items = PatchDataset(any_slice, lesion_slice, patch=spec.patch, fg_fraction=spec.fg_fraction, seed=seed)
    return DataLoader(items, batch_size=spec.batch_size, sampler=SequentialSampler(items),
                      collate_fn=Collate(spec.window), num_workers=0)


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
    val_samples: Sequence[Sample] = (),
    segmenter: tuple[SegmentSpec, dict[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train from scratch (or, for a unet-backbone detector, from ``segmenter``'s weights)
    with ``seed``; returns the result row and the trained model's state dict."""
    from gan.base import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)  # network initialisation; data draws use their own generators
    loader = training_loader(strategy, labelled, synthetic, spec=spec, seed=seed)
    t0 = time.perf_counter()
    if task == "segment":
        model, out, metrics = _segment(spec, loader, test_samples, val_samples, dev, classes)
    else:
        model, out, metrics = _detect(spec, loader, labelled, test_samples, val_samples, dev, classes, seed,
                                      segmenter)
    train_s = out.pop("train_seconds")
    row = {
        "metrics": metrics,
        "final_loss": out.get("loss"),
        "train_seconds": train_s,
        "eval_seconds": time.perf_counter() - t0 - train_s,
        "n_test_slices": len(test_samples),
        "val_curve": out.get("val_curve", []),
        "val_best": out.get("val_best", float("nan")),
        "val_best_step": out.get("val_best_step", -1),
        "undertrained": bool(out.get("undertrained", False)),
        "val_metric": "dice" if task == "segment" else "mAP50",
    }
    return row, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _segment(spec: SegmentSpec, loader, test_samples, val_samples, dev, classes):
    from downstream.evaluation import evaluate_segmentation
    from downstream.segment import UNet, fit, make_optimizer, predict, segmentation_loss

    model = UNet(1, max(classes) + 1, base=spec.base, depth=spec.depth,
                 attention=spec.arch == "attention-unet").to(dev)
    opt = make_optimizer(model.parameters(), spec.optimizer, spec.lr)
    val = list(val_samples)

    def score(m) -> float:
        return evaluate_segmentation(predict(m, test_loader(val, spec.window), dev), val, classes)["dice"]

    t0 = time.perf_counter()
    out = fit(model, opt, loader, dev, steps=spec.steps, schedule=spec.schedule,
              loss_fn=lambda m, b: segmentation_loss(m, b, dev),
              validator=Validator(score if val else None, spec.val_every))
    out["train_seconds"] = time.perf_counter() - t0
    preds = predict(model, test_loader(test_samples, spec.window), dev)
    return model, out, evaluate_segmentation(preds, test_samples, classes)


def detector_config(spec: DetectSpec, labelled: SliceDataset, size: int, classes: dict[int, str], seed: int,
                    segmenter: SegmentSpec | None):
    """The `DetectorConfig` a task spec and its training data imply (k-means anchors)."""
    from downstream.detect import DetectorConfig, kmeans_anchors

    arch = segmenter if (spec.backbone == "unet" and spec.init == "segmenter" and segmenter) else spec
    cfg = DetectorConfig(backbone=spec.backbone, image_size=size, cost_sensitive=spec.cost_sensitive,
                         alpha=spec.alpha, max_ratio=spec.max_ratio,
                         representation_size=spec.representation_size,
                         box_batch_size_per_image=spec.box_batch_size_per_image,
                         rpn_pre_nms_top_n=tuple(spec.rpn_pre_nms_top_n),
                         rpn_post_nms_top_n=tuple(spec.rpn_post_nms_top_n),
                         detach_box_head=spec.detach_box_head, unet_levels=tuple(spec.levels),
                         seg_proposals=spec.seg_proposals,
                         rpn_fg_iou_thresh=spec.rpn_fg_iou_thresh, rpn_bg_iou_thresh=spec.rpn_bg_iou_thresh,
                         backbone_weights=spec.backbone_weights, seg_classes=max(classes) + 1,
                         unet_base=arch.base, unet_depth=arch.depth,
                         unet_attention=arch.arch == "attention-unet")
    boxes = np.concatenate([s.boxes for s in labelled.samples()] or [np.zeros((0, 4))])
    if spec.kmeans_anchors and len(boxes) >= 3:
        sizes, ratios = kmeans_anchors(boxes, seed=seed)
        cfg = DetectorConfig(**{**cfg.__dict__, "anchor_sizes": sizes, "aspect_ratios": ratios})
    return cfg


def _detect(spec: DetectSpec, loader, labelled, test_samples, val_samples, dev, classes, seed, segmenter):
    from downstream.detect import (
        build_detector,
        detection_loss,
        freeze_unet,
        load_segmenter_weights,
        predict,
    )
    from downstream.evaluation import evaluate_detection
    from downstream.segment import fit, make_optimizer

    size = int(test_samples[0].image.shape[0])
    init_from = None
    if spec.backbone == "unet" and spec.init == "segmenter":
        if segmenter is None:
            raise ValueError("detect with init: segmenter needs the run's trained segmenter")
        init_from = segmenter
    cfg = detector_config(spec, labelled, size, classes, seed, init_from[0] if init_from else None)
    # Class-agnostic: "lesion present here" (subtype classification is the segmenter's job).
    model = build_detector(cfg, num_classes=2)
    if init_from is not None:
        load_segmenter_weights(model, init_from[1])
        if spec.freeze_backbone:
            freeze_unet(model)
    model.to(dev)
    opt = make_optimizer(model.parameters(), spec.optimizer, spec.lr)
    val = list(val_samples)

    def score(m) -> float:
        return evaluate_detection(predict(m, test_loader(val, spec.window), dev), val, theta=spec.theta)["mAP50"]

    t0 = time.perf_counter()
    out = fit(model, opt, _agnostic(loader), dev, steps=spec.steps, schedule=spec.schedule,
              loss_fn=lambda m, b: detection_loss(m, b, dev,
                                                  aux_weight=0.0 if spec.freeze_backbone else spec.aux_weight),
              validator=Validator(score if val else None, spec.val_every))
    out["train_seconds"] = time.perf_counter() - t0
    preds = predict(model, test_loader(test_samples, spec.window), dev)
    metrics = evaluate_detection(preds, test_samples, theta=spec.theta)
    metrics["anchors"] = {"sizes": list(cfg.anchor_sizes), "aspect_ratios": list(cfg.aspect_ratios)}
    metrics["backbone"] = _backbone_desc(spec)
    return model, out, metrics


def _backbone_desc(spec: DetectSpec) -> str:
    if spec.backbone == "unet":
        if spec.init != "segmenter":
            return "unet, from scratch"
        desc = "unet, the run's segmenter" + (" (frozen)" if spec.freeze_backbone else ", fine-tuned")
        return desc + ("; proposals: RPN + the segmenter's lesion components" if spec.seg_proposals else "")
    if spec.backbone_weights == "imagenet":
        return f"{spec.backbone}, ImageNet weights (torchvision)"
    if spec.backbone_weights:
        return f"{spec.backbone}, weights from {spec.backbone_weights}"
    return f"{spec.backbone}, from scratch"


def _agnostic(loader):
    for batch in loader:
        batch["labels"] = [torch.ones_like(lab) for lab in batch["labels"]]
        yield batch
