"""Semi-supervised segmentation: learn from the training scans whose masks a label budget hides.

Two methods, both on a pair of U-Nets that differ only in how their decoders upsample
(`DualUNet`: network *a* a transposed convolution, network *b* bilinear interpolation), so
that they make different mistakes and can correct each other:

* ``cps`` — cross pseudo supervision (Chen et al., CVPR 2021): on unlabelled pixels each
  network is trained with cross-entropy towards the other's argmax. The reference method.
* ``spmc`` — suspicious-pixel mutual correction, CPS plus two terms aimed at the pixels the
  networks doubt (a pixel is *suspicious* to a network when its largest class probability
  is at most ``tau``):

  - **CDPS** (common-difficulty pixel supervision), labelled batch: where *both* networks
    doubt a pixel, an extra squared error between each network's probabilities and the
    one-hot label (`cdps_mask`);
  - **SPLAT** (suspicious-pixel label transfer), unlabelled batch: where network *a* doubts
    a pixel that network *b* is confident about (> ``tau``), *a* is pulled towards *b*'s
    probabilities sharpened with temperature ``T`` (`sharpen`), and vice versa
    (`splat_mask`; squared error, as MC-Net's consistency term, Wu et al. 2021).

Per network n: ``L_n = sup_n + λ(t)·(cps_n + β·splat_n)`` with ``sup_n`` = Dice + CE
(`downstream.models.segment.dice_ce_loss`) + ``cdps_weight``·CDPS_n, and the ramp
``λ(t) = λ_max·exp(−k(1 − t/t_max)²)`` (`ramp_weight`; λ_max 0.1, k 5: the sigmoid ramp-up
of Laine & Aila 2017 that SPMC uses). The total is ``L_a + L_b``. Pseudo-labels, masks and
sharpened targets carry no gradient. The labelled and the unlabelled half of a batch go
through each network separately, so BatchNorm normalises each by its own statistics.

With no unlabelled batch and ``beta = 0`` only the supervised terms remain; with
``cdps_weight = 0`` too, the two networks train exactly as two independent supervised
U-Nets (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downstream.models.segment import UNet, dice_ce_loss

METHODS = ("spmc", "cps")
INFERENCE = ("a", "b", "mean")


class DualUNet(nn.Module):
    """Two U-Nets of the same architecture, one with transposed-convolution and one with
    bilinear upsampling (`UNet`'s ``upsample``), each with its own weights.

    ``forward`` is what prediction uses: network ``a``'s logits, ``b``'s, or (``mean``) the
    log of the average of both networks' probabilities, so that `decode`'s softmax gives
    that average back. `both` returns the two networks' logits for training.
    """

    def __init__(self, n_classes: int, *, base: int, depth: int, attention: bool, inference: str = "mean") -> None:
        super().__init__()
        # a first: with the same torch seed it starts from the weights a plain U-Net would.
        self.a = UNet(1, n_classes, base=base, depth=depth, attention=attention, upsample="transpose")
        self.b = UNet(1, n_classes, base=base, depth=depth, attention=attention, upsample="bilinear")
        self.inference = inference

    @property
    def inference(self) -> str:
        return self._inference

    @inference.setter
    def inference(self, mode: str) -> None:
        if mode not in INFERENCE:
            raise ValueError(f"inference must be one of {', '.join(INFERENCE)}, got {mode!r}")
        self._inference = mode

    def both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.a(x), self.b(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.inference == "a":
            return self.a(x)
        if self.inference == "b":
            return self.b(x)
        la, lb = self.both(x)
        return (0.5 * (la.softmax(1) + lb.softmax(1))).clamp_min(1e-12).log()


def ramp_weight(step: int, total: int, lambda_max: float = 0.1, k: float = 5.0) -> float:
    """``λ_max·exp(−k(1 − t/t_max)²)``: ``λ_max·e^{-k}`` at the start, ``λ_max`` from ``t_max`` on."""
    t = min(max(step, 0), total) / max(total, 1)
    return float(lambda_max * math.exp(-k * (1.0 - t) ** 2))


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """``p_c^{1/T} / Σ_k p_k^{1/T}`` over dim 1: the same argmax, closer to one-hot for T < 1,
    unchanged at T = 1."""
    return F.softmax(probs.clamp_min(1e-12).log() / temperature, dim=1)


def confidence(probs: Tensor) -> Tensor:
    """Each pixel's largest class probability, (N, H, W)."""
    return probs.max(dim=1).values


def cdps_mask(pa: Tensor, pb: Tensor, tau: float) -> Tensor:
    """Pixels both networks doubt: largest class probability ``<= tau`` in each."""
    return (confidence(pa) <= tau) & (confidence(pb) <= tau)


def splat_mask(p_self: Tensor, p_other: Tensor, tau: float) -> Tensor:
    """Pixels this network doubts (``<= tau``) and the other is confident about (``> tau``)."""
    return (confidence(p_self) <= tau) & (confidence(p_other) > tau)


def masked_mse(probs: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The squared error summed over classes, on the masked pixels, averaged over *all*
    pixels (FixMatch's normalisation): a term whose weight grows with the number of pixels
    it concerns. Averaging over the masked pixels only gave a handful of doubted pixels the
    weight of the whole batch's cross-entropy, and cut a 2-patient U-Net's test Dice from
    0.67 to 0.42 (measured, CDPS alone)."""
    per_pixel = ((probs - target) ** 2).sum(1)
    return (per_pixel * mask.to(per_pixel.dtype)).mean()


def semi_loss(
    model: DualUNet,
    x_lab: Tensor,
    y_lab: Tensor,
    x_unl: Tensor | None,
    *,
    method: str,
    step: int,
    total: int,
    tau: float = 0.7,
    beta: float = 0.5,
    temperature: float = 0.1,
    lambda_max: float = 0.1,
    ramp: float = 5.0,
    cdps_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_a + L_b`` of one batch (module docstring); ``x_unl`` None: labelled only.

    Returns the loss and its parts (detached) for the log: ``sup``, ``cdps``, ``cps``,
    ``splat`` (each summed over both networks), ``lambda``, and the fractions of pixels in
    the CDPS and SPLAT masks.
    """
    if method not in METHODS:
        raise ValueError(f"unknown semi-supervised method {method!r} ({', '.join(METHODS)})")
    la, lb = model.both(x_lab)
    zero = la.new_zeros(())
    sup_a, _ = dice_ce_loss(la, y_lab)
    sup_b, _ = dice_ce_loss(lb, y_lab)
    cdps_a = cdps_b = zero
    cdps_frac = zero.detach()
    if method == "spmc" and cdps_weight:
        pa, pb = la.softmax(1), lb.softmax(1)
        onehot = F.one_hot(y_lab, la.shape[1]).permute(0, 3, 1, 2).to(pa.dtype)
        mask = cdps_mask(pa.detach(), pb.detach(), tau)
        cdps_a, cdps_b = masked_mse(pa, onehot, mask), masked_mse(pb, onehot, mask)
        cdps_frac = mask.float().mean()
    lam = ramp_weight(step, total, lambda_max, ramp)
    cps_a = cps_b = splat_a = splat_b = zero
    splat_frac = zero.detach()
    if x_unl is not None:
        ua, ub = model.both(x_unl)
        qa, qb = ua.softmax(1), ub.softmax(1)
        qa_d, qb_d = qa.detach(), qb.detach()
        cps_a = F.cross_entropy(ua, qb_d.argmax(1))
        cps_b = F.cross_entropy(ub, qa_d.argmax(1))
        if method == "spmc" and beta:
            mask_a, mask_b = splat_mask(qa_d, qb_d, tau), splat_mask(qb_d, qa_d, tau)
            splat_a = masked_mse(qa, sharpen(qb_d, temperature), mask_a)
            splat_b = masked_mse(qb, sharpen(qa_d, temperature), mask_b)
            splat_frac = 0.5 * (mask_a.float().mean() + mask_b.float().mean())
    loss_a = sup_a + cdps_weight * cdps_a + lam * (cps_a + beta * splat_a)
    loss_b = sup_b + cdps_weight * cdps_b + lam * (cps_b + beta * splat_b)
    parts: dict[str, Any] = {
        "sup": (sup_a + sup_b).detach(), "cdps": (cdps_a + cdps_b).detach(), "cps": (cps_a + cps_b).detach(),
        "splat": (splat_a + splat_b).detach(), "lambda": torch.tensor(lam), "cdps_pixels": cdps_frac,
        "splat_pixels": splat_frac,
    }
    return loss_a + loss_b, parts
