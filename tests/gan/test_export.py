"""Generator-only exports (`lesionforge gan export`): what they hold, and that synthesize,
`GanModule.load` and `MixedDataset` use them as they use a full checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from augment.datasets import MixedDataset, SliceDataset
from augment.errors import ConfigError
from augment.folder import read_dataset
from augment.phantoms.render import write_phantom
from augment.storage import sha256_file
from downstream.cli import main
from gan.base import GanModule, read_checkpoint
from gan.export import export_generator
from gan.synthesize import synthesize_dataset
from gan.train.trainer import train_generator
from tests.conftest import TINY_GENERATORS as TINY
from tests.gan.test_contract import NEEDS_SHAPE

DISCRIMINATORS = {"dcgan": ("netD",), "pix2pix": ("net_d",), "cyclegan": ("d_a", "d_b")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 1-step run per built-in generator on a 64 px phantom: ``{model: run folder}``."""
    root = tmp_path_factory.mktemp("export")
    data = write_phantom(root / "data", "head-ich", 16, size=64, seed=0, slices_per_patient=8)
    data_b = write_phantom(
        root / "data_b", "head-ich", 16, size=64, domain="B", seed=0, slices_per_patient=8
    )
    out = {}
    for model, config in TINY.items():
        train_generator(
            model, data, data_b if model == "cyclegan" else None, root / model, steps=1, batch_size=2,
            seed=0, device="cpu", model_config=config, progress=False, grid_n=0,
        )  # fmt: skip
        if model in NEEDS_SHAPE:  # DCGAN draws no usable mask after one step
            NEEDS_SHAPE[model](str(root / model / "last.pt"))
        out[model] = root / model
    return out


@pytest.mark.parametrize("model", sorted(TINY))
def test_export_holds_the_generator_only(runs, tmp_path, model):
    run = runs[model]
    result = export_generator(run, tmp_path / "gen.pt")
    full = torch.load(run / "last.pt", weights_only=True)
    gen = torch.load(tmp_path / "gen.pt", weights_only=True)  # plain data: tensors, dicts, text
    assert "optimizers" not in gen and "rng" not in gen and "train" not in gen
    assert not [k for k in gen["state_dict"] if k.split(".")[0] in DISCRIMINATORS[model]]
    assert result["left_out"] == sorted(DISCRIMINATORS[model])
    # Everything else of the full checkpoint is there, unchanged: the generator's weights, its
    # model config, the training data's fingerprint, the step.
    for k, v in gen["state_dict"].items():
        assert torch.equal(v, full["state_dict"][k]), k
    assert gen["config"] == full["config"] and gen["step"] == full["step"] >= 1
    assert gen["data"] == full["data"] and gen["data"]["fingerprint"]
    assert gen["model"] == model and "torch" in gen["versions"]
    assert gen["export"]["source_sha256"] == sha256_file(run / "last.pt")
    assert result["bytes"] * 2.5 < result["source_bytes"]
    read_checkpoint(tmp_path / "gen.pt")  # passes the same checks as a full checkpoint


@pytest.mark.parametrize("model", sorted(TINY))
def test_synthesize_from_export_equals_synthesize_from_run(runs, tmp_path, model):
    run = runs[model]
    export_generator(run, tmp_path / "gen.pt")
    a = synthesize_dataset(run, 6, tmp_path / "from_run", seed=5, chunk=4, device="cpu")
    b = synthesize_dataset(
        tmp_path / "gen.pt", 6, tmp_path / "from_export", seed=5, chunk=4, device="cpu"
    )
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.parts[0] in ("img", "mask"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    info_a, records_a = read_dataset(a)
    info_b, records_b = read_dataset(b)
    for ra, rb in zip(records_a, records_b, strict=True):
        assert ra.pop("checkpoint_sha256") == sha256_file(run / "last.pt")
        assert rb.pop("checkpoint_sha256") == sha256_file(tmp_path / "gen.pt")
        assert ra == rb
    assert info_b["checkpoint"]["exported_from_sha256"] == sha256_file(run / "last.pt")


def test_gan_module_load_and_mixed_dataset_accept_an_export(runs, tmp_path):
    export_generator(runs["pix2pix"], tmp_path / "gen.pt")
    real = SliceDataset(runs["pix2pix"].parent / "data")
    items = {}
    for name, source in (("run", runs["pix2pix"]), ("export", tmp_path / "gen.pt")):
        generator = GanModule.load(source)
        assert generator.data_info["fingerprint"]
        mixed = MixedDataset(real, generator, ratio=1.0, length=6, seed=3)
        items[name] = [mixed[i] for i in range(len(mixed))]
    for x, y in zip(items["run"], items["export"], strict=True):
        assert x.id == y.id and (x.image == y.image).all() and (x.mask == y.mask).all()


def test_mixed_dataset_gives_every_live_item_its_own_id(runs):
    real = SliceDataset(runs["dcgan"].parent / "data")
    generator = GanModule.load(runs["dcgan"])
    mixed = MixedDataset(real, generator, ratio=1.0, length=5, seed=7)
    ids = [mixed[i].id for i in range(5)]
    assert len(set(ids)) == 5 and ids == [mixed[i].id for i in range(5)]  # unique, reproducible
    assert ids[2] == "syn_s7_e0_000002" and mixed[2].meta["model_id"] == "syn_00000"
    mixed.set_epoch(1)
    assert not set(ids) & {mixed[i].id for i in range(5)}  # a new epoch, new items


def test_cli_gan_export(runs, tmp_path, capsys):
    out = tmp_path / "gen.pt"
    assert main(["gan", "export", str(runs["dcgan"]), "--out", str(out)]) == 0
    assert "exported the dcgan generator (step 2)" in capsys.readouterr().out
    assert main(["gan", "export", str(runs["dcgan"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["gan", "export", str(runs["dcgan"]), "--out", str(out), "--overwrite"]) == 0
    with pytest.raises(ConfigError, match="being exported"):
        export_generator(runs["dcgan"], runs["dcgan"] / "last.pt", overwrite=True)
    # synthesize takes the export, and a run folder, as --checkpoint
    for ckpt in (out, runs["dcgan"]):
        dest = tmp_path / f"syn_{ckpt.name}"
        argv = ["synthesize", "--checkpoint", str(ckpt), "--n", "2", "--out", str(dest)]
        assert main([*argv, "--device", "cpu"]) == 0
        assert json.loads((dest / "dataset.json").read_text())["n_samples"] == 2
