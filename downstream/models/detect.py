"""Detectors: torchvision Faster R-CNN, k-means anchors, and the cost-sensitive RPN.

The cost-sensitive variant targets the failure that matters in ICH triage, a missed
bleed. Its RPN objectness loss weighs positive anchors by ``alpha`` and, per image,
samples negatives to positives at a ratio ``r`` in ``[1, R]``:

* the loss is ``mean_i w_i * BCE(o_i, y_i)`` over the sampled anchors with
  ``w_i = alpha`` for positives and 1 for negatives;
* ``r`` adapts per image from how well its positives are already predicted:
  ``r = 1 + (R - 1) * p`` with ``p`` the mean objectness probability of the image's
  positive anchors (detached). Poorly found lesions keep the balanced 1:1 sampling
  that favours recall; once they are found, more negatives are sampled to cut false
  positives. ``r`` maps to torchvision's sampler as ``positive_fraction = 1 / (1 + r)``.

With ``alpha = 1`` and ``R = 1`` the sampler, the random draws and the loss are
exactly torchvision's (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from augment.errors import ConfigError


@dataclass(frozen=True)
class DetectorConfig:
    """Faster R-CNN options. No pretrained weights are downloaded: training starts from
    random initialisation (BatchNorm trainable, as torchvision does without weights).

    The defaults describe the plain model (torchvision's RPN: not cost-sensitive, alpha 1,
    one negative ratio). The harness never relies on them: `downstream.harness.tasks.detector_config`
    builds every field that matters from the experiment's `DetectSpec` (cost-sensitive by
    default), its data (image size, classes, k-means anchors) and its segmenter. The
    optimiser's settings are the spec's (`RecipeSpec.lr`), not the model's.
    """

    backbone: str = "mobilenet_v3_large"  # or "resnet50"
    image_size: int = 128  # min_size = max_size = the data's size: no upscaling to 800
    returned_layers: tuple[int, ...] = (2, 3, 4, 5)  # stride 8 features: small bleeds
    anchor_sizes: tuple[float, ...] = (8.0, 16.0, 32.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    cost_sensitive: bool = False
    alpha: float = 1.0  # weight of positive anchors in the RPN objectness loss
    max_ratio: float = 1.0  # R: negatives per positive adapt within [1, R]
    rpn_batch_size_per_image: int = 256
    # IoU of an anchor with a lesion box above which it is a positive / below which a
    # negative (torchvision: 0.7 / 0.3, for photographs). A 4-6 px lesion overlaps no
    # anchor at 0.7, leaving it one low-quality match at best.
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    box_detections_per_img: int = 20
    box_score_thresh: float = 0.01
    # Proposals kept before/after the RPN's NMS (train, test). torchvision's 2000/1000 are
    # sized for 800 px photographs; a 64-256 px CT slice has a few lesions, and every
    # proposal costs a 12.5k x 1024 box-head matmul, which dominated CPU time.
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500)
    rpn_post_nms_top_n: tuple[int, int] = (300, 100)
    # RoIs sampled per image for the box head in training (torchvision: 512, for photos with
    # many objects). A slice has 0-3 lesions; 64 keeps the 1:3 positive fraction meaningful
    # and cuts the box head's cost, which dominated a CPU training step, by 8x.
    box_batch_size_per_image: int = 64
    # Width of the box head's two fully connected layers (torchvision: 1024). Its first
    # layer maps every 256 x 7 x 7 RoI feature to this width: 12.8M weights at 1024, a
    # quarter of the CPU step and most of the Adam update. A few lesion shapes need less.
    representation_size: int = 1024
    # Pretrained backbone: "imagenet" (torchvision's weights, from the torch hub cache or
    # torchvision's own download) or a path to a state dict; None = from scratch.
    backbone_weights: str | None = None
    # backbone "unet": the segmenter's architecture (`downstream.models.segment.UNet`) as the
    # feature pyramid, with its segmentation head kept as an auxiliary loss.
    seg_classes: int = 2
    unet_base: int = 8
    unet_depth: int = 3
    unet_attention: bool = True
    unet_levels: tuple[int, ...] = (1, 2)  # decoder levels (0 = full resolution) fed to the RPN
    detach_box_head: bool = False  # unet backbone: no box-head gradient into the backbone (_DetachedRoIAlign)
    # unet backbone: the lesions its segmentation head sees (connected components) join the
    # RPN's proposals for the box head (`SegmentationProposalHeads`).
    seg_proposals: bool = False


def _imagenet_weights(cfg: DetectorConfig):
    """torchvision's ImageNet weights enum when ``backbone_weights == "imagenet"``."""
    if cfg.backbone_weights != "imagenet":
        return None
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights

    weights = {"mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
               "resnet50": ResNet50_Weights.IMAGENET1K_V1}.get(cfg.backbone)
    if weights is None:
        raise ConfigError(f"no ImageNet weights for detector backbone {cfg.backbone!r}")
    from torch.hub import get_dir

    cached = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        try:
            weights.get_state_dict(progress=False)
        except Exception as e:  # offline: torchvision's download fails
            raise ConfigError(
                f"ImageNet weights for {cfg.backbone} are not in the torch hub cache ({cached}) and could not be "
                f"downloaded ({type(e).__name__}); download them on a machine with internet or set "
                "backbone_weights to a local file") from None
    return weights


def _load_backbone_file(backbone: nn.Module, path: str) -> None:
    """Load a backbone state dict (the backbone's own keys, or a whole detector's
    ``backbone.*`` keys) with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: backbone weights file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{p}: not a weights-only state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if isinstance(backbone, UNetBackbone) and not any(k.startswith("unet.") for k in state):
        state = {f"unet.{k}": v for k, v in state.items()}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(backbone.state_dict()):
        raise ConfigError(f"{p}: does not match the {type(backbone).__name__} backbone "
                          f"({len(unexpected)} unexpected, {len(missing)} missing keys)")


def load_segmenter_weights(model: FasterRCNN, state: dict[str, Tensor]) -> None:
    """Start a unet-backbone detector from a trained `downstream.models.segment.UNet`'s weights."""
    if not isinstance(model.backbone, UNetBackbone):
        raise ConfigError("initialising from a segmenter needs backbone: unet")
    model.backbone.unet.load_state_dict(state)


def freeze_unet(model: FasterRCNN) -> None:
    """Fix a unet backbone's U-Net (weights and BatchNorm statistics): only the lateral
    convolutions, the RPN and the box head train. Its features then need no backward
    pass, which is most of a training step's cost."""
    model.backbone.unet.requires_grad_(False)
    model.backbone.frozen = True
    model.backbone.train(model.backbone.training)


def kmeans_anchors(
    boxes: np.ndarray, *, n_sizes: int = 3, n_ratios: int = 3, seed: int = 0, iters: int = 50,
    min_size: float = 4.0, max_ratio: float = 4.0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Anchor sizes and aspect ratios (h/w, torchvision's convention) from training boxes.

    Sizes: k-means on ``log sqrt(w h)``; ratios: k-means on ``log(h / w)``. Working in
    log space makes a 4 px and an 8 px lesion as far apart as 32 px and 64 px ones.
    Sizes are kept >= ``min_size`` and ratios within ``[1/max_ratio, max_ratio]``, so no
    anchor side rounds to 0 px (torchvision rounds anchors; a 0-wide anchor makes the box
    regression target infinite). Smaller lesions still get their best-overlapping anchor
    as a positive (the RPN's low-quality matches).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    if len(boxes) < max(n_sizes, n_ratios):
        raise ConfigError(f"k-means anchors need at least {max(n_sizes, n_ratios)} training boxes, got {len(boxes)}")
    log_sizes = np.maximum(np.log(np.sqrt(w * h)), math.log(min_size))
    log_ratios = np.clip(np.log(h / w), -math.log(max_ratio), math.log(max_ratio))
    sizes = np.exp(_kmeans_1d(log_sizes, n_sizes, seed, iters))
    ratios = np.exp(_kmeans_1d(log_ratios, n_ratios, seed, iters))
    return tuple(float(round(s, 2)) for s in sizes), tuple(float(round(r, 3)) for r in ratios)


def _kmeans_1d(x: np.ndarray, k: int, seed: int, iters: int) -> np.ndarray:
    """Sorted centres of 1-D k-means (Lloyd), initialised at quantiles; empty clusters
    are re-seeded from the points farthest from their centre."""
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    rng = np.random.default_rng(seed)
    for _ in range(iters):
        assign = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        new = centres.copy()
        for j in range(k):
            members = x[assign == j]
            new[j] = members.mean() if len(members) else x[rng.integers(len(x))]
        if np.allclose(new, centres):
            break
        centres = new
    # identical centres (all boxes alike) would give duplicate anchors: spread them
    centres = np.sort(centres)
    for j in range(1, k):
        if centres[j] - centres[j - 1] < 1e-3:
            centres[j] = centres[j - 1] + math.log(1.25)
    return centres


class CostSensitiveRPN(RegionProposalNetwork):
    """RPN whose objectness loss weights positives by ``alpha`` and adapts the per-image
    negative:positive sampling ratio within ``[1, max_ratio]`` (module docstring)."""

    def __init__(self, *args: Any, alpha: float = 1.0, max_ratio: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if alpha <= 0 or max_ratio < 1:
            raise ConfigError(f"cost-sensitive RPN needs alpha > 0 and max_ratio >= 1, got {alpha}, {max_ratio}")
        self.alpha = alpha
        self.max_ratio = max_ratio
        self.last_ratios: list[float] = []

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        per_image = objectness.detach().view(len(labels), -1)
        pos_masks, neg_masks, ratios = [], [], []
        for img_obj, img_labels in zip(per_image, labels, strict=True):
            positive = img_labels >= 1
            p = torch.sigmoid(img_obj[positive]).mean().item() if positive.any() else 0.0
            r = 1.0 + (self.max_ratio - 1.0) * p
            sampler = det_utils.BalancedPositiveNegativeSampler(
                self.fg_bg_sampler.batch_size_per_image, 1.0 / (1.0 + r)
            )
            pos, neg = sampler([img_labels])
            pos_masks.append(pos[0])
            neg_masks.append(neg[0])
            ratios.append(r)
        self.last_ratios = ratios
        pos_idx = torch.where(torch.cat(pos_masks))[0]
        neg_idx = torch.where(torch.cat(neg_masks))[0]
        sampled = torch.cat([pos_idx, neg_idx])
        objectness = objectness.flatten()
        labels_cat = torch.cat(labels)
        targets = torch.cat(regression_targets)
        box_loss = (
            F.smooth_l1_loss(pred_bbox_deltas[pos_idx], targets[pos_idx], beta=1 / 9, reduction="sum")
            / sampled.numel()
        )
        weights = torch.ones(sampled.numel(), device=objectness.device, dtype=objectness.dtype)
        weights[: pos_idx.numel()] = self.alpha
        bce = F.binary_cross_entropy_with_logits(objectness[sampled], labels_cat[sampled], reduction="none")
        return (weights * bce).mean(), box_loss


class UNetBackbone(nn.Module):
    """A U-Net (`downstream.models.segment.UNet`) as Faster R-CNN's feature pyramid: the
    decoder's outputs at strides 1, 2, 4 ... are its top-down pathway, each mapped to
    ``out_channels`` by a 1x1 lateral convolution (as in an FPN).

    This is the Retina U-Net arrangement (Jaeger et al. 2019), which nnDetection uses to
    train detectors from scratch on few medical images: the segmentation head stays on
    and its Dice + CE loss on the lesion masks (`aux_segmentation_loss`) gives every
    pixel a training signal, where the detection heads see a few boxes per slice. Its
    weights can start from a segmenter trained on the same data
    (`load_segmenter_weights`).

    Input: the 1-channel model-input image in [-1, 1] (the transform's mean/std undo the
    [0, 1] mapping of `to_detection_inputs`).
    """

    def __init__(self, n_classes: int, base: int, depth: int, attention: bool, out_channels: int = 32,
                 levels: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        from downstream.models.segment import UNet

        self.unet = UNet(1, n_classes, base=base, depth=depth, attention=attention)
        self.levels = tuple(levels)  # decoder levels used, 0 = full resolution
        if not self.levels or max(self.levels) > depth or min(self.levels) < 0:
            raise ConfigError(f"unet backbone levels {levels} must lie in 0..{depth}")
        chans = {depth - 1 - j: base * 2 ** (depth - 1 - j) for j in range(depth)}  # decoder outputs
        chans[depth] = base * 2**depth  # the bottleneck
        self.lateral = nn.ModuleDict({str(lv): nn.Conv2d(chans[lv], out_channels, 1) for lv in self.levels})
        self.out_channels = out_channels
        self.last_logits: Tensor | None = None
        self.frozen = False  # `freeze_unet`: the U-Net stays in eval mode

    def train(self, mode: bool = True) -> UNetBackbone:
        super().train(mode)
        if self.frozen:
            self.unet.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        from collections import OrderedDict

        feats = self.unet.levels(x)
        self.last_logits = self.unet.head(feats[0])
        return OrderedDict((str(lv), self.lateral[str(lv)](feats[lv])) for lv in self.levels)


class _DetachedRoIAlign(MultiScaleRoIAlign):
    """RoI pooling whose features carry no gradient back into the backbone: the box head
    learns on the backbone's features, the backbone learns from the RPN and its own
    segmentation loss. torchvision's CPU ``roi_align`` backward was 28 % of a training
    step of the unet-backbone detector (measured, 8 patches of 32 px)."""

    def forward(self, x, boxes, image_shapes):
        return super().forward({k: v.detach() for k, v in x.items()}, boxes, image_shapes)


def segmentation_proposals(logits: Tensor, image_shapes: Sequence[tuple[int, int]], pad: int = 0) -> list[Tensor]:
    """Per image, one box per connected lesion component of the segmentation head's
    label map (`downstream.models.segment.decode`, boxes as `augment.sample.boxes_from_mask`),
    grown by ``pad`` pixels and clipped to the image."""
    from augment.sample import boxes_from_mask
    from downstream.models.segment import decode

    labels = decode(logits.detach()).cpu().numpy()
    out = []
    for label_map, (h, w) in zip(labels, image_shapes, strict=True):
        boxes, _ = boxes_from_mask(label_map[:h, :w])
        boxes = boxes + np.array([-pad, -pad, pad, pad], np.float32)
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        out.append(torch.from_numpy(boxes).to(logits.device))
    return out


class SegmentationProposalHeads(RoIHeads):
    """torchvision's box head fed the RPN's proposals plus the lesions the U-Net
    backbone's segmentation head found (`segmentation_proposals`).

    The segmenter finds most lesions (in the demo ~80 %, with few false positives) but
    the RPN, learning anchors from a few boxes per slice, misses the small ones: their
    anchors overlap them too little. Proposals from the segmentation let the box head
    score and refine every lesion the segmenter sees; the detector is still Faster
    R-CNN, trained and evaluated as one (proposals are inputs, as in Fast R-CNN with
    external proposals, e.g. selective search).
    """

    def __init__(self, heads: RoIHeads, backbone: UNetBackbone, pad: int = 0) -> None:
        super().__init__(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
        )
        self._backbone = [backbone]  # a reference, not a submodule: its weights stay the backbone's
        self.pad = pad

    def forward(self, features, proposals, image_shapes, targets=None):
        logits = self._backbone[0].last_logits
        if logits is None:
            raise RuntimeError("segmentation proposals need the backbone's forward pass first")
        extra = segmentation_proposals(logits, image_shapes, self.pad)
        proposals = [torch.cat([p, e.to(p.dtype)]) for p, e in zip(proposals, extra, strict=True)]
        return super().forward(features, proposals, image_shapes, targets)


class _NoResize(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: a slice (or a training patch) enters
    the network at its own size. torchvision scales every image to ``min_size``, which
    would blow a 32 px training patch up to the slice size; CT pixels have a physical
    size, so the model must see them at one scale."""

    def __init__(self, t: GeneralizedRCNNTransform) -> None:
        super().__init__(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible,
                         t.fixed_size)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def detection_loss(
    model: FasterRCNN, batch: dict[str, Any], device: torch.device, *, aux_weight: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """torchvision's detection losses, plus ``aux_weight`` × the segmentation head's
    Dice + CE for a unet backbone (Retina U-Net's dense supervision)."""
    images, targets = to_detection_inputs(batch, device, input_channels(model))
    losses = model(images, targets)
    loss = sum(losses.values())
    parts = {k: v.detach() for k, v in losses.items()}
    if aux_weight and isinstance(model.backbone, UNetBackbone):
        aux, _ = aux_segmentation_loss(model, batch["mask"].to(device))
        loss = loss + aux_weight * aux
        parts["aux_segmentation"] = aux.detach()
    return loss, parts


def aux_segmentation_loss(model: FasterRCNN, masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Dice + CE of a `UNetBackbone`'s segmentation head on the batch's lesion masks
    (call right after the model's forward pass on the same batch)."""
    from downstream.models.segment import dice_ce_loss

    logits = model.backbone.last_logits
    if logits is None:
        raise RuntimeError("aux_segmentation_loss needs a forward pass of a unet-backbone detector first")
    h, w = masks.shape[-2:]
    return dice_ce_loss(logits[..., :h, :w], masks)


def build_detector(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN for 1-channel CT (replicated to 3 channels for the torchvision
    backbones), ``num_classes`` incl. background."""
    roi_pool = None
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    if cfg.backbone == "unet":
        backbone = UNetBackbone(cfg.seg_classes, cfg.unet_base, cfg.unet_depth, cfg.unet_attention,
                                levels=cfg.unet_levels)
        pool = _DetachedRoIAlign if cfg.detach_box_head else MultiScaleRoIAlign
        roi_pool = pool([str(lv) for lv in cfg.unet_levels], output_size=7, sampling_ratio=2)
        mean, std = [0.5], [0.5]  # [0, 1] -> [-1, 1], the segmenter's input range
    elif cfg.backbone.startswith("mobilenet"):
        backbone = mobilenet_backbone(
            backbone_name=cfg.backbone,
            weights=_imagenet_weights(cfg),
            fpn=True,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=6,
            returned_layers=list(cfg.returned_layers),
        )
    elif cfg.backbone == "resnet50":
        backbone = resnet_fpn_backbone(
            backbone_name="resnet50", weights=_imagenet_weights(cfg), norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
    else:
        raise ConfigError(f"unknown detector backbone {cfg.backbone!r} (unet, mobilenet_v3_large, resnet50)")
    channels = 1 if cfg.backbone == "unet" else 3
    # Count the feature maps in eval mode: a training-mode pass would move BatchNorm's
    # running statistics.
    backbone.eval()
    with torch.no_grad():
        n_maps = len(backbone(torch.zeros(1, channels, 64, 64)))
    backbone.train()
    if cfg.backbone_weights and cfg.backbone_weights != "imagenet":
        _load_backbone_file(backbone, cfg.backbone_weights)
    anchors = AnchorGenerator(
        sizes=(tuple(cfg.anchor_sizes),) * n_maps, aspect_ratios=(tuple(cfg.aspect_ratios),) * n_maps
    )
    resolution = 7  # torchvision's MultiScaleRoIAlign output size
    model = FasterRCNN(
        backbone,
        box_head=TwoMLPHead(backbone.out_channels * resolution**2, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, num_classes),
        min_size=cfg.image_size,
        max_size=cfg.image_size,
        image_mean=mean,
        image_std=std,
        box_roi_pool=roi_pool,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n[0],
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n[1],
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh,
    )
    model.transform = _NoResize(model.transform)
    if cfg.seg_proposals:
        if cfg.backbone != "unet":
            raise ConfigError("seg_proposals needs the unet backbone (its segmentation head)")
        model.roi_heads = SegmentationProposalHeads(model.roi_heads, backbone)
    if cfg.backbone == "unet":
        # Pad batches to what the U-Net needs, not torchvision's 32 (a 48 px patch would
        # be computed at 64 px).
        model.transform.size_divisible = 2**cfg.unet_depth
    if cfg.cost_sensitive:
        old = model.rpn
        model.rpn = CostSensitiveRPN(
            old.anchor_generator,
            old.head,
            fg_iou_thresh=cfg.rpn_fg_iou_thresh,
            bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image,
            positive_fraction=0.5,
            pre_nms_top_n=dict(old._pre_nms_top_n),
            post_nms_top_n=dict(old._post_nms_top_n),
            nms_thresh=old.nms_thresh,
            alpha=cfg.alpha,
            max_ratio=cfg.max_ratio,
        )
    return model


def input_channels(model: FasterRCNN) -> int:
    """1 for a unet backbone (the segmenter's input), 3 for torchvision's backbones."""
    return 1 if isinstance(model.backbone, UNetBackbone) else 3


def to_detection_inputs(
    batch: dict[str, Any], device: torch.device, channels: int = 3
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """A `collate` batch ([-1, 1] images) -> torchvision's images in [0, 1] (``channels``
    copies) and targets."""
    images = [((x + 1) / 2).expand(channels, -1, -1).to(device) for x in batch["image"]]
    targets = [
        {"boxes": b.to(device).reshape(-1, 4), "labels": lab.to(device)}
        for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
    ]
    return images, targets


def train_one_epoch(
    model: FasterRCNN,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    *,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` at a constant learning rate; the mean of each loss of
    `detection_loss` (`downstream.models.segment.fit` without schedule or validation)."""
    from downstream.models.segment import fit

    return fit(model, optimizer, loader, device, steps=max_steps if max_steps is not None else 2**62,
               schedule="constant", loss_fn=lambda m, b: detection_loss(m, b, device))


@torch.no_grad()
def predict(
    model: FasterRCNN, loader: Iterable[dict[str, Any]], device: torch.device
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(boxes, scores, labels)`` per image, in loader order."""
    model.eval()
    out = []
    for batch in loader:
        images, _ = to_detection_inputs(batch, device, input_channels(model))
        for det in model(images):
            out.append(
                (det["boxes"].cpu().numpy(), det["scores"].cpu().numpy(), det["labels"].cpu().numpy())
            )
    return out


def image_scores(predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per image the highest box score (0 without boxes): "bleed present" when >= θ."""
    return np.array([float(s.max()) if len(s) else 0.0 for _, s, _ in predictions])
