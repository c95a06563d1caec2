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
from downstream.config import DetectSpec, RecipeSpec, SegmentSpec, SemiSpec, Strategy
from downstream.harness.recipe import PatchDataset, Validator, crop_sample, patch_origin

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


class UnlabelledPatches(Dataset):
    """``n`` random patches (``patch`` None: whole slices) of the unlabelled pool, images only.

    Item i draws its slice (uniformly over the pool) and its crop from
    ``default_rng([seed, 2, i])``, a stream apart from the labelled items' ``[seed, 1, i]``.
    The slices' masks are replaced by zeros before anything sees them: these are the
    scans whose labels the budget hides.
    """

    def __init__(self, pool: Sequence[Dataset], n: int, *, patch: int | None, seed: int) -> None:
        self.pool, self.n, self.patch, self.seed = ConcatDataset(list(pool)), n, patch, seed
        if not len(self.pool):
            raise ValueError("the unlabelled pool is empty")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng([self.seed, 2, i])
        s = self.pool[int(rng.integers(len(self.pool)))]
        s = Sample(image=s.image, mask=np.zeros(s.image.shape, np.uint8), boxes=np.zeros((0, 4), np.float32),
                   labels=np.zeros(0, np.int64), meta={"id": s.meta.get("id"), "unlabelled": True})
        if self.patch is None:
            return s
        top, left = patch_origin(s.mask, self.patch, rng, foreground=False)
        return crop_sample(s, top, left, self.patch)


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

    def describe(self, metrics: dict[str, Any], model: torch.nn.Module, samples: Sequence[Sample],
                 dev: torch.device) -> dict[str, Any]:
        """What the test metrics (of ``model`` on the test ``samples``) should also record."""
        return metrics

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The state dict a later task may start from (a detector from the segmenter)."""
        return model.state_dict()


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

    def describe(self, metrics, model, samples, dev):
        metrics["anchors"] = {"sizes": list(self.cfg.anchor_sizes), "aspect_ratios": list(self.cfg.aspect_ratios)}
        metrics["backbone"] = _backbone_desc(self.spec)
        return metrics


class SemiSegmentTask(SegmentTask):
    """Segmentation that also learns from unlabelled scans (`downstream.models.semi`):
    two U-Nets (transposed-convolution and bilinear decoders) trained with SPMC or CPS.

    Each step takes the labelled batch the supervised recipe would (the same draws as
    ``none``) plus ``unlabelled_batch_size`` random patches of the unlabelled pool. It
    predicts with the network(s) ``semi.inference`` names; the test row also records the
    Dice of network a, network b and their mean. A detector that starts from this run's
    segmenter starts from network a (the plain U-Net, transposed convolutions).
    """

    def __init__(self, spec: SegmentSpec, *, method: str, semi: SemiSpec, unlabelled: Sequence[Dataset],
                 **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.method, self.semi = method, semi
        self.n_unlabelled = sum(len(d) for d in unlabelled)
        self.unlabelled_loader = None
        if self.n_unlabelled:
            ub = semi.unlabelled_batch_size or spec.batch_size
            items = UnlabelledPatches(unlabelled, spec.steps * ub, patch=spec.patch, seed=self.seed)
            self.unlabelled_loader = DataLoader(items, batch_size=ub, sampler=SequentialSampler(items),
                                                collate_fn=Collate(spec.window), num_workers=0)

    def build(self, dev):
        from downstream.models.semi import DualUNet

        spec = self.spec
        return DualUNet(max(self.classes) + 1, base=spec.base, depth=spec.depth,
                        attention=spec.arch == "attention-unet", inference=self.semi.inference).to(dev)

    def batches(self, loader):
        unl = iter(self.unlabelled_loader) if self.unlabelled_loader is not None else None
        for step, batch in enumerate(loader):
            batch["unlabelled"] = next(unl)["image"] if unl is not None else None
            batch["step"] = step
            yield batch

    def loss(self, model, batch, dev):
        from downstream.models.semi import semi_loss

        s = self.semi
        xu = batch["unlabelled"]
        return semi_loss(model, batch["image"].to(dev), batch["mask"].to(dev),
                         xu.to(dev) if xu is not None else None, method=self.method, step=batch["step"],
                         total=self.spec.steps, tau=s.tau, beta=s.beta, temperature=s.temperature,
                         lambda_max=s.lambda_max, ramp=s.ramp, cdps_weight=s.cdps_weight)

    def describe(self, metrics, model, samples, dev):
        chosen = model.inference
        by_network = {}
        for mode in ("a", "b", "mean"):
            model.inference = mode
            by_network[mode] = metrics["dice"] if mode == chosen else self.evaluate(model, samples, dev)["dice"]
        model.inference = chosen
        metrics["semi"] = {"method": self.method, "inference": chosen, "n_unlabelled_slices": self.n_unlabelled,
                           "dice_by_network": by_network}
        return metrics

    def weights(self, model):
        return model.a.state_dict()


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
    unlabelled: Sequence[Dataset] = (),
    semi: SemiSpec | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train task ``task`` (`TASKS`) from scratch (or, for a unet-backbone detector, from
    ``segmenter``'s weights) with ``seed``; returns the result row and the state dict a later
    task may start from. A semi-supervised strategy's segmenter (`SemiSegmentTask`) also
    learns from the ``unlabelled`` slices, with the options ``semi``."""
    from downstream.models.segment import fit, make_optimizer
    from gan.base import resolve_device
    from gan.train.precision import resolve_precision

    dev = resolve_device(device)
    torch.manual_seed(seed)  # network initialisation; data draws use their own generators
    loader = training_loader(strategy, labelled, synthetic, spec=spec, seed=seed)
    t0 = time.perf_counter()
    common = dict(labelled=labelled, size=int(test_samples[0].image.shape[0]), classes=classes, seed=seed,
                  segmenter=segmenter)
    if task == "segment" and strategy.semi_supervised:
        job: Task = SemiSegmentTask(spec, method=strategy.semi_supervised, semi=semi or SemiSpec(),
                                    unlabelled=unlabelled, **common)
    else:
        job = TASKS[task](spec, **common)
    model = job.build(dev)
    opt = make_optimizer(model.parameters(), spec.optimizer, spec.lr)
    val = list(val_samples)

    def score(m) -> float:
        return job.evaluate(m, val, dev)[job.metric]

    precision = resolve_precision(spec.precision, dev)
    t_fit = time.perf_counter()
    out = fit(model, opt, job.batches(loader), dev, steps=spec.steps, schedule=spec.schedule,
              loss_fn=lambda m, b: job.loss(m, b, dev),
              validator=Validator(score if val else None, spec.val_every), precision=precision)
    train_s = time.perf_counter() - t_fit
    metrics = job.describe(job.evaluate(model, test_samples, dev), model, test_samples, dev)
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
        "precision": precision.record(),
    }
    return row, {k: v.detach().cpu() for k, v in job.weights(model).items()}


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

