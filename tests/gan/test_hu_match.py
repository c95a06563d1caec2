"""DCGAN's lesion HU matching term (gan.models.hu_match), each number by hand."""

from __future__ import annotations

import math

import pytest
import torch

from augment.errors import ConfigError
from gan.models.dcgan import DCGANConfig
from gan.models.hu_match import class_targets, hu_match_loss


def roi(value: float, pixels: int, size: int = 8, background: float = -0.7) -> torch.Tensor:
    """(2, S, S): image ``value`` on the first ``pixels`` pixels (the mask, +1), ``background``
    elsewhere (mask -1)."""
    image = torch.full((size * size,), background)
    mask = torch.full((size * size,), -1.0)
    image[:pixels], mask[:pixels] = value, 1.0
    return torch.stack([image.view(size, size), mask.view(size, size)])


def test_lesion_mean_is_the_image_where_the_mask_channel_is_positive():
    rois = torch.stack([roi(0.5, 10), roi(0.2, 3), roi(0.9, 0)])
    means = class_targets(rois, torch.tensor([1, 2, 3]), n_classes=3)
    # Binary masks: exactly the lesion pixels' value; no mask: nothing to average (NaN).
    assert means[:2].tolist() == pytest.approx([0.5, 0.2])
    assert math.isnan(means[2].item())
    # A generated mask: 0.3 on 4 pixels of 0.6 (inside), exactly 0 on 2 pixels of 0.0 and
    # -0.2 elsewhere (outside, as synthesis thresholds at > 0): the mean is 0.6.
    soft = roi(0.6, 4)
    soft[1] = -0.2
    soft[1, 0, :4] = 0.3
    soft[0, 0, 4:6], soft[1, 0, 4:6] = 0.0, 0.0
    assert class_targets(soft[None], torch.tensor([1]), n_classes=1)[0].item() == pytest.approx(0.6)


def test_class_targets_average_each_class_per_pixel_and_leave_absent_classes_nan():
    rois = torch.stack([roi(0.2, 5), roi(0.4, 9), roi(-0.1, 4)])
    targets = class_targets(rois, torch.tensor([1, 1, 3]), n_classes=3)
    # Per pixel, as the lesion HU statistics count: (5 * 0.2 + 9 * 0.4) / 14.
    assert targets[0].item() == pytest.approx(4.6 / 14)
    assert math.isnan(targets[1].item())
    assert targets[2].item() == pytest.approx(-0.1)


def test_loss_pulls_each_class_batch_average_to_its_target():
    targets = torch.tensor([0.3, -0.1, float("nan")])
    fake = torch.stack([roi(0.4, 6), roi(0.6, 6), roi(0.0, 6), roi(0.8, 6)]).requires_grad_(True)
    classes = torch.tensor([1, 1, 2, 3])
    loss = hu_match_loss(fake, classes, targets)
    # class 1 (6 + 6 pixels): |(0.4 + 0.6) / 2 - 0.3| = 0.2; class 2: |0.0 - (-0.1)| = 0.1;
    # class 3 has no target. Mean over the two: 0.15.
    assert loss.item() == pytest.approx(0.15)
    loss.backward()
    grad = fake.grad
    # Only the image under the mask moves: class 1 ROIs down (too bright), class 2 down.
    assert (grad[:3, 0].view(3, -1)[:, :6] > 0).all()
    assert (grad[:, 0].view(4, -1)[:, 6:] == 0).all() and (grad[3] == 0).all()


def test_loss_without_any_usable_class_is_zero_and_keeps_the_graph():
    fake = torch.stack([roi(0.4, 0)]).requires_grad_(True)  # no mask at all
    loss = hu_match_loss(fake, torch.tensor([1]), torch.tensor([0.3]))
    assert loss.item() == 0.0
    loss.backward()
    assert fake.grad is not None and (fake.grad == 0).all()


def test_weight_must_not_be_negative():
    with pytest.raises(ConfigError, match="lesion_hu_weight"):
        DCGANConfig(lesion_hu_weight=-1.0)
