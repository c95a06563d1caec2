"""Every registered generator honours the contract, through the real trainer.

For each entry of `gan.registry.REGISTRY` (albumentations-style: every registered model
is checked, at its ``tiny`` preset, tests/conftest.py): train two
steps from a dataset folder with `train_generator` (and the same with `GanModule.fit`),
resume a one-step run to the same two steps and get bit-identical weights and optimizer
state, sample labelled slices without touching the caller's RNG, round trip the
checkpoint, and write a synthetic dataset with `synthesize_dataset`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.datasets import load_samples
from augment.folder import load_sample, read_dataset
from augment.sample import Sample, boxes_from_mask
from gan.base import GanModule, Generator, get_generator
from gan.registry import PRESET_NAMES, REGISTRY, GeneratorEntry
from gan.synthesize import synthesize_dataset
from gan.train.config import TrainConfig
from gan.train.trainer import init_seed, train_generator
from tests.conftest import TINY_BATCH, TINY_GENERATORS, write_phantom_pair

SIZE = 64  # phantom side (px): small enough for 2 CPU cores, big enough for 6 U-Net levels

# Tiny widths so a step takes well under a second (tests/conftest.py).
TINY, BATCH = TINY_GENERATORS, TINY_BATCH

REGISTERED = sorted(REGISTRY)


def _dcgan_draws_discs(checkpoint: str) -> None:
    """Two GAN steps do not make a usable mask channel; regress G (real weights, real
    checkpoint) to draw a centred disc so pasting, saving and loading can be checked."""
    module = GanModule.load(checkpoint)
    s = module.cfg.roi_size
    yy, xx = np.mgrid[:s, :s]
    disc = (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 <= 4**2
    goal = torch.from_numpy(np.stack([np.where(disc, 0.5, 0.0), np.where(disc, 1.0, -1.0)])).float()
    opt = torch.optim.Adam(module.netG.parameters(), lr=1e-2)
    module.netG.train()  # batch statistics: see tests/gan/test_dcgan.py::_fit_discs
    classes = torch.ones(8, dtype=torch.long)
    for _ in range(300):
        out = module.netG(torch.randn(8, module.cfg.nz), module._condition(classes))
        loss = torch.nn.functional.mse_loss(out, goal.expand_as(out))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.generator_net("netG").load_state_dict(module.netG.state_dict())  # sampling runs the EMA copy
    module.save(checkpoint, step=2)


# Models that cannot sample after two training steps, and how the test makes them able to.
NEEDS_SHAPE = {"dcgan": _dcgan_draws_discs}
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def test_every_generator_is_registered_with_its_class_and_presets():
    assert REGISTERED, "no generator registered"
    for name in REGISTERED:
        cls = get_generator(name)  # importable, a GanModule, named as its entry
        assert cls.name == name and issubclass(cls, GanModule)
        assert set(PRESET_NAMES) <= set(REGISTRY[name].presets)
    with pytest.raises(ValueError, match="no tiny preset"):
        GeneratorEntry("gan.models.dcgan:DCGAN", "half an entry", presets={"paper": {}, "cpu": {}})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path]:
    """Head-ICH phantom folders, domains A and B (same anatomy, other scanner)."""
    return write_phantom_pair(tmp_path_factory.mktemp("phantom"), 10, SIZE)


def check_samples(samples: list[Sample], hosts: list[Sample], n: int, name: str) -> None:
    host_ids = {h.id for h in hosts}
    shapes = {h.image.shape for h in hosts}
    classes = set().union(*(np.unique(h.mask).tolist() for h in hosts))
    patients = {h.patient_id for h in hosts}
    assert len(samples) == n
    assert len({s.id for s in samples}) == n
    for s in samples:
        assert isinstance(s, Sample)
        assert SAFE_ID.match(s.id), s.id
        assert s.image.dtype == np.float32 and s.image.shape in shapes
        assert np.isfinite(s.image).all()
        assert s.mask.dtype == np.uint8 and s.mask.shape == s.image.shape
        assert set(np.unique(s.mask).tolist()) <= classes
        boxes, labels = boxes_from_mask(s.mask)
        np.testing.assert_array_equal(s.boxes, boxes)
        np.testing.assert_array_equal(s.labels, labels)
        assert s.meta["host_id"] in host_ids
        assert s.patient_id in patients
        assert s.meta["generator"] == name and s.meta["synthetic"] is True


@pytest.mark.parametrize("name", REGISTERED)
def test_generator_contract(name, phantoms, tmp_path):
    data, data_b = phantoms
    data_b = data_b if get_generator(name).unpaired else None  # domain B for unpaired models
    kw = dict(
        batch_size=BATCH[name], seed=0, device="cpu", model_config=TINY[name],
        grid_n=2, log_every=1, progress=False,
    )  # fmt: skip
    straight = train_generator(name, data, data_b, tmp_path / "a", steps=2, **kw)
    train_generator(name, data, data_b, tmp_path / "b", steps=1, **kw)
    resumed = train_generator(name, data, data_b, tmp_path / "b", steps=2, resume=True, **kw)

    # Exact resume: every weight, buffer, extra state and optimizer moment.
    a = torch.load(straight["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert a["step"] == b["step"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["state_dict"][k]), k
        else:
            assert str(v) == str(b["state_dict"][k]), k
    for opt, state in a["optimizers"].items():
        for p, moments in state["state"].items():
            for key, value in moments.items():
                assert torch.equal(
                    torch.as_tensor(value), torch.as_tensor(b["optimizers"][opt]["state"][p][key])
                )
    # Fused Adam (gan.train.optim), kept across the resume.
    assert all(g["fused"] for opt in b["optimizers"].values() for g in opt["param_groups"])
    assert all(np.isfinite(v) for v in straight["losses"].values()) and straight["losses"]
    assert Path(straight["grids"][-1]).name == "step_000002.png"

    # `fit` (Generator protocol) is the same training: same initial weights, same data,
    # same steps give bit-identical weights.
    cls, model_cfg = get_generator(name), GanModule.load(straight["checkpoint"]).cfg
    torch.manual_seed(init_seed(0))  # as train_generator does before building the networks
    fresh = cls(model_cfg)
    cfg = TrainConfig(steps=2, batch_size=BATCH[name], seed=0, device="cpu", out=tmp_path / "fit", grid_n=2,
                      log_every=1, progress=False)  # fmt: skip
    fitted = fresh.fit(load_samples(data), cfg, data_b=load_samples(data_b) if data_b is not None else None)
    assert fitted["step"] == 2
    for k, v in a["state_dict"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, fresh.state_dict()[k].cpu()), k

    # Labelled samples, deterministic, and the same after a save/load round trip.
    hosts = load_samples(data)
    if name in NEEDS_SHAPE:
        NEEDS_SHAPE[name](straight["checkpoint"])
    module = GanModule.load(straight["checkpoint"])
    assert isinstance(module, Generator)  # DESIGN.md's interface: fit, sample, save, load
    assert module.name == name and module.data_info["fingerprint"] == a["data"]["fingerprint"]
    torch.manual_seed(1234)
    caller_rng = torch.get_rng_state()
    first = module.sample(3, seed=7, conditions=hosts)
    # Sampling leaves the caller's torch RNG where it was (a trainer drawing live samples).
    assert torch.equal(torch.get_rng_state(), caller_rng)
    check_samples(first, hosts, 3, name)
    again = GanModule.load(straight["checkpoint"]).sample(3, seed=7, conditions=hosts)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
    saved = tmp_path / "resaved.pt"
    module.save(saved, step=2)
    third = GanModule.load(saved).sample(3, seed=7, conditions=hosts)
    for x, y in zip(first, third, strict=True):
        np.testing.assert_array_equal(x.image, y.image)

    # A synthetic dataset on disk from the checkpoint, hosts = the recorded training folder.
    out = synthesize_dataset(straight["checkpoint"], 3, tmp_path / "syn", chunk=2, device="cpu")
    info, records = read_dataset(out)
    assert info["generator"] == name and info["hosts"] == str(data.resolve())
    check_samples([load_sample(out, r, verify=True) for r in records], hosts, 3, name)


def test_a_run_from_before_fused_adam_resumes(phantoms, tmp_path):
    """A checkpoint whose optimizers were foreach Adam (runs before gan.train.optim)
    resumes, and keeps its optimizer's settings: the run continues as it started."""
    data, _ = phantoms
    kw = dict(batch_size=BATCH["pix2pix"], seed=0, device="cpu", model_config=TINY["pix2pix"],
              grid_n=0, log_every=1, progress=False)  # fmt: skip
    first = train_generator("pix2pix", data, None, tmp_path / "run", steps=1, **kw)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    for state in ckpt["optimizers"].values():
        for group in state["param_groups"]:
            group.update(fused=None, foreach=True)  # what torch.optim.Adam(foreach=True) saved
    torch.save(ckpt, first["checkpoint"])
    resumed = train_generator("pix2pix", data, None, tmp_path / "run", steps=2, resume=True, **kw)
    after = torch.load(resumed["checkpoint"], weights_only=True)
    assert after["step"] == 2
    groups = [g for state in after["optimizers"].values() for g in state["param_groups"]]
    assert all(g["foreach"] and not g["fused"] for g in groups)
