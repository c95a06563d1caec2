"""Semi-supervised segmentation (SPMC, CPS): each component by hand, the reduction to
supervised training, and the strategy end to end in the harness (unlabelled pool, leakage
guard, rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downstream.models.segment import UNet, dice_ce_loss
from downstream.models.semi import (
    DualUNet,
    cdps_mask,
    masked_mse,
    ramp_weight,
    semi_loss,
    sharpen,
    splat_mask,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ramp_follows_the_sigmoid_rampup():
    # λ(t) = 0.1·exp(−5(1 − t/t_max)²), by hand: t = 0 → 0.1·e^−5, t = t_max/2 → 0.1·e^−1.25.
    assert ramp_weight(0, 100) == pytest.approx(0.1 * math.exp(-5))
    assert ramp_weight(50, 100) == pytest.approx(0.1 * math.exp(-1.25))
    assert ramp_weight(100, 100) == pytest.approx(0.1)
    assert ramp_weight(250, 100) == pytest.approx(0.1)  # held after t_max
    ws = [ramp_weight(t, 100) for t in range(101)]
    assert all(b >= a for a, b in zip(ws, ws[1:], strict=False))
    assert ramp_weight(50, 100, lambda_max=1.0, k=0.0) == 1.0


def test_sharpen_by_hand():
    p = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)
    # T = 0.5 squares and renormalises: 0.36/0.52, 0.16/0.52.
    assert sharpen(p, 0.5).flatten().tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert torch.allclose(sharpen(p, 1.0), p)
    sharp = sharpen(torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1), 0.1).flatten()
    assert sharp.argmax() == 0 and sharp[0] > 0.99 and sharp.sum() == pytest.approx(1.0)


def _probs(*pixels):
    """(1, C, 1, n) probabilities from per-pixel class lists."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_cdps_mask_is_the_pixels_both_networks_doubt():
    # pixel:      0 both doubt   1 only a doubts  2 only b doubts  3 both sure  4 a at tau exactly
    pa = _probs([0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.95, 0.05], [0.7, 0.3])
    pb = _probs([0.4, 0.6], [0.8, 0.2], [0.55, 0.45], [0.1, 0.9], [0.3, 0.7])
    assert cdps_mask(pa, pb, 0.7).flatten().tolist() == [True, False, False, False, True]


def test_splat_mask_is_my_suspicious_and_your_confident():
    pa = _probs([0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.95, 0.05], [0.7, 0.3])
    pb = _probs([0.4, 0.6], [0.8, 0.2], [0.55, 0.45], [0.1, 0.9], [0.25, 0.75])
    assert splat_mask(pa, pb, 0.7).flatten().tolist() == [False, True, False, False, True]
    assert splat_mask(pb, pa, 0.7).flatten().tolist() == [False, False, True, False, False]


def test_masked_mse_by_hand_and_zero_on_an_empty_mask():
    p = _probs([0.5, 0.5], [0.9, 0.1])
    t = _probs([1.0, 0.0], [1.0, 0.0])
    # pixel 0: 0.25 + 0.25 = 0.5 (summed over classes); pixel 1 not in the mask; averaged
    # over both pixels.
    assert float(masked_mse(p, t, torch.tensor([[[True, False]]]))) == pytest.approx(0.25)
    q = p.clone().requires_grad_()
    empty = masked_mse(q, t, torch.zeros(1, 1, 2, dtype=torch.bool))
    empty.backward()
    assert float(empty.detach()) == 0.0 and torch.count_nonzero(q.grad) == 0


def _batch(seed=0, n=2, size=16, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, classes, (n, size, size), generator=g)
    return x, y


def test_mean_inference_averages_the_two_networks_probabilities():
    torch.manual_seed(0)
    m = DualUNet(3, base=4, depth=2, attention=False).eval()
    x, _ = _batch()
    with torch.no_grad():
        la, lb = m.both(x)
        assert torch.allclose(m(x).softmax(1), 0.5 * (la.softmax(1) + lb.softmax(1)), atol=1e-6)
        m.inference = "b"
        assert torch.equal(m(x), lb)
    with pytest.raises(ValueError, match="inference"):
        m.inference = "max"


def test_network_a_starts_as_the_plain_unet_and_b_upsamples_bilinearly():
    torch.manual_seed(3)
    m = DualUNet(2, base=4, depth=2, attention=True)
    torch.manual_seed(3)
    plain = UNet(1, 2, base=4, depth=2, attention=True)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in m.a.state_dict().items())
    assert isinstance(m.a.ups[0], torch.nn.ConvTranspose2d)
    assert isinstance(m.b.ups[0][0], torch.nn.Upsample) and m.b.ups[0][0].mode == "bilinear"


def test_cdps_term_is_the_masked_error_against_the_label():
    torch.manual_seed(0)
    m = DualUNet(3, base=4, depth=2, attention=False)
    x, y = _batch()
    # tau 0.99: nearly every pixel of an untrained net is "doubted" by both.
    with_cdps, parts = semi_loss(m, x, y, None, method="spmc", step=0, total=10, tau=0.99)
    without, _ = semi_loss(m, x, y, None, method="spmc", step=0, total=10, tau=0.99, cdps_weight=0.0)
    la, lb = m.both(x)
    pa, pb = la.softmax(1), lb.softmax(1)
    onehot = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    mask = cdps_mask(pa, pb, 0.99)
    assert 0 < float(parts["cdps_pixels"]) <= 1
    expected = masked_mse(pa, onehot, mask) + masked_mse(pb, onehot, mask)
    assert float((with_cdps - without).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_without_unlabelled_data_and_beta_zero_only_supervision_remains():
    torch.manual_seed(0)
    m = DualUNet(3, base=4, depth=2, attention=False)
    x, y = _batch()
    loss, parts = semi_loss(m, x, y, None, method="spmc", step=5, total=10, beta=0.0)
    la, lb = m.both(x)
    sup = dice_ce_loss(la, y)[0] + dice_ce_loss(lb, y)[0]
    assert float(loss) == pytest.approx(float(sup + parts["cdps"]), rel=1e-6)
    assert float(parts["cps"]) == 0.0 and float(parts["splat"]) == 0.0


def test_without_unlabelled_data_beta_and_cdps_zero_it_trains_two_independent_unets():
    torch.manual_seed(0)
    dual = DualUNet(3, base=4, depth=2, attention=True)
    torch.manual_seed(0)
    a = UNet(1, 3, base=4, depth=2, attention=True, upsample="transpose")
    b = UNet(1, 3, base=4, depth=2, attention=True, upsample="bilinear")
    b.load_state_dict(dual.b.state_dict())
    opt_dual = torch.optim.Adam(dual.parameters(), lr=1e-2)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for step in range(3):
        x, y = _batch(step)
        loss, _ = semi_loss(dual, x, y, None, method="spmc", step=step, total=3, beta=0.0, cdps_weight=0.0)
        opt_dual.zero_grad()
        loss.backward()
        opt_dual.step()
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            dice_ce_loss(net(x), y)[0].backward()
            opt.step()
    for sub, alone in ((dual.a, a), (dual.b, b)):
        for k, v in alone.state_dict().items():
            torch.testing.assert_close(sub.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_cps_is_each_network_against_the_others_argmax_on_unlabelled_pixels():
    torch.manual_seed(0)
    m = DualUNet(3, base=4, depth=2, attention=False)
    x, y = _batch()
    xu, _ = _batch(7)
    _, parts = semi_loss(m, x, y, xu, method="cps", step=10, total=10)
    ua, ub = m.both(xu)  # the unlabelled half goes through each network on its own (BatchNorm)
    f = torch.nn.functional
    expected = f.cross_entropy(ua, ub.argmax(1)) + f.cross_entropy(ub, ua.argmax(1))
    assert float(parts["cps"]) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(parts["lambda"]) == pytest.approx(0.1)
    assert float(parts["splat"]) == 0.0 and float(parts["cdps"]) == 0.0  # CPS has neither term


def test_splat_pulls_only_towards_the_other_networks_sharpened_confident_pixels():
    torch.manual_seed(0)
    m = DualUNet(2, base=4, depth=2, attention=False, inference="a")
    with torch.no_grad():  # make b confident and a doubtful everywhere on unlabelled pixels
        m.b.head.bias.copy_(torch.tensor([4.0, -4.0]))
        m.b.head.weight.zero_()
        m.a.head.bias.zero_()
        m.a.head.weight.zero_()
    x, y = _batch(classes=2)
    xu, _ = _batch(5)
    _, parts = semi_loss(m, x, y, xu, method="spmc", step=10, total=10, tau=0.7)
    # a is at (0.5, 0.5) everywhere, b at (0.9997, 0.0003): every unlabelled pixel is in a's
    # SPLAT mask, none in b's; a's target is b sharpened with T = 0.1 (≈ one-hot).
    assert float(parts["splat_pixels"]) == pytest.approx(0.5)
    q = torch.tensor([4.0, -4.0]).softmax(0)
    target = sharpen(q.view(1, 2, 1, 1), 0.1).flatten()
    expected = float(((torch.tensor([0.5, 0.5]) - target) ** 2).sum())  # every pixel, a's term only
    assert float(parts["splat"]) == pytest.approx(expected, rel=1e-4)


def test_unlabelled_patches_never_carry_the_hidden_masks(tmp_path):
    from augment.datasets import SliceDataset
    from augment.phantoms.render import write_phantom
    from downstream.harness.tasks import UnlabelledPatches

    write_phantom(tmp_path / "ph", "head-ich", 16, size=64, domain="A", seed=0, slices_per_patient=8,
                  overwrite=True, progress=False)
    ds = SliceDataset(tmp_path / "ph")
    assert any(ds[i].mask.any() for i in range(len(ds)))
    items = UnlabelledPatches([ds], 40, patch=32, seed=3)
    again = UnlabelledPatches([ds], 40, patch=32, seed=3)
    for i in range(40):
        s = items[i]
        assert s.image.shape == (32, 32) and not s.mask.any() and len(s.boxes) == 0
        assert np.array_equal(s.image, again[i].image)  # the draws depend on (seed, i) only


# ---------------------------------------------------------------- the strategy in the harness

SEMI = {
    "name": "semi",
    "data": {"phantom": "head-ich", "n": 48, "size": 64, "slices_per_patient": 8},
    "split": {"fractions": [0.5, 0.17, 0.33], "seed": 0},  # 3 training, 1 validation, 2 test patients
    "budgets": [1],
    "seeds": [0],
    "tasks": {
        "segment": {"arch": "attention-unet", "base": 4, "depth": 2, "steps": 3, "batch_size": 2, "val_every": 3,
                    "patch": 32},
        "detect": {"steps": 1, "batch_size": 2, "val_every": 1, "representation_size": 32,
                   "box_batch_size_per_image": 8, "patch": 32},
    },
    "semi": {"unlabelled_batch_size": 3},
    "strategies": [{"name": "none"}, {"name": "spmc", "semi-supervised": "spmc"},
                   {"name": "cps", "semi-supervised": "cps"},
                   {"name": "spmc+classical", "semi-supervised": "spmc", "augment": "standard"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def semi_compared(tmp_path_factory):
    from downstream.config import experiment_from_dict
    from downstream.harness.compare import run_compare

    out = tmp_path_factory.mktemp("semi")
    report = run_compare(experiment_from_dict(SEMI), out=out, progress=False)
    return out, report


def _rows(out):
    import json

    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_semi_strategies_learn_from_the_training_patients_outside_the_budget(semi_compared):
    from downstream.config import experiment_from_dict
    from downstream.harness.compare import Splits, prepare_data

    out, report = semi_compared
    exp = experiment_from_dict(SEMI)
    splits = Splits(exp, *prepare_data(exp, out / "data"))
    labelled = splits.labelled(1, 0)
    pool = splits.unlabelled(labelled)
    ids = {p for d in pool for p in d.patient_ids}
    assert ids == set(splits.train.patient_ids) - set(labelled.patient_ids)
    assert not ids & (splits.test_patients | set(splits.val.patient_ids))
    rows = {(r["task"], r["strategy"]): r for r in _rows(out)}
    for name, method in (("spmc", "spmc"), ("cps", "cps"), ("spmc+classical", "spmc")):
        semi = rows["segment", name]["metrics"]["semi"]
        assert semi["method"] == method and semi["inference"] == "mean"
        assert semi["n_unlabelled_slices"] == sum(len(d) for d in pool) == 16
        assert set(semi["dice_by_network"]) == {"a", "b", "mean"}
        assert semi["dice_by_network"]["mean"] == rows["segment", name]["metrics"]["dice"]
        assert rows["detect", name]["metrics"]["backbone"].startswith("unet, the run's segmenter")
    assert "semi" not in rows["segment", "none"]["metrics"]
    text = report.read_text()
    section = text.split("## Semi-supervised training")[1].split("\n## ")[0]
    for name in ("spmc", "cps", "spmc+classical"):
        line = next(x for x in section.splitlines() if x.startswith(f"| {name} |"))
        assert "| 16 |" in line and line.rstrip(" |").endswith("mean")
    # The default ceiling trains the baselines only: semi-supervision has nothing unlabelled there.
    assert exp.ceiling == ("none",)


def test_a_strategy_without_semi_supervision_keeps_its_cache_key(semi_compared, tmp_path):
    """Adding the option must not invalidate the caches of existing studies."""
    from dataclasses import asdict

    from downstream.config import Strategy

    assert "semi_supervised" in asdict(Strategy("none"))
    out, _ = semi_compared
    none = [r for r in _rows(out) if r["strategy"] == "none" and r["task"] == "segment"][0]
    # Recompute the key as the harness did before the option existed.
    from downstream.config import experiment_from_dict
    from downstream.harness.compare import (
        HARNESS_VERSION,
        Splits,
        _fingerprint,
        config_hash,
        prepare_data,
    )

    exp = experiment_from_dict(SEMI)
    splits = Splits(exp, *prepare_data(exp, out / "data"))
    labelled = splits.labelled(1, 0)
    old = {"v": HARNESS_VERSION, "strategy": {"name": "none", "augment": None, "generators": [], "ratio": 0.5,
                                              "synthetic_only": False},
           "seed": 0, "budget": 1, "labelled": _fingerprint(labelled), "synthetic": [],
           "val": _fingerprint(splits.val), "test": config_hash([x.id for x in splits.test_samples]),
           "task": "segment", "spec": {k: v for k, v in asdict(exp.tasks["segment"]).items() if k != "precision"},
           "init": None}
    assert none["key"] == config_hash(old)


def test_an_unlabelled_folder_holding_a_test_scan_is_refused(semi_compared, tmp_path):
    import shutil

    from augment.datasets import SliceDataset
    from downstream.config import experiment_from_dict
    from downstream.harness.compare import LeakageError, Splits, prepare_data

    out, _ = semi_compared
    exp = experiment_from_dict(SEMI)
    source, _ = prepare_data(exp, out / "data")
    shutil.copytree(source.folder, tmp_path / "same_scans")
    leaky = experiment_from_dict({**SEMI, "data": {**SEMI["data"], "unlabelled": str(tmp_path / "same_scans")}})
    with pytest.raises(LeakageError, match="test patients"):
        Splits(leaky, source, None)
    # Renamed patients do not hide a copied scan: the content check finds it.
    import json

    manifest = tmp_path / "same_scans" / "manifest.jsonl"
    recs = [json.loads(x) for x in manifest.read_text().splitlines()]
    for r in recs:
        r["patient_id"] = "other_" + r["patient_id"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert not set(SliceDataset(tmp_path / "same_scans").patient_ids) & set(source.patient_ids)
    with pytest.raises(LeakageError, match="identical to test slices"):
        Splits(leaky, source, None)


@pytest.mark.parametrize("change, message", [
    ({"strategies": [{"name": "none"}, {"name": "x", "semi-supervised": "fixmatch"}]}, "must be one of spmc, cps"),
    ({"semi": {"tau": 1.5}}, "semi: tau must be in (0, 1)"),
    ({"semi": {"inference": "max"}}, "inference must be a, b or mean"),
    ({"tasks": {"detect": {"init": "scratch"}}}, "trains the segmenter; add a tasks.segment section"),
    ({"data": {"phantom": "head-ich", "unlabelled": "/nonexistent/folder"}}, "no such folder"),
])  # fmt: skip
def test_bad_semi_configs_fail_before_any_work(change, message):
    import re

    from augment.errors import ConfigError
    from downstream.config import experiment_from_dict

    with pytest.raises(ConfigError, match=re.escape(message)):
        experiment_from_dict({**SEMI, **change})


def test_the_unlabelled_half_does_not_change_what_the_labelled_half_sees():
    """Labelled and unlabelled patches are normalised by BatchNorm separately: with the
    unsupervised terms off, the loss is the labelled-only loss (mixing them in one batch cut
    a 2-patient U-Net's Dice from 0.67 to 0.55, measured)."""
    torch.manual_seed(0)
    m = DualUNet(3, base=4, depth=2, attention=False)
    x, y = _batch()
    xu, _ = _batch(9)
    alone, _ = semi_loss(m, x, y, None, method="spmc", step=3, total=10)
    with_u, parts = semi_loss(m, x, y, xu, method="spmc", step=3, total=10, lambda_max=0.0)
    assert float(with_u.detach()) == pytest.approx(float(alone.detach()), rel=1e-6)
    assert float(parts["cps"]) > 0  # the unlabelled terms were computed, with weight 0


def test_scans_without_masks_import_as_unlabelled_and_serve_only_as_the_unlabelled_pool(tmp_path):
    """`data import --unlabelled`: NIfTI volumes with no masks become a dataset marked
    unlabelled; it is accepted as data.unlabelled and refused as labelled data."""
    from augment.datasets import SliceDataset
    from augment.errors import ConfigError, DataError
    from downstream.cli import main
    from downstream.config import experiment_from_dict
    from downstream.harness.compare import prepare_data
    from tests.augment.ct_builders import phantom_volume, write_nifti

    for i in range(2):
        hu, _ = phantom_volume((48, 48, 5))
        write_nifti(tmp_path / "scans" / f"case{i}.nii.gz", hu)
    assert main(["data", "import", str(tmp_path / "scans"), "--out", str(tmp_path / "unl"), "--unlabelled"]) == 0
    ds = SliceDataset(tmp_path / "unl")
    assert ds.info["unlabelled"] is True and len(ds) == 10
    assert not any(ds[i].mask.any() for i in range(len(ds)))
    assert main(["data", "import", str(tmp_path / "scans"), "--out", str(tmp_path / "x"), "--unlabelled",
                 "--slices", "lesion"]) == 2
    exp = experiment_from_dict({**SEMI, "data": {"folder": str(tmp_path / "unl")}})
    with pytest.raises(DataError, match="imported --unlabelled .* cannot be data.folder"):
        prepare_data(exp, tmp_path / "data")
    ok = experiment_from_dict({**SEMI, "data": {**SEMI["data"], "unlabelled": str(tmp_path / "unl")}})
    assert ok.data.unlabelled == str(tmp_path / "unl")
    with pytest.raises(ConfigError):
        from augment.io.ct import import_dataset

        import_dataset(tmp_path / "scans", tmp_path / "y", unlabelled=True, mask_dir=tmp_path / "scans")
