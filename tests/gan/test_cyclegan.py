"""CycleGAN: networks, one training step, image pool, translation, lesion preservation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.draw import disk as draw_disk

from augment.config_types import build_dataclass
from augment.errors import ConfigError, DataError
from augment.phantoms.render import phantom_samples
from augment.sample import Sample, boxes_from_mask
from gan.base import GanModule
from gan.evaluate.preservation import lesion_preservation, summarise_preservation
from gan.models.cyclegan import CycleGAN, CycleGANConfig, ImagePool
from gan.networks.resnet import ResnetBlock, ResnetGenerator
from gan.train.trainer import train_step
from tests.conftest import TINY_GENERATORS

SIZE = 32
TINY = {**TINY_GENERATORS["cyclegan"], "pool_size": 3}  # a pool that fills within two steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def domains() -> tuple[list[Sample], list[Sample]]:
    # Same anatomy, two acquisitions; CycleGAN sees them unpaired.
    a = list(phantom_samples("head-ich", 6, size=SIZE, domain="A", seed=1))
    b = list(phantom_samples("head-ich", 6, size=SIZE, domain="B", seed=1))
    return a, b


def _model(**changes) -> CycleGAN:
    torch.manual_seed(0)
    return CycleGAN(CycleGANConfig(**{**TINY, **changes}))


def _trained(domains, steps: int = 2, **changes) -> CycleGAN:
    model = _model(**changes)
    model.prepare(*domains)
    for step in range(steps):
        torch.manual_seed(100 + step)
        train_step(model, model.make_batch(np.random.default_rng(step), 2))
    return model


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- networks


def test_resnet_generator_shapes_and_range():
    net = ResnetGenerator(1, 1, ngf=8, n_blocks=2)
    x = torch.randn(2, 1, 64, 64)
    y = net(x)
    assert y.shape == (2, 1, 64, 64)
    assert y.abs().max() <= 1.0  # tanh output
    assert sum(isinstance(m, ResnetBlock) for m in net.modules()) == 2
    # The residual blocks work at 1/4 resolution with 4 * ngf channels.
    trunk = next(m for m in net.modules() if isinstance(m, ResnetBlock))
    seen = []
    trunk.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    net(x)
    assert seen == [(2, 32, 16, 16)]


def test_resnet_generator_paper_size():
    # junyanz's ResnetGenerator(3, 3, ngf=64, n_blocks=9) prints 11.378 M parameters
    # (11,378,179); with 1 input and 1 output channel the two 7x7 end convolutions lose
    # 2 * 64 * 49 weights each and the last one 2 biases: 11,365,633.
    assert sum(p.numel() for p in ResnetGenerator(3, 3).parameters()) == 11_378_179
    assert sum(p.numel() for p in ResnetGenerator(1, 1).parameters()) == 11_365_633
    cfg = CycleGANConfig()
    assert (cfg.ngf, cfg.n_blocks, cfg.lambda_cycle, cfg.lambda_identity, cfg.pool_size) == (
        64,
        9,
        10.0,
        0.5,
        50,
    )


def test_config_validation():
    with pytest.raises(ConfigError, match="direction"):
        CycleGANConfig(direction="AC")
    with pytest.raises(ConfigError, match="n_blocks"):
        CycleGANConfig(n_blocks=-1)
    cfg = build_dataclass(CycleGANConfig, {"window": [50, 100], "n_blocks": 6})
    assert cfg.window == (50, 100) and cfg.n_blocks == 6


# ----------------------------------------------------------------------------- data


def test_prepare_needs_both_domains(domains):
    model = _model()
    with pytest.raises(DataError, match="domain B"):
        model.prepare(domains[0], None)
    with pytest.raises(DataError, match="domain B"):
        model.prepare(domains[0], [])
    odd = [s.replace(image=s.image[:30, :30], mask=s.mask[:30, :30]) for s in domains[1]]
    with pytest.raises(DataError, match="multiples of 4"):
        model.prepare(domains[0], odd)
    mixed = [*domains[0][:2], odd[0]]
    with pytest.raises(DataError, match="one size"):
        model.prepare(mixed, domains[1])


def test_make_batch_draws_only_from_rng(domains):
    model = _model()
    model.prepare(*domains)
    b1 = model.make_batch(np.random.default_rng(7), 4)
    b2 = model.make_batch(np.random.default_rng(7), 4)
    assert b1["A"].shape == b1["B"].shape == (4, 1, SIZE, SIZE)
    assert torch.equal(b1["A"], b2["A"]) and torch.equal(b1["B"], b2["B"])
    assert b1["A"].min() >= -1 and b1["A"].max() <= 1


# ----------------------------------------------------------------------------- training


def test_training_step_losses_and_updates(domains):
    model = _model()
    model.prepare(*domains)
    before = {name: _params(getattr(model, name)) for name in ("g_ab", "g_ba", "d_a", "d_b")}
    losses = train_step(model, model.make_batch(np.random.default_rng(0), 2))
    for key in ("G", "G_AB", "G_BA", "cycle_A", "cycle_B", "idt_AB", "idt_BA", "D_A", "D_B"):
        assert torch.isfinite(losses[key]), key
        assert not losses[key].requires_grad
    assert losses["cycle_A"] > 0 and losses["idt_AB"] > 0
    parts = ("G_AB", "G_BA", "cycle_A", "cycle_B", "idt_AB", "idt_BA")
    assert torch.allclose(losses["G"], sum(losses[k] for k in parts))
    for name, old in before.items():
        assert not _same(old, _params(getattr(model, name))), f"{name} did not change"
    assert model.steps_done == 1


def test_each_optimizer_updates_only_its_networks(domains):
    model = _model()
    model.prepare(*domains)
    opt_g, opt_d = model.optimizers["G"], model.optimizers["D"]
    d_nets, g_nets = (model.d_a, model.d_b), (model.g_ab, model.g_ba)
    d_start = [_params(n) for n in d_nets]
    seen = {}

    def before_g(*_):
        seen["d_frozen"] = all(not p.requires_grad for n in d_nets for p in n.parameters())
        seen["d_no_grad"] = all(p.grad is None for n in d_nets for p in n.parameters())

    def after_g(*_):
        seen["d_unchanged_by_g"] = all(
            _same(o, _params(n)) for o, n in zip(d_start, d_nets, strict=True)
        )

    def before_d(*_):
        seen["g_before_d"] = [_params(n) for n in g_nets]

    opt_g.register_step_pre_hook(before_g)
    opt_g.register_step_post_hook(after_g)
    opt_d.register_step_pre_hook(before_d)
    train_step(model, model.make_batch(np.random.default_rng(0), 2))
    assert seen["d_frozen"] and seen["d_no_grad"] and seen["d_unchanged_by_g"]
    assert all(_same(o, _params(n)) for o, n in zip(seen["g_before_d"], g_nets, strict=True))
    assert all(p.requires_grad for n in d_nets for p in n.parameters())  # unfrozen again


def test_identity_loss_off(domains):
    model = _trained(domains, steps=1, lambda_identity=0.0)
    losses = train_step(model, model.make_batch(np.random.default_rng(1), 2))
    assert float(losses["idt_AB"]) == 0.0 and float(losses["idt_BA"]) == 0.0


def test_linear_lr_decay(domains):
    model = _model(n_steps_constant=1, n_steps_decay=2)
    model.prepare(*domains)
    rates = [
        train_step(model, model.make_batch(np.random.default_rng(s), 1))["lr"] for s in range(4)
    ]
    # junyanz's rule 1 - max(0, s + 1 - n_const) / (n_decay + 1) for s = 0..3 (hand
    # computed; clipped at 0): 1, 2/3, 1/3, 0, times lr 2e-4.
    assert rates == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 / 3, 0.0])
    assert model.optimizers["G"].param_groups[0]["lr"] == pytest.approx(0.0)


def test_image_pool_history():
    torch.manual_seed(0)
    pool = ImagePool(2)
    first = torch.arange(2.0).reshape(2, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool) == 2  # filling: returned as is
    stored = set(pool.images.flatten().tolist())
    returned_old = 0
    for k in range(20):
        new = torch.full((1, 1, 1, 1), 10.0 + k)
        out = float(pool.query(new))
        assert len(pool) == 2
        assert out == 10.0 + k or out in stored  # either the new fake or a stored one
        returned_old += out in stored
        stored = set(pool.images.flatten().tolist())
    assert 0 < returned_old < 20  # p = 1/2 each time: both branches happen
    assert torch.equal(ImagePool(0).query(first), first)


def test_checkpoint_keeps_pool_and_resumes_exactly(domains, tmp_path):
    model = _trained(domains, steps=2)  # batch 2 x 2 steps > pool_size 3: pools full
    assert len(model.pool_a) == len(model.pool_b) == 3
    model.save(tmp_path / "c.pt", step=2)
    loaded = GanModule.load(tmp_path / "c.pt")
    assert isinstance(loaded, CycleGAN) and loaded.steps_done == 2
    assert torch.equal(loaded.pool_a.images, model.pool_a.images)
    assert torch.equal(loaded.pool_b.images, model.pool_b.images)
    # One more step on both gives identical weights: pool, optimizer and step all restored.
    loaded.prepare(*domains)
    for m in (model, loaded):
        torch.manual_seed(123)
        train_step(m, m.make_batch(np.random.default_rng(9), 2))
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


# ----------------------------------------------------------------------------- translation


def test_translate_keeps_labels_and_out_of_window_hu(domains):
    model = _trained(domains, steps=1)
    hosts = domains[0]
    out = model.translate(hosts, "AB")
    assert len(out) == len(hosts)
    lo, hi = model.window.low, model.window.high
    for s, t in zip(hosts, out, strict=True):
        assert t.id == s.id and t.patient_id == s.patient_id and t.meta["host_id"] == s.id
        assert t.meta["direction"] == "AB" and t.meta["synthetic"] is True
        assert np.array_equal(t.mask, s.mask)
        assert np.array_equal(t.boxes, s.boxes) and np.array_equal(t.labels, s.labels)
        outside = (s.image < lo) | (s.image > hi)
        assert outside.any() and np.array_equal(t.image[outside], s.image[outside])
        assert not np.array_equal(t.image[~outside], s.image[~outside])
        assert t.image[~outside].min() >= lo - 1e-3 and t.image[~outside].max() <= hi + 1e-3
    # Sides that are not multiples of 4 are padded and cropped back.
    odd = hosts[0].replace(image=hosts[0].image[:30, :29], mask=hosts[0].mask[:30, :29])
    assert model.translate([odd], "BA")[0].image.shape == (30, 29)
    with pytest.raises(ConfigError):
        model.translate(hosts, "XY")


def test_synthesize_draws_hosts_and_is_deterministic(domains, tmp_path):
    model = _trained(domains, steps=1, direction="BA")
    hosts = domains[1]
    out = model.sample(8, seed=5, conditions=hosts)
    assert [s.id for s in out] == [f"syn_{k:05d}" for k in range(8)]
    host_ids = [s.meta["host_id"] for s in out]
    assert len(set(host_ids[:6])) == 6  # without replacement while possible
    by_id = {h.id: h for h in hosts}
    for s in out:
        host = by_id[s.meta["host_id"]]
        assert s.patient_id == host.patient_id and s.meta["direction"] == "BA"
        assert np.array_equal(s.mask, host.mask)
        boxes, labels = boxes_from_mask(s.mask)
        assert np.array_equal(s.boxes, boxes) and np.array_equal(s.labels, labels)
    again = model.sample(8, seed=5, conditions=hosts)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, again, strict=True))
    assert [s.meta["host_id"] for s in model.sample(8, seed=6, conditions=hosts)] != host_ids
    model.save(tmp_path / "c.pt")
    loaded = GanModule.load(tmp_path / "c.pt")
    reloaded = loaded.sample(8, seed=5, conditions=hosts)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, reloaded, strict=True))


def test_translation_preservation_is_measured(domains):
    model = _trained(domains, steps=1)
    hosts = [s for s in domains[0] if s.has_lesion]
    assert hosts, "phantom fixture should contain lesion slices"
    results = [
        lesion_preservation(h, t) for h, t in zip(hosts, model.translate(hosts), strict=True)
    ]
    summary = summarise_preservation(results)
    assert summary["n_with_lesion"] == len(hosts) and summary["all_masks_unchanged"]
    assert np.isfinite(summary["abs_mean_hu_diff"]["mean"])


# ----------------------------------------------------------------------------- preservation


def _lesion_slice(lesion_hu: float = 70.0) -> Sample:
    # 30 HU brain-like field with a 70 HU disc of radius 5: blood in range 50-90.
    image = np.full((32, 32), 30.0, np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[draw_disk((16, 16), 5)] = 1
    image[mask > 0] = lesion_hu
    return Sample(image=image, mask=mask, meta={"id": "x"})


def test_preservation_identical():
    s = _lesion_slice()
    r = lesion_preservation(s, s)
    assert r["mean_hu_diff"] == 0.0 and r["dice_hu"] == 1.0 and r["mask_unchanged"]
    assert r["contrast_before"] == r["contrast_after"] == pytest.approx(40.0)  # 70 - 30


def test_preservation_erased_and_shifted():
    before = _lesion_slice()
    erased = dataclasses.replace(before, image=np.full((32, 32), 30.0, np.float32))
    r = lesion_preservation(before, erased)
    assert r["contrast_after"] == pytest.approx(0.0) and r["dice_hu"] == 0.0
    assert r["mean_hu_diff"] == pytest.approx(-40.0)
    shifted = lesion_preservation(before, _lesion_slice(80.0))
    assert shifted["mean_hu_diff"] == pytest.approx(10.0) and shifted["dice_hu"] == 1.0
    assert shifted["contrast_diff"] == pytest.approx(10.0)
    # Out of the blood range after translation (e.g. 100 HU): intensity-defined lesion lost.
    assert lesion_preservation(before, _lesion_slice(100.0))["dice_hu"] == 0.0


def test_preservation_summary():
    s = _lesion_slice()
    erased = dataclasses.replace(s, image=np.full((32, 32), 30.0, np.float32))
    empty = Sample(image=np.zeros((32, 32), np.float32), mask=np.zeros((32, 32), np.uint8))
    results = [
        lesion_preservation(s, s),
        lesion_preservation(s, erased),
        lesion_preservation(empty, empty),
    ]
    assert np.isnan(results[2]["mean_hu_before"]) and np.isnan(results[2]["dice_hu"])
    summary = summarise_preservation(results)
    assert summary["n_slices"] == 3 and summary["n_with_lesion"] == 2
    # Contrast 40 kept on one slice, 0 on the other: mean after 20 / mean before 40.
    assert summary["contrast_retained"] == pytest.approx(0.5)
    assert summary["dice_hu"]["mean"] == pytest.approx(0.5) and summary["dice_hu"]["n"] == 2
    assert summary["abs_mean_hu_diff"]["mean"] == pytest.approx(20.0)  # |0| and |-40|
    with pytest.raises(DataError, match="shape"):
        lesion_preservation(s, Sample(image=np.zeros((16, 16)), mask=np.zeros((16, 16))))


def test_contrast_retained_needs_contrast_and_hu_range_follows_anatomy():
    from gan.evaluate.preservation import MIN_CONTRAST_HU, lesion_hu_range

    faint = _lesion_slice(30.0 + MIN_CONTRAST_HU / 2)  # 2.5 HU above its surroundings
    bright = dataclasses.replace(faint, image=_lesion_slice(70.0).image)
    # Before: contrast 2.5 HU; after: 40 HU. A ratio of 16 would be noise, not "kept 16x".
    summary = summarise_preservation([lesion_preservation(faint, bright)])
    assert np.isnan(summary["contrast_retained"])
    kept = summarise_preservation([lesion_preservation(bright, faint)])
    assert kept["contrast_retained"] == pytest.approx(2.5 / 40.0)
    assert lesion_hu_range("liver") == (40.0, 80.0) and lesion_hu_range("head-ich") == (50.0, 90.0)
    assert lesion_hu_range(None) == (50.0, 90.0)
