"""The harness on imported scans, as a user runs it on LiTS / MSD liver volumes:
NIfTI volume + segmentation (1 liver, 2 tumour) -> `lesionforge data import
--lesion-labels 2 --anatomy liver` -> `compare` on the folder, no code change.

The volumes are the liver phantom written as LiTS files (they cannot be downloaded here).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from augment.errors import ConfigError
from augment.phantoms.render import render_slice, spacing
from downstream.cli import main
from downstream.config import experiment_from_dict
from downstream.harness.compare import run_compare
from tests.augment.ct_builders import write_nifti

SIZE = 64


def write_lits(root, patients: int = 6, slices: int = 5) -> None:
    sp = spacing("liver", SIZE)
    for p in range(patients):
        hu = np.zeros((SIZE, SIZE, slices), np.float32)
        seg = np.zeros((SIZE, SIZE, slices), np.uint8)
        for k in range(slices):
            s, anatomy = render_slice("liver", p, k, size=SIZE)
            labels = np.where(s.mask > 0, 2, np.where(anatomy.regions["liver"], 1, 0)).astype(np.uint8)
            # The importer shows voxel slice k as volume[:, :, k].T[::-1, ::-1]; invert that.
            hu[:, :, k] = s.image[::-1, ::-1].T
            seg[:, :, k] = labels[::-1, ::-1].T
        write_nifti(root / "Training Batch 1" / f"volume-{p}.nii", hu, spacing=(sp[1], sp[0], 5.0))
        write_nifti(root / "Training Batch 1" / f"segmentation-{p}.nii", seg, spacing=(sp[1], sp[0], 5.0))


def experiment(folder, **data):
    return experiment_from_dict({
        "name": "lits",
        "data": {"folder": str(folder), **data},
        "split": {"fractions": [0.5, 0.17, 0.33], "seed": 0},
        "budgets": [2],
        "seeds": [0],
        "tasks": {
            "segment": {"arch": "unet", "base": 4, "depth": 2, "steps": 2, "batch_size": 4, "window": "liver-model"},
            "detect": {"steps": 1, "batch_size": 2, "window": "liver-model"},
        },
        "generators": {"pix2pix": {"steps": 2, "batch_size": 2, "n_synthetic": 4,
                                   "config": {"ngf": 4, "ndf": 4, "n_layers_d": 2}}},
        "strategies": [{"name": "none"}, {"name": "pix2pix", "generators": ["pix2pix"]}],
    })  # fmt: skip


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lits")
    write_lits(root / "src")
    out = root / "liver"
    assert main(["data", "import", str(root / "src"), "--out", str(out), "--lesion-labels", "2",
                 "--anatomy", "liver"]) == 0
    return root, out


def test_compare_runs_on_imported_liver_volumes(imported):
    root, folder = imported
    info = json.loads((folder / "dataset.json").read_text())
    assert info["anatomy"] == info["config"]["anatomy"] == "liver" and info["layout"] == "lits"
    report = run_compare(experiment(folder), out=root / "compare", progress=False)
    text = report.read_text()
    assert "## Segmentation: Dice" in text and "## Detection: mAP@0.5" in text
    rows = [json.loads(line) for line in (root / "compare" / "results.jsonl").read_text().splitlines()]
    assert {(r["task"], r["strategy"]) for r in rows} == {(t, s) for t in ("segment", "detect")
                                                          for s in ("none", "pix2pix")}
    # pix2pix learned where lesions go from the recorded anatomy: the liver, not a brain.
    run = next((root / "compare" / "generators").glob("pix2pix_*"))
    model_config = yaml.safe_load((run / "config.yaml").read_text())["model_config"]
    assert model_config["anatomy"] == "liver" and list(model_config["window"]) == [60, 400]


def test_imported_folder_without_anatomy_is_a_clear_error(imported, tmp_path):
    root, _ = imported
    bare = tmp_path / "bare"
    assert main(["data", "import", str(root / "src"), "--out", str(bare), "--lesion-labels", "2"]) == 0
    with pytest.raises(ConfigError, match="--anatomy"):
        run_compare(experiment(bare), out=tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="unknown anatomy"):
        run_compare(experiment(bare, anatomy="lung"), out=tmp_path / "c2", progress=False)
    from augment.io.ct import import_dataset

    with pytest.raises(ConfigError, match="import: unknown anatomy 'lung'"):
        import_dataset(root / "src", tmp_path / "lung", anatomy="lung")
    assert not (tmp_path / "lung").exists()


def test_gan_train_on_a_folder_without_anatomy_is_one_line(imported, tmp_path, capsys):
    root, _ = imported
    bare = tmp_path / "bare"
    assert main(["data", "import", str(root / "src"), "--out", str(bare), "--lesion-labels", "2"]) == 0
    capsys.readouterr()
    assert main(["gan", "train", "pix2pix", "--data", str(bare), "--steps", "1", "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bare) in err[0] and "--anatomy" in err[0]
    assert not (tmp_path / "run").exists()
