"""Do the generators learn from tens of lesions? Train, time, sample, measure (issue #14).

Trains one generator on a phantom folder with one thread (the machine is shared), then:

- DCGAN: synthesizes ``--n`` samples into the training slices and reports the share of
  draws that gave a pasteable lesion (``n / (n + redraws)``, `DCGAN.synthesize`'s own
  bookkeeping) and the mean / median HU of the pasted lesion pixels against the real
  training lesions' pixel quartiles;
- CycleGAN: runs ``gan evaluate`` (`gan.evaluate.protocol.evaluate_run`) on held-out
  folders and reports ``contrast_retained`` and the mean |HU change| in the lesions.

Prints one JSON line per run. Not a test: it takes minutes.

    python bench/few_lesions.py dcgan --data /tmp/headA --out /tmp/runs/dc0 --steps 1500 \\
        --config '{"roi_size": 32, "ngf": 16, "ndf": 16, "spectral_norm": true}' --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from augment.datasets import load_samples
from gan.base import GanModule
from gan.train.probes import lesion_pixels
from gan.train.trainer import train_generator


def dcgan_numbers(run: Path, data: Path, n: int, seed: int) -> dict:
    module = GanModule.load(run)
    hosts = load_samples(data)
    by_id = {h.id: h for h in hosts}
    t0 = time.perf_counter()
    try:
        samples = module.sample(n, seed=seed, conditions=hosts)
    except Exception as e:  # a collapsed generator: no lesion within max_redraws draws
        return {"pasteable_rate": 0.0, "error": str(e)}
    redraws = sum(s.meta["redraws"] for s in samples)
    pixels = np.concatenate(
        [s.image[(s.mask > 0) & (by_id[s.meta["host_id"]].mask == 0)] for s in samples]
    )
    real = lesion_pixels(hosts)
    q25, q75 = np.percentile(real, [25, 75])
    mean = float(pixels.mean())
    return {
        "pasteable_rate": n / (n + redraws),
        "gen_lesion_hu_mean": mean,
        "gen_lesion_hu_median": float(np.median(pixels)),
        "real_lesion_hu_q25": float(q25),
        "real_lesion_hu_q75": float(q75),
        "real_lesion_hu_mean": float(real.mean()),
        "hu_mean_in_real_iqr": bool(q25 <= mean <= q75),
        "sample_seconds": time.perf_counter() - t0,
    }


def cyclegan_numbers(run: Path, heldout: Path, heldout_b: Path, n: int, seed: int) -> dict:
    from gan.evaluate.protocol import evaluate_run

    m = evaluate_run(run, heldout, heldout_b, out=run / "eval", n=n, seed=seed, device="cpu", progress=False)
    p = m["metrics"]["preservation"]
    return {
        "contrast_retained": p["contrast_retained"],
        "abs_mean_hu_diff": p["abs_mean_hu_diff"]["mean"],
        "ssim": m["metrics"].get("ssim"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["dcgan", "cyclegan"])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--data-b", type=Path)
    ap.add_argument("--heldout", type=Path)
    ap.add_argument("--heldout-b", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--config", default="{}", help="model options as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=200, help="synthetic samples to measure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-train", action="store_true", help="measure an existing run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    config = json.loads(a.config)
    seconds = None
    if not a.skip_train:
        t0 = time.perf_counter()
        train_generator(
            a.model, a.data, a.data_b, a.out, steps=a.steps, batch_size=a.batch_size, seed=a.seed,
            device="cpu", model_config=config, progress=False, grid_every=max(a.steps // 4, 1),
            ckpt_every=0, precision="fp32", overwrite=True,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    if a.model == "dcgan":
        numbers = dcgan_numbers(a.out, a.data, a.n, a.seed)
    else:
        numbers = cyclegan_numbers(a.out, a.heldout, a.heldout_b, a.n, a.seed)
    print(json.dumps({"model": a.model, "run": str(a.out), "steps": a.steps, "seed": a.seed,
                      "config": config, "threads": a.threads, "train_seconds": seconds, **numbers}))


if __name__ == "__main__":
    main()
