"""PatchGAN discriminator of pix2pix and CycleGAN (Isola et al. 2017; Zhu et al. 2017).

Layer for layer junyanz's ``NLayerDiscriminator``: ``C64 - C128 - C256 - C512 - 1``
with 4x4 convolutions, LeakyReLU(0.2), no norm on the first layer, stride 2 for the
first ``n_layers`` convolutions and stride 1 for the last two. It classifies every
overlapping patch of its input as real or fake and returns the map of logits; with
``n_layers = 3`` each logit sees a 70x70 patch (`receptive_field` computes it).
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("batch", "instance", "none")
KERNEL = 4
PADDING = 1


def norm_layer(kind: str, channels: int) -> nn.Module:
    """junyanz's norm layers: ``batch`` (affine, running stats), ``instance`` (no affine,
    no running stats) or ``none`` (identity)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")


def conv_bias(kind: str) -> bool:
    # A convolution followed by batch norm needs no bias (the norm's shift replaces it);
    # junyanz keeps it for instance norm, which has no affine shift.
    return kind != "batch"


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``(B, input_nc, H, W) -> (B, 1, H', W')`` real/fake logits per patch.

    Args:
        input_nc: input channels (pix2pix: condition + image concatenated).
        ndf: filters of the first convolution (64 in the papers); doubled per stride-2
            layer, capped at 8 * ndf.
        n_layers: stride-2 convolutions (3 gives the paper's 70x70 PatchGAN, 1 a 16x16
            one, 4 a 142x142 one).
        norm: ``"batch"`` (pix2pix), ``"instance"`` (CycleGAN) or ``"none"``.

    No sigmoid: pair the output with ``BCEWithLogitsLoss`` (vanilla GAN) or MSE (LSGAN).
    """

    def __init__(
        self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, KERNEL, stride=2, padding=PADDING),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last widening layer keeps the size
            layers += [
                nn.Conv2d(
                    ndf * prev, ndf * mult, KERNEL, stride=stride, padding=PADDING, bias=bias
                ),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, KERNEL, stride=1, padding=PADDING))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def max_layers(side: int) -> int:
    """The largest ``n_layers`` an `NLayerDiscriminator` can have on ``side``-pixel inputs
    (0: none fits).

    Each stride-2 layer halves the map (rounding down) and the two stride-1 layers at the
    end take one pixel each, so ``side // 2**n_layers`` must be at least 3 for a map of
    logits to remain.
    """
    n = 0
    while side // 2 ** (n + 1) >= 3:
        n += 1
    return n


def check_depth(n_layers: int, side: int, *, option: str = "n_layers_d", of: str = "") -> str | None:
    """Why an ``n_layers`` PatchGAN cannot judge ``side``-pixel slices (None: it can);
    ``of`` names where the slices are from."""
    most = max_layers(side)
    if n_layers <= most:
        return None
    fix = f"use {option} <= {most}" if most else "use larger slices"
    where = f" of {of}" if of else ""
    return (
        f"{option} = {n_layers} is too deep for the {side} px slices{where} (the discriminator's "
        f"map of logits would shrink to nothing); {fix}"
    )


def receptive_field(net: nn.Module) -> int:
    """Side in pixels of the input patch that one output of a plain conv stack sees.

    Walks the ``Conv2d`` layers in registration order (they must form one chain, as in
    `NLayerDiscriminator`): ``r <- r + (k - 1) * jump``, ``jump <- jump * stride``.
    """
    field, jump = 1, 1
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] + (m.kernel_size[0] - 1) * (m.dilation[0] - 1)
            field += (k - 1) * jump
            jump *= m.stride[0]
    return field
