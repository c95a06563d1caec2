"""Segmenters: U-Net (Ronneberger 2015) and Attention U-Net (Oktay 2018).

`train_one_epoch` / `evaluate` follow torchvision's detection references: plain
functions over a model, an optimizer and a loader, returning numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment.errors import NonFiniteLossError


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(cin: int, cout: int, kind: str) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 1))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, Fig. 2): the decoder's gating signal
    ``g`` weighs the encoder skip ``x`` per pixel before concatenation."""

    def __init__(self, x_ch: int, g_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.theta_x = nn.Conv2d(x_ch, inter_ch, 1, bias=False)
        self.phi_g = nn.Conv2d(g_ch, inter_ch, 1, bias=True)
        self.psi = nn.Conv2d(inter_ch, 1, 1, bias=True)

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        a = F.relu(self.theta_x(x) + self.phi_g(g))
        alpha = torch.sigmoid(self.psi(a))
        return x * alpha, alpha


class UNet(nn.Module):
    """U-Net with configurable depth/width; ``attention=True`` gives Attention U-Net.

    Args:
        in_channels: input channels (1 for a windowed CT slice).
        n_classes: output classes including background.
        base: channels of the first level (doubled per level; the paper uses 64).
        depth: number of down-sampling steps (the paper uses 4).
        attention: attention gates on the skip connections.
        upsample: how the decoder doubles resolution: ``transpose`` (a learned 2x2
            transposed convolution, the paper's) or ``bilinear`` (bilinear interpolation,
            then a 1x1 convolution that halves the channels). Two networks that differ
            only here make different mistakes, which semi-supervised training
            (`downstream.models.semi`) uses.
        foreground_prior: initial probability of "lesion" per pixel, spread evenly over the
            foreground classes (None: PyTorch's default head initialisation). Lesions cover
            ~1% of a slice; a head that starts at uniform class probabilities spends
            hundreds of Adam steps (each moves a bias by ~lr) only learning that most
            pixels are background before the Dice term can find a lesion. Starting at the
            prior (RetinaNet's initialisation, Lin et al. 2017, section 4.1) removes that
            phase: on the 64 px head phantom the first true lesion pixels appear after ~75
            steps instead of never within 300.
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 2, base: int = 64, depth: int = 4, attention: bool = False,
        foreground_prior: float | None = 0.01, upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        chans = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList([_conv_block(in_channels, chans[0])])
        self.encoders.extend(_conv_block(chans[i], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(_up(chans[i + 1], chans[i], upsample) for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(_conv_block(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.gates = (
            nn.ModuleList(AttentionGate(chans[i], chans[i], max(chans[i] // 2, 1)) for i in reversed(range(depth)))
            if attention
            else None
        )
        self.head = nn.Conv2d(chans[0], n_classes, 1)
        if foreground_prior is not None and n_classes > 1:
            if not 0 < foreground_prior < 1:
                raise ValueError(f"foreground_prior must be in (0, 1), got {foreground_prior}")
            prior = torch.full((n_classes,), foreground_prior / (n_classes - 1))
            prior[0] = 1 - foreground_prior
            nn.init.normal_(self.head.weight, 0.0, 0.01)
            with torch.no_grad():
                self.head.bias.copy_(prior.log())

    def levels(self, x: Tensor) -> dict[int, Tensor]:
        """Feature maps by level: ``depth`` is the bottleneck, ``depth - 1`` ... ``0`` the
        decoder's outputs up to full resolution (a feature pyramid for detection)."""
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2**self.depth}")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        out = {self.depth: x}
        for j, (up, dec) in enumerate(zip(self.ups, self.decoders, strict=True)):
            x = up(x)
            skip = skips.pop()
            if self.gates is not None:
                skip, _ = self.gates[j](skip, x)
            x = dec(torch.cat([skip, x], dim=1))
            out[self.depth - 1 - j] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.levels(x)[0])


def dice_ce_loss(logits: Tensor, target: Tensor, *, smooth: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Soft Dice + cross-entropy, equally weighted.

    Soft Dice of a class c: ``(2 Σ p_c y_c + s) / (Σ p_c + Σ y_c + s)`` summed over the
    batch (nnU-Net's batch Dice). With one lesion class the Dice loss is ``1 −`` that
    class's Dice. With several lesion classes (the ICH subtypes) it is the mean of
    ``1 −`` the mean per-class Dice (background excluded, nnU-Net's default) and ``1 −``
    the *any-lesion* Dice of ``p_lesion = 1 − p_background`` against ``y > 0``. The
    any-lesion term is the metric the report reads; without it, five rare classes split
    a lesion's probability so that no single one beat background, and a U-Net trained on
    48 px patches never predicted a lesion (measured: Dice 0 in 300 steps).
    """
    n_classes = logits.shape[1]
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    dice_loss = 1 - dice[1:].mean() if n_classes > 1 else 1 - dice.mean()
    if n_classes > 2:
        p_any, y_any = 1 - probs[:, 0], onehot[:, 1:].sum(1)
        any_dice = (2 * (p_any * y_any).sum() + smooth) / (p_any.sum() + y_any.sum() + smooth)
        dice_loss = 0.5 * dice_loss + 0.5 * (1 - any_dice)
    return ce + dice_loss, {"ce": ce.detach(), "dice_loss": dice_loss.detach()}


def decode(logits: Tensor) -> Tensor:
    """Label maps from logits, lesion first: a pixel is lesion when ``p_background <
    0.5``, and its class is then the most probable lesion class. (A plain argmax calls
    background wherever the lesion probability is split over several subtypes.)"""
    probs = logits.softmax(1)
    if probs.shape[1] <= 2:
        return probs.argmax(1)
    subtype = probs[:, 1:].argmax(1) + 1
    return torch.where(probs[:, 0] < 0.5, subtype, torch.zeros_like(subtype))


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    *,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (batches from `augment.datasets.collate`) at a constant
    learning rate, with Dice + CE; mean losses (`fit` without schedule or validation)."""
    return fit(model, optimizer, loader, device, steps=max_steps if max_steps is not None else 2**62,
               schedule="constant", loss_fn=lambda m, b: segmentation_loss(m, b, device))


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``adam`` (foreach Adam) or ``sgd`` (nnU-Net's SGD: Nesterov momentum 0.99)."""
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay,
                               foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (adam, sgd)")


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    *,
    steps: int,
    loss_fn,
    schedule: str = "poly",
    validator=None,
    precision=None,
) -> dict[str, Any]:
    """Train for ``steps`` batches of ``loader`` with the recipe of `downstream.harness.recipe`:
    the learning rate follows ``schedule`` (``poly`` or ``constant``), the validator (if
    any) scores the model every few steps and the best state is restored at the end.
    ``precision`` (a `gan.train.precision.Precision`; None: fp32): the forward pass and the
    loss run under its autocast, fp16 with a gradient scaler.

    ``loss_fn(model, batch) -> (loss, parts)``. Returns mean losses over the run plus the
    validator's summary (curve, best value/step, ``undertrained``).
    """
    from downstream.harness.recipe import poly_lr

    base_lrs = [g["lr"] for g in optimizer.param_groups]
    autocast = precision.autocast(device) if precision is not None else contextlib.nullcontext()
    scaler = precision.scaler(device) if precision is not None else None
    totals: dict[str, Tensor] = {}
    n = 0
    model.train()
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if schedule == "poly":
            for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = poly_lr(lr, step, steps)
        with autocast:
            loss, parts = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss became {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: scaled backward; a step with inf/NaN gradients is skipped
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        parts["loss"] = loss.detach()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0) + v.detach()
        n += 1
        if validator is not None and validator.due(step + 1, steps):
            validator.step(model, step + 1)
            model.train()
    out: dict[str, Any] = {k: float(v) / max(n, 1) for k, v in totals.items()}
    out["steps"] = n
    if validator is not None:
        validator.restore(model)
        out.update(validator.summary())
    return out


def segmentation_loss(model: nn.Module, batch: dict[str, Any], device: torch.device):
    """Dice + CE of ``model`` on a `collate` batch."""
    x = batch["image"].to(device, non_blocking=True)
    y = batch["mask"].to(device, non_blocking=True)
    return dice_ce_loss(model(x), y)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device) -> list[np.ndarray]:
    """Label maps (uint8, one per slice, `decode`d) in loader order."""
    model.eval()
    preds = []
    for batch in loader:
        logits = model(batch["image"].to(device))
        preds.extend(decode(logits).to(torch.uint8).cpu().numpy())
    return preds
