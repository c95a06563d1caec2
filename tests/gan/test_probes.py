"""Training probes (gan.train.probes): the numbers each model logs with its grids, that they
are right where they can be checked by hand, and that probing changes nothing in training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augment.datasets import load_samples
from augment.sample import Sample
from gan.base import GanModule, get_generator
from gan.models.cyclegan import CycleGAN, CycleGANConfig
from gan.registry import REGISTRY
from gan.train.probes import PROBE_DRAWS, hu_stats, run_probe, translation_probe
from gan.train.trainer import train_generator
from tests.conftest import TINY_BATCH, TINY_GENERATORS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What each model's probe must report (beyond the real lesions' HU statistics).
PROBE_KEYS = {
    "dcgan": {"valid_rate", "lesion_hu_mean", "lesion_hu_median"},
    "pix2pix": {"ssim", "psnr", "lesion_hu_mean", "lesion_hu_median"},
    "cyclegan": {"contrast_retained", "abs_mean_hu_diff", "lesion_hu_mean", "lesion_hu_median"},
}
REAL_KEYS = {f"real_lesion_hu_{k}" for k in ("mean", "median", "q25", "q75")}


def test_every_registered_model_has_probe_keys_listed_here():
    assert set(PROBE_KEYS) == set(REGISTRY)


def test_hu_stats_by_hand():
    s = hu_stats(np.array([10.0, 20.0, 30.0, 40.0, 50.0]), "x")
    assert s == {"x_mean": 30.0, "x_median": 30.0, "x_q25": 20.0, "x_q75": 40.0}
    assert all(np.isnan(v) for v in hu_stats(np.zeros(0), "x").values())


def _log(run: dict) -> list[dict]:
    return [json.loads(line) for line in open(run["log"])]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_probes_are_logged_and_change_nothing_in_training(name, phantoms, tmp_path):
    data, data_b = phantoms
    data_b = data_b if get_generator(name).unpaired else None
    kw = dict(batch_size=TINY_BATCH[name], seed=1, device="cpu", model_config=TINY_GENERATORS[name],
              grid_n=0, grid_every=1, progress=False)  # fmt: skip
    probed = train_generator(name, data, data_b, tmp_path / "a", steps=2, **kw)
    plain = train_generator(name, data, data_b, tmp_path / "b", steps=2, probes=False, **kw)
    a = torch.load(probed["checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(plain["checkpoint"], weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k

    records = [r for r in _log(probed) if any(k.startswith("probe/") for k in r)]
    assert [r["step"] for r in records] == [1, 2]
    keys = {k.removeprefix("probe/") for k in records[0] if k != "step"}
    assert keys >= PROBE_KEYS[name] | REAL_KEYS | {"seconds"}
    assert not any(k.startswith("probe/") for r in _log(plain) for k in r)
    # The real lesions' numbers are the training lesions' pixels (CycleGAN: the probed slices').
    if name != "cyclegan":
        pixels = np.concatenate([s.image[s.mask > 0] for s in load_samples(data)])
        assert records[0]["probe/real_lesion_hu_median"] == pytest.approx(float(np.median(pixels)), abs=1e-3)


def test_probe_is_repeatable_and_leaves_the_torch_rng_alone(phantoms, tmp_path):
    data, _ = phantoms
    run = train_generator("pix2pix", data, None, tmp_path / "r", steps=1, batch_size=2, seed=0,
                          device="cpu", model_config=TINY_GENERATORS["pix2pix"], grid_n=0, progress=False)  # fmt: skip
    module = GanModule.load(run["checkpoint"])
    module.train()
    samples = load_samples(data)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = run_probe(module, samples, None, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert module.training  # back in the mode it was in
    second = run_probe(module, samples, None, seed=0)
    first.pop("probe/seconds"), second.pop("probe/seconds")
    assert first == second


def test_dcgan_valid_rate_counts_pasteable_draws():
    """A DCGAN fitted to draw a 70 HU disc pastes every draw; an untrained one none."""
    from tests.gan.test_dcgan import _fit_discs, _head, _model

    hosts = [_head(64, ((24, 24, 3, 1), (40, 40, 4, 2)), pid="p0"), _head(64, ((30, 36, 5, 2),), pid="p1")]
    fitted = _fit_discs(_model(hosts))
    numbers = fitted.quality_probe(hosts, None, seed=0)
    assert numbers["valid_rate"] == 1.0
    assert numbers["lesion_hu_median"] == pytest.approx(70.0, abs=3.0)
    real = np.concatenate([h.image[h.mask > 0] for h in hosts])
    assert numbers["real_lesion_hu_q75"] == pytest.approx(float(np.percentile(real, 75)))
    untrained = _model(hosts)
    assert untrained.quality_probe(hosts, None, seed=0)["valid_rate"] <= 1 / PROBE_DRAWS


def _lesion_slice(contrast: float) -> Sample:
    image = np.full((32, 32), 30.0, np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[12:20, 12:20] = 1
    image[mask > 0] += contrast
    return Sample(image, mask, meta={"id": "s0", "patient_id": "p0"})


def test_translation_probe_reports_contrast_retained(monkeypatch):
    model = CycleGAN(CycleGANConfig(**TINY_GENERATORS["cyclegan"]))
    data = [_lesion_slice(40.0)]
    monkeypatch.setattr(model, "translate", lambda s, direction=None: [x.copy() for x in s])
    kept = translation_probe(model, data, data)
    assert kept["contrast_retained"] == pytest.approx(1.0) and kept["abs_mean_hu_diff"] == 0.0
    halved = [_lesion_slice(20.0)]
    monkeypatch.setattr(model, "translate", lambda s, direction=None: halved)
    numbers = translation_probe(model, data, data)
    assert numbers["contrast_retained"] == pytest.approx(0.5)
    assert numbers["lesion_hu_mean"] == pytest.approx(50.0) and numbers["real_lesion_hu_mean"] == pytest.approx(70.0)
