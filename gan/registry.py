"""The generators lesionforge knows, in one table: name, model class, summary, presets.

Adding a generator takes its model file (a `gan.base.GanModule` subclass that declares
what it is: paired or unpaired, whether it needs a target domain, what SSIM/PSNR compares
against), its network file(s), its test, and one entry here; the CLI's choices, ``gan
train --preset``, the comparison harness and ``gan evaluate`` read this table and the
class. Kept free of torch so that ``lesionforge --help`` lists the generators and their
presets without importing any network.

Presets (`gan train --preset`) are named training sizes, as plain data:

- ``paper``: the paper's architecture (the model's ``Config`` defaults) and batch size
  where it fits a CPU's memory (DCGAN trained at 128; pix2pix and CycleGAN at 1). Hours
  on a 2-core CPU; what a GPU should run.
- ``cpu``: the demo's settings (``configs/demo.yaml``), measured there to train in one to
  two minutes on 2 CPU cores and to give pasteable lesions (DCGAN: fewer steps leave the
  mask channel empty); DCGAN's trains 1500 steps, not the demo's 400: on the 64 px head
  phantom (53 lesions) 400 steps gave pasteable lesions but a mean lesion HU anywhere from
  47 to 81 HU over 5 seeds (real: 50-63 HU interquartile); 1500 steps with the generator's
  moving average (``ema``, DCGAN's default) gave 53-58 HU and 96-100 % pasteable draws in
  each of 5 seeds, in 3.7-8.4 minutes on one thread of a 2-core machine another job was
  loading (3 min 54 s for ``gan train dcgan --preset cpu --threads 1``).
- ``tiny``: widths so small that a step takes well under a second, for checking that a
  pipeline runs end to end (what the test suite trains every generator at). Nothing it
  makes is meant to look like a lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The largest batch `gan train` accepts (`gan.train.trainer.TrainConfig`): the papers train at 1
# (pix2pix, CycleGAN) to 128 (DCGAN); far beyond that a batch only runs out of memory.
MAX_BATCH_SIZE = 1024



@dataclass(frozen=True)
class GeneratorEntry:
    """One generator: where its class lives (``"module:Class"``), what it does in one line,
    and its presets (``{"paper"|"cpu"|"tiny": {"steps", "batch_size", "config"}}``)."""

    cls: str
    summary: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted(set(PRESET_NAMES) - set(self.presets))
        if missing:
            raise ValueError(f"gan.registry: {self.cls} has no {', '.join(missing)} preset")


PRESET_NAMES = ("paper", "cpu", "tiny")


REGISTRY: dict[str, GeneratorEntry] = {
    "dcgan": GeneratorEntry(
        "gan.models.dcgan:DCGAN", "lesion ROIs + masks from noise, pasted into real slices",
        presets={
            "paper": {"steps": 1000, "batch_size": 64, "config": {}},
            "cpu": {"steps": 1500, "batch_size": 16,
                    "config": {"roi_size": 32, "ngf": 16, "ndf": 16, "spectral_norm": True}},
            "tiny": {"steps": 2, "batch_size": 4, "config": {"nz": 8, "ngf": 4, "ndf": 4, "roi_size": 32}},
        },
    ),
    "pix2pix": GeneratorEntry(
        "gan.models.pix2pix:Pix2Pix", "new lesion masks painted into real slices (mask -> CT, paired)",
        presets={
            "paper": {"steps": 1000, "batch_size": 1, "config": {}},
            "cpu": {"steps": 120, "batch_size": 4, "config": {"ngf": 16, "ndf": 16}},
            "tiny": {"steps": 2, "batch_size": 2, "config": {"ngf": 4, "ndf": 4, "n_layers_d": 2}},
        },
    ),
    "cyclegan": GeneratorEntry(
        "gan.models.cyclegan:CycleGAN", "labelled slices translated to another scanner (unpaired A -> B)",
        presets={
            "paper": {"steps": 1000, "batch_size": 1, "config": {}},
            "cpu": {"steps": 100, "batch_size": 1,
                    "config": {"ngf": 8, "ndf": 16, "n_blocks": 3, "pool_size": 20}},
            "tiny": {"steps": 2, "batch_size": 1,
                     "config": {"ngf": 4, "ndf": 4, "n_blocks": 1, "n_layers_d": 2, "pool_size": 2}},
        },
    ),
}


def preset_text(preset: dict[str, Any]) -> str:
    """``"400 steps, batch 16, roi_size 32, ngf 16"``: a preset in one line."""
    options = ", ".join(f"{k} {v}" for k, v in preset["config"].items()) or "the paper's architecture"
    return f"{preset['steps']} steps, batch {preset['batch_size']}, {options}"


def presets_help() -> str:
    """Every generator's presets, for ``gan train --help``."""
    lines = ["presets (--preset; --steps, --batch-size and --config override them):"]
    for name, entry in REGISTRY.items():
        for preset, values in entry.presets.items():
            lines.append(f"  {name} {preset}: {preset_text(values)}")
    lines.append("auto = paper on CUDA, cpu otherwise (cpu: minutes on 2 cores; paper: hours on a CPU; "
                 "tiny: seconds, to check a pipeline runs)")
    return "\n".join(lines)
