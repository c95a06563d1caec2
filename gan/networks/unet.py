"""U-Net generator of pix2pix (Isola et al. 2017), as junyanz's ``UnetGenerator``.

An encoder of ``num_downs`` 4x4 stride-2 convolutions (``C64-C128-C256-C512-C512...``)
and a mirrored decoder of transposed convolutions, with a skip connection from every
encoder level to its decoder level (channels concatenated). LeakyReLU(0.2) in the
encoder, ReLU in the decoder, no norm on the outermost encoder layer nor on the 1x1
bottleneck, ``tanh`` output. Dropout(0.5) follows the decoder layers of the middle
levels (the ``num_downs - 5`` levels just outside the bottleneck whose width is 8 *
ngf): the three "CD512" layers of the paper's 256 px generator (``num_downs = 8``).
With ``num_downs`` levels the input sides must be multiples of ``2 ** num_downs``;
``size = 2 ** num_downs`` gives the paper's 1x1 bottleneck.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan.networks.patchgan import NORMS, conv_bias, norm_layer

MIN_DOWNS = 5  # outermost + three widening levels + bottleneck, as junyanz builds it
MAX_MULT = 8  # widths stop doubling at 8 * ngf


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``x -> [x, up(sub(down(x)))]`` (the outermost returns only the up path).

    Args:
        outer_nc: channels this level returns on its up path (before concatenation).
        inner_nc: channels of its down path (what ``submodule`` receives).
        input_nc: channels it receives (default ``outer_nc``).
        submodule: the next level inwards; ``None`` for the bottleneck.
        outermost: first/last level: no norm, no skip, ``tanh`` output.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        use_dropout: Dropout(0.5) after this level's up path.
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        *,
        outermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = submodule is None
        bias = conv_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        # The bottleneck up path gets inner_nc channels; the others also get the skip.
        up_in = inner_nc if innermost else inner_nc * 2
        if outermost:
            layers = [
                down_conv,
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1),
                nn.Tanh(),
            ]
        elif innermost:
            # No norm on the 1x1 bottleneck: with batch size 1 it would zero it.
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                nn.ReLU(True),
                nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias),
                norm_layer(norm, outer_nc),
            ]
        else:
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                norm_layer(norm, inner_nc),
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias),
                norm_layer(norm, outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: ``(B, input_nc, H, W) -> (B, output_nc, H, W)`` in [-1, 1].

    Args:
        input_nc: input channels.
        output_nc: output channels.
        num_downs: downsamplings (>= 5); 8 for 256 px images gives a 1x1 bottleneck.
        ngf: filters of the first convolution (64 in the paper).
        norm: ``"batch"`` (paper), ``"instance"`` or ``"none"``.
        use_dropout: Dropout(0.5) in the middle decoder levels (paper: on, as the noise
            source of the generator).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = True,
    ) -> None:
        super().__init__()
        if num_downs < MIN_DOWNS:
            raise ValueError(f"num_downs must be >= {MIN_DOWNS}, got {num_downs}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
        self.num_downs = num_downs
        widths = [ngf * min(2**i, MAX_MULT) for i in range(num_downs)]  # inner_nc per level
        block: nn.Module | None = None
        for level in range(num_downs - 1, 0, -1):  # built from the bottleneck outwards
            middle = block is not None and level >= MIN_DOWNS - 1
            block = UnetSkipConnectionBlock(
                widths[level - 1],
                widths[level],
                submodule=block,
                norm=norm,
                use_dropout=use_dropout and middle,
            )
        self.model = UnetSkipConnectionBlock(
            output_nc, widths[0], input_nc, block, outermost=True, norm=norm
        )

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (``2 ** num_downs``)."""
        return 2**self.num_downs

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
