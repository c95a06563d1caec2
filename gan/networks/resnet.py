"""ResNet image-to-image generator of CycleGAN (Johnson et al. 2016; Zhu et al. 2017).

Layer for layer junyanz's ``ResnetGenerator``: ``c7s1-ngf, d(2ngf), d(4ngf), n_blocks x
R(4ngf), u(2ngf), u(ngf), c7s1-out`` + tanh, reflection padding, instance norm without
affine parameters (so the convolutions before a norm carry a bias, as there). The paper
uses 9 residual blocks for 256 px images and 6 for 128 px and smaller.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

N_DOWNSAMPLING = 2  # two stride-2 convolutions: inputs must be multiples of 4 px


def _norm(channels: int) -> nn.Module:
    # affine=False, no running stats: junyanz's "instance" norm layer.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + conv-norm-relu-conv-norm(x)``, 3x3 convolutions with reflection padding."""

    def __init__(self, dim: int, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            _norm(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=True), _norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator: ``(B, input_nc, H, W) -> (B, output_nc, H, W)`` in [-1, 1].

    Args:
        input_nc: input channels.
        output_nc: output channels.
        ngf: filters of the first convolution (64 in the paper).
        n_blocks: residual blocks at 1/4 resolution (9 for 256 px, 6 for <= 128 px).
        use_dropout: dropout 0.5 inside the residual blocks (off in CycleGAN).

    ``H`` and ``W`` must be multiples of 4 so the two upsamplings restore the input size.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        n_blocks: int = 9,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, bias=True),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(N_DOWNSAMPLING):
            mult = 2**i
            layers += [
                nn.Conv2d(
                    ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True
                ),
                _norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**N_DOWNSAMPLING
        layers += [ResnetBlock(ngf * mult, use_dropout=use_dropout) for _ in range(n_blocks)]
        for i in range(N_DOWNSAMPLING):
            mult = 2 ** (N_DOWNSAMPLING - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=True,
                ),
                _norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def init_normal_(
    net: nn.Module, std: float = 0.02, generator: torch.Generator | None = None
) -> None:
    """junyanz ``init_weights(net, "normal", 0.02)``: conv weights ~ N(0, std), biases 0,
    affine norm weights ~ N(1, std). Draws from ``generator`` (global torch RNG if None)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std, generator=generator)
            nn.init.zeros_(m.bias)
