"""How a generator is trained (`TrainConfig`), apart from the model's own options.

Kept free of torch so that the CLI reads its defaults (``gan train --ckpt-every``...) from
here without importing any network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from augment.errors import ConfigError
from gan.registry import MAX_BATCH_SIZE
from gan.train.early_stop import UNTIL

# Training precisions (`gan.train.precision` resolves ``auto``); here so that configs and the
# CLI check them without importing torch.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's own options live in its ``Config``).

    Attributes:
        steps: total number of optimisation steps, >= 1 (a resumed run continues up to it).
        batch_size: samples per step.
        out: the run folder (``last.pt``, ``log.jsonl``, ``config.yaml``, ``grids/``).
        seed: seeds every batch draw and every torch draw, per step.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        ckpt_every: write ``last.pt`` every this many steps (0: only at the end).
        grid_every: write a real-vs-synthetic PNG grid every this many steps (0: only
            at the end).
        grid_n: slices per grid row (0: no grids).
        probes: with every grid (``grid_every``, and the last step, even when ``grid_n``
            is 0) log the model's cheap quality numbers, ``probe/*`` (`gan.train.probes`:
            lesion HU generated vs real, DCGAN's pasteable-draw rate, pix2pix's SSIM/PSNR,
            CycleGAN's contrast retained); a fixed seed, so training is unchanged.
        log_every: losses are averaged over this many steps, then logged. Losses stay on
            the device in between: the host waits for the device only here.
        resume: continue the run in ``out`` from ``last.pt``.
        overwrite: start over in a folder that already holds a checkpoint.
        keep_checkpoints: also keep ``ckpt_NNNNNN.pt`` per ``ckpt_every`` (hard links
            to the bytes of ``last.pt`` where the filesystem allows: no extra time).
        wandb: also log to Weights & Biases (imported only then; offline unless
            ``WANDB_MODE`` says otherwise).
        wandb_project: the wandb project name.
        precision: ``fp32`` (the default here and in the harness, where the studies were
            measured), ``bf16``, ``fp16`` (with a gradient scaler) or ``auto`` (bf16 where
            the CPU or GPU has it natively, fp16 on older GPUs, else fp32; `gan.train.precision`,
            the default of ``gan train --precision``). The run records what was used.
        channels_last: NHWC memory format for weights and batches. Off by default: per
            layer on the 2-core AVX2 development machine it ranged from 0.65x to 1.15x
            the speed of NCHW, with no net gain for a step; try it on GPUs.
        small_map_gemm: on CPU, convolutions whose output map is at most 4x4 pixels
            (8x8 for transposed ones) run as one matrix product
            (`gan.networks.small_maps`; same arithmetic, faster for DCGAN's and
            pix2pix's deepest layers). No effect on GPUs.
        compile: run the training step's networks through ``torch.compile``
            (`gan.train.compiled`, where the measurements are: on the CPU it pays for
            CycleGAN at bf16, 1.8x per step after ~100 s of compilation, not for pix2pix or
            DCGAN's cpu preset). Off by default. Needs a C++ compiler on the CPU, Triton on
            CUDA.
        until: ``steps`` (train all ``steps``) or ``quality``: also stop once ``patience``
            probes in a row have not improved the model's probe score
            (`gan.train.early_stop`; DCGAN and pix2pix; ``steps`` stays the cap).
        patience: probes without an improvement that end a ``quality`` run.
        progress: a tqdm bar with rate, ETA and the latest losses.
    """

    steps: int
    batch_size: int
    out: Path
    seed: int = 0
    device: str = "auto"
    ckpt_every: int = 500
    grid_every: int = 250
    grid_n: int = 4
    probes: bool = True
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = True
    wandb: bool = False
    wandb_project: str = "lesionforge"
    precision: str = "fp32"
    channels_last: bool = False
    small_map_gemm: bool = True
    compile: bool = False
    until: str = "steps"
    patience: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name in ("ckpt_every", "grid_every", "grid_n", "seed"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"train: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("steps", "batch_size", "log_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train: {name} must be >= 1, got {getattr(self, name)}")
        if self.until not in UNTIL:
            raise ConfigError(f"train: until must be one of {', '.join(UNTIL)}, got {self.until!r}")
        if self.until == "quality" and not (self.probes and self.grid_every):
            raise ConfigError(
                "train: until 'quality' stops on the quality probes, taken every grid_every "
                "steps: it needs probes on and grid_every > 0"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train: precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if int(self.batch_size) > MAX_BATCH_SIZE:
            raise ConfigError(
                f"train: batch_size must be <= {MAX_BATCH_SIZE}, got {self.batch_size} "
                "(the GAN papers train at 1 to 128; a larger batch mostly runs out of memory)"
            )
