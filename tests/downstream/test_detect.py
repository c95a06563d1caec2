"""Faster R-CNN wiring, k-means anchors, and the cost-sensitive RPN loss."""

import numpy as np
import pytest
import torch

from augment.datasets import collate
from augment.errors import ConfigError
from augment.sample import Sample
from downstream.models.detect import (
    CostSensitiveRPN,
    DetectorConfig,
    build_detector,
    image_scores,
    kmeans_anchors,
    predict,
    to_detection_inputs,
    train_one_epoch,
)


def _rpn_inputs(seed: int, n_images: int = 2, n_anchors: int = 600):
    g = torch.Generator().manual_seed(seed)
    objectness = torch.randn(n_images * n_anchors, 1, generator=g)
    deltas = torch.randn(n_images * n_anchors, 4, generator=g)
    labels, targets = [], []
    for _ in range(n_images):
        lab = torch.zeros(n_anchors)
        lab[torch.randperm(n_anchors, generator=g)[:20]] = 1.0  # 20 positives
        lab[torch.randperm(n_anchors, generator=g)[:30]] = -1.0  # some ignored anchors
        labels.append(lab)
        targets.append(torch.randn(n_anchors, 4, generator=g))
    return objectness, deltas, labels, targets


def _rpns():
    standard = build_detector(DetectorConfig(image_size=64), num_classes=2).rpn
    cost = build_detector(DetectorConfig(image_size=64, cost_sensitive=True, alpha=1.0, max_ratio=1.0), 2).rpn
    return standard, cost


def test_cost_sensitive_reduces_to_standard_at_alpha_1_ratio_1():
    standard, cost = _rpns()
    assert isinstance(cost, CostSensitiveRPN)
    inputs = _rpn_inputs(0)
    torch.manual_seed(123)
    ref = standard.compute_loss(*inputs)
    torch.manual_seed(123)  # the samplers draw the same permutations
    ours = cost.compute_loss(*inputs)
    assert torch.allclose(ref[0], ours[0], rtol=0, atol=1e-7)
    assert torch.allclose(ref[1], ours[1], rtol=0, atol=1e-7)


def test_alpha_weights_positive_anchors():
    _, cost = _rpns()
    objectness, deltas, labels, targets = _rpn_inputs(1)
    objectness = torch.full_like(objectness, -5.0)  # every positive badly missed
    torch.manual_seed(0)
    base = cost.compute_loss(objectness, deltas, labels, targets)[0]
    cost.alpha = 4.0
    torch.manual_seed(0)
    weighted = cost.compute_loss(objectness, deltas, labels, targets)[0]
    assert weighted > 2 * base  # positives dominate the loss when they are missed


def test_ratio_adapts_within_bounds():
    _, cost = _rpns()
    cost.max_ratio = 3.0
    objectness, deltas, labels, targets = _rpn_inputs(2)
    cost.compute_loss(torch.full_like(objectness, -8.0), deltas, labels, targets)
    assert all(abs(r - 1.0) < 1e-3 for r in cost.last_ratios)  # positives missed: stay 1:1
    cost.compute_loss(torch.full_like(objectness, 8.0), deltas, labels, targets)
    assert all(abs(r - 3.0) < 1e-3 for r in cost.last_ratios)  # positives found: up to R


def test_kmeans_anchors_recover_size_and_shape_clusters():
    rng = np.random.default_rng(0)
    boxes = []
    for size in (4, 16, 64):
        for ratio in (0.5, 1.0, 2.0):  # h / w
            for _ in range(20):
                s = size * rng.uniform(0.95, 1.05)
                w, h = s / np.sqrt(ratio), s * np.sqrt(ratio)
                boxes.append([10, 10, 10 + w, 10 + h])
    sizes, ratios = kmeans_anchors(np.array(boxes))
    np.testing.assert_allclose(sizes, (4, 16, 64), rtol=0.1)
    np.testing.assert_allclose(ratios, (0.5, 1.0, 2.0), rtol=0.1)
    with pytest.raises(ConfigError):
        kmeans_anchors(np.array(boxes[:2]))


def test_detector_trains_and_predicts_on_small_slices():
    torch.manual_seed(0)
    samples = []
    for i in range(4):
        image = np.full((64, 64), 30.0, np.float32)
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + 5 * i : 18 + 5 * i, 20:30] = 1
        image[mask > 0] = 75.0
        samples.append(Sample(image, mask, meta={"id": f"s{i}"}))
    batch = collate(samples, "head-model")
    cfg = DetectorConfig(image_size=64, cost_sensitive=True, alpha=2.0, max_ratio=3.0)
    model = build_detector(cfg, num_classes=2)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = train_one_epoch(model, opt, [batch], torch.device("cpu"))
    assert losses["steps"] == 1 and np.isfinite(losses["loss"]) and "loss_objectness" in losses
    preds = predict(model, [batch], torch.device("cpu"))
    assert len(preds) == 4 and all(b.shape[1] == 4 for b, _, _ in preds if len(b))
    assert image_scores(preds).shape == (4,)


def _square_slices(n=4, size=64):
    samples = []
    for i in range(n):
        image = np.full((size, size), 30.0, np.float32)
        mask = np.zeros((size, size), np.uint8)
        mask[10 + 5 * i : 18 + 5 * i, 20:30] = 1
        image[mask > 0] = 75.0
        samples.append(Sample(image, mask, meta={"id": f"s{i}"}))
    return samples


def _unet_cfg(**kw):
    return DetectorConfig(**{"backbone": "unet", "image_size": 64, "seg_classes": 2, "unet_base": 4,
                             "unet_depth": 2, "representation_size": 32, "box_batch_size_per_image": 16, **kw})


def test_unet_detector_starts_from_the_segmenter_and_learns_with_its_segmentation_loss():
    from downstream.models.detect import detection_loss, load_segmenter_weights
    from downstream.models.segment import UNet

    torch.manual_seed(0)
    seg = UNet(1, 2, base=4, depth=2, attention=True)
    model = build_detector(_unet_cfg(), num_classes=2)
    load_segmenter_weights(model, seg.state_dict())
    for k, v in seg.state_dict().items():
        assert torch.equal(model.backbone.unet.state_dict()[k], v), k
    batch = collate(_square_slices(), "head-model")
    # Patches enter at their own size: no resize to the slice size (a 32 px patch stays 32 px).
    patch = collate([Sample(s.image[:32, :32], s.mask[:32, :32], meta={"id": "p"}) for s in _square_slices()],
                    "head-model")
    images, _ = to_detection_inputs(patch, torch.device("cpu"), 1)
    assert model.transform(images)[0].tensors.shape[-2:] == (32, 32)
    loss, parts = detection_loss(model, batch, torch.device("cpu"), aux_weight=1.0)
    assert "aux_segmentation" in parts and "loss_objectness" in parts
    # The auxiliary term is the segmentation head's Dice + CE on the batch's masks.
    from downstream.models.segment import dice_ce_loss

    ref, _ = dice_ce_loss(model.backbone.last_logits, batch["mask"])
    assert torch.allclose(parts["aux_segmentation"], ref.detach())
    assert torch.allclose(loss.detach(), sum(v for k, v in parts.items()))
    loss.backward()
    assert model.backbone.unet.encoders[0][0].weight.grad is not None
    preds = predict(model, [batch], torch.device("cpu"))
    assert len(preds) == 4 and all(b.shape[1] == 4 for b, _, _ in preds if len(b))


def test_backbone_weights_from_a_file_and_a_clear_error_for_missing_imagenet(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = build_detector(_unet_cfg(), num_classes=2)
    path = tmp_path / "seg.pt"
    torch.save(src.backbone.unet.state_dict(), path)  # a bare segmenter state dict
    torch.manual_seed(1)
    dst = build_detector(_unet_cfg(backbone_weights=str(path)), num_classes=2)
    for k, v in src.backbone.unet.state_dict().items():
        assert torch.equal(dst.backbone.unet.state_dict()[k], v), k
    with pytest.raises(ConfigError, match="not found"):
        build_detector(_unet_cfg(backbone_weights=str(tmp_path / "nope.pt")), num_classes=2)
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not match"):
        build_detector(_unet_cfg(backbone_weights=str(tmp_path / "other.pt")), num_classes=2)
    # ImageNet weights that are neither cached nor downloadable: one clear line.
    from torchvision.models import MobileNet_V3_Large_Weights

    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(type(MobileNet_V3_Large_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(ConfigError, match="torch hub cache"):
        build_detector(DetectorConfig(image_size=64, backbone_weights="imagenet"), num_classes=2)


def test_segmentation_proposals_are_the_segmenters_lesion_components():
    from downstream.models.detect import segmentation_proposals

    logits = torch.zeros(1, 2, 32, 32)
    logits[0, 1, 5:9, 10:16] = 10.0  # one lesion: rows 5..8, columns 10..15
    logits[0, 1, 30:32, 0:3] = 10.0  # one at the corner: the padded box is clipped
    (boxes,) = segmentation_proposals(logits, [(32, 32)], pad=1)
    # Pixel-edge boxes (x1, y1, x2, y2) of augment.sample.boxes_from_mask, grown by 1 px.
    assert sorted(boxes.tolist()) == sorted([[9.0, 4.0, 17.0, 10.0], [0.0, 29.0, 4.0, 32.0]])
    # Only the image's own area counts (a padded batch is larger than some images).
    (boxes,) = segmentation_proposals(logits, [(20, 20)], pad=1)
    assert boxes.tolist() == [[9.0, 4.0, 17.0, 10.0]]


def test_box_head_sees_the_segmentation_proposals(monkeypatch):
    from torchvision.models.detection.roi_heads import RoIHeads

    from downstream.models.detect import SegmentationProposalHeads

    plain = build_detector(_unet_cfg(), num_classes=2)
    model = build_detector(_unet_cfg(seg_proposals=True), num_classes=2)
    assert isinstance(model.roi_heads, SegmentationProposalHeads)
    # Same parameters (names and shapes): weights move between the two freely.
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    seen = {}
    original = RoIHeads.forward

    def spy(self, features, proposals, image_shapes, targets=None):
        seen["proposals"] = proposals
        return original(self, features, proposals, image_shapes, targets)

    monkeypatch.setattr(RoIHeads, "forward", spy)
    with torch.no_grad():  # a segmenter that calls every pixel lesion: one component per slice
        model.backbone.unet.head.bias[1] = 50.0
    batch = collate(_square_slices(), "head-model")
    model.eval()
    predict(model, [batch], torch.device("cpu"))
    expected = segmentation_proposals_of(model, batch)
    assert [len(e) for e in expected] == [1] * len(expected)
    for got, extra in zip(seen["proposals"], expected, strict=True):
        assert torch.equal(got[-1:], extra)


def segmentation_proposals_of(model, batch):
    from downstream.models.detect import segmentation_proposals

    images, _ = to_detection_inputs(batch, torch.device("cpu"), 1)
    transformed, _ = model.transform(images)
    with torch.no_grad():
        model.backbone(transformed.tensors)
    return segmentation_proposals(model.backbone.last_logits, transformed.image_sizes)
