"""Segmenters: U-Net / Attention U-Net shapes, the prior-initialised head, the Dice + CE
loss on hand-computed cases, and a few steps that actually learn a lesion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downstream.models.segment import UNet, dice_ce_loss, predict, train_one_epoch


@pytest.mark.parametrize("attention", [False, True])
def test_unet_shapes_and_attention_gates(attention):
    net = UNet(1, 6, base=4, depth=3, attention=attention)
    y = net(torch.zeros(2, 1, 32, 32))
    assert y.shape == (2, 6, 32, 32)
    assert (net.gates is not None) == attention
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 36, 36))


def test_head_starts_at_the_foreground_prior():
    torch.manual_seed(0)
    net = UNet(1, 6, base=4, depth=2, foreground_prior=0.01).eval()
    probs = net(torch.randn(2, 1, 16, 16)).softmax(1)
    # head weights ~ N(0, 0.01): the logits are the log-prior biases up to ~1e-2
    assert probs[:, 0].mean().item() == pytest.approx(0.99, abs=0.01)
    assert probs[:, 1:].sum(1).mean().item() == pytest.approx(0.01, abs=0.01)
    default = UNet(1, 6, base=4, depth=2, foreground_prior=None).eval()
    assert default(torch.randn(2, 1, 16, 16)).softmax(1)[:, 0].mean().item() < 0.5
    with pytest.raises(ValueError, match="foreground_prior"):
        UNet(1, 3, foreground_prior=1.0)


def test_dice_ce_loss_hand_computed():
    target = torch.tensor([[[0, 1], [1, 0]]])  # one 2x2 image, two lesion pixels
    # Confident and right: CE -> 0 and soft Dice -> 1 (loss -> 0).
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    loss, parts = dice_ce_loss(perfect, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # Uniform logits: p = 1/2 everywhere. CE = ln 2. Foreground soft Dice with s = 1:
    # (2 * (0.5 + 0.5) + 1) / ((4 * 0.5) + 2 + 1) = 3 / 5, so the Dice loss is 2/5.
    loss, parts = dice_ce_loss(torch.zeros(1, 2, 2, 2), target)
    assert parts["ce"].item() == pytest.approx(math.log(2))
    assert parts["dice_loss"].item() == pytest.approx(0.4)
    assert loss.item() == pytest.approx(math.log(2) + 0.4)


def _disk_batches(n_batches: int, seed: int = 0):
    """Bright disks at random places on a noisy background: a lesion in miniature."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for _ in range(n_batches):
        images, masks = [], []
        for _ in range(4):
            cy, cx = rng.integers(8, 24, size=2)
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 9).astype(np.int64)
            images.append(rng.normal(-0.3, 0.1, (32, 32)) + 0.8 * m)
            masks.append(m)
        yield {"image": torch.tensor(np.stack(images)[:, None], dtype=torch.float32),
               "mask": torch.tensor(np.stack(masks))}


def test_a_few_steps_learn_to_segment_a_disk():
    torch.manual_seed(0)
    net = UNet(1, 2, base=4, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, foreach=True)
    losses = train_one_epoch(net, opt, _disk_batches(60), torch.device("cpu"))
    assert losses["steps"] == 60 and math.isfinite(losses["loss"])
    test = list(_disk_batches(2, seed=1))
    preds = predict(net, test, torch.device("cpu"))
    truth = np.concatenate([b["mask"].numpy() for b in test])
    inter = sum(int(((p > 0) & (t > 0)).sum()) for p, t in zip(preds, truth, strict=True))
    dice = 2 * inter / (sum(int((p > 0).sum()) for p in preds) + int((truth > 0).sum()))
    assert dice > 0.5, dice  # unseen disk positions: it learned "bright blob", not places


def test_several_lesion_classes_add_an_any_lesion_dice_and_decode_lesion_first():
    from downstream.models.segment import decode

    target = torch.tensor([[[0, 1], [2, 0]]])  # background, class 1, class 2, background
    # Uniform logits over 3 classes: p = 1/3 everywhere; s = 1.
    # class 1: (2 * 1/3 + 1) / (4/3 + 1 + 1) = (5/3) / (10/3) = 1/2; class 2 the same.
    # any lesion: p = 2/3 on 4 pixels, 2 lesion pixels: (2 * 4/3 + 1) / (8/3 + 2 + 1) = (11/3) / (17/3) = 11/17.
    # Dice loss = 0.5 * (1 - 1/2) + 0.5 * (1 - 11/17) = 0.25 + 3/17.
    _, parts = dice_ce_loss(torch.zeros(1, 3, 2, 2), target)
    assert parts["dice_loss"].item() == pytest.approx(0.25 + 3 / 17)
    # p = (0.4, 0.3, 0.3): a plain argmax says background, lesion-first decoding says
    # lesion (p_background < 0.5) of the likelier subtype.
    logits = torch.log(torch.tensor([0.4, 0.3, 0.3]))[None, :, None, None].repeat(1, 1, 1, 2)
    logits[0, 2, 0, 1] += 0.01  # second pixel: class 2 slightly likelier
    assert logits.argmax(1).tolist() == [[[0, 0]]]
    assert decode(logits).tolist() == [[[1, 2]]]
    assert decode(torch.log(torch.tensor([0.6, 0.3, 0.1]))[None, :, None, None]).item() == 0
