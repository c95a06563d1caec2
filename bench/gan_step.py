"""Seconds per training step of our GAN loop against a plain PyTorch reference step.

For each model (DCGAN 64 px ROIs batch 64, pix2pix 128 px batch 4, CycleGAN 128 px
batch 1, the sizes and batches of the issue) two things are timed on the same device,
alternating round by round because the machine is shared and noisy:

* **reference**: the *same* network classes from ``gan.networks`` with the same widths,
  and a training step written plainly in this file, as the well-known reference code
  writes it: default memory format, float32, ``torch.optim.Adam`` with its defaults,
  ``.item()`` on every loss every step. DCGAN follows pytorch/examples (BCE, D not
  frozen during the G step); pix2pix and CycleGAN follow junyanz's
  ``optimize_parameters`` (BCE + 100 L1; LSGAN + 10 cycle + 0.5 * 10 identity, D
  frozen during the G step). Inputs are random tensors of the right shape.
* **ours**: the real path. The model is built from its default config (sizes as
  above), and `gan.train.trainer.train` runs ``warmup + steps`` steps on a few phantom
  slices with its default settings (no grids, one checkpoint at the end). The time of
  the timed steps comes from the ``steps_per_s`` the trainer logs at step ``warmup``
  and at the last step (both measured from the same start), so preparation, the
  checkpoint and the warm-up are not counted.

Ours is timed at each ``--precision`` (default fp32 and auto: bf16 autocast where the CPU
has AMX/AVX512-BF16 or the GPU native bf16, `gan.train.precision`), always against the
float32 reference: the ratio of the auto row is what a user gets by default. Ours includes
what a real step does beyond the reference: DCGAN's EMA update of its generator (on by
default, `gan.train.ema`); its Adam is the fused kernel (`gan.train.optim`). With
``--compile`` each precision is timed again with ``TrainConfig.compile``
(`gan.train.compiled`); the compilation falls in the warm-up steps and is not counted.

GFLOP/s: the FLOPs of one reference training step (forward, backward; counted by
``torch.utils.flop_counter.FlopCounterMode``, optimizer not counted) divided by each
side's seconds per step. Both sides do the same network work per step, so the ratio of
the two GFLOP/s is the speed-up. The reported s/iter is the best round of each side;
each round's times go to stderr. On a machine shared with other busy processes a round
can run several times slower than the next (an intra-op thread waiting for a core
stalls the whole step): use more ``--rounds``, or ``--threads 1``, before reading a
ratio far from 1 as real.

    .venv/bin/python bench/gan_step.py [--model all] [--steps 5] [--warmup 2] [--rounds 2]
        [--threads N] [--device auto] [--precision fp32 auto] [--compile]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.phantoms.render import phantom_samples  # noqa: E402
from augment.sample import Sample
from gan.base import GanModule, resolve_device  # noqa: E402
from gan.models.cyclegan import CycleGAN, CycleGANConfig  # noqa: E402
from gan.models.dcgan import DCGAN, DCGANConfig  # noqa: E402
from gan.models.pix2pix import Pix2Pix, Pix2PixConfig  # noqa: E402
from gan.networks.dcgan import DCGANDiscriminator, DCGANGenerator  # noqa: E402
from gan.networks.patchgan import NLayerDiscriminator  # noqa: E402
from gan.networks.resnet import ResnetGenerator, init_normal_  # noqa: E402
from gan.networks.unet import UnetGenerator  # noqa: E402
from gan.train.config import TrainConfig  # noqa: E402
from gan.train.precision import PRECISIONS, resolve_precision  # noqa: E402
from gan.train.trainer import train  # noqa: E402

MODELS = ("dcgan", "pix2pix", "cyclegan")
SIZE = 128  # slice side of the issue's measurements
BATCH = {"dcgan": 64, "pix2pix": 4, "cyclegan": 1}
# Paper defaults at these sizes: CycleGAN uses 6 residual blocks for <= 128 px images.
CYCLEGAN_BLOCKS = 6

Step = Callable[[], None]


# ---------------------------------------------------------------- reference steps


def _adam(params) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def reference_dcgan(cfg: DCGANConfig, batch: int, device: torch.device) -> tuple[Step, nn.Module]:
    """pytorch/examples/dcgan's step on our networks (class-conditional as ours is)."""
    n_cond = cfg.n_classes if cfg.n_classes > 1 else 0
    net_g = DCGANGenerator(cfg.nz, cfg.ngf, 2, cfg.roi_size, n_cond).to(device)
    net_d = DCGANDiscriminator(2, cfg.ndf, cfg.roi_size, n_cond).to(device)
    opt_g, opt_d = _adam(net_g.parameters()), _adam(net_d.parameters())
    criterion = nn.BCEWithLogitsLoss()
    real = torch.rand(batch, 2, cfg.roi_size, cfg.roi_size, device=device) * 2 - 1
    cls = torch.randint(0, max(n_cond, 1), (batch,), device=device)
    cond = F.one_hot(cls, n_cond).float() if n_cond else None
    ones = torch.ones(batch, device=device)
    zeros = torch.zeros(batch, device=device)

    def step() -> None:
        net_d.zero_grad()
        out = net_d(real, cond)
        err_d_real = criterion(out, ones)
        err_d_real.backward()
        d_x = torch.sigmoid(out).mean().item()
        z = torch.randn(batch, cfg.nz, device=device)
        fake = net_g(z, cond)
        out = net_d(fake.detach(), cond)
        err_d_fake = criterion(out, zeros)
        err_d_fake.backward()
        d_g_z1 = torch.sigmoid(out).mean().item()
        err_d = err_d_real + err_d_fake
        opt_d.step()
        net_g.zero_grad()
        out = net_d(fake, cond)
        err_g = criterion(out, ones)
        err_g.backward()
        d_g_z2 = torch.sigmoid(out).mean().item()
        opt_g.step()
        _ = (err_d.item(), err_g.item(), d_x, d_g_z1, d_g_z2)

    return step, nn.ModuleList([net_g, net_d])


def _set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def reference_pix2pix(
    cfg: Pix2PixConfig, batch: int, device: torch.device
) -> tuple[Step, nn.Module]:
    """junyanz's ``Pix2PixModel.optimize_parameters`` on our networks."""
    in_nc = 1 + cfg.n_classes
    net_g = UnetGenerator(in_nc, 1, cfg.downs, cfg.ngf, cfg.norm, cfg.use_dropout).to(device)
    net_d = NLayerDiscriminator(in_nc + 1, cfg.ndf, cfg.n_layers_d, cfg.norm).to(device)
    for net in (net_g, net_d):
        init_normal_(net, cfg.init_std)
    opt_g, opt_d = _adam(net_g.parameters()), _adam(net_d.parameters())
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    real_a = torch.rand(batch, in_nc, cfg.size, cfg.size, device=device) * 2 - 1
    real_b = torch.rand(batch, 1, cfg.size, cfg.size, device=device) * 2 - 1

    def gan_loss(pred: Tensor, real: bool) -> Tensor:
        return bce(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def step() -> None:
        fake_b = net_g(real_a)
        _set_requires_grad([net_d], True)
        opt_d.zero_grad()
        loss_d_fake = gan_loss(net_d(torch.cat((real_a, fake_b), 1).detach()), False)
        loss_d_real = gan_loss(net_d(torch.cat((real_a, real_b), 1)), True)
        loss_d = (loss_d_fake + loss_d_real) * 0.5
        loss_d.backward()
        opt_d.step()
        _set_requires_grad([net_d], False)
        opt_g.zero_grad()
        loss_g_gan = gan_loss(net_d(torch.cat((real_a, fake_b), 1)), True)
        loss_g_l1 = l1(fake_b, real_b) * cfg.lambda_l1
        loss_g = loss_g_gan + loss_g_l1
        loss_g.backward()
        opt_g.step()
        _ = [v.item() for v in (loss_g_gan, loss_g_l1, loss_d_real, loss_d_fake)]

    return step, nn.ModuleList([net_g, net_d])


def reference_cyclegan(
    cfg: CycleGANConfig, batch: int, device: torch.device
) -> tuple[Step, nn.Module]:
    """junyanz's ``CycleGANModel.optimize_parameters`` on our networks (no image pool)."""
    g_a = ResnetGenerator(1, 1, ngf=cfg.ngf, n_blocks=cfg.n_blocks).to(device)
    g_b = ResnetGenerator(1, 1, ngf=cfg.ngf, n_blocks=cfg.n_blocks).to(device)
    d_a = NLayerDiscriminator(1, cfg.ndf, cfg.n_layers_d, "instance").to(device)
    d_b = NLayerDiscriminator(1, cfg.ndf, cfg.n_layers_d, "instance").to(device)
    for net in (g_a, g_b, d_a, d_b):
        init_normal_(net, cfg.init_std)
    opt_g = _adam(list(g_a.parameters()) + list(g_b.parameters()))
    opt_d = _adam(list(d_a.parameters()) + list(d_b.parameters()))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    real_a = torch.rand(batch, 1, SIZE, SIZE, device=device) * 2 - 1
    real_b = torch.rand(batch, 1, SIZE, SIZE, device=device) * 2 - 1
    lam, lam_idt = cfg.lambda_cycle, cfg.lambda_identity

    def gan_loss(pred: Tensor, real: bool) -> Tensor:
        return mse(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def d_basic(net: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        loss = (gan_loss(net(real), True) + gan_loss(net(fake.detach()), False)) * 0.5
        loss.backward()
        return loss

    def step() -> None:
        fake_b = g_a(real_a)
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b)
        rec_b = g_a(fake_a)
        _set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad()
        loss_idt_a = l1(g_a(real_b), real_b) * lam * lam_idt
        loss_idt_b = l1(g_b(real_a), real_a) * lam * lam_idt
        loss_g_a = gan_loss(d_a(fake_b), True)
        loss_g_b = gan_loss(d_b(fake_a), True)
        loss_cycle_a = l1(rec_a, real_a) * lam
        loss_cycle_b = l1(rec_b, real_b) * lam
        loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
        loss_g.backward()
        opt_g.step()
        _set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad()
        loss_d_a = d_basic(d_a, real_b, fake_b)
        loss_d_b = d_basic(d_b, real_a, fake_a)
        opt_d.step()
        losses = (loss_g_a, loss_g_b, loss_cycle_a, loss_cycle_b, loss_idt_a, loss_idt_b)
        _ = [v.item() for v in (*losses, loss_d_a, loss_d_b)]

    return step, nn.ModuleList([g_a, g_b, d_a, d_b])


# ---------------------------------------------------------------- our side


def _phantom(n: int, *, domain: str = "A", seed: int = 0, lesions: bool = True) -> list[Sample]:
    out: list[Sample] = []
    for s in phantom_samples(
        "head-ich", 4 * n, size=SIZE, domain=domain, seed=seed, slices_per_patient=2
    ):
        if s.has_lesion or not lesions:
            out.append(s)
        if len(out) == n:
            break
    return out


def build_ours(name: str) -> tuple[GanModule, list[Sample], list[Sample] | None]:
    torch.manual_seed(0)
    if name == "dcgan":
        return DCGAN(DCGANConfig()), _phantom(4), None
    if name == "pix2pix":
        return Pix2Pix(Pix2PixConfig(size=SIZE)), _phantom(4), None
    return (
        CycleGAN(CycleGANConfig(n_blocks=CYCLEGAN_BLOCKS)),
        _phantom(3, lesions=False),
        _phantom(3, domain="B", seed=1, lesions=False),
    )


def build_reference(name: str, module: GanModule, device: torch.device) -> tuple[Step, nn.Module]:
    torch.manual_seed(0)
    maker = {"dcgan": reference_dcgan, "pix2pix": reference_pix2pix, "cyclegan": reference_cyclegan}
    return maker[name](module.cfg, BATCH[name], device)


def _n_params(module: nn.Module) -> int:
    """Trained parameters (an EMA generator's shadow copy is not trained, `gan.train.ema`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def time_reference(step: Step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def time_ours(
    name: str,
    module: GanModule,
    data: list[Sample],
    data_b: list[Sample] | None,
    device: str,
    warmup: int,
    steps: int,
    out: Path,
    precision: str = "fp32",
    compile: bool = False,
) -> float:
    total = warmup + steps
    cfg = TrainConfig(
        precision=precision,
        compile=compile,
        steps=total,
        batch_size=BATCH[name],
        out=out,
        device=device,
        ckpt_every=0,  # one checkpoint, after the last timed step
        grid_n=0,
        log_every=warmup,  # a record at the end of the warm-up and at the last step
        overwrite=True,
        keep_checkpoints=False,
        progress=False,
    )
    train(module, data, data_b, cfg)

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rate = {r["step"]: r["steps_per_s"] for r in records if "steps_per_s" in r}
    # steps_per_s at step k is k / (t_k - t0): the two records give t_total - t_warmup.
    return (total / rate[total] - warmup / rate[warmup]) / steps


def reference_flops(step: Step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- main


def bench(name: str, args: argparse.Namespace, device: torch.device, tmp: Path) -> list[dict]:
    """One row per precision of ours, each against the same float32 reference step."""
    module, data, data_b = build_ours(name)
    ref_step, ref_nets = build_reference(name, module, device)
    if _n_params(ref_nets) != _n_params(module):
        raise RuntimeError(
            f"{name}: reference has {_n_params(ref_nets)} parameters, ours {_n_params(module)}"
        )
    flops = reference_flops(ref_step)
    ref_times: list[float] = []
    variants = [(p, False) for p in args.precision] + [(p, True) for p in args.precision if args.compile]
    our_times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        ref_times.append(time_reference(ref_step, device, args.warmup, args.steps))
        for precision, compiled in variants:
            our_times[precision, compiled].append(
                time_ours(name, module, data, data_b, args.device, args.warmup, args.steps,
                          tmp / f"{name}_{precision}_{compiled}_{r}", precision=precision,
                          compile=compiled)
            )
        print(
            f"  {name} round {r + 1}: reference {ref_times[-1]:.3f} s/iter, ours "
            + ", ".join(f"{p}{'+compile' if c else ''} {t[-1]:.3f}" for (p, c), t in our_times.items())
            + " s/iter",
            file=sys.stderr,
            flush=True,
        )
    ref = min(ref_times)
    size = module.cfg.roi_size if name == "dcgan" else SIZE
    rows = []
    for (precision, compiled), times in our_times.items():
        ours = min(times)
        used = resolve_precision(precision, device).name
        label = precision if used == precision else f"{precision}={used}"
        rows.append({
            "model": name,
            "precision": label + ("+compile" if compiled else ""),
            "batch": BATCH[name],
            "size": size,
            "ref": ref,
            "ours": ours,
            "ratio": ref / ours,
            "gflops_ref": flops / ref / 1e9,
            "gflops_ours": flops / ours / 1e9,
            "gflop_step": flops / 1e9,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=[*MODELS, "all"], default="all")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    p.add_argument("--rounds", type=int, default=2, help="reference/ours alternations")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "auto"],
                   help="precisions of our step to time, each against the fp32 reference "
                   "(default: fp32 auto; auto is bf16 where the hardware has it natively)")
    p.add_argument("--compile", action="store_true",
                   help="also time each precision of ours with torch.compile (TrainConfig.compile; "
                   "compilation happens in the warm-up steps and is not counted)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        p.error("--steps, --warmup and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    names = MODELS if args.model == "all" else (args.model,)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"warmup {args.warmup} + {args.steps} timed steps x {args.rounds} rounds (best round)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="gan_step_") as tmp:
        for name in names:
            rows += bench(name, args, device, Path(tmp))
    head = (
        f"{'model':<9} {'precision':<18} {'batch':>5} {'size':>4} {'GFLOP/step':>10} {'ref s/iter':>10} "
        f"{'ours s/iter':>11} {'ratio':>6} {'ref GFLOP/s':>11} {'ours GFLOP/s':>12}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['model']:<9} {r['precision']:<18} {r['batch']:>5} {r['size']:>4} {r['gflop_step']:>10.1f} "
            f"{r['ref']:>10.3f} {r['ours']:>11.3f} {r['ratio']:>6.2f} "
            f"{r['gflops_ref']:>11.1f} {r['gflops_ours']:>12.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
