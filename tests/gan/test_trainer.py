"""The training loop: exact resume, interrupts, non-finite losses, outputs, sinks.

The loop is tested with `TinyGan`, a real two-network mask-conditioned GAN small
enough to step in milliseconds (BatchNorm buffers and dropout included, so the test
covers buffers and the torch RNG reseeding). The built-in models go through the same
loop in test_contract.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from augment.errors import CheckpointError, ConfigError, NonFiniteLossError
from augment.folder import read_dataset, write_dataset
from augment.sample import Sample
from augment.window import Window
from gan.base import GENERATORS, GanModule, read_checkpoint
from gan.train.config import TrainConfig
from gan.train.data import data_fingerprint, load_model_config
from gan.train.sinks import JsonlSink, LossMonitor
from gan.train.trainer import step_rng, torch_seed, train

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ a tiny real GAN


@dataclass(frozen=True)
class TinyConfig:
    width: int = 4
    window: tuple[float, float] = (40.0, 200.0)
    lr: float = 2e-3


class TinyGan(GanModule):
    """Mask-conditioned GAN: G fills the masked area, D judges (condition, image) pairs."""

    name = "tiny-test"
    Config = TinyConfig

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__(cfg)
        w = cfg.width
        self.G = nn.Sequential(
            nn.Conv2d(2, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(w, 1, 3, padding=1),
            nn.Tanh(),
        )
        self.D = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(w, 1, 3)
        )
        self.window = Window(*cfg.window)
        self.optimizers = {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(0.5, 0.999)),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=(0.5, 0.999)),
        }

    def prepare(self, data, data_b=None) -> None:
        self.images = torch.from_numpy(np.stack([self.window.to_model(s.image) for s in data]))
        self.masks = torch.from_numpy(np.stack([(s.mask > 0) for s in data]).astype(np.float32))

    def make_batch(self, rng, batch_size):
        idx = torch.from_numpy(rng.integers(0, len(self.images), batch_size))
        return {"real": self.images[idx, None], "mask": self.masks[idx, None]}

    def _cond(self, real, mask):
        return torch.cat([real * (1 - mask), mask], 1)

    def training_step(self, batch):
        real, mask = batch["real"], batch["mask"]
        cond = self._cond(real, mask)
        fake = self.G(cond)
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        opt_d.zero_grad()
        pred_fake = self.D(torch.cat([cond, fake.detach()], 1))
        pred_real = self.D(torch.cat([cond, real], 1))
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
            + F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
        )
        loss_d.backward()
        opt_d.step()
        self.D.requires_grad_(False)
        opt_g.zero_grad()
        pred = self.D(torch.cat([cond, fake], 1))
        loss_gan = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
        loss_l1 = F.l1_loss(fake, real) * 10
        (loss_gan + loss_l1).backward()
        opt_g.step()
        self.D.requires_grad_(True)
        return {"D": loss_d.detach(), "G_gan": loss_gan.detach(), "G_l1": loss_l1.detach()}

    def synthesize(self, n, *, rng, hosts):
        out = []
        for i in range(n):
            host = hosts[int(rng.integers(len(hosts)))]
            real = torch.from_numpy(self.window.to_model(host.image))[None, None]
            mask = torch.from_numpy((host.mask > 0).astype(np.float32))[None, None]
            fake = self.G(self._cond(real.to(self.device), mask.to(self.device)))[0, 0].cpu()
            inside = host.mask > 0
            image = host.image.copy()
            image[inside] = self.window.to_hu(fake.numpy())[inside]
            meta = {"id": f"syn_{i:05d}", "patient_id": host.patient_id, "host_id": host.id}
            out.append(Sample(image=image, mask=host.mask.copy(), meta=meta))
        return out


class InterruptingGan(TinyGan):
    """Raises KeyboardInterrupt in its ``at``-th training step (1-based), before updating."""

    at = 3

    def training_step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().training_step(batch)


class SigintGan(TinyGan):
    """Sends itself SIGINT (a real Ctrl-C) during its 2nd training step."""

    def training_step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return super().training_step(batch)


class NanGan(TinyGan):
    """Its D loss becomes NaN in the 3rd step (and the weights with it)."""

    def training_step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            batch = {**batch, "real": batch["real"] * float("nan")}
        return super().training_step(batch)


def tiny_slices(n: int = 6, size: int = 32, seed: int = 0) -> list[Sample]:
    """Skull ring (1000 HU) around 30 HU brain with a 70 HU disc bleed (class 1) and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 - 0.5
    r = np.hypot(yy - c, xx - c)
    out = []
    for i in range(n):
        image = np.where(r < size * 0.45, 30.0, -1000.0) + rng.normal(0, 5, (size, size))
        image[(r >= size * 0.38) & (r < size * 0.45)] = 1000.0
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        disc = np.hypot(yy - cy, xx - cx) < rng.uniform(2, 5)
        image[disc] = 70.0
        meta = {"id": f"p{i // 2:03d}_s{i % 2:03d}", "patient_id": f"p{i // 2:03d}"}
        out.append(Sample(image=image.astype(np.float32), mask=disc.astype(np.uint8), meta=meta))
    return out


def tiny(cls: type[TinyGan] = TinyGan, **kw) -> TinyGan:
    """A module with seeded initial weights (as `train_generator` builds them)."""
    torch.manual_seed(0)
    return cls(TinyConfig(**kw))


@pytest.fixture
def registered(monkeypatch):
    """TinyGan in the generator registry for this test only (GanModule.load finds it)."""
    monkeypatch.setitem(GENERATORS, TinyGan.name, TinyGan)
    return TinyGan


def cfg(out: Path, steps: int, **kw) -> TrainConfig:
    base = dict(
        steps=steps, batch_size=2, out=out, device="cpu", grid_n=0, log_every=1, progress=False
    )
    return TrainConfig(**(base | kw))


def assert_same_state(a: GanModule, b: GanModule) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for name in a.optimizers:
        oa, ob = a.optimizers[name].state_dict(), b.optimizers[name].state_dict()
        assert oa["param_groups"] == ob["param_groups"]
        assert oa["state"].keys() == ob["state"].keys()
        for p in oa["state"]:
            for key, value in oa["state"][p].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][p][key]))


# ------------------------------------------------------------------------ the tests


def test_step_seeds_are_deterministic_and_distinct():
    assert torch_seed(0, 5) == torch_seed(0, 5)
    seeds = {torch_seed(s, k) for s in range(3) for k in range(50)}
    assert len(seeds) == 150
    assert all(0 <= s < 2**63 for s in seeds)
    assert step_rng(1, 2).integers(1 << 30) == step_rng(1, 2).integers(1 << 30)
    assert step_rng(1, 2).integers(1 << 30) != step_rng(1, 3).integers(1 << 30)


def test_resume_is_exact(tmp_path):
    data = tiny_slices()
    straight = tiny()
    train(straight, data, None, cfg(tmp_path / "a", 4, ckpt_every=1))
    first = tiny()
    train(first, data, None, cfg(tmp_path / "b", 2))
    assert read_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    resumed = tiny()
    result = train(resumed, data, None, cfg(tmp_path / "b", 4, resume=True))
    assert result["step"] == 4
    assert_same_state(straight, resumed)
    # Reloading the checkpoint gives the same weights and optimizer state again.
    ckpt = read_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["step"] == 4
    for k, v in straight.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    # The resumed log reads as one run: steps 1..4, each once, same losses as straight.
    logs = [
        [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"
    ]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert [r["D"] for r in logs[0]] == [r["D"] for r in logs[1]]


def test_training_changes_both_networks_and_numbered_checkpoints(tmp_path):
    data = tiny_slices()
    module = tiny()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = train(module, data, None, cfg(tmp_path, 3, ckpt_every=1))
    after = module.state_dict()
    assert not torch.equal(before["G.0.weight"], after["G.0.weight"])
    assert not torch.equal(before["D.0.weight"], after["D.0.weight"])
    assert not torch.equal(before["G.1.running_mean"], after["G.1.running_mean"])
    # Numbered copies per ckpt_every (not for the final step, which is last.pt).
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == [
        "ckpt_000001.pt",
        "ckpt_000002.pt",
    ]
    assert read_checkpoint(tmp_path / "ckpt_000001.pt")["step"] == 1
    assert read_checkpoint(tmp_path / "ckpt_000002.pt")["step"] == 2
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["train"]["seed"] == 0 and ckpt["train"]["steps"] == 3
    assert ckpt["rng"]["next_step"] == 3 and ckpt["rng"]["torch_cpu"].dtype == torch.uint8
    assert ckpt["data"]["fingerprint"] == data_fingerprint(data)
    assert ckpt["data"]["patient_ids"] == ["p000", "p001", "p002"]
    assert result["losses"].keys() == {"D", "G_gan", "G_l1"}
    assert all(np.isfinite(v) for v in result["losses"].values())
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["model"] == "tiny-test"
    assert resolved["model_config"] == {"width": 4, "window": [40.0, 200.0], "lr": 2e-3}
    assert resolved["train"]["steps"] == 3
    assert resolved["data"]["fingerprint"] == data_fingerprint(data)
    assert "torch" in resolved["versions"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    data = tiny_slices()
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        m = tiny()  # same start; the trainer seeds every draw after it
        train(m, data, None, cfg(tmp_path / name, 2, seed=seed))
        runs.append(m)
    assert_same_state(runs[0], runs[1])
    assert not torch.equal(runs[0].G[0].weight, runs[2].G[0].weight)


def test_keyboard_interrupt_checkpoints_then_resumes_exactly(tmp_path):
    data = tiny_slices()
    straight = tiny()
    train(straight, data, None, cfg(tmp_path / "a", 4))
    interrupted = tiny(InterruptingGan)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, data, None, cfg(tmp_path / "b", 4))
    # Raised in the 3rd step before any update: two steps done, saved as step 2.
    assert read_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    resumed = tiny()
    train(resumed, data, None, cfg(tmp_path / "b", 4, resume=True))
    assert_same_state(straight, resumed)


def test_sigint_stops_at_a_step_boundary(tmp_path):
    data = tiny_slices()
    module = tiny(SigintGan)
    # What the process had before (default_int_handler, or SIG_IGN when started in the
    # background by a non-interactive shell, as CI may be): training must put it back.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(module, data, None, cfg(tmp_path, 5))
    # Ctrl-C arrived during step 2: the step finished, the checkpoint holds 2 steps.
    assert module.calls == 2
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_nonfinite_loss_names_step_and_loss(tmp_path):
    data = tiny_slices()
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss 'D' is nan"):
        train(tiny(NanGan), data, None, cfg(tmp_path, 6, ckpt_every=1, log_every=5))
    # Checked before each checkpoint: the saved weights are from step 2, still finite.
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_refusals(tmp_path, registered):
    data = tiny_slices()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        train(tiny(), data, None, cfg(tmp_path, 2, resume=True))
    train(tiny(), data, None, cfg(tmp_path, 1))
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(tiny(), data, None, cfg(tmp_path, 2))
    other = tiny_slices(seed=1)
    with pytest.raises(CheckpointError, match="fingerprint mismatch"):
        train(tiny(), other, None, cfg(tmp_path, 2, resume=True))
    with pytest.raises(CheckpointError, match=r"model config differs .*\(width\)"):
        train(tiny(width=3), data, None, cfg(tmp_path, 2, resume=True))
    with pytest.raises(CheckpointError, match="seed=0, not 5"):
        train(tiny(), data, None, cfg(tmp_path, 2, resume=True, seed=5))
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        cfg(tmp_path, 2, batch_size=0)
    # overwrite starts over
    result = train(tiny(), data, None, cfg(tmp_path, 2, overwrite=True))
    assert result["step"] == 2


def test_data_fingerprint_sees_every_pixel_and_the_order():
    data = tiny_slices(3)
    fp = data_fingerprint(data)
    assert fp == data_fingerprint([s.replace() for s in data])
    assert fp != data_fingerprint(data[::-1])
    changed = [s.replace() for s in data]
    changed[1].image = changed[1].image.copy()
    changed[1].image[5, 7] += 1.0
    assert fp != data_fingerprint(changed)
    relabelled = [s.replace() for s in data]
    relabelled[2].mask = relabelled[2].mask * 2
    assert fp != data_fingerprint(relabelled)
    assert fp != data_fingerprint(data, data[:1])


def test_loss_monitor_averages_and_reports_first_bad_step():
    m = LossMonitor(torch.device("cpu"))
    m.update(1, {"a": torch.tensor(1.0), "b": 2.0})
    m.update(2, {"a": torch.tensor(3.0), "b": 4.0})
    assert m.flush() == {"a": 2.0, "b": 3.0}
    m.update(3, {"a": torch.tensor(5.0), "b": 1.0})
    assert m.flush() == {"a": 5.0, "b": 1.0}
    m.update(4, {"a": torch.tensor(1.0), "b": float("inf")})
    m.update(5, {"a": torch.tensor(float("nan")), "b": float("nan")})
    with pytest.raises(NonFiniteLossError, match="step 4: loss 'b' is inf"):
        m.check()


def test_jsonl_sink_resume_drops_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "log.jsonl"
    sink = JsonlSink(path)
    for step in (1, 2, 3, 4):
        sink.log({"step": step, "loss": np.float32(step)})
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # a line cut short by a crash
    JsonlSink(path, resume_from=2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    JsonlSink(path)  # a fresh run starts an empty log
    assert path.read_text() == ""


def test_wandb_sink_logs_losses_grids_and_config(tmp_path, monkeypatch):
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, values, step):
            calls["log"].append((values, step))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()
    fake.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    train(tiny(), tiny_slices(), None, cfg(tmp_path, 2, wandb=True, wandb_project="p"))
    (init,) = calls["init"]
    assert init["mode"] == "offline" and init["project"] == "p"
    assert init["config"]["model"] == "tiny-test" and init["config"]["train"]["steps"] == 2
    assert [step for _, step in calls["log"]] == [1, 2]
    assert calls["log"][0][0].keys() >= {"D", "G_gan", "G_l1"}
    assert calls["finish"] == [True]


def test_wandb_is_not_imported_unless_asked(tmp_path, monkeypatch):
    # Importing our modules does not import wandb (checked in a clean interpreter) ...
    code = (
        "import sys; import gan.train.trainer, gan.synthesize, gan.train.sinks, gan.train.data; "
        "print('wandb' in sys.modules)"
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    # ... and neither does a training run that did not ask for it.
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    train(tiny(), tiny_slices(), None, cfg(tmp_path, 1))
    assert "wandb" not in sys.modules


def test_grid_png_shows_real_and_synthetic(tmp_path):
    result = train(tiny(), tiny_slices(), None, cfg(tmp_path, 2, grid_n=3, grid_every=1))
    assert [Path(p).name for p in result["grids"]] == ["step_000001.png", "step_000002.png"]
    from PIL import Image

    with Image.open(result["grids"][-1]) as im:
        assert im.size[0] > im.size[1] > 0  # 3 columns, 2 rows


def test_grid_names_the_datasets_classes_and_states_its_window(tmp_path, monkeypatch):
    import augment.viz as viz

    figures = []
    write = viz.save_figure
    monkeypatch.setattr(
        viz, "save_figure", lambda fig, path: figures.append(fig) or write(fig, path)
    )
    info = {"anatomy": "head-ich", "classes": {"1": "IPH", "2": "IVH"}}  # as dataset.json has them
    train(tiny(), tiny_slices(), None, cfg(tmp_path, 1, grid_n=3, grid_every=1), data_info=info)
    legend = [t.get_text() for lg in figures[-1].legends for t in lg.get_texts()]
    assert legend == ["IPH"]  # the tiny slices hold class 1 only
    assert [t.get_text() for t in figures[-1].texts] == ["window: brain (C 40 / W 80 HU)"]
    # A dataset without class names: the id, and the model's own window by its numbers.
    figures.clear()
    train(tiny(), tiny_slices(), None, cfg(tmp_path / "b", 1, grid_n=3, grid_every=1))
    assert [t.get_text() for lg in figures[-1].legends for t in lg.get_texts()] == ["class 1"]
    assert [t.get_text() for t in figures[-1].texts] == ["window: head-model (C 40 / W 200 HU)"]


def test_train_generator_from_folder_uses_dataset_kind_and_yaml(tmp_path, registered):
    from gan.train.trainer import train_generator

    data = write_dataset(
        tmp_path / "data",
        tiny_slices(),
        provenance="phantom",
        config={"kind": "liver"},
        classes={1: "tumour"},
    )
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text("tiny-test:\n  width: 3\n")
    assert load_model_config(yaml_path, "tiny-test") == {"width": 3}
    result = train_generator(
        "tiny-test",
        data,
        None,
        tmp_path / "run",
        steps=2,
        batch_size=2,
        seed=0,
        device="cpu",
        config_file=yaml_path,
        model_config={"lr": 1e-3},
        grid_n=0,
        progress=False,
    )
    ckpt = read_checkpoint(result["checkpoint"])
    # The liver model window (60/400 HU, augment.window.WINDOWS["liver-model"]) from the kind.
    assert ckpt["config"] == {"width": 3, "window": [60.0, 400.0], "lr": 1e-3}
    assert ckpt["data"]["folder"] == str(data.resolve())
    assert ckpt["data"]["anatomy"] == "liver"
    assert ckpt["data"]["n_samples"] == len(read_dataset(data)[1])
    module = GanModule.load(result["checkpoint"])
    assert isinstance(module, TinyGan) and module.cfg.width == 3
    with pytest.raises(ConfigError, match="unknown option"):
        train_generator(
            "tiny-test",
            data,
            None,
            tmp_path / "r2",
            steps=1,
            batch_size=1,
            model_config={"depth": 2},
            progress=False,
        )


def test_compiled_training_step_trains_the_same_networks(tmp_path, monkeypatch):
    """``compile``: the step runs through torch.compile (it counts compiled frames), the
    weights follow eager training to float tolerance, and the module keeps its plain
    networks (same state-dict keys; grids and sampling never see a compiled wrapper)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from gan.train.compiled import check_compile

    try:
        check_compile(torch.device("cpu"))
    except ConfigError as e:
        pytest.skip(str(e))
    # Eager's dropout draws, so the two runs see the same random numbers (inductor
    # otherwise generates its own: same seed, same run, but not eager's masks).
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()
    data = tiny_slices()
    eager, compiled = tiny(), tiny()
    train(eager, data, None, cfg(tmp_path / "eager", 3))
    torch._dynamo.utils.counters.clear()
    train(compiled, data, None, cfg(tmp_path / "compiled", 3, compile=True, grid_n=2))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert type(compiled.G) is nn.Sequential and type(compiled.D) is nn.Sequential
    a, b = eager.state_dict(), compiled.state_dict()
    assert a.keys() == b.keys()
    # G.0's bias feeds a BatchNorm, which subtracts it again: its gradient is rounding
    # noise (~1e-9), which Adam scales to full-size steps, so it (and the running mean it
    # shifts) differs between any two kernels; it changes no output. Everything else
    # agrees to ~1e-8 (measured).
    for k in a.keys() - {"G.0.bias", "G.1.running_mean"}:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    assert yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())["train"]["compile"] is True


def test_compile_without_a_compiler_is_one_clear_error(tmp_path, monkeypatch):
    import gan.train.compiled as compiled

    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        train(tiny(), tiny_slices(), None, cfg(tmp_path / "run", 2, compile=True))
    assert not (tmp_path / "run").exists()
