"""DCGAN: networks, training ROIs, one training step, paste helpers, synthesis, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import disk as draw_disk
from torch import nn

from augment.config_types import build_dataclass
from augment.errors import CheckpointError, ConfigError, DataError
from augment.phantoms.render import phantom_samples
from augment.sample import Sample, boxes_from_mask
from augment.window import Window
from gan.base import GanModule
from gan.models.dcgan import DCGAN, DCGANConfig, lesion_rois
from gan.models.paste import clean_mask, feather_alpha, feather_reach, find_placement, paste
from gan.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from tests.conftest import TINY_GENERATORS

ROI = 32
TINY = {**TINY_GENERATORS["dcgan"], "roi_size": ROI}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(size: int = 64, lesions: tuple[tuple[int, int, int, int], ...] = (), pid: str = "p0"):
    """A round head: air, a 1000 HU skull ring, 30 HU brain; lesions (row, col, radius, class) at 70 HU."""
    image = np.full((size, size), -1000.0, np.float32)
    c = size / 2 - 0.5
    image[draw_disk((c, c), size * 0.45, shape=image.shape)] = 1000.0
    image[draw_disk((c, c), size * 0.40, shape=image.shape)] = 30.0
    mask = np.zeros((size, size), np.uint8)
    for r, col, radius, cls in lesions:
        rr, cc = draw_disk((r, col), radius, shape=image.shape)
        image[rr, cc] = 70.0
        mask[rr, cc] = cls
    return Sample(image, mask, meta={"id": f"{pid}_s0", "patient_id": pid})


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _shapes(net: nn.Module, kinds: tuple[type, ...], *inputs) -> list[tuple[int, ...]]:
    """Output shapes (without batch) of every submodule of the given kinds, in call order."""
    seen: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:])))
        for m in net.modules()
        if isinstance(m, kinds)
    ]
    with torch.no_grad():
        net(*inputs)
    for h in hooks:
        h.remove()
    return seen


# ----------------------------------------------------------------------------- networks


def test_generator_at_default_config_follows_the_paper_figure():
    torch.manual_seed(0)
    cfg = DCGANConfig()
    g = DCGANGenerator(cfg.nz, cfg.ngf, 2, cfg.roi_size).eval()
    z = torch.randn(2, 100)
    shapes = _shapes(g, (nn.Unflatten, nn.ConvTranspose2d), z)
    # Radford et al. 2016, fig. 1: 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64xC.
    assert shapes == [(1024, 4, 4), (512, 8, 8), (256, 16, 16), (128, 32, 32), (2, 64, 64)]
    out = g(z)
    assert out.abs().max() <= 1  # tanh
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    # Paper init N(0, 0.02): 8.4M weights give a std within 1 % of 0.02.
    assert abs(convs[0].weight.std().item() - 0.02) < 2e-4


def test_roi_32_drops_one_up_block():
    g = DCGANGenerator(100, 64, 2, 32).eval()
    shapes = _shapes(g, (nn.Unflatten, nn.ConvTranspose2d), torch.randn(1, 100))
    assert shapes == [(1024, 4, 4), (512, 8, 8), (256, 16, 16), (2, 32, 32)]


def test_discriminator_mirrors_generator():
    d = DCGANDiscriminator(2, 64, 64).eval()
    shapes = _shapes(d, (nn.Conv2d,), torch.randn(2, 2, 64, 64))
    assert shapes == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (1, 1, 1)]
    layers = list(d.net)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.LeakyReLU)  # no BN first
    assert layers[1].negative_slope == 0.2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3
    assert d(torch.randn(3, 2, 64, 64)).shape == (3,)


def test_spectral_norm_discriminator_has_no_batchnorm_and_unit_spectral_norm():
    torch.manual_seed(0)
    d = DCGANDiscriminator(2, 4, ROI, spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    for _ in range(30):  # power iterations converge in training-mode forwards
        d(torch.randn(2, 2, ROI, ROI))
    w = convs[1].weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


def test_conditional_networks_take_class_inputs():
    g = DCGANGenerator(8, 4, 2, ROI, n_cond=5)
    d = DCGANDiscriminator(2, 4, ROI, n_cond=5)
    assert g.project[0].in_features == 8 + 5
    assert d.net[0].in_channels == 2 + 5
    cond = torch.eye(5)[[0, 3]]
    assert d(g(torch.randn(2, 8), cond), cond).shape == (2,)
    with pytest.raises(ValueError):
        g(torch.randn(2, 8))


# ----------------------------------------------------------------------------- config


def test_config_resolves_classes_from_anatomy_and_validates():
    assert DCGANConfig().n_classes == 5
    assert DCGANConfig(anatomy="liver").n_classes == 1
    assert DCGANConfig(anatomy="liver", n_classes=3).n_classes == 3
    cfg = build_dataclass(DCGANConfig, {"window": [50, 100], "roi_size": 32})
    assert cfg.window == (50, 100)
    for bad in ({"roi_size": 48}, {"anatomy": "lung"}, {"large_lesions": "crop"}, {"nz": 0}):
        with pytest.raises(ConfigError):
            DCGANConfig(**bad)
    with pytest.raises(ConfigError):  # dilation + feather reach does not fit an 8px ROI
        DCGANConfig(roi_size=8)


# ----------------------------------------------------------------------------- ROIs


def test_lesion_rois_crop_each_component_centred_with_its_own_mask():
    host = _head(64, lesions=((24, 24, 3, 1), (40, 42, 2, 4)))
    window = Window(40, 200)
    rois, classes, counts = lesion_rois([host], size=ROI, window=window, margin=6)
    assert rois.shape == (2, 2, ROI, ROI) and rois.dtype == np.float32
    assert classes.tolist() == [1, 4] and counts == {
        "lesions": 2,
        "scaled": 0,
        "skipped": 0,
        "tiny": 0,
    }
    # Lesion 1 spans rows/cols 21..27 (radius 3 disc at 24): ROI top-left = round((21+28-32)/2) = 8.
    np.testing.assert_array_equal(rois[0, 0], window.to_model(host.image[8:40, 8:40]))
    np.testing.assert_array_equal(rois[0, 1] > 0, host.mask[8:40, 8:40] == 1)
    # The second ROI's mask holds only its own lesion, though the first is inside its crop.
    assert (rois[1, 1] > 0).sum() == (host.mask == 4).sum()
    assert set(np.unique(rois[:, 1])) == {-1.0, 1.0}


def test_lesion_rois_shift_inside_the_slice():
    host = _head(64, lesions=((3, 60, 2, 2),))
    rois, _, _ = lesion_rois([host], size=ROI, window=Window(40, 200), margin=6)
    # Centred crop would start at row -14 / col 45; shifted to row 0, col 64 - 32 = 32.
    np.testing.assert_array_equal(rois[0, 1] > 0, host.mask[0:32, 32:64] == 2)


def test_large_lesions_are_scaled_or_skipped():
    # skimage's radius-12 disc: 437 px, rows 21..43, 23 px wide > 32 - 2 * 6 = 20.
    host = _head(64, lesions=((32, 32, 12, 1), (12, 20, 2, 2)))
    rois, classes, counts = lesion_rois([host], size=ROI, window=Window(40, 200), margin=6)
    assert counts == {"lesions": 2, "scaled": 1, "skipped": 0, "tiny": 0} and classes.tolist() == [
        1,
        2,
    ]
    area = (rois[0, 1] > 0).sum()
    # Crop side ceil(23 * 32 / 20) = 37 resized to 32: area shrinks by (32/37)^2 -> ~327 px.
    assert area == pytest.approx(437 * (32 / 37) ** 2, rel=0.05)
    _, classes, counts = lesion_rois(
        [host], size=ROI, window=Window(40, 200), margin=6, large_lesions="skip"
    )
    assert counts["skipped"] == 1 and classes.tolist() == [2]
    # The radius-2 disc has 9 px (skimage): below min_px it is a speck, left out.
    _, classes, counts = lesion_rois([host], size=ROI, window=Window(40, 200), margin=6, min_px=10)
    assert counts["tiny"] == 1 and classes.tolist() == [1]


def test_prepare_records_classes_and_rejects_bad_data():
    model = DCGAN(DCGANConfig(**TINY))
    hosts = [_head(64, ((24, 24, 3, 1), (40, 40, 3, 3))), _head(64, ((30, 30, 2, 3),), pid="p1")]
    model.prepare(hosts)
    assert model.class_counts.tolist() == [1, 0, 2, 0, 0]
    with pytest.raises(DataError, match="no lesions"):
        model.prepare([_head(64)])
    with pytest.raises(DataError, match="n_classes"):
        DCGAN(DCGANConfig(**TINY, anatomy="liver")).prepare(hosts)
    with pytest.raises(ConfigError):
        model.prepare(hosts, hosts)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def phantom() -> list[Sample]:
    # Three patients of the head-ICH phantom at 64 px; lesion and lesion-free slices.
    return list(phantom_samples("head-ich", 24, size=64, seed=1))


@pytest.fixture(scope="module")
def phantom_lesions(phantom) -> list[Sample]:
    return [s for s in phantom if s.has_lesion]


@pytest.fixture(scope="module")
def train_hosts() -> list[Sample]:
    # Hand-made, so the classes (1: one lesion, 2: two) and their frequencies are known.
    return [
        _head(64, ((24, 24, 3, 1), (40, 40, 4, 2)), pid="p0"),
        _head(64, ((30, 36, 5, 2),), pid="p1"),
    ]


def _model(hosts, **changes) -> DCGAN:
    torch.manual_seed(0)
    model = DCGAN(DCGANConfig(**{**TINY, **changes}))
    model.prepare(hosts)
    return model


def test_make_batch_draws_only_from_rng(phantom_lesions):
    model = _model(phantom_lesions)
    a = model.make_batch(np.random.default_rng(5), 6)
    b = model.make_batch(np.random.default_rng(5), 6)
    assert a["real"].shape == (6, 2, ROI, ROI) and a["cls"].shape == (6,)
    assert torch.equal(a["real"], b["real"]) and torch.equal(a["cls"], b["cls"])
    present = {int(k) for s in phantom_lesions for k in np.unique(s.mask) if k}
    assert set(a["cls"].tolist()) <= present
    assert ((a["real"][:, 1] > 0).flatten(1).sum(1) >= model.cfg.min_lesion_px).all()


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_training_step_updates_both_networks(phantom_lesions, spectral_norm):
    model = _model(phantom_lesions, spectral_norm=spectral_norm)
    g0, d0 = _params(model.netG), _params(model.netD)
    losses = model.training_step(model.make_batch(np.random.default_rng(0), 4))
    assert set(losses) == {"loss_d", "loss_g", "loss_g_gan", "hu_match", "d_real", "d_fake"}
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    assert not losses["loss_g"].requires_grad
    assert not _same(g0, _params(model.netG)) and not _same(d0, _params(model.netD))
    assert all(p.requires_grad for p in model.netD.parameters())  # unfrozen afterwards


def test_d_step_leaves_g_and_g_step_leaves_d(phantom_lesions):
    model = _model(phantom_lesions)
    g_start = _params(model.netG)
    seen: dict[str, object] = {}

    def after_d(*_):
        seen["g_after_d"] = _params(model.netG)
        seen["d_after_d"] = _params(model.netD)
        seen["d_grads"] = [p.grad.clone() for p in model.netD.parameters()]

    def before_g(*_):
        # D is frozen for the G step, so its grads are exactly those of the D step.
        seen["d_frozen"] = not any(p.requires_grad for p in model.netD.parameters())
        seen["d_grads_g"] = [p.grad.clone() for p in model.netD.parameters()]

    model.optimizers["D"].register_step_post_hook(after_d)
    model.optimizers["G"].register_step_pre_hook(before_g)
    model.training_step(model.make_batch(np.random.default_rng(1), 4))
    assert _same(g_start, seen["g_after_d"])
    assert seen["d_frozen"]
    assert _same(seen["d_grads"], seen["d_grads_g"])
    assert _same(seen["d_after_d"], _params(model.netD))


def test_training_step_is_reproducible(phantom_lesions):
    def run() -> list[torch.Tensor]:
        model = _model(phantom_lesions)
        for step in range(2):
            torch.manual_seed(100 + step)
            model.training_step(model.make_batch(np.random.default_rng(step), 4))
        return _params(model.netG) + _params(model.netD)

    assert _same(run(), run())


# ----------------------------------------------------------------------------- paste helpers


def _disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[draw_disk(center, radius, shape=shape)] = True
    return out


def test_feather_alpha_is_one_on_the_lesion_and_exactly_zero_beyond_its_reach():
    lesion = _disc((32, 32), (16, 16), 4)
    alpha = feather_alpha(lesion, dilate_px=2, sigma=1.0)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[lesion] == 1).all()
    reach = feather_reach(2, 1.0)
    assert reach == 5  # 2 px dilation + Gaussian radius int(3 * 1.0 + 0.5) = 3
    # Chessboard distance from the lesion: the Gaussian's support is a square.
    dist = ndimage.distance_transform_cdt(~lesion, metric="chessboard")
    assert (alpha[dist > reach] == 0).all()
    # Feathered, not a hard edge: strictly between 0 and 1 around the lesion, high next to it.
    euclid = ndimage.distance_transform_edt(~lesion)
    assert (
        (alpha[(euclid > 0) & (euclid <= 4)] > 0) & (alpha[(euclid > 0) & (euclid <= 4)] < 1)
    ).all()
    assert (alpha[(euclid > 0) & (euclid <= 1)] > 0.8).all()
    np.testing.assert_array_equal(feather_alpha(lesion, 0, 0.0), lesion.astype(np.float32))


def test_clean_mask_keeps_largest_component_with_holes_filled():
    channel = -np.ones((20, 20), np.float32)
    channel[2:10, 2:10] = 1
    channel[5, 5] = -1  # a hole
    channel[15:17, 15:17] = 1  # a smaller blob
    cleaned = clean_mask(channel)
    expected = np.zeros((20, 20), bool)
    expected[2:10, 2:10] = True
    np.testing.assert_array_equal(cleaned, expected)
    assert not clean_mask(-np.ones((5, 5))).any()


def test_find_placement_respects_allowed_and_occupied():
    lesion = _disc((9, 9), (4, 4), 3)
    allowed = _disc((40, 40), (20, 20), 15)
    occupied = _disc((40, 40), (20, 12), 4)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        r, c = find_placement(lesion, allowed, occupied, rng)
        placed = np.zeros_like(allowed)
        placed[r : r + 9, c : c + 9] = lesion
        assert allowed[placed].all() and not occupied[placed].any()
        seen.add((r, c))
    assert len(seen) > 50  # positions spread over the free area
    a = find_placement(lesion, allowed, occupied, np.random.default_rng(3))
    assert a == find_placement(lesion, allowed, occupied, np.random.default_rng(3))


def test_find_placement_finds_the_only_place_or_none():
    lesion = np.ones((3, 3), bool)
    allowed = np.zeros((30, 30), bool)
    allowed[17:20, 5:8] = True
    assert find_placement(lesion, allowed, None, np.random.default_rng(0)) == (17, 5)
    assert find_placement(lesion, allowed, allowed, np.random.default_rng(0)) is None
    assert find_placement(np.ones((40, 3), bool), allowed, None, np.random.default_rng(0)) is None
    # The clear footprint (the blend) must avoid occupied pixels, not only the lesion.
    allowed[:] = True
    occupied = np.zeros_like(allowed)
    occupied[:, 15] = True
    clear = np.ones((5, 5), bool)
    lesion5 = np.zeros((5, 5), bool)
    lesion5[2, 2] = True
    for seed in range(50):
        r, c = find_placement(lesion5, allowed, occupied, np.random.default_rng(seed), clear=clear)
        assert not 11 <= c <= 15


def test_find_placement_anchor_pins_the_lesion_centre():
    # An L-shaped lesion, pixels (0..3, 0) and (3, 1): centroid (1.8, 0.2), nearest lesion
    # pixel (2, 0).
    lesion = np.zeros((4, 3), bool)
    lesion[:, 0] = True
    lesion[3, 1] = True
    allowed = np.ones((20, 20), bool)
    anchor = np.zeros_like(allowed)
    anchor[10, 7] = True  # the only place the centre may go
    for seed in range(5):
        assert find_placement(lesion, allowed, None, np.random.default_rng(seed), anchor=anchor) == (8, 7)
    anchor[:] = False
    assert find_placement(lesion, allowed, None, np.random.default_rng(0), anchor=anchor) is None


def test_paste_blends_inside_keeps_host_outside_and_labels_the_lesion():
    host = _head(64, lesions=((20, 20, 3, 2),))
    lesion = _disc((16, 16), (8, 8), 3)
    alpha = feather_alpha(lesion, 2, 1.0)
    roi_hu = np.full((16, 16), 80.0, np.float32)
    out = paste(host, roi_hu, lesion, 4, (30, 28), alpha)
    window = (slice(30, 46), slice(28, 44))
    blended = np.zeros(host.image.shape, bool)
    blended[window] = alpha > 0
    np.testing.assert_array_equal(out.image[~blended], host.image[~blended])  # bit for bit
    region_out = out.image[window]
    assert (region_out[lesion] == 80).all()
    between = (alpha > 0) & (alpha < 1)
    assert ((region_out[between] > 30) & (region_out[between] < 80)).all()
    # Labels: the host lesion stays, the new one is class 4 with the pasted mask's box.
    assert (out.mask[window][lesion] == 4).all() and (out.mask == 2).sum() == (host.mask == 2).sum()
    rows, cols = np.nonzero(lesion)
    box = [28 + cols.min(), 30 + rows.min(), 28 + cols.max() + 1, 30 + rows.max() + 1]
    assert out.boxes[out.labels == 4].tolist() == [box]
    np.testing.assert_array_equal(out.boxes, boxes_from_mask(out.mask)[0])
    assert host.mask.max() == 2  # host untouched
    with pytest.raises(ValueError, match="overlaps"):
        paste(host, roi_hu, lesion, 4, (12, 12), alpha)
    with pytest.raises(ValueError, match="leaves"):
        paste(host, roi_hu, lesion, 4, (60, 0), alpha)


# ----------------------------------------------------------------------------- synthesis

# Disc radius per class that the fitted generator draws (a stand-in for a trained GAN).
RADII = {1: 3, 2: 5}


def _fit_discs(model: DCGAN, steps: int = 300, classes: tuple[int, ...] = (1, 2)) -> DCGAN:
    """Regress G so every z gives a centred 70 HU disc of radius RADII[class] in 30 HU.

    Real weights, so synthesis, save and load run on the actual network; plain regression
    makes it quick and exact where GAN training would need thousands of steps.
    """
    size, window = model.cfg.roi_size, model.window
    targets = {}
    for cls, radius in RADII.items():
        disc = _disc((size, size), (size / 2 - 0.5, size / 2 - 0.5), radius)
        image = window.to_model(np.where(disc, 70.0, 30.0))
        targets[cls] = torch.from_numpy(np.stack([image, np.where(disc, 1.0, -1.0)])).float()
    # Train mode: batch statistics keep the tiny net's activations alive (in eval mode the
    # init-time running stats starve it); the running stats then follow the fitted net.
    model.netG.train()
    opt = torch.optim.Adam(model.netG.parameters(), lr=1e-2)
    classes = torch.tensor(list(classes) * (8 // len(classes)))
    goal = torch.stack([targets[int(c)] for c in classes])
    for _ in range(steps):
        out = model.netG(torch.randn(len(classes), model.cfg.nz), model._condition(classes))
        loss = torch.nn.functional.mse_loss(out, goal)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.generator_net("netG").load_state_dict(model.netG.state_dict())  # sampling runs the EMA copy
    return model


@pytest.fixture(scope="module")
def fitted(train_hosts) -> DCGAN:
    return _fit_discs(_model(train_hosts))


@pytest.fixture(scope="module")
def hosts(phantom) -> list[Sample]:
    # Two lesion-free phantom slices and one with lesions that must stay untouched.
    free = [s for s in phantom if not s.has_lesion]
    return [free[0], free[-1], next(s for s in phantom if s.mask.sum() > 20)]


def test_synthesize_pastes_labelled_lesions_and_leaves_the_rest_of_the_host(fitted, hosts):
    from augment.anatomy import allowed_region

    samples = fitted.sample(8, seed=0, conditions=hosts)
    by_id = {h.id: h for h in hosts}
    reach = feather_reach(fitted.cfg.dilate_px, fitted.cfg.feather_sigma)
    assert {s.meta["lesion_class"] for s in samples} == {1, 2}  # drawn with frequencies 1:2
    for i, s in enumerate(samples):
        host = by_id[s.meta["host_id"]]
        assert s.meta["id"] == f"syn_{i:05d}" and s.patient_id == host.patient_id
        assert s.meta["synthetic"] and s.meta["generator"] == "dcgan" and s.meta["seed"] == 0
        cls = s.meta["lesion_class"]
        new = s.mask != host.mask
        assert (host.mask[new] == 0).all() and (s.mask[new] == cls).all()
        assert (s.mask[~new] == host.mask[~new]).all()  # host lesions kept
        assert abs(new.sum() - np.pi * RADII[cls] ** 2) < 0.3 * np.pi * RADII[cls] ** 2
        assert allowed_region(host.image, "head-ich", spacing=host.meta.get("spacing"))[new].all()
        # Blood-like inside the pasted mask (the fitted ROI is 70 HU; the host is 30 HU).
        assert abs(s.image[new].mean() - 70) < 10
        # Beyond the blend's reach the host's HU are kept bit for bit.
        far = ndimage.distance_transform_cdt(~new, metric="chessboard") > reach
        np.testing.assert_array_equal(s.image[far], host.image[far])
        # The label: the pasted mask's box is recorded and is one of the sample's boxes.
        rows, cols = np.nonzero(new)
        box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert s.meta["pasted_box"] == box
        assert box in s.boxes[s.labels == cls].tolist()
        assert len(s.boxes) == len(host.boxes) + 1


def test_meta_regenerates_the_lesion(fitted, hosts):
    s = fitted.sample(1, seed=7, conditions=hosts)[0]
    host = {h.id: h for h in hosts}[s.meta["host_id"]]
    _, channel = fitted.generate_roi(s.meta["latent_seed"], s.meta["lesion_class"])
    r, c = s.meta["position"]
    placed = np.zeros(host.mask.shape, bool)
    placed[r : r + ROI, c : c + ROI] = clean_mask(channel)
    np.testing.assert_array_equal(placed, s.mask != host.mask)


def test_synthesis_is_deterministic_per_seed(fitted, hosts):
    a = fitted.sample(4, seed=3, conditions=hosts)
    b = fitted.sample(4, seed=3, conditions=hosts)
    c = fitted.sample(4, seed=4, conditions=hosts)
    for x, y in zip(a, b, strict=True):
        assert x.image.tobytes() == y.image.tobytes() and x.mask.tobytes() == y.mask.tobytes()
        assert x.meta == y.meta
    assert any(x.image.tobytes() != z.image.tobytes() for x, z in zip(a, c, strict=True))


def test_save_load_round_trip_gives_identical_synthesis(fitted, hosts, tmp_path):
    path = tmp_path / "dcgan.pt"
    fitted.save(path, step=12)
    loaded = GanModule.load(path)
    assert isinstance(loaded, DCGAN) and loaded.cfg == fitted.cfg
    assert torch.equal(loaded.class_counts, fitted.class_counts)
    a = fitted.sample(3, seed=11, conditions=hosts)
    b = loaded.sample(3, seed=11, conditions=hosts)
    for x, y in zip(a, b, strict=True):
        assert x.image.tobytes() == y.image.tobytes() and x.mask.tobytes() == y.mask.tobytes()
        assert x.meta == y.meta


def test_synthesis_errors(fitted, train_hosts):
    air = Sample(np.full((64, 64), -1000.0, np.float32), np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match="no lesion placed"):
        fitted.synthesize(1, rng=np.random.default_rng(0), hosts=[air])
    with pytest.raises(ConfigError):
        fitted.synthesize(1, rng=np.random.default_rng(0), hosts=[])
    unprepared = DCGAN(DCGANConfig(**TINY))
    with pytest.raises(CheckpointError, match="never prepared"):
        unprepared.synthesize(1, rng=np.random.default_rng(0), hosts=train_hosts)


def test_unconditional_model_pastes_the_only_class(train_hosts, hosts):
    liver_like = [_head(64, ((24, 24, 3, 1),)), _head(64, ((36, 30, 5, 1),), pid="p1")]
    model = _fit_discs(_model(liver_like, n_classes=1), classes=(1,))
    assert model.netG.n_cond == 0 and model.class_counts.tolist() == [2]
    samples = model.sample(2, seed=0, conditions=hosts)
    assert [s.meta["lesion_class"] for s in samples] == [1, 1]
