"""The generator commands end to end through `lesionforge` (downstream.cli.main):
phantom -> gan train -> resume -> synthesize -> gan evaluate, and their user errors."""

from __future__ import annotations

import json

import pytest

from augment.folder import load_sample, read_dataset
from downstream.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    assert main(["data", "phantom", "--kind", "head-ich", "--n", "16", "--size", "64", "--out", str(data)]) == 0
    config = root / "tiny.yaml"
    config.write_text("pix2pix: {ngf: 4, ndf: 4, n_layers_d: 2}\n")
    run = root / "run"
    args = ["gan", "train", "pix2pix", "--data", str(data), "--steps", "2", "--out", str(run),
            "--config", str(config), "--device", "cpu", "--ckpt-every", "1", "--grid-every", "2"]
    assert main(args) == 0
    return root, data, run, args


def test_gan_train_writes_checkpoint_log_grid_and_config(trained):
    _, _, run, _ = trained
    assert (run / "last.pt").exists() and (run / "config.yaml").exists()
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "steps_per_s" in r] == [2]  # log_every 10: the last step
    assert [r["step"] for r in records if "grid" in r] == [2]
    assert (run / "grids" / "step_000002.png").exists()


def test_train_refuses_to_overwrite_and_resumes(trained, capsys):
    _, _, run, args = trained
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args[:6], "3", *args[7:], "--resume"]) == 0  # --steps 3, continue from 2
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "steps_per_s" in r] == [2, 3]


def test_synthesize_and_evaluate_from_the_cli(trained, capsys):
    root, data, run, _ = trained
    out = root / "syn"
    assert main(["synthesize", "--checkpoint", str(run / "last.pt"), "--n", "3", "--out", str(out),
                 "--device", "cpu", "--seed", "1"]) == 0
    info, records = read_dataset(out)
    assert len(records) == 3 and info["generator"] == "pix2pix"
    assert all(load_sample(out, r, verify=True).meta["synthetic"] for r in records)
    assert main(["gan", "evaluate", str(run), "--data", str(data), "--n", "3", "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "memorisation" in json.dumps(metrics)
    assert "FID" in capsys.readouterr().out


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["synthesize", "--checkpoint", str(tmp_path / "nope.pt"), "--n", "1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0] and "not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_threads_option_sets_torch_threads_and_rejects_nonsense(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["synthesize", "--checkpoint", str(tmp_path / "nope.pt"), "--n", "1",
                     "--out", str(tmp_path / "o"), "--threads", "1"]) == 2  # fails later, on the checkpoint
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["demo", "--threads", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_cpu_preset_sizes_the_run_and_config_overrides_it(trained):
    import torch

    from gan.registry import REGISTRY

    root, data, _, _ = trained
    config = root / "narrow.yaml"
    config.write_text("pix2pix: {ndf: 4, n_layers_d: 2}\n")
    run = root / "preset_run"
    # No --steps/--batch-size: the cpu preset's (auto on a CPU); --config wins over it.
    assert main(["gan", "train", "pix2pix", "--data", str(data), "--out", str(run), "--config", str(config),
                 "--device", "cpu", "--preset", "cpu", "--steps", "1"]) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    cpu = REGISTRY["pix2pix"].presets["cpu"]
    assert ckpt["config"]["ngf"] == cpu["config"]["ngf"]  # from the preset
    assert ckpt["config"]["ndf"] == 4  # from --config
    assert ckpt["train"]["batch_size"] == cpu["batch_size"]


def test_help_shows_defaults_and_the_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gan", "train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "(default: auto)" in out and "(default: 500)" in out
    assert "dcgan cpu: 1500 steps, batch 16" in out and "dcgan paper: 1000 steps, batch 64" in out


def test_gan_train_on_the_cpu_takes_one_thread_for_the_small_presets(monkeypatch):
    """bench/busy_neighbour.py: two threads ran CycleGAN's cpu preset 3.2x slower beside one
    busy process, one thread 1.0x; --threads and the paper preset keep every core."""
    import argparse

    import torch

    from downstream.cli import _cpu_threads_for

    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    _cpu_threads_for("cpu", argparse.Namespace(threads=None, device="cpu"))
    assert calls == [1]
    _cpu_threads_for("paper", argparse.Namespace(threads=None, device="cpu"))
    _cpu_threads_for("tiny", argparse.Namespace(threads=2, device="cpu"))
    assert calls == [1]
