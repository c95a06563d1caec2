"""Bad input to `gan train`, `gan evaluate` and `synthesize` (issue #9): never a traceback,
never a silent default, never lost data.

Every refusal goes through `downstream.cli.main` in-process and must give exit code 2,
exactly one stderr line ``lesionforge: error: ...`` naming the file or option, and
leave no output and no staging file behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from augment.errors import CheckpointError, ConfigError
from augment.sample import read_dataset
from downstream.cli import main
from gan.base import config_from_dict, read_checkpoint
from gan.dcgan import DCGANConfig
from gan.trainer import TrainConfig

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
    """Run ``command``; assert exit 2 and one error line naming ``names``; return the line."""
    code = main(command)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lesionforge: error: "), err
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
        ("--seed -1", "--seed must be >= 0"),
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


def test_config_from_dict_checks_types_and_names_the_source():
    cfg = config_from_dict(DCGANConfig, {"window": [50, 100], "lr": 1, "n_classes": None})
    assert cfg.window == (50.0, 100.0) and isinstance(cfg.lr, float)
    with pytest.raises(
        ConfigError, match=r"^x\.pt: config: n_classes: expected an integer, got 'a'$"
    ):
        config_from_dict(DCGANConfig, {"n_classes": "a"}, source="x.pt: config")
    with pytest.raises(ConfigError, match=r"betas\[1\]: expected a number, got None"):
        config_from_dict(DCGANConfig, {"betas": [0.5, None]})
    with pytest.raises(ConfigError, match="missing option.*steps"):
        config_from_dict(TrainConfig, {"batch_size": 1, "out": "r"})
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
