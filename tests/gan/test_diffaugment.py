"""DiffAugment (gan.train.diffaugment): what each transform does, that it is differentiable,
that one sample's channels move together, and that the models feed D through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.errors import ConfigError
from gan.base import get_generator
from gan.models.dcgan import DCGAN, DCGANConfig
from gan.registry import REGISTRY
from gan.train.diffaugment import POLICIES, diff_augment, parse_policy
from gan.train.distributed import BatchShard
from tests.conftest import TINY_GENERATORS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 4, c: int = 2, side: int = 16) -> torch.Tensor:
    """Positive, all-distinct pixel values (so a zero can only come from the transform)."""
    x = torch.arange(1, n * side * side + 1, dtype=torch.float32).reshape(n, 1, side, side)
    return torch.cat([x * (k + 1) for k in range(c)], 1)


def test_policy_parsing_order_and_errors():
    assert parse_policy("") == parse_policy("  ") == ()
    assert parse_policy("cutout, translation") == ("translation", "cutout")
    assert parse_policy(",".join(reversed(POLICIES))) == POLICIES
    with pytest.raises(ConfigError, match="'flip'"):
        parse_policy("translation,flip")
    for name in REGISTRY:  # every model refuses a bad policy and a bad EMA decay in its Config
        cls = get_generator(name)
        with pytest.raises(ConfigError, match="diffaugment"):
            cls.Config(diffaugment="zoom")
        with pytest.raises(ConfigError, match="ema"):
            cls.Config(ema=1.0)


def test_off_is_the_identity():
    x = _images()
    assert diff_augment(x, ()) is x


def test_translation_shifts_every_channel_of_a_sample_alike():
    torch.manual_seed(0)
    x = _images(n=8)
    y = diff_augment(x, ("translation",))
    # Channel 1 is 2 x channel 0 before, so it must be after (zeros shifted in alike).
    torch.testing.assert_close(y[:, 1], 2 * y[:, 0], rtol=0, atol=0)
    shift = int(16 * 0.125 + 0.5)
    for i in range(len(x)):
        matches = []
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                expect = torch.zeros_like(x[i])
                src = x[i][:, max(dy, 0) : 16 + min(dy, 0), max(dx, 0) : 16 + min(dx, 0)]
                expect[:, max(-dy, 0) : 16 + min(-dy, 0), max(-dx, 0) : 16 + min(-dx, 0)] = src
                matches.append(torch.equal(expect, y[i]))
        assert sum(matches) == 1, f"sample {i} is not one integer shift of the input"


def test_cutout_zeroes_one_square_in_every_channel():
    torch.manual_seed(1)
    x = _images(n=8)
    y = diff_augment(x, ("cutout",))
    for i in range(len(x)):
        cut = y[i] == 0
        assert torch.equal(cut[0], cut[1])  # the same square in image and mask
        rows, cols = torch.nonzero(cut[0], as_tuple=True)
        assert 0 < len(rows) <= 8 * 8  # half the side, clipped at the border
        # A filled rectangle: its area is its bounding box's.
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert torch.equal(y[i][~cut], x[i][~cut])  # the rest untouched


def test_color_changes_only_intensity_channels_and_moves_them_together():
    torch.manual_seed(2)
    image = torch.rand(6, 1, 8, 8) * 2 - 1
    mask = (torch.rand(6, 1, 8, 8) > 0.5).float() * 2 - 1
    x = torch.cat([image, mask, image], 1)  # pix2pix-like: condition, mask, output
    y = diff_augment(x, ("color",), intensity_channels=(0, 2))
    assert torch.equal(y[:, 1], x[:, 1])  # masks are labels, never recoloured
    torch.testing.assert_close(y[:, 0], y[:, 2])  # one draw per sample for both images
    assert not torch.allclose(y[:, 0], x[:, 0])
    # Per sample an affine map of the intensities: brightness then contrast.
    for i in range(len(x)):
        a, b = np.polyfit(x[i, 0].flatten().numpy(), y[i, 0].flatten().numpy(), 1)
        assert 0.5 - 1e-4 <= a <= 1.5 + 1e-4


def test_gradients_flow_to_the_input():
    x = _images(n=3).requires_grad_(True)
    torch.manual_seed(3)
    y = diff_augment(x, POLICIES)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.2  # most pixels survive shift and cutout


def test_same_seed_same_augmentation_and_shards_draw_the_whole_batch():
    x = _images(n=4)
    torch.manual_seed(4)
    whole = diff_augment(x, POLICIES)
    torch.manual_seed(4)
    assert torch.equal(diff_augment(x, POLICIES), whole)
    # Under torchrun process 1 of 2 holds the second half, and must draw what one process does.
    torch.manual_seed(4)
    half = diff_augment(x[2:], POLICIES, shard=BatchShard(index=1, count=2))
    assert torch.equal(half, whole[2:])


def _spy(monkeypatch, module_name: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Record (shape, intensity channels) of every diff_augment call a model makes."""
    import importlib

    mod = importlib.import_module(module_name)
    calls = []
    real = mod.diff_augment

    def spy(x, policy, *, intensity_channels=(0,), shard=None):
        calls.append((tuple(x.shape), tuple(intensity_channels), tuple(policy)))
        return real(x, policy, intensity_channels=intensity_channels, shard=shard)

    monkeypatch.setattr(mod, "diff_augment", spy)
    return calls


def test_dcgan_discriminator_sees_augmented_rois(monkeypatch):
    torch.manual_seed(0)
    model = DCGAN(DCGANConfig(**TINY_GENERATORS["dcgan"], diffaugment="translation,cutout", n_classes=1))
    seen = []
    forward = model.netD.forward
    monkeypatch.setattr(model.netD, "forward", lambda x, c=None: (seen.append(x.detach()), forward(x, c))[1])
    real = torch.rand(4, 2, 32, 32) * 2 - 1
    model.training_step({"real": real, "cls": torch.ones(4, dtype=torch.long)})
    assert len(seen) == 3  # D step: real, fake; G step: fake
    assert not torch.equal(seen[0], real)
    assert (seen[0] == 0).any()  # cutout's square (the ROIs themselves hold no exact 0)

    torch.manual_seed(0)
    plain = DCGAN(DCGANConfig(**TINY_GENERATORS["dcgan"], diffaugment="", n_classes=1))
    seen.clear()
    forward = plain.netD.forward
    monkeypatch.setattr(plain.netD, "forward", lambda x, c=None: (seen.append(x.detach()), forward(x, c))[1])
    plain.training_step({"real": real, "cls": torch.ones(4, dtype=torch.long)})
    assert torch.equal(seen[0], real)  # off: D sees the ROIs as they are


def test_pix2pix_augments_condition_and_output_as_one_image(monkeypatch):
    from gan.models.pix2pix import Pix2Pix, Pix2PixConfig

    calls = _spy(monkeypatch, "gan.models.pix2pix")
    cfg = Pix2PixConfig(**TINY_GENERATORS["pix2pix"], size=32, n_classes=2, diffaugment="color,cutout")
    model = Pix2Pix(cfg)
    batch = {
        "input": torch.rand(2, 3, 32, 32),
        "target": torch.rand(2, 1, 32, 32),
        "region": torch.zeros(2, 1, 32, 32),
    }
    model.training_step(batch)
    # D step (fake, real pairs) and G step: each a single call on the 4-channel pair, with
    # the erased slice (0) and the output (3) as intensities, the masks (1, 2) not.
    assert calls == [((2, 4, 32, 32), (0, 3), ("color", "cutout"))] * 3


def test_cyclegan_augments_what_both_discriminators_see(monkeypatch):
    from gan.models.cyclegan import CycleGAN, CycleGANConfig

    calls = _spy(monkeypatch, "gan.models.cyclegan")
    model = CycleGAN(CycleGANConfig(**TINY_GENERATORS["cyclegan"], diffaugment="translation"))
    model.training_step({"A": torch.rand(1, 1, 32, 32), "B": torch.rand(1, 1, 32, 32)})
    # G step: d_b(fake B), d_a(fake A); D step: real and pooled fake for each.
    assert len(calls) == 6 and {c[0] for c in calls} == {(1, 1, 32, 32)}
