"""The generators' moving average (gan.train.ema): the average itself, that sampling runs
it, that checkpoints carry it (and old ones without it still load), and exact resume."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from gan.base import GanModule, get_generator, read_checkpoint
from gan.models.dcgan import DCGAN, DCGANConfig
from gan.registry import REGISTRY
from gan.train.ema import GeneratorEMA, complete_ema_state, ema_of
from gan.train.trainer import train_generator
from tests.conftest import TINY_BATCH, TINY_GENERATORS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The attributes each model averages (what its synthesis runs).
EMA_NETWORKS = {"dcgan": ("netG",), "pix2pix": ("net_g",), "cyclegan": ("g_ab", "g_ba")}


def test_every_registered_model_has_its_networks_listed_here():
    assert set(EMA_NETWORKS) == set(REGISTRY)


def test_average_after_k_updates_is_the_hand_computed_one():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = GeneratorEMA({"g": live}, decay=0.6)
    expected = [p.detach().clone() for p in live.parameters()]
    for t in range(5):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        live(torch.randn(4, 3))  # moves the batch-norm running statistics
        beta = min(0.6, (1 + t) / (10 + t))  # TensorFlow's warm-up, then the decay
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, live.parameters(), strict=True)]
        ema.update({"g": live})
    assert int(ema.updates) == 5
    for got, want in zip(ema.nets["g"].parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert not got.requires_grad
    # Buffers are copied, not averaged.
    assert torch.equal(ema.nets["g"][1].running_mean, live[1].running_mean)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_synthesis_runs_the_average_when_on_and_the_network_when_off(name):
    cls = get_generator(name)
    on = cls(cls.Config(**TINY_GENERATORS[name], ema=0.9))
    off = cls(cls.Config(**TINY_GENERATORS[name], ema=0.0))
    assert ema_of(off) is None
    for attr in EMA_NETWORKS[name]:
        assert on.generator_net(attr) is on.ema.nets[attr] is not getattr(on, attr)
        assert off.generator_net(attr) is getattr(off, attr)


def test_dcgan_draws_with_the_ema_weights():
    torch.manual_seed(0)
    model = DCGAN(DCGANConfig(**TINY_GENERATORS["dcgan"], n_classes=1, ema=0.9))
    before = model.generate_roi(7, 1)
    with torch.no_grad():
        for p in model.netG.parameters():  # the raw generator changes: the draw does not
            p.mul_(3.0)
    np.testing.assert_array_equal(model.generate_roi(7, 1)[0], before[0])
    with torch.no_grad():
        for p in model.ema.nets["netG"].parameters():  # the average changes: so does the draw
            p.mul_(3.0)
    assert not np.array_equal(model.generate_roi(7, 1)[0], before[0])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_resume_is_exact_with_ema_and_diffaugment_on(name, phantoms, tmp_path):
    data, data_b = phantoms
    data_b = data_b if get_generator(name).unpaired else None
    options = {**TINY_GENERATORS[name], "ema": 0.5, "diffaugment": "color,translation,cutout"}
    kw = dict(batch_size=TINY_BATCH[name], seed=3, device="cpu", model_config=options,
              grid_n=0, grid_every=1, progress=False)  # fmt: skip
    straight = train_generator(name, data, data_b, tmp_path / "a", steps=3, **kw)
    train_generator(name, data, data_b, tmp_path / "b", steps=2, **kw)
    resumed = train_generator(name, data, data_b, tmp_path / "b", steps=3, resume=True, **kw)
    a = read_checkpoint(straight["checkpoint"])["state_dict"]
    b = read_checkpoint(resumed["checkpoint"])["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(a["ema.updates"]) == 3
    # The average moved, and is not the raw generator.
    net = EMA_NETWORKS[name][0]
    weights = [k for k in a if k.startswith(f"ema.nets.{net}.") and a[k].is_floating_point()]
    assert any(not torch.equal(a[k], a[k.split(".", 2)[2]]) for k in weights)

    # Round trip: load gives the same average, and samples from it.
    module = GanModule.load(resumed["checkpoint"])
    for k, v in module.state_dict().items():
        assert torch.equal(v, a[k]), k


def test_checkpoint_without_ema_loads_with_the_raw_generator(phantoms, tmp_path, caplog):
    """A checkpoint written before EMA existed: no ``ema``/``diffaugment`` in its config,
    no ``ema.*`` weights. It loads, samples what its raw generator draws, and says so."""
    data, _ = phantoms
    run = train_generator(
        "dcgan", data, None, tmp_path / "run", steps=1, batch_size=4, seed=0, device="cpu",
        model_config=TINY_GENERATORS["dcgan"], grid_n=0, progress=False,
    )  # fmt: skip
    ckpt = torch.load(run["checkpoint"], weights_only=True)
    old = dict(ckpt)
    old["config"] = {k: v for k, v in ckpt["config"].items() if k not in ("ema", "diffaugment")}
    old["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("ema.")}
    torch.save(old, tmp_path / "old.pt")
    with caplog.at_level(logging.INFO, logger="gan.train.ema"):
        module = GanModule.load(tmp_path / "old.pt")
    assert "no EMA generator" in caplog.text
    assert ema_of(module) is not None  # today's default keeps one, filled from the raw weights
    for k, v in module.netG.state_dict().items():
        assert torch.equal(module.ema.nets["netG"].state_dict()[k], v)
    assert int(module.ema.updates) == 0
    # A checkpoint that has the average is left alone.
    assert complete_ema_state(module, ckpt["state_dict"], "x") is ckpt["state_dict"]


def test_a_run_from_before_ema_resumes_as_it_trained(phantoms, tmp_path):
    """``gan train --resume`` of a run whose checkpoint predates ``ema``/``diffaugment``
    takes them as off (how it trained), and continues bit for bit."""
    from gan.train.run_folder import resume_defaults

    data, _ = phantoms
    off = {**TINY_GENERATORS["dcgan"], "ema": 0.0, "diffaugment": ""}
    kw = dict(batch_size=4, seed=0, device="cpu", grid_n=0, progress=False)
    straight = train_generator("dcgan", data, None, tmp_path / "a", steps=2, model_config=off, **kw)
    first = train_generator("dcgan", data, None, tmp_path / "b", steps=1, model_config=off, **kw)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in ("ema", "diffaugment")}
    torch.save(ckpt, first["checkpoint"])
    own = resume_defaults("dcgan", tmp_path / "b")
    assert own["config"]["ema"] == 0.0 and own["config"]["diffaugment"] == ""
    resumed = train_generator("dcgan", data, None, tmp_path / "b", steps=2, resume=True,
                              base_config=own["config"], **kw)  # fmt: skip
    a = read_checkpoint(straight["checkpoint"])["state_dict"]
    b = read_checkpoint(resumed["checkpoint"])["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
