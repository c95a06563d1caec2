"""`lesionforge demo`: the quick end-to-end comparison on the embedded head-ICH phantom.

Runs the shipped ``demo`` config (``downstream/configs/demo.yaml``, package data, so it
works from an installed wheel in any directory) through `downstream.harness.compare.run_compare`:
phantom data in two scanner domains, DCGAN/pix2pix/CycleGAN trained on the labelled
patients only, a segmenter and a detector per strategy and seed, and the report; two
units at a time in worker processes where there are two cores (`demo_jobs`).
"""

from __future__ import annotations

from pathlib import Path

from downstream.config import CONFIG_DIR

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


def demo_jobs() -> int:
    """Units the demo runs at a time: `auto_jobs` on the CPU.

    Measured on the 2-core development VM (README): two units at a time with one torch
    thread each finish the demo in 9.1 min, one unit at a time with two threads in 14.6 min
    (small convolutions keep one core busy better than they split over two).
    """
    from downstream.harness.executors import auto_jobs

    return auto_jobs("cpu")


def run_demo(
    out: str | Path = "out/demo", *, seed: int = 0, device: str = "auto", progress: bool = True,
    jobs: int | None = None,
) -> Path:
    """Run the demo experiment into ``out`` (``jobs`` units at a time, default `demo_jobs`);
    returns the path of ``report.md``."""
    from downstream.harness.compare import run_compare

    return run_compare(DEMO_CONFIG, out=out, seed=seed, device=device, progress=progress,
                       jobs=jobs or demo_jobs())
