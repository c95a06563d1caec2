"""Explicit splits (`split.file`: nnU-Net's splits_final.json or {train, val, test}) and an
external test cohort (`data.test_folder`): parsed, checked and guarded before training."""

from __future__ import annotations

import json
import shutil

import pytest

from augment.errors import ConfigError, DataError
from augment.phantoms.render import write_phantom
from downstream.config import experiment_from_dict
from downstream.harness.compare import (
    EXTERNAL_PREFIX,
    LeakageError,
    Splits,
    prepare_data,
    run_compare,
)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Two phantom cohorts: 'ours' (6 patients) and an external one (2 other patients)."""
    root = tmp_path_factory.mktemp("cohorts")
    ours = write_phantom(root / "ours", "head-ich", 24, size=32, seed=0, slices_per_patient=4)
    external = write_phantom(root / "public", "head-ich", 8, size=32, seed=4, slices_per_patient=4)
    return root, ours, external


def config(folder, **changes):
    cfg = {
        "name": "splits",
        "data": {"folder": str(folder), "anatomy": "head-ich"},
        "split": {"fractions": [0.5, 0.17, 0.33], "seed": 0},
        "budgets": [2],
        "seeds": [0],
        "tasks": {"segment": {"arch": "unet", "base": 4, "depth": 2, "steps": 2, "batch_size": 2, "patch": 16,
                              "val_every": 1}},
        "strategies": [{"name": "none"}],
        "ceiling": False,
    }
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def test_plain_split_file_decides_every_part(cohorts, tmp_path):
    _, ours, _ = cohorts
    split = {"train": ["p000", "p001", "p002"], "val": ["p003"], "test": ["p004", "p005"]}
    (tmp_path / "splits.json").write_text(json.dumps(split))
    (tmp_path / "study.yaml").write_text("")  # a relative split.file is read next to the YAML
    exp = experiment_from_dict(config(ours, split={"file": "splits.json"}), where=str(tmp_path / "study.yaml"))
    splits = Splits(exp, *prepare_data(exp, tmp_path))
    assert set(splits.train.patient_ids) == set(split["train"])
    assert set(splits.val.patient_ids) == set(split["val"])
    assert splits.test_patients == set(split["test"])


def test_nnunet_splits_final_with_an_external_test_folder(cohorts, tmp_path):
    _, ours, external = cohorts
    folds = [{"train": ["p000", "p001", "p002", "p003"], "val": ["p004", "p005"]},
             {"train": ["p002", "p003", "p004", "p005"], "val": ["p000", "p001"]}]  # fmt: skip
    (tmp_path / "splits_final.json").write_text(json.dumps(folds))
    cfg = config(ours, split={"file": str(tmp_path / "splits_final.json"), "fold": 1})
    cfg["data"]["test_folder"] = str(external)
    exp = experiment_from_dict(cfg)
    splits = Splits(exp, *prepare_data(exp, tmp_path))
    assert set(splits.train.patient_ids) == set(folds[1]["train"])
    assert set(splits.val.patient_ids) == set(folds[1]["val"])
    # The whole external cohort is the test set, its ids marked as external.
    assert len(splits.test_samples) == 8
    assert splits.test_patients == {EXTERNAL_PREFIX + p for p in ("p000", "p001")}
    # Ids that exist in both cohorts are different people: no false leakage alarm.
    splits.assert_unseen("training set", splits.train)


def test_external_test_folder_with_fractions_end_to_end(cohorts, tmp_path):
    _, ours, external = cohorts
    cfg = config(ours, split={"fractions": [0.7, 0.3, 0], "seed": 0})
    cfg["data"]["test_folder"] = str(external)
    run_compare(experiment_from_dict(cfg), out=tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["n_test_slices"] == 8 for r in rows)
    scored = {p for r in rows for p in r["metrics"]["per_patient"]}  # patients with a lesion
    assert scored and scored <= {EXTERNAL_PREFIX + "p000", EXTERNAL_PREFIX + "p001"}


def test_an_external_cohort_holding_training_slices_is_leakage(cohorts, tmp_path):
    _, ours, _ = cohorts
    leaky = tmp_path / "leaky"
    shutil.copytree(ours, leaky)  # the same scans under the same ids: a copy, not a cohort
    with pytest.raises(LeakageError, match="identical to training"):
        splits_with_external(ours, leaky, tmp_path)


def test_an_external_cohort_whose_classes_mean_something_else(cohorts, tmp_path):
    _, ours, external = cohorts
    other = tmp_path / "other"
    shutil.copytree(external, other)
    info = json.loads((other / "dataset.json").read_text())
    info["classes"]["1"] = "tumour"
    (other / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="'tumour' here but 'IPH'"):
        splits_with_external(ours, other, tmp_path)


def splits_with_external(ours, external, tmp_path) -> Splits:
    cfg = config(ours, split={"fractions": [0.7, 0.3, 0], "seed": 0})
    cfg["data"]["test_folder"] = str(external)
    exp = experiment_from_dict(cfg)
    return Splits(exp, *prepare_data(exp, tmp_path))


def test_split_file_naming_unknown_patients(cohorts, tmp_path):
    _, ours, _ = cohorts
    (tmp_path / "s.json").write_text(json.dumps({"train": ["p000", "nobody"], "test": ["p001"]}))
    exp = experiment_from_dict(config(ours, split={"file": str(tmp_path / "s.json")}))
    with pytest.raises(DataError, match="nobody"):
        Splits(exp, *prepare_data(exp, tmp_path))


@pytest.mark.parametrize(
    "content, split, message",
    [
        ({"train": ["a"], "val": ["a"], "test": ["b"]}, {}, "in both 'train' and 'val'"),
        ([{"train": ["a"], "val": ["b"]}], {"fold": 3}, "has 1 folds"),
        ({"train": ["a"], "val": ["b"]}, {}, "names no test patients"),
        ({"train": ["a"], "test": ["b"], "holdout": []}, {}, "unknown key(s) holdout"),
        ({"train": "a", "test": ["b"]}, {}, "'train' must be a list"),
        ({"train": ["a"], "test": ["b"]}, {"fractions": [0.5, 0.2, 0.3]}, "the file decides"),
        ("not json", {}, "not a JSON split file"),
    ],
)
def test_bad_split_files(cohorts, tmp_path, content, split, message):
    _, ours, _ = cohorts
    path = tmp_path / "s.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        experiment_from_dict(config(ours, split={"file": str(path), **split}))


def test_external_test_folder_needs_no_test_fraction(cohorts):
    _, ours, external = cohorts
    cfg = config(ours)
    cfg["data"]["test_folder"] = str(external)
    with pytest.raises(ConfigError, match="set the test part of split.fractions to 0"):
        experiment_from_dict(cfg)
