"""The pix2pix U-Net and the PatchGAN discriminator: shapes, widths, skips, receptive field."""

import pytest
import torch
from torch import nn

from gan.networks.patchgan import NLayerDiscriminator, receptive_field
from gan.networks.unet import UnetGenerator, UnetSkipConnectionBlock


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_unet_paper_config_matches_junyanz():
    # junyanz's train.py prints "Total number of parameters : 54.414 M" for
    # --netG unet_256 (3 -> 3 channels, ngf 64, batch norm); we count 54,413,955.
    with torch.device("meta"):  # shapes and counts without allocating or computing
        g = UnetGenerator(3, 3, num_downs=8, ngf=64)
        assert n_params(g) == 54_413_955
        assert g(torch.empty(1, 3, 256, 256)).shape == (1, 3, 256, 256)
    # Dropout follows exactly the three middle decoder levels (the paper's CD512 x 3).
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3


def test_unet_bottleneck_is_1x1_and_widths_follow_the_paper():
    g = UnetGenerator(6, 1, num_downs=5, ngf=2, use_dropout=False)
    seen = []
    for m in g.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[1:])))
    out = g(torch.zeros(2, 6, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    # Encoder C(ngf)-C(2ngf)-C(4ngf)-C(8ngf)-C(8ngf), halving 32 px down to 1x1.
    assert seen == [(2, 16, 16), (4, 8, 8), (8, 4, 4), (16, 2, 2), (16, 1, 1)]


def test_unet_skip_connections_carry_the_input_to_the_output():
    # Cut the bottleneck's contribution: the output must still depend on the input,
    # which only the skip connections can carry.
    torch.manual_seed(0)
    g = UnetGenerator(1, 1, num_downs=5, ngf=2, norm="none", use_dropout=False).eval()
    innermost = [m for m in g.modules() if isinstance(m, UnetSkipConnectionBlock)][-1]
    for p in innermost.parameters():
        nn.init.zeros_(p)
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    g(x)[0, 0, 16, 16].backward()
    assert x.grad.abs().sum() > 0


def test_unet_output_lies_in_tanh_range_and_rejects_too_few_levels():
    torch.manual_seed(0)
    g = UnetGenerator(2, 1, num_downs=5, ngf=2)
    y = g(torch.randn(2, 2, 32, 32) * 100)
    assert y.abs().max() <= 1
    with pytest.raises(ValueError, match="num_downs"):
        UnetGenerator(1, 1, num_downs=4)
    with pytest.raises(ValueError, match="norm"):
        UnetGenerator(1, 1, num_downs=5, norm="layer")


def test_patchgan_paper_config_matches_junyanz():
    # By hand, 4x4 kernels, 6 input channels (pix2pix 3 + 3): 6*64*16 + 64 = 6,208;
    # 64*128*16 + 2*128 = 131,328; 128*256*16 + 2*256 = 524,800; 256*512*16 + 2*512 =
    # 2,098,176; 512*16 + 1 = 8,193; total 2,768,705 (junyanz prints "2.769 M").
    with torch.device("meta"):
        d = NLayerDiscriminator(6, ndf=64, n_layers=3)
        assert n_params(d) == 2_768_705
        # 256 px -> 128 -> 64 -> 32 -> 31 -> 30: the 30x30 patch map of the paper's code.
        assert d(torch.empty(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_patchgan_n_layers_3_sees_70x70_patches():
    d = NLayerDiscriminator(1, ndf=2, n_layers=3)
    # By hand, output to input: 1 -> 4 -> 7 (two stride-1 4x4) -> 16 -> 34 -> 70 (three
    # stride-2 4x4, r' = 2r + 2): the paper's 70x70 PatchGAN.
    assert receptive_field(d) == 70
    # Empirical: with positive weights every input pixel inside the field has a
    # non-zero gradient on one central output, and none outside it.
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.01)
    d.eval()  # batch norm as a fixed per-pixel affine map: no spatial coupling
    x = torch.ones(1, 1, 160, 160, dtype=torch.float64, requires_grad=True)
    d.double()
    y = d(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows[-1] - rows[0] + 1) == 70
    assert int(cols[-1] - cols[0] + 1) == 70


@pytest.mark.parametrize(("n_layers", "field"), [(1, 16), (2, 34), (4, 142)])
def test_patchgan_receptive_field_for_other_depths(n_layers, field):
    # junyanz's table: n_layers 1 -> 16x16 ("pixel" aside), 2 -> 34x34, 4 -> 142x142.
    assert receptive_field(NLayerDiscriminator(1, ndf=2, n_layers=n_layers)) == field


def test_patchgan_norms():
    batch = NLayerDiscriminator(3, ndf=2, n_layers=2, norm="batch")
    inst = NLayerDiscriminator(3, ndf=2, n_layers=2, norm="instance")
    assert any(isinstance(m, nn.BatchNorm2d) for m in batch.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inst.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in inst.modules())
    # Convolutions before a batch norm carry no bias (its shift replaces it).
    convs = [m for m in batch.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].bias is not None and convs[1].bias is None and convs[-1].bias is not None
    # 64 -> 32 -> 16 (stride 2) -> 15 -> 14 (4x4, stride 1, padding 1).
    assert inst(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 14, 14)
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(3, norm="group")
