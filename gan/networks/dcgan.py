"""DCGAN generator and discriminator (Radford, Metz & Chintala, ICLR 2016).

The generator follows the paper's figure 1: ``z`` (100) is projected and reshaped
to 4x4x1024, then fractionally-strided convolutions double the size and halve the
width, 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64xC, with BatchNorm + ReLU and a
``tanh`` output. The paper's figure draws 5x5 kernels; we use 4x4 kernels with
stride 2 and padding 1, as the authors' reference code and the PyTorch DCGAN example
do, because that doubles the size exactly with no output padding.

Widths depend only on the resolution (``base * 64 / size``), so a 32x32 ROI drops
the last up-block and keeps 4x4x1024 at the bottom. The discriminator mirrors the
generator: LeakyReLU(0.2), no BatchNorm on its first layer, optionally spectral
normalisation on every layer (then without BatchNorm at all), and one logit out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


def n_resolution_steps(size: int) -> int:
    """Number of 2x steps between 4x4 and ``size`` (a power of two >= 8)."""
    steps = math.log2(size / 4)
    if size < 8 or steps != int(steps):
        raise ValueError(f"size must be a power of two >= 8, got {size}")
    return int(steps)


def width_at(base: int, size: int) -> int:
    """Channels at ``size`` x ``size``: ``base * 16`` at 4x4, halving per doubling."""
    return max(1, base * 64 // size)


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """``z`` (and an optional one-hot class) -> ``out_channels`` x ``size`` x ``size`` in [-1, 1].

    Args:
        nz: latent size (100 in the paper).
        ngf: base width; 4x4 has ``ngf * 16`` channels (1024 for the paper's 64).
        out_channels: output channels (2 for DCGAN lesion ROIs: image, mask).
        size: output side, a power of two >= 8.
        n_cond: length of the one-hot class vector appended to ``z`` (0: unconditional).
    """

    def __init__(self, nz: int, ngf: int, out_channels: int, size: int, n_cond: int = 0) -> None:
        super().__init__()
        steps = n_resolution_steps(size)
        self.nz, self.n_cond = nz, n_cond
        c0 = width_at(ngf, 4)
        # "Project and reshape": a linear map to 4x4xc0 (a 4x4 transposed convolution
        # of a 1x1 input, as the reference code writes it, is the same map).
        self.project = nn.Sequential(
            nn.Linear(nz + n_cond, c0 * 16, bias=False),
            nn.Unflatten(1, (c0, 4, 4)),
            nn.BatchNorm2d(c0),
            nn.ReLU(True),
        )
        blocks: list[nn.Module] = []
        res = 4
        for i in range(steps):
            c_in, last = width_at(ngf, res), i == steps - 1
            res *= 2
            c_out = out_channels if last else width_at(ngf, res)
            blocks.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=last))
            blocks += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.up = nn.Sequential(*blocks)
        self.apply(dcgan_init)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.n_cond:
            if cond is None:
                raise ValueError("class-conditional generator needs a one-hot class")
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        return self.up(self.project(z))


class DCGANDiscriminator(nn.Module):
    """``in_channels`` x ``size`` x ``size`` (plus class maps) -> one real/fake logit per image.

    Args:
        in_channels: image channels (2: image, mask).
        ndf: base width; mirrors the generator, ``ndf * 16`` channels at 4x4.
        size: input side, a power of two >= 8.
        n_cond: number of constant class maps appended to the input (0: unconditional).
        spectral_norm: spectral normalisation (Miyato et al. 2018) on every layer and no
            BatchNorm, the stabilised variant for small data sets.
    """

    def __init__(
        self, in_channels: int, ndf: int, size: int, n_cond: int = 0, spectral_norm: bool = False
    ) -> None:
        super().__init__()
        steps = n_resolution_steps(size)
        self.n_cond = n_cond
        layers: list[nn.Module] = []
        res, c_in = size, in_channels + n_cond
        convs: list[nn.Conv2d] = []
        for i in range(steps):
            res //= 2
            c_out = width_at(ndf, res)
            batchnorm = i > 0 and not spectral_norm
            conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batchnorm)
            convs.append(conv)
            layers.append(conv)
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in = c_out
        final = nn.Conv2d(c_in, 1, 4, 1, 0)
        convs.append(final)
        layers.append(final)
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)
        if spectral_norm:
            # After the init: the parametrization keeps the initialised weight as `original`.
            for conv in convs:
                _spectral_norm(conv)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.n_cond:
            if cond is None:
                raise ValueError("class-conditional discriminator needs a one-hot class")
            maps = cond.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, maps], dim=1)
        return self.net(x).flatten()
