"""`lesionforge demo`: the quick end-to-end comparison on the embedded head-ICH phantom.

Runs the shipped ``demo`` config (``downstream/configs/demo.yaml``, package data, so it
works from an installed wheel in any directory) through `downstream.harness.compare.run_compare`:
phantom data in two scanner domains, DCGAN/pix2pix/CycleGAN trained on the labelled
patients only, a segmenter and a detector per strategy and seed, and the report; the
units run in worker processes, one per core (`downstream.harness.executors.auto_jobs`;
measured on 2 cores: 9.1 min two at a time with one thread each, 14.6 min one at a time
with two threads).
"""

from __future__ import annotations

from pathlib import Path

from downstream.config import CONFIG_DIR

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


def run_demo(
    out: str | Path = "out/demo", *, seed: int = 0, device: str = "auto", progress: bool = True,
    jobs: int | None = None,
) -> Path:
    """Run the demo experiment into ``out`` (``jobs`` units at a time, default `auto_jobs`);
    returns the path of ``report.md``."""
    from downstream.harness.compare import run_compare
    from downstream.harness.executors import auto_jobs

    return run_compare(DEMO_CONFIG, out=out, seed=seed, device=device, progress=progress,
                       jobs=jobs or auto_jobs(device))
