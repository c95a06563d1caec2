"""Convolutions whose output map is a few pixels, computed as one matrix product (CPU).

oneDNN's direct convolution is fast on large maps, but on the deepest layers of DCGAN
and pix2pix (4x4, 2x2 and 1x1 outputs, 512-1024 channels) its backward pass runs far
below the CPU's matrix-multiply rate. Measured on the 2-core AVX2 development machine
(forward + backward, batch 64): the DCGAN discriminator's 8x8 -> 4x4, 512 -> 1024
convolution took ~760 ms in oneDNN and ~480 ms as unfold + one ``(N*L, C*k*k) x
(C*k*k, O)`` product; the generator's 4x4 -> 8x8, 1024 -> 512 transposed convolution
~545 ms against ~430 ms, and pix2pix's 4x4 -> 8x8, 1024 -> 512 one (batch 4) 66 ms
against 49 ms. Larger outputs lose (0.4-0.9x; strided convolutions already at 8x8 output),
so the path is chosen per call from the output size: up to 4x4 for convolutions, up to
8x8 for transposed ones. The arithmetic is the same convolution (results agree with
``F.conv2d`` to float32 rounding; tested); autograd differentiates through
``unfold``/``fold`` and the product, so both gradients are matrix products too.

`use_gemm_for_small_maps` switches eligible layers of a network to this path; the
trainer does it on CPU (``TrainConfig.small_map_gemm``). Parameters, state-dict keys
and checkpoints are unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_MAX_PIXELS = 16  # convolution outputs up to 4x4 take the matrix-product path
DEFAULT_MAX_PIXELS_TRANSPOSED = 64  # transposed-convolution outputs up to 8x8


def conv2d_gemm(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1, dilation 1) as unfold + matmul."""
    n, _, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kw) // stride[1] + 1
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, C*kh*kw, oh*ow)
    out = cols.transpose(1, 2).reshape(n * oh * ow, -1) @ weight.reshape(out_c, -1).t()
    if bias is not None:
        out = out + bias
    return out.view(n, oh, ow, out_c).permute(0, 3, 1, 2).contiguous()


def conv_transpose2d_gemm(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """``F.conv_transpose2d`` (groups 1, dilation 1, no output padding) as matmul + fold."""
    n, in_c, h, w = x.shape
    _, out_c, kh, kw = weight.shape
    oh = (h - 1) * stride[0] - 2 * padding[0] + kh
    ow = (w - 1) * stride[1] - 2 * padding[1] + kw
    cols = x.permute(0, 2, 3, 1).reshape(n * h * w, in_c) @ weight.reshape(in_c, -1)  # (N*H*W, O*kh*kw)
    cols = cols.view(n, h * w, out_c * kh * kw).transpose(1, 2)
    out = F.fold(cols, (oh, ow), (kh, kw), padding=padding, stride=stride)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _out_pixels_conv(m: nn.Conv2d, x: Tensor) -> int:
    oh = (x.shape[2] + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
    ow = (x.shape[3] + 2 * m.padding[1] - m.kernel_size[1]) // m.stride[1] + 1
    return oh * ow


def _out_pixels_transpose(m: nn.ConvTranspose2d, x: Tensor) -> int:
    oh = (x.shape[2] - 1) * m.stride[0] - 2 * m.padding[0] + m.kernel_size[0]
    ow = (x.shape[3] - 1) * m.stride[1] - 2 * m.padding[1] + m.kernel_size[1]
    return oh * ow


def _use_gemm(m: nn.Module, x: Tensor, pixels: int) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and pixels <= m._gemm_max_pixels
        and not torch.is_autocast_enabled("cpu")
    )


def _conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    if _use_gemm(self, x, _out_pixels_conv(self, x)):
        return conv2d_gemm(x, self.weight, self.bias, self.stride, self.padding)
    return type(self).forward(self, x)


def _transpose_forward(self: nn.ConvTranspose2d, x: Tensor, output_size: list[int] | None = None) -> Tensor:
    if output_size is None and _use_gemm(self, x, _out_pixels_transpose(self, x)):
        return conv_transpose2d_gemm(x, self.weight, self.bias, self.stride, self.padding)
    return type(self).forward(self, x, output_size)


def _eligible(m: nn.Module) -> bool:
    if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        return False
    plain = m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if isinstance(m, nn.ConvTranspose2d):
        plain = plain and m.output_padding == (0, 0)
    return plain


def use_gemm_for_small_maps(
    module: nn.Module,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixels_transposed: int = DEFAULT_MAX_PIXELS_TRANSPOSED,
) -> int:
    """Route the convolutions of ``module`` whose output map has at most ``max_pixels``
    pixels (``max_pixels_transposed`` for transposed convolutions) through the
    matrix-product path when they run on the CPU; returns how many layers were switched.
    Other devices, larger maps and autocast use PyTorch's own kernels. Idempotent."""
    n = 0
    for m in module.modules():
        if not _eligible(m):
            continue
        transposed = isinstance(m, nn.ConvTranspose2d)
        m._gemm_max_pixels = max_pixels_transposed if transposed else max_pixels
        fn = _transpose_forward if transposed else _conv_forward
        m.forward = types.MethodType(fn, m)
        n += 1
    return n
