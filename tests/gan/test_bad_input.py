"""Bad input to `gan train`, `gan evaluate` and `synthesize` (issue #9): never a traceback,
never a silent default, never lost data.

Every refusal goes through `downstream.cli.main` in-process and must give exit code 2,
exactly one stderr line ``lesionforge: error: ...`` naming the file or option, and
leave no output and no staging file behind.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from augment.config_types import build_dataclass
from augment.errors import CheckpointError, ConfigError
from augment.folder import read_dataset
from downstream.cli import main
from gan.base import read_checkpoint
from gan.models.dcgan import DCGANConfig
from gan.train.config import TrainConfig

STAGING = re.compile(r"\.(tmp|partial|old)-\d+$")


class NotData:
    """A Python object in a checkpoint: `weights_only` refuses to unpickle it."""


def argv(*parts: str | Path) -> list[str]:
    """Command words: text is split on spaces, paths are kept whole."""
    out: list[str] = []
    for part in parts:
        out += part.split() if isinstance(part, str) else [str(part)]
    return out


def run_cli(*parts: str | Path) -> int:
    return main(argv(*parts))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    data, empty, run = root / "data", root / "empty", root / "run"
    assert run_cli("data phantom --n 16 --size 64 --out", data) == 0
    empty.mkdir()
    dcgan = root / "dcgan.yaml"
    dcgan.write_text("dcgan: {roi_size: 32, nz: 8, ngf: 4, ndf: 4}\n")
    pix2pix = root / "pix2pix.yaml"
    pix2pix.write_text("pix2pix: {ngf: 4, ndf: 4, n_layers_d: 2}\n")
    train = ("gan train pix2pix --data", data, "--config", pix2pix, "--device cpu --grid-every 0")
    assert run_cli(*train, "--steps 1 --out", run) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    files = {"log.jsonl": run / "log.jsonl", "random.bin": root / "random.bin"}
    files["random.bin"].write_bytes(os.urandom(4096))
    for name, obj in [
        ("no_step.pt", {k: v for k, v in ckpt.items() if k != "step"}),
        ("bad_ngf.pt", {**ckpt, "config": {**ckpt["config"], "ngf": "abc"}}),
        ("pickled.pt", {**ckpt, "extra": NotData()}),
    ]:
        files[name] = root / name
        torch.save(obj, files[name])
    return {"root": root, "data": data, "empty": empty, "dcgan": dcgan, "run": run,
            "train_pix2pix": train, **files}  # fmt: skip


def refused(capsys, command: list[str], *names: str | Path) -> str:
    """Run ``command``; assert exit 2 and one error line naming ``names``; return the line.

    Argument errors exit from argparse (``lesionforge gan train: error: ...``).
    """
    try:
        code = main(command)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and re.match(r"lesionforge( [a-z ]+)?: error: ", lines[0]), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def staging_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if STAGING.search(p.name)]


def train_dcgan(env, out, *extra: str | Path) -> list[str]:
    return argv("gan train dcgan --data", env["data"], "--config", env["dcgan"],
                "--device cpu --steps 1 --batch-size 2 --out", out, *extra)  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ options and configs


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--steps 0", "--steps must be >= 1"),  # was a FileNotFoundError traceback
        ("--batch-size 0", "--batch-size must be >= 1"),  # was silently 64
        ("--ckpt-every -1", "--ckpt-every must be >= 0"),
        ("--grid-every -5", "--grid-every must be >= 0"),
        ("--seed -1", "--seed"),
    ],
)
def test_train_refuses_bad_numbers_before_any_work(env, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    refused(capsys, train_dcgan(env, out, extra), message)
    assert not out.exists() and staging_files(tmp_path) == []


@pytest.mark.parametrize("n", ["0", "-1"])
def test_evaluate_and_synthesize_refuse_bad_n(env, tmp_path, capsys, n):
    evaluate = argv("gan evaluate", env["run"], "--data", env["data"], "--out", tmp_path / "e")
    refused(capsys, [*evaluate, "--n", n], "--n must be >= 2")
    synthesize = argv("synthesize --checkpoint", env["run"], "--out", tmp_path / "s")
    refused(capsys, [*synthesize, "--n", n], "--n must be >= 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        ('dcgan: {roi_size: 32, ngf: "abc"}', ["ngf", "expected an integer", "'abc'"]),
        ("dcgan: {roi_size: 32, lr: 1e-4}", ["lr", "expected a number", "write it as 0.0001"]),
        ("dcgan: {roi_size: 32, spectral_norm: 1}", ["spectral_norm", "true or false"]),
        ("dcgan: {roi_size: 32, window: [40]}", ["window", "expected 2 values"]),
        ("dcgan: {roi_size: 32, ngf: 0}", ["ngf must be >= 1"]),
        ("dcgan: {roi_size: 32, nfg: 4}", ["unknown option(s) nfg"]),
        ("dcgan: {roi_size: 32}\ntrain: {steps: 5}", ["unknown section(s) train"]),
    ],
)
def test_train_config_file_is_checked_key_by_key(env, tmp_path, capsys, yaml_text, words):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text + "\n")
    refused(capsys, train_dcgan(env, tmp_path / "run", "--config", config), config, *words)
    assert not (tmp_path / "run").exists()


def test_build_dataclass_checks_types_and_names_the_source():
    cfg = build_dataclass(DCGANConfig, {"window": [50, 100], "lr": 1, "n_classes": None})
    assert cfg.window == (50.0, 100.0) and isinstance(cfg.lr, float)
    with pytest.raises(
        ConfigError, match=r"^x\.pt: config: n_classes: expected an integer, got 'a'$"
    ):
        build_dataclass(DCGANConfig, {"n_classes": "a"}, source="x.pt: config")
    with pytest.raises(ConfigError, match=r"betas\[1\]: expected a number, got None"):
        build_dataclass(DCGANConfig, {"betas": [0.5, None]})
    with pytest.raises(ConfigError, match="missing option.*steps"):
        build_dataclass(TrainConfig, {"batch_size": 1, "out": "r"})
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        TrainConfig(steps=0, batch_size=1, out="r")


# ------------------------------------------------------------------------ run folders


def test_train_into_an_existing_run_suggests_resume_not_overwrite(env, tmp_path, capsys):
    run = shutil.copytree(env["run"], tmp_path / "run")
    before = (run / "last.pt").read_bytes()
    line = refused(capsys, train_dcgan(env, run), run, "--resume", "--out")
    assert "--overwrite" not in line
    assert (run / "last.pt").read_bytes() == before


def test_train_never_writes_into_a_folder_that_is_not_a_run(env, tmp_path, capsys):
    data = shutil.copytree(env["data"], tmp_path / "data")
    refused(capsys, train_dcgan(env, data), data, "not a training run folder")
    assert not (data / "config.yaml").exists() and not (data / "last.pt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own settings\n")
    refused(capsys, train_dcgan(env, mine), mine, "config.yaml")
    assert (mine / "config.yaml").read_text() == "my: own settings\n"
    nothing = tmp_path / "nothing"
    refused(capsys, train_dcgan(env, nothing, "--resume"), "last.pt", "checkpoint not found")
    assert not nothing.exists()


def test_resume_removes_staging_files_of_dead_processes_only(env, tmp_path, capsys):
    run = shutil.copytree(env["run"], tmp_path / "run")
    dead = run / f".last.pt.tmp-{dead_pid()}"
    dead.write_bytes(os.urandom(1024))  # what a kill -9 during a checkpoint write leaves
    dead_grid = run / "grids" / f".step_000001.png.tmp-{dead_pid()}"
    dead_grid.parent.mkdir(exist_ok=True)
    dead_grid.write_bytes(b"png")
    live = run / f".last.pt.tmp-{os.getppid()}"  # the parent of this test: running
    live.write_bytes(b"being written")
    # --steps 1 on a step-1 checkpoint: nothing to train, so no save cleans up instead.
    assert run_cli(*env["train_pix2pix"], "--steps 1 --resume --out", run) == 0
    assert not dead.exists() and not dead_grid.exists()
    assert live.read_bytes() == b"being written"


# ------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("no_step.pt", ["'step' is missing"]),
        ("bad_ngf.pt", ["config: ngf: expected an integer, got 'abc'"]),
        ("pickled.pt", ["not a lesionforge checkpoint", "Python objects", "refused for safety"]),
        ("log.jsonl", ["not a lesionforge checkpoint (not a PyTorch file"]),
        ("random.bin", ["not a lesionforge checkpoint (not a PyTorch file"]),
    ],
)
def test_bad_checkpoints_are_one_line(env, tmp_path, capsys, name, words):
    path = env[name]
    for command in (
        argv("synthesize --checkpoint", path, "--n 2 --device cpu --out", tmp_path / "syn"),
        argv(
            "gan evaluate", path, "--data", env["data"], "--n 2 --device cpu --out", tmp_path / "e"
        ),
    ):
        line = refused(capsys, command, path, *words)
        assert "weights_only" not in line and "can still be loaded" not in line
    assert list(tmp_path.iterdir()) == []


def test_read_checkpoint_names_the_field(env, tmp_path):
    ckpt = torch.load(env["run"] / "last.pt", weights_only=True)
    for field, value, match in [
        ("step", -1, "'step' must be an integer >= 0, got -1"),
        ("step", True, "'step' must be an integer >= 0, got True"),
        ("config", [1], "'config' must be a mapping of model options"),
        ("state_dict", {"w": 1}, "'state_dict' must be a mapping of names to tensors"),
        ("format", "other/1", "not a lesionforge checkpoint \\(format 'other/1'"),
    ]:
        path = tmp_path / f"{field}.pt"
        torch.save({**ckpt, field: value}, path)
        with pytest.raises(CheckpointError, match=rf"{field}\.pt: .*{match}"):
            read_checkpoint(path)


def test_synthesize_accepts_a_run_folder_like_evaluate(env, tmp_path, capsys):
    run = env["run"]
    a, b = tmp_path / "from_folder", tmp_path / "from_file"
    stale = tmp_path / f".from_folder.partial-{dead_pid()}"  # an interrupted synthesize
    (stale / "img").mkdir(parents=True)
    assert run_cli("synthesize --checkpoint", run, "--n 2 --device cpu --out", a) == 0
    assert run_cli("synthesize --checkpoint", run / "last.pt", "--n 2 --device cpu --out", b) == 0
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    assert read_dataset(a)[0]["checkpoint"]["path"] == str((run / "last.pt").resolve())
    assert not stale.exists()
    capsys.readouterr()
    command = argv("synthesize --checkpoint", env["empty"], "--n 2 --out", tmp_path / "c")
    refused(capsys, command, env["empty"], "no last.pt")
    assert staging_files(tmp_path) == []


def test_synthesize_never_replaces_its_inputs(env, tmp_path, capsys):
    data, run = env["data"], env["run"]
    before = (data / "manifest.jsonl").read_bytes()
    synthesize = argv("synthesize --n 2 --overwrite --device cpu --checkpoint", run)
    refused(capsys, [*synthesize, *argv("--out", data, "--hosts", data)], data)
    refused(capsys, [*synthesize, *argv("--out", run)], run)
    assert (data / "manifest.jsonl").read_bytes() == before and (run / "last.pt").is_file()
    assert staging_files(env["root"]) == []


# --------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_bad_data_and_fid_weights_before_sampling(env, tmp_path, capsys):
    out, small = tmp_path / "eval", tmp_path / "small"
    assert run_cli("data phantom --n 2 --size 32 --out", small) == 0
    capsys.readouterr()
    evaluate = argv("gan evaluate", env["run"], "--n 2 --device cpu --out", out, "--data")
    refused(capsys, [*evaluate, str(env["empty"])], env["empty"])
    refused(capsys, [*evaluate, str(tmp_path / "missing")], tmp_path / "missing")
    refused(capsys, [*evaluate, str(env["run"])], env["run"])  # a folder, not a dataset
    refused(capsys, [*evaluate, str(small)], small, "(32, 32)", "(64, 64)")
    with_data = [*evaluate, str(env["data"]), "--fid-weights"]
    refused(capsys, [*with_data, str(tmp_path / "nope.pth")], "nope.pth", "not found")
    line = refused(
        capsys, [*with_data, str(env["random.bin"])], env["random.bin"], "not pytorch-fid"
    )
    assert "weights_only" not in line
    refused(capsys, [*with_data, str(env["run"] / "last.pt")], "last.pt", "not pytorch-fid")
    assert not out.exists() and staging_files(tmp_path) == []


# ------------------------------------------------- options that do not fit the data (QA pass 2)


@pytest.fixture(scope="module")
def small(env):
    """Two 32 px datasets, domains A and B (8 slices each)."""
    root = env["root"]
    a, b = root / "small_a", root / "small_b"
    assert run_cli("data phantom --n 8 --size 32 --out", a) == 0
    assert run_cli("data phantom --n 8 --size 32 --domain B --out", b) == 0
    return {"a": a, "b": b}


def tiny_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text + "\n")
    return path


CYCLEGAN = "{ngf: 4, ndf: 4, n_blocks: 1, n_layers_d: 2, pool_size: 2}"


def test_patchgan_depth_bound_is_what_the_network_runs():
    from gan.networks.patchgan import NLayerDiscriminator, max_layers

    for side in (24, 32, 47, 64):
        for n in range(1, 6):
            net = NLayerDiscriminator(1, 2, n, "batch").train()
            try:
                net(torch.zeros(1, 1, side, side))
                ran = True
            except (RuntimeError, ValueError):
                ran = False
            assert ran == (n <= max_layers(side)), (side, n)


@pytest.mark.parametrize(
    ("model", "config", "on_small", "words"),
    [
        # was a RuntimeError traceback (kernel larger than input) after loading everything
        ("pix2pix", "{ngf: 4, ndf: 4, n_layers_d: 50}", False,
         ["n_layers_d = 50", "64 px", "n_layers_d <= 4"]),
        # were silently accepted: ROIs mostly padding, and no pasting possible afterwards
        ("dcgan", "{roi_size: 128, nz: 8, ngf: 4, ndf: 4}", False,
         ["roi_size = 128", "64x64 px", "roi_size <= 64"]),
        ("dcgan", "{roi_size: 64, nz: 8, ngf: 4, ndf: 4}", True,
         ["roi_size = 64", "32x32 px", "roi_size <= 32"]),
        ("cyclegan", "{ngf: 4, ndf: 4, n_blocks: 1, n_layers_d: 4, pool_size: 2}", True,
         ["n_layers_d = 4", "32 px", "n_layers_d <= 3"]),
    ],
)  # fmt: skip
def test_train_refuses_networks_the_slices_are_too_small_for(
    env, small, tmp_path, capsys, model, config, on_small, words
):
    out, path = tmp_path / "run", tiny_config(tmp_path, config)
    data = small["a"] if on_small else env["data"]
    extra = argv("--data-b", small["b"]) if model == "cyclegan" else []
    command = argv("gan train", model, "--data", data, "--config", path, "--device cpu --steps 1 --out", out)
    line = refused(capsys, [*command, *extra], path, *words)
    if model == "dcgan":
        assert str(data) in line
    assert not out.exists() and staging_files(tmp_path) == []


def test_cyclegan_refuses_domains_of_two_sizes_and_one_folder_twice(env, small, tmp_path, capsys):
    config, out = tiny_config(tmp_path, CYCLEGAN), tmp_path / "run"
    train = argv("gan train cyclegan --config", config, "--device cpu --steps 1 --out", out, "--data")
    # was accepted: 64 px domain A, 32 px domain B
    refused(capsys, [*train, *argv(env["data"], "--data-b", small["b"])],
            env["data"], small["b"], "64x64 px", "32x32 px")  # fmt: skip
    # A -> A is no domain shift; a link to the same folder is the same folder
    link = tmp_path / "link"
    link.symlink_to(env["data"])
    for b in (env["data"], link):
        refused(capsys, [*train, *argv(env["data"], "--data-b", b)], b, "--data-b", "same folder")
    assert not out.exists() and staging_files(tmp_path) == []


def test_data_b_is_for_cyclegan_only_and_cyclegan_needs_it(env, small, tmp_path, capsys):
    out = tmp_path / "run"
    # was "dcgan: learns from one dataset; a second one (data_b) is for cyclegan" (no option)
    refused(capsys, train_dcgan(env, out, "--data-b", small["b"]), "--data-b", small["b"])
    command = argv("gan train cyclegan --data", small["a"], "--config", tiny_config(tmp_path, CYCLEGAN),
                   "--device cpu --steps 1 --out", out)  # fmt: skip
    refused(capsys, command, "--data-b", "cyclegan")
    assert not out.exists()


def test_cyclegan_warns_when_both_datasets_say_one_domain(env, tmp_path, capsys, caplog):
    copy = shutil.copytree(env["data"], tmp_path / "copy")  # another folder, also domain A
    config = tiny_config(tmp_path, CYCLEGAN)
    command = argv("gan train cyclegan --data", env["data"], "--data-b", copy, "--config", config,
                   "--device cpu --steps 1 --grid-every 0 --out", tmp_path / "run")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gan.train.trainer"):
        assert main(command) == 0
    said = [r.getMessage() for r in caplog.records if "both say they are domain A" in r.getMessage()]
    assert len(said) == 1 and str(copy) in said[0]


def test_train_refuses_a_batch_larger_than_what_the_model_draws(env, small, tmp_path, capsys):
    out = tmp_path / "run"
    # was an OOM kill (--batch-size 100000 on 16 slices)
    refused(capsys, train_dcgan(env, out, "--batch-size 100000"), "--batch-size must be <= 1024")
    with pytest.raises(ConfigError, match="batch_size must be <= 1024"):
        TrainConfig(steps=1, batch_size=1025, out="r")
    # pix2pix draws its 7 lesion slices, CycleGAN the slices of each domain
    pix2pix = argv(*env["train_pix2pix"], "--steps 1 --batch-size 8 --out", out)
    refused(capsys, pix2pix, "--batch-size 8", env["data"], "7 lesion slices", "--batch-size <= 7")
    cyclegan = argv("gan train cyclegan --data", small["a"], "--data-b", small["b"], "--config",
                    tiny_config(tmp_path, CYCLEGAN), "--device cpu --steps 1 --batch-size 9 --out", out)  # fmt: skip
    refused(capsys, cyclegan, "--batch-size 9", small["a"], "8 domain A slices", "--batch-size <= 8")
    assert not out.exists() and staging_files(tmp_path) == []


def test_a_preset_batch_is_lowered_to_what_the_data_holds(env, tmp_path, caplog):
    from gan.train.trainer import train_generator

    with caplog.at_level(logging.WARNING, logger="gan.train.trainer"):
        result = train_generator(
            "pix2pix", env["data"], None, tmp_path / "run", steps=1, batch_size=None,
            default_batch_size=16, device="cpu", model_config={"ngf": 4, "ndf": 4, "n_layers_d": 2},
            progress=False, grid_n=0,
        )  # fmt: skip
    assert any("batch size 16 lowered to 7" in r.getMessage() for r in caplog.records)
    assert read_checkpoint(result["checkpoint"])["train"]["batch_size"] == 7


# --------------------------------------------------------------------------- resume


def test_resume_needs_no_flags_but_the_run(env, tmp_path, capsys):
    """A run trained at batch 1 (the old pix2pix preset) resumes although the cpu preset
    now says 4, and without its --config: options come from its checkpoint."""
    run = tmp_path / "run"
    assert run_cli(*env["train_pix2pix"], "--steps 1 --batch-size 1 --out", run) == 0
    before = read_checkpoint(run / "last.pt")
    resume = argv("gan train pix2pix --data", env["data"], "--device cpu --grid-every 0 --resume --out", run)
    assert main(resume) == 0  # its own 1 step: nothing to do
    assert main([*resume, "--steps", "2"]) == 0
    after = read_checkpoint(run / "last.pt")
    assert after["step"] == 2 and after["train"]["batch_size"] == 1
    assert after["config"] == before["config"]
    capsys.readouterr()
    # Given explicitly, another batch size is still refused: it would not resume exactly.
    refused(capsys, [*resume, "--steps", "3", "--batch-size", "2"], "last.pt", "batch_size=1, not 2",
            "leave out --batch-size")  # fmt: skip


def test_resume_below_the_checkpoint_step_warns_and_keeps_it(env, tmp_path, caplog):
    run = shutil.copytree(env["run"], tmp_path / "run")
    resume = argv("gan train pix2pix --data", env["data"], "--device cpu --resume --out", run)
    assert main([*resume, "--steps", "2"]) == 0  # the fixture's run stopped at step 1
    before = (run / "last.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="gan.train.trainer"):
        assert main([*resume, "--steps", "1"]) == 0
    assert any("already trained for 2 steps, more than the 1" in r.getMessage() for r in caplog.records)
    assert (run / "last.pt").read_bytes() == before


# ------------------------------------------------------------------ checkpoints (pass 2)


def test_a_plain_pickle_is_one_line_without_torch_warnings(env, tmp_path, capsys, recwarn):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(pickle.dumps({"step": 1}))
    refused(capsys, argv("synthesize --checkpoint", run, "--n 2 --out", tmp_path / "syn"),
            run / "last.pt", "not a lesionforge checkpoint")  # fmt: skip
    assert [str(w.message) for w in recwarn] == []
    assert not (tmp_path / "syn").exists()


def test_checkpoints_with_nan_weights_are_refused_at_load(env, tmp_path, capsys):
    ckpt = torch.load(env["run"] / "last.pt", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["state_dict"][name] = ckpt["state_dict"][name].clone().fill_(float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(ckpt, path)
    # was "syn_00000: image contains NaN", naming neither the checkpoint nor the weight
    for command in (
        argv("synthesize --checkpoint", path, "--n 2 --device cpu --out", tmp_path / "syn"),
        argv("gan evaluate", path, "--data", env["data"], "--n 2 --device cpu --out", tmp_path / "e"),
    ):
        refused(capsys, command, path, f"weight {name!r}", "NaN")
    with pytest.raises(CheckpointError, match="NaN"):
        read_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


# ---------------------------------------------------------------- synthesize, evaluate


def test_synthesize_refuses_more_slices_than_the_disk_holds(env, tmp_path, capsys):
    from augment.datasets import load_samples
    from gan.synthesize import estimate_bytes

    out = tmp_path / "syn"
    # was: writing until the disk was full
    line = refused(capsys, argv("synthesize --checkpoint", env["run"], "--n 1000000000000 --out", out),
                   out, "--n 1000000000000", "64x64 px", "free")  # fmt: skip
    assert "PB" in line and not out.exists() and staging_files(tmp_path) == []
    # The estimate is not below what a real synthesis writes.
    assert run_cli("synthesize --checkpoint", env["run"], "--n 3 --device cpu --out", out) == 0
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written <= estimate_bytes(3, load_samples(env["data"]))


def test_evaluate_writes_only_into_its_own_output(env, tmp_path, capsys):
    from gan.evaluate.protocol import check_evaluation_out

    evaluate = argv("gan evaluate", env["run"], "--data", env["data"], "--n 2 --device cpu --out")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("mine\n")
    # was: the user's metrics.json replaced by ours
    refused(capsys, [*evaluate, str(mine)], mine, "not a gan evaluate output", "metrics.json", "--out")
    assert (mine / "metrics.json").read_text() == "mine\n"
    (mine / "metrics.json").unlink()
    (mine / "notes.txt").write_text("mine\n")
    refused(capsys, [*evaluate, str(mine)], mine, "notes.txt")
    refused(capsys, [*evaluate, str(env["data"])], env["data"], "not a gan evaluate output")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # A new folder, then the same folder again: an earlier evaluation is replaced.
    out = tmp_path / "eval"
    assert main([*evaluate, str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["format"] == "lesionforge-gan-evaluation/1"
    assert main([*evaluate, str(out)]) == 0
    # One written before the format key (its metrics.json has the keys every one has).
    old = tmp_path / "old"
    old.mkdir()
    record = {"checkpoint": "x", "checkpoint_sha256": "0", "step": 1, "config": {}, "versions": {}}
    (old / "metrics.json").write_text(json.dumps(record))
    (old / "grid.png").write_bytes(b"png")
    check_evaluation_out(old)


def test_pix2pix_refuses_a_size_other_than_the_slices_before_building(env, tmp_path, capsys):
    config, out = tiny_config(tmp_path, "{ngf: 4, ndf: 4, size: 128}"), tmp_path / "run"
    command = argv("gan train pix2pix --data", env["data"], "--config", config, "--device cpu --steps 1 --out", out)
    refused(capsys, command, env["data"], "size = 128", "64x64 px")
    assert not out.exists()
