"""``torch.compile`` for the training step (``TrainConfig.compile``, ``gan train --compile``).

The trainer wraps every network an optimizer updates in ``torch.compile`` for the training
step only (`gan.train.distributed.data_parallel` puts the wrappers in place around each
step, as it does DDP's): grids, probes, synthesis and checkpoints see the plain networks,
so state-dict keys do not change and no inference call triggers a compilation of its own.

Off by default, because on the CPU it pays only for some models. Measured on the 2-core AMX
development VM, one thread, ``bench/gan_step.py``'s sizes (seconds per training step;
compilation time is the first two steps):

================  =========  ==========  ========  ============
model             precision  plain       compiled  compilation
================  =========  ==========  ========  ============
CycleGAN 128 px   bf16       2.09        1.14      104 s
CycleGAN 128 px   fp32       4.93        4.46      89 s
pix2pix 128 px    bf16       0.77        0.92      76 s
DCGAN cpu preset  fp32       0.112       0.102     59 s
================  =========  ==========  ========  ============

So: CycleGAN at bf16 (``precision: auto`` on such a CPU) gains 1.8x per step and repays its
compilation after about 110 steps; pix2pix runs slower compiled, and DCGAN's cpu preset
would need 6000 steps to repay a minute of compilation. On GPUs, measure with
``bench/gan_step.py --compile``.

Compilation needs a C++ compiler on the CPU (inductor's code generator) and Triton on CUDA;
`check_compile` says so in one line before training starts, rather than failing at the
first step.
"""

from __future__ import annotations

import os
import shutil

import torch

from augment.errors import ConfigError

# Compilers inductor's CPU backend finds on its own (``CXX`` first, as it does).
_CXX = ("g++", "c++", "clang++")


def check_compile(device: torch.device) -> None:
    """Refuse ``compile`` where ``torch.compile`` cannot generate code for ``device``."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(
                "compile: torch.compile on CUDA needs Triton, which this torch cannot import "
                "(pip install triton, or train without --compile)"
            )
        return
    candidates = ([os.environ["CXX"]] if os.environ.get("CXX") else []) + list(_CXX)
    if not any(shutil.which(c) for c in candidates):
        raise ConfigError(
            "compile: torch.compile on the CPU needs a C++ compiler (g++ or clang++), none is "
            "on PATH (install one, e.g. apt-get install g++, or train without --compile)"
        )


__all__ = ["check_compile"]
