"""The comparison harness end to end on a tiny phantom experiment: splits by patient, no
test leakage, generators trained on the labelled subset only, a report with every
section, and a cached rerun that recomputes nothing."""

from __future__ import annotations

import json
import re

import pytest

from augment.errors import DataError
from downstream.config import experiment_from_dict
from downstream.harness.compare import LeakageError, Splits, prepare_data, run_compare
from tests.conftest import TINY_GENERATORS

TINY = {
    "name": "tiny",
    "data": {"phantom": "head-ich", "n": 48, "size": 64, "domain": "A", "target_domain": "B",
             "test_on": "both", "slices_per_patient": 8},
    "split": {"fractions": [0.5, 0.17, 0.33], "seed": 0},
    "budgets": [2],
    "seeds": [0],
    "tasks": {
        "segment": {"arch": "attention-unet", "base": 4, "depth": 2, "steps": 2, "batch_size": 4, "val_every": 1,
                    "patch": 32},
        "detect": {"steps": 1, "batch_size": 2, "cost_sensitive": True, "alpha": 2.0, "max_ratio": 3.0,
                   "val_every": 1, "representation_size": 64, "box_batch_size_per_image": 16},
    },
    "generators": {"pix2pix": {"steps": 2, "batch_size": 2, "n_synthetic": 4,
                               "config": TINY_GENERATORS["pix2pix"]}},
    "strategies": [{"name": "none"}, {"name": "pix2pix", "generators": ["pix2pix"], "ratio": 0.5}],
}  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    report = run_compare(experiment_from_dict(TINY), out=out, progress=False)
    return out, report


def test_splits_are_by_patient_and_the_test_set_is_guarded(compared):
    out, _ = compared
    exp = experiment_from_dict(TINY)
    source, target = prepare_data(exp, out / "data")
    splits = Splits(exp, source, target)
    train, val = set(splits.train.patient_ids), set(splits.val.patient_ids)
    assert train and val and splits.test_patients
    assert not (train & val) and not (train & splits.test_patients) and not (val & splits.test_patients)
    labelled = splits.labelled(2, 0)
    assert len(set(labelled.patient_ids)) == 2 and set(labelled.patient_ids) <= train
    # The test set holds both scanners' renderings of the test patients.
    assert {s.meta.get("domain", s.id) for s in splits.test_samples} and len(splits.test_samples) == 2 * sum(
        p in splits.test_patients for p in source.patient_ids
    )
    with pytest.raises(LeakageError, match="test patients"):
        splits.assert_unseen("a leaky set", splits.test_samples[:1])


def test_generators_saw_only_the_labelled_patients(compared):
    out, _ = compared
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    (run,) = [p for p in (out / "generators").iterdir() if p.name.startswith("pix2pix")]
    ckpt_data = json.loads((run / "done.json").read_text())
    assert ckpt_data["steps"] == 2
    import torch

    data = torch.load(run / "last.pt", weights_only=True)["data"]
    exp = experiment_from_dict(TINY)
    source, target = prepare_data(exp, out / "data")
    splits = Splits(exp, source, target)
    assert set(data["patient_ids"]) == set(splits.labelled(2, 0).patient_ids)
    # The synthetic set is written by gan.synthesize_dataset, as `gan synthesize` writes one:
    # same format, same seed scheme, traced to its checkpoint and hosts.
    from augment.folder import read_dataset
    from augment.storage import sha256_file

    (syn,) = [p for p in (out / "synthetic").iterdir() if p.name.startswith("pix2pix")]
    info, records = read_dataset(syn)
    assert info["generator"] == "pix2pix" and info["checkpoint"]["sha256"] == sha256_file(run / "last.pt")
    assert info["seed"] == 0 and info["n_hosts"] == len(splits.labelled(2, 0))
    assert [r["id"] for r in records] == [f"syn_{i:06d}" for i in range(len(records))]
    assert {r["n_labelled_patients"] for r in rows if not r.get("ceiling")} == {2}
    # The full-data ceiling: the baseline trained on every training patient (and only there).
    ceiling = [r for r in rows if r.get("ceiling")]
    assert {r["strategy"] for r in ceiling} == {"none"} and {r["task"] for r in ceiling} == {"segment", "detect"}
    assert {r["n_labelled_patients"] for r in ceiling} == {len(set(splits.train.patient_ids))}


def test_rows_carry_per_patient_metrics_and_the_validation_curve(compared):
    out, _ = compared
    exp = experiment_from_dict(TINY)
    source, target = prepare_data(exp, out / "data")
    splits = Splits(exp, source, target)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in rows:
        # Per-patient values exist for the test patients with a lesion, and only for test patients.
        assert r["metrics"]["per_patient"] and set(r["metrics"]["per_patient"]) <= splits.test_patients
        # One validation score per val_every steps and at the last step (2 steps, val_every 1).
        assert [s for s, _ in r["val_curve"]] == list(range(1, TINY["tasks"][r["task"]]["steps"] + 1))
        assert isinstance(r["undertrained"], bool)
    det = next(r for r in rows if r["task"] == "detect")
    assert det["metrics"]["backbone"] == "unet, the run's segmenter, fine-tuned"


def test_report_has_every_section_with_numbers_from_the_runs(compared):
    out, report = compared
    text = report.read_text()
    for heading in ("## Verdict", "## Segmentation: Dice", "## Detection: mAP@0.5", "## Generator quality",
                    "## Run times"):
        assert heading in text, heading
    assert (out / "report.html").exists()
    assert (out / "plots" / "segment_dice_vs_budget.png").exists()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 + 2  # tasks x strategies (one budget, one seed) + the ceiling's none
    none = next(r for r in rows if r["task"] == "segment" and r["strategy"] == "none")
    dice = none["metrics"]["dice"]
    assert f"{dice:.3f}" in text  # the table shows the run's own number
    assert "FID" in text and "unavailable" in text  # no Inception weights here: said plainly
    # The generator table reads the quality results' own keys: no cell of pix2pix's
    # memorisation columns is empty.
    row = next(line for line in text.splitlines() if line.startswith("| pix2pix |") and "unavailable" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] != "–" and cells[6] != "–", row  # max SSIM to training, copies fraction


def test_cached_rerun_recomputes_nothing(compared, monkeypatch):
    out, report = compared
    import downstream.harness.tasks
    import gan.train.trainer

    def fail(*a, **k):
        raise AssertionError("a cached rerun must not train anything")

    monkeypatch.setattr(gan.train.trainer, "train", fail)
    monkeypatch.setattr(downstream.harness.tasks, "run_task", fail)
    before = (out / "results.jsonl").read_text()
    run_compare(experiment_from_dict(TINY), out=out, progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["cached"] for r in rows)
    strip = lambda text: [{k: v for k, v in json.loads(x).items() if k != "cached"} for x in text.splitlines()]  # noqa: E731
    assert strip(before) == strip((out / "results.jsonl").read_text())


def test_cyclegan_without_a_target_domain_is_a_clear_error(tmp_path):
    raw = {**TINY, "data": {**TINY["data"], "target_domain": None, "test_on": "source"},
           "generators": {"cyclegan": {"steps": 1, "batch_size": 1, "n_synthetic": 2, "config": {"ngf": 4}}},
           "strategies": [{"name": "none"}, {"name": "cyclegan", "generators": ["cyclegan"]}]}  # fmt: skip
    with pytest.raises(DataError, match="target domain"):
        run_compare(experiment_from_dict(raw), out=tmp_path, progress=False)


@pytest.mark.parametrize("name", ["demo", "smoke", "ich_study", "ich_study_gpu", "liver_study", "domain_shift",
                                  "semi_study"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    from downstream.config import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert len(exp.seeds) >= 2 and exp.tasks and any(s.name == "none" for s in exp.strategies)
    for strategy in exp.strategies:
        assert set(strategy.generators) <= set(exp.generators), strategy.name


def test_same_seed_same_numbers(compared, tmp_path):
    """A second run from scratch (nothing cached) gives the same metrics and validation
    curves: every draw is seeded, and the same CPU computes the same floats."""
    out, _ = compared
    run_compare(experiment_from_dict(TINY), out=tmp_path, progress=False)

    def numbers(folder):
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        return sorted((r["task"], r["strategy"], r["budget"], r["seed"], json.dumps(r["metrics"], sort_keys=True),
                       json.dumps(r["val_curve"])) for r in rows)

    assert numbers(tmp_path) == numbers(out)


@pytest.mark.parametrize("change, message", [
    ({"tasks": {"segment": {**TINY["tasks"]["segment"], "patch": 30}}}, "multiple of 2^depth"),
    ({"tasks": {"segment": {**TINY["tasks"]["segment"], "steps": "abc"}}}, "tasks.segment.steps: expected an integer"),
    ({"tasks": {"segment": {**TINY["tasks"]["segment"], "lr": "fast"}}}, "tasks.segment.lr: expected a number"),
    ({"budgets": [-1]}, "budgets: values must be in 1..2147483647"),
    ({"budgets": "abc"}, "budgets: expected a list of integers"),
    ({"ceiling": ["pix2pix"]}, "uses generators"),
    ({"tasks": {"detect": TINY["tasks"]["detect"]}}, "init: segmenter needs a tasks.segment section"),
])  # fmt: skip
def test_bad_configs_fail_before_any_work(change, message):
    from augment.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        experiment_from_dict({**TINY, **change})


def test_a_patch_larger_than_the_slices_is_refused_before_training(tmp_path, monkeypatch):
    import gan.train.trainer
    from augment.errors import ConfigError

    monkeypatch.setattr(gan.train.trainer, "train", lambda *a, **k: pytest.fail("trained before checking sizes"))
    raw = {**TINY, "tasks": {"segment": {**TINY["tasks"]["segment"], "patch": 96}}}
    with pytest.raises(ConfigError, match="larger than the 64 px slices"):
        run_compare(experiment_from_dict(raw), out=tmp_path, progress=False)
