"""`lesionforge demo`: the quick end-to-end comparison on the embedded head-ICH phantom.

Runs ``configs/demo.yaml`` of the source checkout (the README installs it editable)
through `downstream.harness.run_compare`: phantom data in two
scanner domains, DCGAN/pix2pix/CycleGAN trained on the labelled patients only, a
segmenter and a detector per strategy and seed, and the report.
"""

from __future__ import annotations

from pathlib import Path

from augment.errors import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def run_demo(out: str | Path = "out/demo", *, seed: int = 0, device: str = "auto", progress: bool = True) -> Path:
    """Run the demo experiment into ``out``; returns the path of ``report.md``."""
    from downstream.harness import run_compare

    if not DEMO_CONFIG.exists():
        raise ConfigError(f"{DEMO_CONFIG}: demo config not found (run from a source checkout)")
    return run_compare(DEMO_CONFIG, out=out, seed=seed, device=device, progress=progress)
