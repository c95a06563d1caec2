"""Named training sizes for each generator (`gan train --preset`), as plain data.

Kept free of torch so that ``lesionforge --help`` can show them without importing the
models. Each model class exposes its own as ``presets`` (`gan.base.GanModule`).

- ``paper``: the paper's architecture (the model's ``Config`` defaults) and batch size
  where it fits a CPU's memory (DCGAN trained at 128; pix2pix and CycleGAN at 1). Hours
  on a 2-core CPU; what a GPU should run.
- ``cpu``: the demo's settings (``configs/demo.yaml``), measured there to train in one to
  two minutes on 2 CPU cores and to give pasteable lesions (DCGAN: fewer steps leave the
  mask channel empty).
"""

from __future__ import annotations

from typing import Any

# The largest batch `gan train` accepts (`gan.trainer.TrainConfig`): the papers train at 1
# (pix2pix, CycleGAN) to 128 (DCGAN); far beyond that a batch only runs out of memory.
MAX_BATCH_SIZE = 1024

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dcgan": {
        "paper": {"steps": 1000, "batch_size": 64, "config": {}},
        "cpu": {"steps": 400, "batch_size": 16,
                "config": {"roi_size": 32, "ngf": 16, "ndf": 16, "spectral_norm": True}},
    },
    "pix2pix": {
        "paper": {"steps": 1000, "batch_size": 1, "config": {}},
        "cpu": {"steps": 120, "batch_size": 4, "config": {"ngf": 16, "ndf": 16}},
    },
    "cyclegan": {
        "paper": {"steps": 1000, "batch_size": 1, "config": {}},
        "cpu": {"steps": 100, "batch_size": 1, "config": {"ngf": 8, "ndf": 16, "n_blocks": 3, "pool_size": 20}},
    },
}


def preset_text(preset: dict[str, Any]) -> str:
    """``"400 steps, batch 16, roi_size 32, ngf 16"``: a preset in one line."""
    options = ", ".join(f"{k} {v}" for k, v in preset["config"].items()) or "the paper's architecture"
    return f"{preset['steps']} steps, batch {preset['batch_size']}, {options}"


def presets_help() -> str:
    """Every generator's presets, for ``gan train --help``."""
    lines = ["presets (--preset; --steps, --batch-size and --config override them):"]
    for name, presets in PRESETS.items():
        for preset, values in presets.items():
            lines.append(f"  {name} {preset}: {preset_text(values)}")
    lines.append("auto = paper on CUDA, cpu otherwise (cpu: minutes on 2 cores; paper: hours on a CPU)")
    return "\n".join(lines)
