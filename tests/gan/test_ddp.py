"""torchrun: N processes train the model one process trains with the same global batch.

Two CPU processes (gloo), started the way a user starts them (``torchrun --standalone
--nproc_per_node 2 -m lesionforge gan train ...``), against one process in this
interpreter (`train_generator`) with the same global batch: every weight and buffer in
the checkpoint of the two agrees with the one process's to float rounding, and a
checkpoint moves between 1 and 2 processes both ways. The models run where that holds
(`gan.train.distributed`): CycleGAN (instance norm; its image pools see the whole batch
across processes) and pix2pix without BatchNorm and dropout.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

from augment.errors import ConfigError
from downstream.cli import main
from gan.base import GanModule, read_checkpoint
from gan.train.distributed import LAUNCH_ENV, WHOLE_BATCH, BatchShard, launched_size
from gan.train.trainer import train_generator
from tests.conftest import TINY_GENERATORS, write_phantom_pair

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # phantom side (px): the smallest pix2pix's U-Net (5 levels) and CycleGAN take
STEPS = 3
# The configurations whose two-process runs equal one process's up to float rounding.
EXACT = {
    "cyclegan": {**TINY_GENERATORS["cyclegan"], "pool_size": 2},
    "pix2pix": {**TINY_GENERATORS["pix2pix"], "norm": "none", "use_dropout": False},
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path]:
    """Head-ICH phantom folders, scanner domains A and B."""
    return write_phantom_pair(tmp_path_factory.mktemp("phantom"), 8, SIZE, workers=1)


def torchrun(model: str, data: list[Path], out: Path, *args: str) -> None:
    """``lesionforge gan train MODEL ... ARGS`` in two CPU processes, one thread each."""
    folders = ["--data", str(data[0])] + (["--data-b", str(data[1])] if len(data) > 1 else [])
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lesionforge", "gan", "train", model, *folders, "--out", str(out),
        "--device", "cpu", "--threads", "1", "--ckpt-every", "0", "--grid-every", "0",
        "--precision", "fp32", *args,  # as train_generator's default: the comparison is at fp32
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def exact_options(model: str, folder: Path) -> list[str]:
    """``gan train`` options for the model ``EXACT`` (its tiny preset, a config file on top)."""
    config = folder / f"{model}.yaml"
    config.write_text(yaml.safe_dump({model: EXACT[model]}))
    return ["--preset", "tiny", "--config", str(config)]


def one_process(model: str, data: list[Path], out: Path, steps: int, batch: int, **kw) -> dict:
    """The same training in this process: the state dict of its checkpoint."""
    data_b = data[1] if len(data) > 1 else None
    result = train_generator(
        model, data[0], data_b, out, steps=steps, batch_size=batch, device="cpu",
        model_config=EXACT[model], grid_n=0, ckpt_every=0, progress=False, **kw,
    )  # fmt: skip
    return read_checkpoint(result["checkpoint"])["state_dict"]


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(
        float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        for k in a
        if a[k].is_floating_point()
    )


def cancelled_biases(run: Path) -> set[str]:
    """State-dict keys of the convolution biases an InstanceNorm right after subtracts again.

    Their gradient is zero in exact arithmetic and rounding noise in floats, which Adam
    scales to steps of about its learning rate: other noise in one process than in two
    (measured: CycleGAN's differ by up to 1e-3 after 3 steps, while every other weight
    agrees to 1e-7). They change no output, so the comparison leaves them out.
    """
    keys = set()
    for prefix, container in GanModule.load(run).named_modules():
        if isinstance(container, nn.Sequential):
            children = list(container.named_children())
            for (name, layer), (_, after) in itertools.pairwise(children):
                if isinstance(layer, nn.modules.conv._ConvNd) and isinstance(
                    after, nn.InstanceNorm2d
                ):
                    keys.add(f"{prefix}.{name}.bias")
    return keys


def assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor], *, but: set[str]) -> None:
    """Same keys (no DDP ``module.`` prefix); floats to rounding, but the keys ``but``; the
    rest exactly."""
    assert a.keys() == b.keys()
    for k in a.keys() - but:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


def test_cyclegan_in_two_processes_is_one_process_and_resumes_in_one(phantoms, tmp_path):
    data = list(phantoms)
    run = tmp_path / "two"
    options = exact_options("cyclegan", tmp_path)
    torchrun("cyclegan", data, run, *options, "--steps", str(STEPS), "--batch-size", "2")
    two = read_checkpoint(run / "last.pt")
    assert two["step"] == STEPS and two["train"]["batch_size"] == 2
    one = one_process("cyclegan", data, tmp_path / "one", STEPS, 2)
    cancelled = cancelled_biases(run)
    # Per generator 5, and 2 per residual block (tiny: 1); per discriminator n_layers_d (2).
    assert len(cancelled) == 2 * (5 + 2) + 2 * 2
    # Weights, and the image pools (extra state): each process's holds the whole batch's fakes.
    assert_same_weights(two["state_dict"], one, but=cancelled)
    # A run on half the batch (what one process would learn alone) is far from both: the
    # tolerance tells such runs apart.
    alone = one_process("cyclegan", data, tmp_path / "alone", STEPS, 1)
    for k in cancelled:
        del two["state_dict"][k], one[k], alone[k]
    assert max_difference(one, alone) > 100 * max(max_difference(two["state_dict"], one), 1e-6)

    # Process 0 alone wrote the run folder, which says how it was trained.
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["distributed"] == {"world_size": 2, "backend": "gloo"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "steps_per_s" in r] == [STEPS]
    assert [p.name for p in (run / "grids").iterdir()] == [f"step_{STEPS:06d}.png"]

    # Its checkpoint resumes in one process, as the one process's own run continues.
    straight = one_process("cyclegan", data, tmp_path / "straight", STEPS + 2, 2)
    resumed = one_process("cyclegan", data, run, STEPS + 2, 2, resume=True)
    assert_same_weights(resumed, straight, but=cancelled)


def test_pix2pix_checkpoint_of_one_process_resumes_in_two(phantoms, tmp_path):
    data = [phantoms[0]]
    run = tmp_path / "run"
    one_process("pix2pix", data, run, STEPS, 4)
    # No preset or batch size: a resume takes the run's own (4, so 2 per process).
    torchrun("pix2pix", data, run, "--resume", "--steps", str(STEPS + 2))
    two = read_checkpoint(run / "last.pt")
    assert two["step"] == STEPS + 2
    straight = one_process("pix2pix", data, tmp_path / "straight", STEPS + 2, 4)
    assert cancelled_biases(run) == set()  # no norm: every weight compared
    assert_same_weights(two["state_dict"], straight, but=set())


def test_a_batch_the_processes_cannot_split_is_refused(phantoms, tmp_path, monkeypatch, capsys):
    torchrun_env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    assert set(torchrun_env) == set(LAUNCH_ENV)
    for name, value in torchrun_env.items():
        monkeypatch.setenv(name, value)
    assert launched_size() == 2
    argv = ["gan", "train", "pix2pix", "--data", str(phantoms[0]), "--out", str(tmp_path / "run"),
            "--preset", "tiny", "--batch-size", "3", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "batch size 3 does not split over the 2 processes" in err
    assert "--batch-size 2" in err
    with pytest.raises(ConfigError, match="does not split"):
        one_process("pix2pix", [phantoms[0]], tmp_path / "run", 1, 3)
    assert not (tmp_path / "run" / "last.pt").exists()
    monkeypatch.delenv("MASTER_PORT")
    assert launched_size() == 1  # not all of torchrun's variables: one process


def test_batch_shard_draws_for_the_whole_batch_and_cuts():
    torch.manual_seed(1)
    whole = torch.randn(4, 3)
    torch.manual_seed(1)
    assert torch.equal(WHOLE_BATCH.randn(4, 3), whole)  # one process: today's draw
    for rank in (0, 1):
        torch.manual_seed(1)
        assert torch.equal(BatchShard(rank, 2).randn(2, 3), whole[2 * rank : 2 * rank + 2])
    batch = {"x": torch.arange(8).view(4, 2), "note": "kept"}
    part = BatchShard(1, 2).local_batch(batch, 4)
    assert torch.equal(part["x"], batch["x"][2:]) and part["note"] == "kept"
    assert WHOLE_BATCH.local_batch(batch, 4) is batch
    with pytest.raises(ValueError, match="'x' has 4 rows"):
        BatchShard(0, 2).local_batch(batch, 6)
