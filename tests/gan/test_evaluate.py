"""Generator evaluation end to end: tiny trained models, phantom data, metrics.json.

Models are trained for two steps (their outputs are noise), so the tests check what is
compared with what, not how good it is: a stand-in "perfect" model (reconstruct /
translate replaced by the ground truth) must score SSIM 1, pairing is by slice id,
FID is computed with local weights and refused without them, planted copies are
caught by the memorisation audit, and every output is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.datasets import load_samples
from augment.errors import CheckpointError, DataError
from augment.phantoms.render import write_phantom
from augment.sample import Sample
from gan.base import GanModule
from gan.evaluate.protocol import evaluate_generator, evaluate_run
from gan.evaluate.quality import FID_WEIGHTS_NAME
from gan.models.cyclegan import CycleGAN
from gan.models.pix2pix import Pix2Pix
from gan.train.trainer import train_generator
from tests.conftest import TINY_BATCH, TINY_GENERATORS
from tests.gan.test_quality import write_random_inception

SIZE = 64  # phantom side: the smallest the contract tests train every model at
TINY, BATCH = TINY_GENERATORS, TINY_BATCH  # tests/conftest.py


@pytest.fixture(autouse=True)
def no_hub_weights(tmp_path, monkeypatch):
    """An empty torch hub: no test may find (or use) real Inception weights by accident."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _fit_disc_lesions(module: GanModule, steps: int = 120) -> None:
    """Regress the 2-step DCGAN so every z and class draws a 70 HU disc in 30 HU (as
    test_dcgan.py does): real weights whose masks can be pasted, in a fraction of a second."""
    s = module.cfg.roi_size
    yy, xx = np.mgrid[:s, :s]
    disc = (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 <= 5**2
    goal = torch.from_numpy(
        np.stack([module.window.to_model(np.where(disc, 70.0, 30.0)), np.where(disc, 1.0, -1.0)])
    ).float()
    classes = torch.arange(1, module.cfg.n_classes + 1).repeat(2)
    module.netG.eval()
    opt = torch.optim.Adam(module.netG.parameters(), lr=1e-2)
    for _ in range(steps):
        out = module.netG(torch.randn(len(classes), module.cfg.nz), module._condition(classes))
        loss = torch.nn.functional.mse_loss(out, goal.expand_as(out))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.generator_net("netG").load_state_dict(module.netG.state_dict())  # sampling runs the EMA copy


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Phantom folders (training: 10 slices of 5 patients; held-out: 6 slices of other
    patients, domains A and B) and a 2-step run folder per model."""
    root = tmp_path_factory.mktemp("evaluate")
    kw = dict(size=SIZE, slices_per_patient=2)
    paths = {
        "A": write_phantom(root / "A", "head-ich", 10, domain="A", seed=0, **kw),
        "B": write_phantom(root / "B", "head-ich", 10, domain="B", seed=0, **kw),
        "heldout_A": write_phantom(root / "hA", "head-ich", 6, domain="A", seed=1, **kw),
        "heldout_B": write_phantom(root / "hB", "head-ich", 6, domain="B", seed=1, **kw),
    }
    for name, cfg in TINY.items():
        result = train_generator(
            name,
            paths["A"],
            paths["B"] if name == "cyclegan" else None,
            root / name,
            steps=2,
            batch_size=BATCH[name],
            seed=0,
            device="cpu",
            model_config=cfg,
            grid_n=0,
            progress=False,
        )
        paths[name] = root / name
        if name == "dcgan":
            module = GanModule.load(result["checkpoint"])
            _fit_disc_lesions(module)
            module.save(result["checkpoint"], step=2)
    return paths


def test_pix2pix_run_writes_metrics_and_figures(setup, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_run(
        setup["pix2pix"],
        setup["heldout_A"],
        n=5,
        seed=0,
        device="cpu",
        out=out,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert result["metrics_path"] == str(out / "metrics.json")
    m = json.loads((out / "metrics.json").read_text())
    heldout = load_samples(setup["heldout_A"])
    assert m["generator"] == "pix2pix" and m["step"] == 2 and m["n_synthetic"] == 5
    assert m["n_pairs"] == sum(s.has_lesion for s in heldout) > 0
    assert -1 <= m["ssim"] <= 1 and np.isfinite(m["psnr"]) and m["ssim_std"] >= 0
    assert "erased" in m["ssim_what"] and "ssim_on" not in m  # one name per quantity
    # The head model window 40/200 HU: -60..140 HU, data range 200 HU.
    assert m["data_range"] == 200.0 and m["hu_range"] == [-60.0, 140.0]
    where = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME
    assert m["fid"] is None and m["kid"] is None
    assert m["fid_status"] == f"unavailable: Inception weights not found at {where}"
    assert m["feature_distance_name"].endswith("(not FID)") and m["feature_distance"] > 0
    mem = m["memorisation"]
    assert mem["mode"] == "lesion patches" and mem["n"] + mem["n_skipped"] == 5
    assert mem["threshold"] == 0.95 and 0 <= mem["fraction_above_threshold"] <= 1 and "fraction_copies" not in mem
    assert 0 <= mem["median_ssim"] <= mem["p95_ssim"] <= mem["max_ssim"] <= 1
    assert mem["heldout"]["n"] > 0
    for key in ("summary_png", "grid_png", "memorisation_png", "details_json"):
        assert Path(m[key]).is_file() and Path(m[key]).parent == out, key
    assert m["memorisation"]["pairs_png"] == m["memorisation_png"]
    assert m["config"]["n"] == 5 and m["config"]["training_data_matches_checkpoint"] is True
    assert "torch" in m["versions"] and m["heldout_slices_in_training"] == []
    lines = result["summary_lines"]
    assert any(line.startswith("SSIM ") for line in lines)
    assert any("FID/KID unavailable: Inception weights not found" in line for line in lines)
    # Default output folder: RUN/eval.
    default = evaluate_run(
        setup["pix2pix"] / "last.pt",
        setup["heldout_A"],
        n=2,
        device="cpu",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert default["metrics_path"] == str(setup["pix2pix"] / "eval" / "metrics.json")


def test_fid_with_local_weights_and_cached_reference(setup, tmp_path):
    weights = write_random_inception(tmp_path / "w" / FID_WEIGHTS_NAME)
    kw = dict(n=4, device="cpu", cache_dir=tmp_path / "cache", progress=False)
    first = evaluate_run(
        setup["pix2pix"], setup["heldout_A"], fid_weights=weights.parent, out=tmp_path / "a", **kw
    )["metrics"]
    again = evaluate_run(
        setup["pix2pix"], setup["heldout_A"], fid_weights=weights, out=tmp_path / "b", **kw
    )["metrics"]
    assert first["fid_status"].startswith("ok: pytorch-fid InceptionV3 pool3 (2048-d)")
    assert first["fid"] > 0 and first["kid_std"] >= 0 and first["fid_n_reference"] == 6
    assert first["fid_reference_cached"] is False and again["fid_reference_cached"] is True
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-9)  # same seed, same samples


def test_perfect_pix2pix_scores_ssim_one(setup, tmp_path, monkeypatch):
    module = GanModule.load(setup["pix2pix"] / "last.pt")
    training = load_samples(setup["A"])
    heldout = load_samples(setup["heldout_A"])
    # A generator that repaints every lesion exactly: the compared pixels are identical.
    monkeypatch.setattr(
        Pix2Pix, "reconstruct", lambda self, samples, **kw: [s.copy() for s in samples]
    )
    m = evaluate_generator(
        module,
        synthetic=module.sample(3, seed=0, conditions=training),
        training=training,
        heldout=heldout,
        heldout_b=None,
        fid_weights=None,
        seed=0,
        out=tmp_path,
        cache_dir=tmp_path / "cache",
    )
    assert m["ssim"] == pytest.approx(1.0) and m["ssim_whole_slice"] == pytest.approx(1.0)
    assert m["psnr"] is None and m["n_identical"] == m["n_pairs"] > 0  # infinite PSNR


def test_cyclegan_pairs_by_id_against_the_true_b_rendering(setup, tmp_path, monkeypatch):
    result = evaluate_run(
        setup["cyclegan"],
        setup["heldout_A"],
        data_b=setup["heldout_B"],
        n=4,
        device="cpu",
        out=tmp_path / "run",
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    m = result["metrics"]
    assert m["n_pairs"] == 6 and "A->B" in m["ssim_what"] and -1 <= m["ssim"] <= 1
    assert m["ssim_untranslated"] is not None and m["memorisation"]["mode"] == "whole slices"
    assert m["preservation"]["n_slices"] == 4 and m["preservation"]["all_masks_unchanged"]
    assert m["fid_reference"].startswith("6 held-out real slices of the target domain")

    module = GanModule.load(setup["cyclegan"] / "last.pt")
    training = load_samples(setup["A"])
    heldout, truth = load_samples(setup["heldout_A"]), load_samples(setup["heldout_B"])
    by_id = {t.id: t for t in truth}

    def perfect(self, samples, direction=None, **kw):
        return [by_id[s.id].copy() for s in samples]

    monkeypatch.setattr(CycleGAN, "translate", perfect)
    kw = dict(
        synthetic=training[:4],
        training=training,
        heldout=heldout,
        fid_weights=None,
        seed=0,
        out=tmp_path / "perfect",
        cache_dir=tmp_path / "cache",
    )
    shuffled = evaluate_generator(module, heldout_b=truth[::-1], **kw)  # order is irrelevant
    assert shuffled["ssim"] == pytest.approx(1.0) and shuffled["n_pairs"] == 6

    no_b = evaluate_generator(module, heldout_b=None, **kw)
    assert no_b["ssim"] is None and "data_b" in no_b["ssim_reason"]
    assert no_b["fid_status"].startswith("unavailable: no target-domain real slices")
    other_ids = [s.replace(meta={**s.meta, "id": f"x{i}"}) for i, s in enumerate(truth)]
    with pytest.raises(DataError, match="no slice id also appears"):
        evaluate_generator(module, heldout_b=other_ids, **kw)


def test_dcgan_has_no_ground_truth_and_harness_call(setup, tmp_path):
    module = GanModule.load(setup["dcgan"] / "last.pt")
    training = load_samples(setup["A"])
    synthetic = module.sample(4, seed=0, conditions=training)
    # Exactly how downstream/harness/compare.py::generator_quality calls it.
    m = evaluate_generator(
        module,
        synthetic=synthetic,
        training=training,
        heldout=load_samples(setup["heldout_A"]),
        heldout_b=None,
        fid_weights=None,
        seed=0,
        out=tmp_path / "q",
    )
    assert m["ssim"] is None and m["psnr"] is None and m["data_range"] is None
    assert "no paired ground truth" in m["ssim_reason"]
    assert m["memorisation"]["mode"] == "lesion patches" and m["memorisation"]["n"] == 4
    json.dumps(m)  # JSON-able as it is


def test_memorisation_catches_planted_copies(setup, tmp_path):
    """Synthetic slices that copy a training lesion (patch mode) or a whole training
    slice of another patient (translation mode) are flagged; honest ones are not."""
    training = load_samples(setup["A"])
    heldout = load_samples(setup["heldout_A"])
    lesion = [t for t in training if t.has_lesion]
    free = [t for t in training if not t.has_lesion]
    donor, host = lesion[0], next(f for f in free if f.patient_id != lesion[0].patient_id)
    # Paste the donor's lesion with a 32-px neighbourhood (more than the 32-px audit
    # patch reaches) into the host: the generated lesion patch is the donor's, exactly.
    rows, cols = np.nonzero(donor.mask)
    r0, c0 = max(0, rows.min() - 32), max(0, cols.min() - 32)
    r1, c1 = min(SIZE, rows.max() + 33), min(SIZE, cols.max() + 33)
    image, mask = host.image.copy(), host.mask.copy()
    image[r0:r1, c0:c1], mask[r0:r1, c0:c1] = donor.image[r0:r1, c0:c1], donor.mask[r0:r1, c0:c1]
    copy = Sample(
        image, mask, meta={"id": "syn_copy", "patient_id": host.patient_id, "host_id": host.id}
    )
    pix2pix = GanModule.load(setup["pix2pix"] / "last.pt")
    honest = pix2pix.sample(3, seed=0, conditions=training)
    kw = dict(
        training=training, heldout=heldout, fid_weights=None, seed=0, cache_dir=tmp_path / "cache"
    )
    m = evaluate_generator(pix2pix, synthetic=[copy, *honest], out=tmp_path / "p", **kw)
    mem = m["memorisation"]
    assert mem["max_ssim"] == pytest.approx(1.0) and mem["n_above"] >= 1
    details = json.loads(Path(m["details_json"]).read_text())["memorisation"]
    first = next(d for d in details if d["id"] == "syn_copy")
    assert first["nearest_training"] == donor.id and first["ssim"] == pytest.approx(1.0)

    # Translation mode: a "translation" that returns another patient's training slice.
    cyclegan = GanModule.load(setup["cyclegan"] / "last.pt")
    a, b = training[0], next(t for t in training if t.patient_id != training[0].patient_id)
    stolen = b.replace(meta={"id": "syn_0", "patient_id": a.patient_id, "host_id": a.id})
    own = a.replace(meta={"id": "syn_1", "patient_id": a.patient_id, "host_id": a.id})
    m = evaluate_generator(cyclegan, synthetic=[stolen, own], out=tmp_path / "c", **kw)
    details = json.loads(Path(m["details_json"]).read_text())["memorisation"]
    assert details[0]["nearest_training"] == b.id and details[0]["ssim"] == pytest.approx(1.0)
    # Its own (untranslated) host is excluded: a copy of the host is not a memorised patient.
    assert details[1]["ssim"] < 0.95 and m["memorisation"]["n_above"] == 1


def test_run_errors_are_one_line_and_name_the_file(setup, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty_run: no last.pt"):
        evaluate_run(empty, setup["heldout_A"], device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        evaluate_run(tmp_path / "missing.pt", setup["heldout_A"], device="cpu", progress=False)
