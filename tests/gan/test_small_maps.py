"""The matrix-product path for convolutions on small maps computes the same convolution
(values and both gradients) as PyTorch's kernels, and switches only small maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan.networks.small_maps import conv2d_gemm, conv_transpose2d_gemm, use_gemm_for_small_maps


def _grads(fn, x, w, b):
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = fn(x, w, b)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()  # a non-uniform upstream grad
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize(("shape", "k", "stride", "pad"), [
    ((3, 5, 8, 8), 4, 2, 1),   # DCGAN/pix2pix down-sampling, 8x8 -> 4x4
    ((2, 4, 7, 6), 3, 1, 1),   # odd, non-square map
    ((2, 3, 4, 4), 4, 1, 0),   # 4x4 -> 1x1 (DCGAN discriminator's last layer)
])
def test_conv2d_gemm_matches_conv2d(shape, k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(shape)
    w, b = torch.randn(6, shape[1], k, k), torch.randn(6)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, stride, pad), x, w, b)
    got = _grads(lambda x, w, b: conv2d_gemm(x, w, b, (stride, stride), (pad, pad)), x, w, b)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("shape", "k", "stride", "pad"), [
    ((3, 5, 4, 4), 4, 2, 1),   # 4x4 -> 8x8 up-sampling
    ((2, 6, 1, 1), 4, 1, 0),   # DCGAN generator's first layer: z (1x1) -> 4x4
    ((2, 3, 2, 3), 3, 2, 1),   # non-square
])
def test_conv_transpose2d_gemm_matches_conv_transpose2d(shape, k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(shape)
    w, b = torch.randn(shape[1], 7, k, k), torch.randn(7)
    ref = _grads(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, pad), x, w, b)
    got = _grads(lambda x, w, b: conv_transpose2d_gemm(x, w, b, (stride, stride), (pad, pad)), x, w, b)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_patched_network_keeps_outputs_state_dict_and_spectral_norm(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 8, 4, 2, 1)),  # 32 -> 16: default path
        nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 4, 2, 1, bias=False),  # 16 -> 8: too big for a convolution
        nn.Conv2d(8, 16, 4, 2, 1, bias=False),  # 8 -> 4: matrix product
        nn.ConvTranspose2d(16, 4, 4, 2, 1),  # 4 -> 8: transposed, up to 8x8 takes the matrix product
        nn.ConvTranspose2d(4, 4, 4, 2, 1),  # 8 -> 16: default path
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped: never switched
    ).eval()
    x = torch.randn(3, 2, 32, 32)
    keys = list(net.state_dict())
    with torch.no_grad():
        ref = net(x)
    assert use_gemm_for_small_maps(net) == 5  # grouped conv left alone
    assert list(net.state_dict()) == keys
    calls = []
    import gan.networks.small_maps as sm

    real, real_t = sm.conv2d_gemm, sm.conv_transpose2d_gemm
    monkeypatch.setattr(sm, "conv2d_gemm", lambda *a: calls.append(("conv", a[0].shape)) or real(*a))
    monkeypatch.setattr(sm, "conv_transpose2d_gemm", lambda *a: calls.append(("up", a[0].shape)) or real_t(*a))
    with torch.no_grad():
        got = net(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # only the 8x8 -> 4x4 convolution and the 4x4 -> 8x8 transposed one took the new path
    assert calls == [("conv", torch.Size([3, 8, 8, 8])), ("up", torch.Size([3, 16, 4, 4]))]
    assert use_gemm_for_small_maps(net) == 5  # idempotent
