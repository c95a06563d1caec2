"""Differentiable augmentation of what a discriminator sees (DiffAugment, Zhao et al. 2020).

With tens of training lesions a discriminator memorises the real set within a few hundred
steps; its verdicts then stop carrying information and the generator collapses. DiffAugment
(https://arxiv.org/abs/2006.10738, code: mit-han-lab/data-efficient-gans) applies the same
*kind* of random transform to real and generated images every time D sees them, in the D step
and in the G step, so D never sees the 64 training lesions as they are. The transforms are
differentiable, so the generator still gets gradients through them.

Why DiffAugment and not ADA (Karras et al. 2020): ADA tunes an augmentation probability
from an overfitting heuristic on D's outputs, which is more state to checkpoint and a larger
geometric/colour pipeline to get right for image + mask pairs; DiffAugment is three fixed
transforms, stateless between steps, so a resumed run stays exact with nothing more to save.
The price: applied to every sample, a transform can "leak" into what G learns to draw
(ADA's argument); measure before turning it on (each model's ``diffaugment`` option says
what was measured).

Policies (comma separated, applied in this order; names are the paper's):

- ``color``: per sample, brightness ``+ U(-0.5, 0.5)`` and contrast ``x (U(0.5, 1.5))``
  about the sample's mean, in model space (``[-1, 1]`` = the HU window). Only on the
  channels named as intensities (an image, never a mask or class map); the paper's
  saturation has no meaning for one grey channel and is left out. One draw per sample for
  all its intensity channels (pix2pix's condition and output move together).
- ``translation``: per sample, an integer shift of up to 1/8 of the side in each direction,
  the same for every channel; pixels shifted in are 0, as in the paper.
- ``cutout``: per sample, one square of half the side (clipped at the border) set to 0 in
  every channel, as in the paper.

Randomness: every draw comes from the global torch RNG, which the trainer reseeds from
``(seed, step)`` before each step (`gan.base` reproducibility contract), drawn on the CPU for
the whole batch and cut to this process's part (`gan.train.distributed.BatchShard`), so a
run gives the same augmentations on any device and under torchrun.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from augment.errors import ConfigError
from gan.train.distributed import WHOLE_BATCH, BatchShard

POLICIES = ("color", "translation", "cutout")
# DiffAugment's own parameters (DiffAugment_pytorch.py): shift up to 1/8 of the side, a
# cutout square of 1/2 the side, brightness +-0.5 and contrast 0.5..1.5.
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
BRIGHTNESS_RANGE = (-0.5, 0.5)
CONTRAST_RANGE = (0.5, 1.5)


def parse_policy(policy: str, *, owner: str = "diffaugment") -> tuple[str, ...]:
    """``"translation,cutout"`` -> ``("translation", "cutout")`` in `POLICIES` order.

    ``""`` (or only spaces) is off: ``()``.

    Raises:
        ConfigError: an unknown name, named with ``owner`` (e.g. ``"dcgan: diffaugment"``).
    """
    names = [p.strip() for p in str(policy).split(",") if p.strip()]
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ConfigError(
            f"{owner}: unknown DiffAugment policy {', '.join(map(repr, unknown))}; "
            f"use a comma-separated subset of {', '.join(POLICIES)}, or '' for none"
        )
    return tuple(p for p in POLICIES if p in names)


def _uniform(shard: BatchShard, n: int, low: float, high: float, device: torch.device) -> Tensor:
    """(n, 1, 1, 1) draws from U(low, high): the whole batch's, this part kept."""
    u = shard.local(torch.rand(n * shard.count, 1, 1, 1))
    return (low + (high - low) * u).to(device)


def _randint(shard: BatchShard, n: int, low: int, high: int, device: torch.device) -> Tensor:
    """(n,) integers in [low, high): the whole batch's, this part kept."""
    return shard.local(torch.randint(low, high, (n * shard.count,))).to(device)


def _color(x: Tensor, channels: Sequence[int], shard: BatchShard) -> Tensor:
    if not channels:
        return x
    n, c, h, w = x.shape
    shift = _uniform(shard, n, *BRIGHTNESS_RANGE, device=x.device)
    scale = _uniform(shard, n, *CONTRAST_RANGE, device=x.device)
    on = torch.zeros(1, c, 1, 1, dtype=x.dtype, device=x.device)
    on[:, list(channels)] = 1.0  # 1 on the intensity channels, 0 on masks and class maps
    x = x + on * shift
    mean = (x * on).sum(dim=(1, 2, 3), keepdim=True) / (len(channels) * h * w)
    return x + on * (x - mean) * (scale - 1.0)


def _translation(x: Tensor, shard: BatchShard) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    ty = _randint(shard, n, -sh, sh + 1, x.device)
    tx = _randint(shard, n, -sw, sw + 1, x.device)
    # As the paper: pad one zero pixel and clamp indices into it, so pixels from outside are 0.
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device)[None] + ty[:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None] + tx[:, None] + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice: the result is (n, h, w, c).
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _cutout(x: Tensor, shard: BatchShard) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = _randint(shard, n, 0, h + (1 - ch % 2), x.device)
    cx = _randint(shard, n, 0, w + (1 - cw % 2), x.device)
    r = torch.arange(h, device=x.device)[None]
    c = torch.arange(w, device=x.device)[None]
    top, left = (cy - ch // 2)[:, None], (cx - cw // 2)[:, None]
    in_rows = (r >= top) & (r < top + ch)
    in_cols = (c >= left) & (c < left + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def diff_augment(
    x: Tensor,
    policy: Sequence[str],
    *,
    intensity_channels: Sequence[int] = (0,),
    shard: BatchShard = WHOLE_BATCH,
) -> Tensor:
    """``x`` (N, C, H, W) augmented by ``policy`` (`parse_policy`'s tuple), differentiably.

    Each sample gets its own draw; within a sample the geometric transforms move every
    channel together (image, mask, condition), and ``color`` changes only
    ``intensity_channels``. An empty policy returns ``x`` itself.
    """
    if not policy:
        return x
    for name in policy:
        if name == "color":
            x = _color(x, intensity_channels, shard)
        elif name == "translation":
            x = _translation(x, shard)
        elif name == "cutout":
            x = _cutout(x, shard)
        else:  # parse_policy refuses these; a tuple built by hand may not
            raise ConfigError(f"diffaugment: unknown policy {name!r}")
    return x


__all__ = ["POLICIES", "diff_augment", "parse_policy"]
