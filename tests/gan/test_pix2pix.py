"""Mask-conditioned pix2pix: config, conditioning, mask bank, one training step,
labelled synthesis, reconstruction, determinism and checkpoints (64 px, tiny widths)."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from augment.anatomy import SUBTYPE_REGION, allowed_region, lesion_regions
from augment.config_types import build_dataclass
from augment.errors import CheckpointError, ConfigError, DataError
from augment.phantoms.render import phantom_samples
from augment.sample import Sample, boxes_from_mask
from augment.window import Window
from gan.base import GanModule, get_generator
from gan.models.pix2pix import Pix2Pix, Pix2PixConfig
from gan.models.pix2pix_masks import (
    build_bank,
    condition,
    dilate,
    erase_region,
    fill_hu,
    place_lesions,
    transform_mask,
)
from gan.train.trainer import train_step

SIZE = 64
TINY = {"size": SIZE, "ngf": 4, "ndf": 4}
WINDOW = Window(40.0, 200.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> list[Sample]:
    samples = list(phantom_samples("head-ich", 24, size=SIZE, seed=0))
    assert sum(s.has_lesion for s in samples) >= 5  # the phantom's first patients have ICH
    return samples


def new_model(**changes) -> Pix2Pix:
    torch.manual_seed(0)
    return Pix2Pix(Pix2PixConfig(**{**TINY, **changes}))


def train(model: Pix2Pix, steps: int, batch_size: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    losses = {}
    for _ in range(steps):
        losses = train_step(model, model.make_batch(rng, batch_size))
    return losses


@pytest.fixture(scope="module")
def model(data) -> Pix2Pix:
    m = new_model()
    m.prepare(data)
    train(m, 3)
    return m


def disc_sample(center=(16, 16), radius=3, cls=1, size=32) -> Sample:
    """A 70 HU disc (class ``cls``) in a 30 HU field inside a 1000 HU skull ring."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    image = np.full((size, size), -1000.0, np.float32)
    image[r < size * 0.48] = 1000.0
    image[r < size * 0.40] = 30.0
    lesion = np.hypot(yy - center[0], xx - center[1]) <= radius
    image[lesion] = 70.0
    return Sample(image, lesion.astype(np.uint8) * cls, meta={"id": "disc", "patient_id": "p"})


# ---------------------------------------------------------------------------- config


def test_config_derives_a_1x1_bottleneck_and_validates():
    assert Pix2PixConfig().downs == 8  # 256 px, the paper's U-Net-256
    assert Pix2PixConfig(size=64).downs == 6
    assert Pix2PixConfig(size=128, num_downs=5).downs == 5
    for bad in (
        {"size": 96},  # log2 -> 6, 96 is not a multiple of 64
        {"size": 16},  # fewer than 5 levels
        {"size": 64, "num_downs": 7},
        {"norm": "layer"},
        {"lesions_range": (0, 2)},
        {"scale_range": (1.3, 0.7)},
        {"window": (40.0, 0.0)},
        {"n_classes": 0},
    ):
        with pytest.raises(ConfigError):
            Pix2PixConfig(**bad)
    with pytest.raises(ConfigError, match="unknown option"):
        build_dataclass(Pix2PixConfig, {"lambda": 3})
    assert get_generator("pix2pix") is Pix2Pix


def test_default_networks_follow_the_paper():
    with torch.device("meta"):  # shapes without allocating 60 M parameters
        m = Pix2Pix()
        x = torch.empty(1, 1 + 5, 256, 256)  # erased slice + 5 ICH one-hot channels
        y = m.net_g(x)
        assert y.shape == (1, 1, 256, 256)
        # D sees (input, output) concatenated; 30x30 patch logits at 256 px.
        assert m.net_d(torch.cat([x, y], 1)).shape == (1, 1, 30, 30)
    assert m.net_g.num_downs == 8
    assert sum(isinstance(k, nn.Dropout) for k in m.net_g.modules()) == 3
    for opt in m.optimizers.values():
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)


def test_weights_start_normal_with_std_002():
    m = new_model(ngf=16, ndf=16)
    w = torch.cat([k.weight.detach().flatten() for k in m.modules() if isinstance(k, nn.Conv2d)])
    assert abs(float(w.mean())) < 2e-3 and abs(float(w.std()) - 0.02) < 2e-3


# ------------------------------------------------------------------------ the masks


def test_erase_keeps_bone_and_fills_with_the_surrounding_tissue():
    s = disc_sample(center=(16, 5), radius=2)  # touches the skull ring
    lesion = s.mask > 0
    region = erase_region(s.image, lesion, 3, WINDOW)
    assert region[lesion].all()
    assert (region & ~lesion).any()  # the rim is repainted too
    assert not region[s.image >= 1000].any()  # bone next to the lesion stays
    assert not region[~dilate(lesion, 3)].any()
    # The ring around the area holds 30 HU tissue (bone excluded): median 30.
    assert fill_hu(s.image, region, 3, WINDOW) == 30.0
    # Nothing in the window around: the window centre.
    assert fill_hu(np.full((8, 8), 1000.0), np.eye(8, dtype=bool), 2, WINDOW) == 40.0


def test_condition_is_erased_slice_plus_one_hot_masks():
    s = disc_sample(cls=3)
    x, region, fill = condition(s.image, s.mask, 5, 2, WINDOW)
    assert x.shape == (6, 32, 32) and x.dtype == np.float32
    assert fill == 30.0
    np.testing.assert_allclose(x[0][region], WINDOW.to_model(np.float32(30.0)))
    np.testing.assert_allclose(x[0][~region], WINDOW.to_model(s.image)[~region])
    np.testing.assert_array_equal(x[3], s.mask == 3)  # channel k holds class k
    assert x[[1, 2, 4, 5]].sum() == 0


def test_transform_mask_flips_scales_and_rotates():
    ell = np.array([[1, 0, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(transform_mask(ell, flip=True, angle=0, scale=1), ell[:, ::-1])
    # A 3x3 square scaled by 2 is a 6x6 square (pixels as areas).
    assert transform_mask(np.ones((3, 3), bool), flip=False, angle=0, scale=2).shape == (6, 6)
    bar = np.ones((2, 5), bool)
    turned = transform_mask(bar, flip=False, angle=90, scale=1)
    assert turned.shape == (5, 2) and turned.all()
    # Rotation keeps the area roughly (nearest neighbour): a disc stays a disc.
    disc = disc_sample(radius=6).mask.astype(bool)
    for angle in (30.0, 137.0):
        area = transform_mask(disc, flip=False, angle=angle, scale=1).sum()
        assert abs(area - disc.sum()) <= 0.1 * disc.sum()


def test_place_lesions_stays_inside_allowed_and_clear_of_lesions():
    allowed = np.zeros((48, 48), bool)
    allowed[8:40, 8:40] = True
    occupied = np.zeros_like(allowed)
    occupied[20:26, 20:26] = True
    bank = build_bank([disc_sample(radius=3, cls=2)])
    rng = np.random.default_rng(0)
    for _ in range(10):
        new, placements = place_lesions(
            occupied, allowed, bank, rng, n_range=(2, 3), scale_range=(0.7, 1.3),
            rotation_range=(0, 360), gap=4,
        )  # fmt: skip
        assert 1 <= len(placements) <= 3
        assert set(np.unique(new)) == {0, 2}
        assert allowed[new > 0].all()
        assert not (dilate(new > 0, 4) & occupied).any()
        assert len(boxes_from_mask(new)[0]) == len(placements)  # separate lesions
        for p in placements:
            assert new[p["row"], p["col"] : p["col"] + p["width"]].any()  # top row of its box


# ------------------------------------------------------------------------- training


def test_prepare_builds_the_mask_bank_from_every_lesion(data):
    m = new_model()
    m.prepare(data)
    bank = m.mask_bank
    lesion = [s for s in data if s.has_lesion]
    # One bank entry per box: both are the 8-connected components of each class.
    assert np.array_equal(bank.classes, np.concatenate([s.labels for s in lesion]))
    assert bank.sources == [s.id for s in lesion for _ in s.labels]
    first = lesion[0]
    x1, y1, x2, y2 = (int(v) for v in first.boxes[0])
    np.testing.assert_array_equal(bank.crop(0), first.mask[y1:y2, x1:x2] == first.labels[0])


def test_prepare_rejects_bad_data(data):
    m = new_model()
    with pytest.raises(DataError, match="has a lesion"):
        m.prepare([s for s in data if not s.has_lesion])
    with pytest.raises(DataError, match="64x64"):
        m.prepare([disc_sample()])
    with pytest.raises(DataError, match="n_classes"):
        new_model(n_classes=2).prepare(data)
    with pytest.raises(ConfigError, match="data_b"):
        m.prepare(data, data)


def test_make_batch_is_deterministic_and_consistent(model):
    a = model.make_batch(np.random.default_rng(5), 4)
    b = model.make_batch(np.random.default_rng(5), 4)
    for key in ("input", "target", "region"):
        assert torch.equal(a[key], b[key])
    assert a["input"].shape == (4, 6, SIZE, SIZE) and a["target"].shape == (4, 1, SIZE, SIZE)
    outside = a["region"] == 0
    assert torch.equal(a["input"][:, :1][outside], a["target"][outside])
    onehot = a["input"][:, 1:]
    assert onehot.sum(1).max() == 1  # one class per lesion pixel
    assert not (onehot.sum(1, keepdim=True).bool() & outside).any()  # lesions are erased


def test_training_step_updates_both_nets_and_freezes_d_for_the_g_step(data):
    m = new_model(n_steps_decay=2)
    m.prepare(data)
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    grads = {"G": 0, "D": 0}
    for name, net in (("G", m.net_g), ("D", m.net_d)):
        for p in net.parameters():
            p.register_hook(lambda g, name=name: grads.__setitem__(name, grads[name] + 1))
    n_g, n_d = len(list(m.net_g.parameters())), len(list(m.net_d.parameters()))
    losses = train(m, 1)
    # Each parameter got exactly one gradient: G's from the G step (D's loss sees a
    # detached fake), D's from the D step (frozen while G's loss flows through it).
    assert grads == {"G": n_g, "D": n_d}
    assert {"G", "G_GAN", "G_L1", "D", "D_real", "D_fake"} <= set(losses)
    assert all(torch.isfinite(v) for k, v in losses.items() if k != "lr")
    after = m.state_dict()
    for net in ("net_g", "net_d"):
        weights = [k for k in before if k.startswith(net) and k.endswith("weight")]
        assert all(not torch.equal(before[k], after[k]) for k in weights), net
    assert all(p.requires_grad for p in m.net_d.parameters())
    # junyanz's linear decay over 2 steps: 1 - 1/3, then 1 - 2/3.
    assert losses["lr"] == pytest.approx(2e-4 * 2 / 3)
    assert train(m, 1)["lr"] == pytest.approx(2e-4 / 3)


# ------------------------------------------------------------------------ synthesis


def new_lesions(out: Sample, host: Sample) -> np.ndarray:
    return (out.mask > 0) & (host.mask == 0)


def test_synthesize_paints_labelled_lesions_into_hosts(model, data):
    out = model.sample(6, seed=3, conditions=data)
    assert [s.id for s in out] == [f"syn_{k:05d}" for k in range(6)]
    cfg = model.cfg
    for s in out:
        host = data[s.meta["host_index"]]
        assert s.meta["host_id"] == host.id and s.patient_id == host.patient_id
        assert s.meta["synthetic"] is True and s.meta["generator"] == "pix2pix"
        assert s.meta["seed"] == 3 and s.meta["spacing"] == host.meta["spacing"]
        assert "lesions" not in s.meta  # the host's lesion list no longer describes it
        assert s.image.dtype == np.float32 and s.mask.dtype == np.uint8
        new = new_lesions(s, host)
        assert new.any() and len(s.meta["placements"]) >= 1
        assert allowed_region(host.image, cfg.anatomy)[new].all()
        # The host's lesions stay, labelled and untouched.
        np.testing.assert_array_equal(s.mask[host.mask > 0], host.mask[host.mask > 0])
        # Outside the erased area the host is unchanged, bit for bit.
        region = erase_region(host.image, new, cfg.erase_dilate_px, model.window)
        assert s.meta["erased_px"] == region.sum()
        np.testing.assert_array_equal(s.image[~region], host.image[~region])
        assert not np.array_equal(s.image[new], host.image[new])
        assert s.image[region].min() >= model.window.low - 1e-3
        assert s.image[region].max() <= model.window.high + 1e-3
        boxes, labels = boxes_from_mask(s.mask)
        np.testing.assert_array_equal(s.boxes, boxes)
        np.testing.assert_array_equal(s.labels, labels)


def test_synthesize_is_deterministic_and_changes_no_state(model, data):
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    a = model.sample(3, seed=7, conditions=data)
    b = model.sample(3, seed=7, conditions=data)
    c = model.sample(3, seed=8, conditions=data)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
        assert x.meta == y.meta
    assert any(not np.array_equal(x.mask, y.mask) for x, y in zip(a, c, strict=True))
    assert model.training  # restored after sampling
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_synthesize_errors(model, data):
    with pytest.raises(CheckpointError, match="mask bank is empty"):
        new_model().sample(1, seed=0, conditions=data)
    air = Sample(np.full((SIZE, SIZE), -1000.0), np.zeros((SIZE, SIZE)), meta={"id": "air"})
    dull = Pix2Pix(dataclasses.replace(model.cfg, max_tries=3))
    dull.load_state_dict(model.state_dict())
    with pytest.raises(DataError, match="no bank lesion fits"):
        dull.sample(1, seed=0, conditions=[air])
    with pytest.raises(DataError, match="64x64"):
        model.sample(1, seed=0, conditions=[disc_sample()])


def test_save_load_round_trip(model, data, tmp_path):
    path = tmp_path / "p2p.pt"
    model.save(path, step=3)
    loaded = GanModule.load(path)  # weights_only=True; no prepare: the bank travels
    assert isinstance(loaded, Pix2Pix) and loaded.cfg == model.cfg
    assert loaded.steps_done == model.steps_done == 3
    assert loaded.mask_bank.sources == model.mask_bank.sources
    np.testing.assert_array_equal(loaded.mask_bank.masks, model.mask_bank.masks)
    a = model.sample(3, seed=11, conditions=data)
    b = loaded.sample(3, seed=11, conditions=data)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)


def test_reconstruct_repaints_own_lesions_and_keeps_labels(model, data):
    picked = [s for s in data if s.has_lesion][:3] + [next(s for s in data if not s.has_lesion)]
    out = model.reconstruct(picked)
    for s, r in zip(picked, out, strict=True):
        assert r.id == s.id and r.meta["reconstruction"] is True
        np.testing.assert_array_equal(r.mask, s.mask)
        np.testing.assert_array_equal(r.boxes, s.boxes)
        region = erase_region(s.image, s.mask > 0, model.cfg.erase_dilate_px, model.window)
        np.testing.assert_array_equal(r.image[~region], s.image[~region])
        assert r.has_lesion == (not np.array_equal(r.image, s.image))


@pytest.mark.slow
def test_training_learns_blood_like_lesions(data):
    # After a few hundred steps the painted lesions must be brighter than the brain
    # around them, as acute blood is (~50-90 HU vs ~20-40 HU parenchyma).
    m = new_model(ngf=16, ndf=16)
    m.prepare(data)
    train(m, 400, batch_size=4)
    lesioned = [x for x in data if x.has_lesion]
    for s, r in zip(lesioned, m.reconstruct(lesioned), strict=True):
        lesion = r.mask > 0
        ring = dilate(lesion, 3) & ~lesion & (s.image > 0) & (s.image < 60)
        if lesion.sum() >= 10 and ring.any():
            assert r.image[lesion].mean() > r.image[ring].mean() + 10


def test_synthesis_puts_each_subtype_where_it_belongs(data):
    from augment.phantoms.render import CLASSES
    from gan.models.paste import _centre_pixel

    m = new_model(lesions_range=(2, 3))
    m.prepare(data)
    m.data_info = {"classes": {str(k): v for k, v in CLASSES["head-ich"].items()}}  # as a checkpoint stores it
    out = m.sample(16, seed=5, conditions=data)
    placed = {}
    for s in out:
        host = data[s.meta["host_index"]]
        regions = lesion_regions(host.image, "head-ich", spacing=host.meta.get("spacing"))
        for p in s.meta["placements"]:
            name = CLASSES["head-ich"][p["class"]]
            window = (slice(p["row"], p["row"] + p["height"]), slice(p["col"], p["col"] + p["width"]))
            lesion = (s.mask[window] == p["class"]) & (host.mask[window] == 0)
            cy, cx = _centre_pixel(lesion)
            assert regions[SUBTYPE_REGION[name]][p["row"] + cy, p["col"] + cx], (name, s.id)
            placed[name] = placed.get(name, 0) + 1
    assert sum(placed.values()) >= 16 and len(placed) >= 2, placed
