"""Train one task model under one strategy and evaluate it on the test slices.

Both tasks train with the recipe of `downstream.harness.recipe` (patches with foreground
oversampling, poly learning rate, the checkpoint chosen on the validation split) and
return the same row shape: test metrics (also per test patient, for the paired
statistics of `downstream.evaluation.stats`), the validation curve, and whether the run was still
improving when it stopped (``undertrained``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, SequentialSampler

from augment.datasets import Collate, MixedDataset, SliceDataset
from augment.sample import Sample
from downstream.config import DetectSpec, RecipeSpec, SegmentSpec, Strategy
from downstream.harness.recipe import PatchDataset, Validator

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
    both, then cut into patches with foreground oversampling (`downstream.harness.recipe`). Every
    item draws from its own generator, so two draws of the same slice differ."""
    transform = None
    if strategy.augment:
        from augment.classical.pipeline import build_augmenter

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


class Task(ABC):
    """One downstream task, as the recipe drives it: build the model, one training loss,
    the batches it trains on, and its evaluation.

    `run_task` owns everything the tasks share (seeding, the training loader, the
    optimiser, `downstream.models.segment.fit` with its schedule and `Validator`, timings, the
    result row). A task is its spec type (`downstream.config`) plus these four methods;
    a new training scheme (semi-supervised, another detector) is a new `Task` in `TASKS`,
    not a branch in the runner.
    """

    metric: ClassVar[str]  # the metric the checkpoint is chosen by (higher is better)

    def __init__(self, spec: Any, *, labelled: SliceDataset, size: int, classes: dict[int, str], seed: int,
                 segmenter: tuple[SegmentSpec, dict[str, torch.Tensor]] | None) -> None:
        self.spec, self.labelled, self.size, self.classes, self.seed = spec, labelled, size, classes, seed
        self.segmenter = segmenter

    @abstractmethod
    def build(self, dev: torch.device) -> torch.nn.Module:
        """The untrained model on ``dev`` (draws its initial weights from the torch RNG)."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict[str, Any], dev: torch.device) -> torch.Tensor:
        """The training loss of one batch."""

    def batches(self, loader: DataLoader) -> Iterable[dict[str, Any]]:
        """The training batches as this task reads them (default: as the loader gives them)."""
        return loader

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, samples: Sequence[Sample], dev: torch.device) -> dict[str, Any]:
        """Metrics of ``model`` on whole ``samples`` (validation or test); holds `metric`."""

    def describe(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What the test metrics should also record about the trained model."""
        return metrics


class SegmentTask(Task):
    """Lesion segmentation: U-Net / Attention U-Net, Dice + cross-entropy."""

    metric = "dice"

    def build(self, dev):
        from downstream.models.segment import UNet

        spec = self.spec
        return UNet(1, max(self.classes) + 1, base=spec.base, depth=spec.depth,
                    attention=spec.arch == "attention-unet").to(dev)

    def loss(self, model, batch, dev):
        from downstream.models.segment import segmentation_loss

        return segmentation_loss(model, batch, dev)

    def evaluate(self, model, samples, dev):
        from downstream.evaluation.evaluate import evaluate_segmentation
        from downstream.models.segment import predict

        return evaluate_segmentation(predict(model, test_loader(samples, self.spec.window), dev), samples,
                                     self.classes)


class DetectTask(Task):
    """Class-agnostic lesion detection ("lesion present here"; subtypes are the segmenter's
    job): Faster R-CNN with the cost-sensitive RPN, on the run's segmenter when asked."""

    metric = "mAP50"

    def build(self, dev):
        from downstream.models.detect import build_detector, freeze_unet, load_segmenter_weights

        spec = self.spec
        if spec.uses_segmenter and self.segmenter is None:
            raise ValueError("detect with init: segmenter needs the run's trained segmenter")
        self.cfg = detector_config(spec, self.labelled, self.size, self.classes, self.seed,
                                   self.segmenter[0] if spec.uses_segmenter else None)
        model = build_detector(self.cfg, num_classes=2)
        if spec.uses_segmenter:
            load_segmenter_weights(model, self.segmenter[1])
            if spec.freeze_backbone:
                freeze_unet(model)
        return model.to(dev)

    def loss(self, model, batch, dev):
        from downstream.models.detect import detection_loss

        aux = 0.0 if self.spec.freeze_backbone else self.spec.aux_weight  # a frozen U-Net learns nothing
        return detection_loss(model, batch, dev, aux_weight=aux)

    def batches(self, loader):
        for batch in loader:
            batch["labels"] = [torch.ones_like(lab) for lab in batch["labels"]]
            yield batch

    def evaluate(self, model, samples, dev):
        from downstream.evaluation.evaluate import evaluate_detection
        from downstream.models.detect import predict

        return evaluate_detection(predict(model, test_loader(samples, self.spec.window), dev), samples,
                                  theta=self.spec.theta)

    def describe(self, metrics):
        metrics["anchors"] = {"sizes": list(self.cfg.anchor_sizes), "aspect_ratios": list(self.cfg.aspect_ratios)}
        metrics["backbone"] = _backbone_desc(self.spec)
        return metrics


TASKS: dict[str, type[Task]] = {"segment": SegmentTask, "detect": DetectTask}


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
    """Train task ``task`` (`TASKS`) from scratch (or, for a unet-backbone detector, from
    ``segmenter``'s weights) with ``seed``; returns the result row and the trained model's
    state dict."""
    from downstream.models.segment import fit, make_optimizer
    from gan.base import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)  # network initialisation; data draws use their own generators
    loader = training_loader(strategy, labelled, synthetic, spec=spec, seed=seed)
    t0 = time.perf_counter()
    job = TASKS[task](spec, labelled=labelled, size=int(test_samples[0].image.shape[0]), classes=classes,
                      seed=seed, segmenter=segmenter)
    model = job.build(dev)
    opt = make_optimizer(model.parameters(), spec.optimizer, spec.lr)
    val = list(val_samples)

    def score(m) -> float:
        return job.evaluate(m, val, dev)[job.metric]

    t_fit = time.perf_counter()
    out = fit(model, opt, job.batches(loader), dev, steps=spec.steps, schedule=spec.schedule,
              loss_fn=lambda m, b: job.loss(m, b, dev),
              validator=Validator(score if val else None, spec.val_every))
    train_s = time.perf_counter() - t_fit
    metrics = job.describe(job.evaluate(model, test_samples, dev))
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
        "val_metric": job.metric,
    }
    return row, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def detector_config(spec: DetectSpec, labelled: SliceDataset, size: int, classes: dict[int, str], seed: int,
                    segmenter: SegmentSpec | None):
    """The `DetectorConfig` a task spec and its training data imply (k-means anchors)."""
    from downstream.models.detect import DetectorConfig, kmeans_anchors

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

