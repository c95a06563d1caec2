"""Cheap quality numbers logged while a generator trains: is the run getting anywhere?

Losses of a GAN say little about its samples. With every progress grid (``grid_every``
steps, and the last step) the trainer calls `run_probe`, which asks the model for its
`GanModule.quality_probe` and writes the numbers into ``log.jsonl`` (and wandb), each
key prefixed ``probe/``:

- every model: HU inside generated lesions vs inside the real training lesions
  (``lesion_hu_mean``/``_median`` against ``real_lesion_hu_mean``/``_median``/``_q25``/``_q75``:
  the real lesion pixels' quartiles);
- DCGAN (`pasted_lesion_probe`): ``valid_rate``, the share of draws that give a pasteable
  lesion (what `DCGAN.synthesize` would keep rather than redraw);
- pix2pix (`own_mask_probe`): ``ssim``/``psnr`` over the repainted area of a few
  *training* lesion slices repainted from their own masks (a progress signal; held-out
  SSIM/PSNR is ``gan evaluate``'s);
- CycleGAN (`translation_probe`): ``contrast_retained`` and ``abs_mean_hu_diff`` of a few
  translated lesion slices (`gan.evaluate.preservation`), as ``gan evaluate`` computes them.

Cost: a fixed, small number of draws or slices (`PROBE_DRAWS`, `PROBE_SLICES`), well under
a second for the CPU presets on 64 px slices. Reproducibility: draws come from
``(seed, PROBE_STREAM)`` only, inside a fork of the torch RNG, in eval mode without
gradients: probing changes no weight, buffer or random stream, so a resumed run stays bit
for bit the same as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from augment.errors import LesionforgeError
from augment.sample import Sample
from gan.evaluate import quality as q
from gan.evaluate.paired import direction_sets
from gan.evaluate.preservation import lesion_hu_range, lesion_preservation, summarise_preservation

log = logging.getLogger(__name__)

# DCGAN lesions drawn per probe: 16 draws resolve the valid rate to 1/16 (the 90 % target
# is then 15 of 16) and take ~0.1 s with the cpu preset.
PROBE_DRAWS = 16
# Host slices those draws are pasted into, spread over the training data.
PROBE_HOSTS = 8
# pix2pix / CycleGAN lesion slices repainted or translated per probe. With 4, CycleGAN's
# contrast_retained read 2.4 where `gan evaluate` on 60 slices read 1.3 (64 px head
# phantom, cpu preset, 1000 steps): 8 cut the noise of that ratio of small contrasts by
# about 1/sqrt(2), for ~0.1 s at 64 px.
PROBE_SLICES = 8
# Tags the probe's numpy stream so it never coincides with the trainer's batch streams.
PROBE_STREAM = 0x70726F62  # "prob"
PREFIX = "probe/"


def spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """``n`` samples evenly spaced over ``samples`` (all of them when fewer): a fixed subset."""
    if len(samples) <= n:
        return list(samples)
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, n).round()]


def hu_stats(values: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_mean``/``_median``/``_q25``/``_q75`` of HU ``values`` (NaN when empty)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        nan = float("nan")
        return {f"{prefix}_mean": nan, f"{prefix}_median": nan, f"{prefix}_q25": nan, f"{prefix}_q75": nan}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {
        f"{prefix}_mean": float(v.mean()),
        f"{prefix}_median": float(med),
        f"{prefix}_q25": float(q25),
        f"{prefix}_q75": float(q75),
    }


def lesion_pixels(samples: Sequence[Sample]) -> np.ndarray:
    """HU of every labelled lesion pixel of ``samples``, concatenated."""
    parts = [s.image[s.mask > 0] for s in samples if s.has_lesion]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def real_lesion_stats(data: Sequence[Sample]) -> dict[str, float]:
    """HU statistics of the real training lesions (what generated lesions are held to)."""
    return hu_stats(lesion_pixels(data), "real_lesion_hu")


def _generated(values: np.ndarray) -> dict[str, float]:
    stats = hu_stats(values, "lesion_hu")
    return {k: v for k, v in stats.items() if k.endswith(("_mean", "_median"))}


def pasted_lesion_probe(module: Any, data: Sequence[Sample], *, seed: int, n: int = PROBE_DRAWS) -> dict[str, float]:
    """A model that pastes generated lesions (`DCGAN.draw_lesion`): ``n`` draws into
    `PROBE_HOSTS` hosts spread over ``data``.

    ``valid_rate`` is pasted draws / ``n``; ``lesion_hu_*`` are over the pasted lesions'
    pixels in the synthetic slice (what a synthetic dataset would hold).
    """
    hosts = spread(data, PROBE_HOSTS)
    rng = np.random.default_rng([seed, PROBE_STREAM])
    probs = module.class_probabilities()
    regions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pasted, values = 0, []
    for _ in range(n):
        drawn = module.draw_lesion(rng, hosts, probs, regions)
        if drawn is None:
            continue
        sample, (_, _, (r, c), lesion, _) = drawn
        side = lesion.shape[0]
        values.append(sample.image[r : r + side, c : c + side][lesion])
        pasted += 1
    generated = np.concatenate(values) if values else np.zeros(0, np.float32)
    return {"valid_rate": pasted / n, **_generated(generated), **real_lesion_stats(data)}


def own_mask_probe(module: Any, data: Sequence[Sample], *, n: int = PROBE_SLICES) -> dict[str, float]:
    """A model that repaints a slice from its own mask (pix2pix ``reconstruct``): SSIM
    and PSNR over the repainted area of ``n`` training lesion slices (HU clipped to the
    model window, data range its width), and lesion HU generated vs real."""
    slices = spread([s for s in data if s.has_lesion], n)
    if not slices:
        return {}
    window = module.model_window()
    rows = []
    for s, r in zip(slices, module.reconstruct(slices), strict=True):
        region = module.condition(s.image, s.mask)[1]
        rows.append(q.paired_ssim_psnr(s.image, r.image, hu_range=(window.low, window.high), region=region))
        rows[-1]["pixels"] = r.image[s.mask > 0]
    psnr = [x["psnr"] for x in rows if np.isfinite(x["psnr"])]
    return {
        "ssim": float(np.mean([x["ssim"] for x in rows])),
        "psnr": float(np.mean(psnr)) if psnr else float("inf"),
        **_generated(np.concatenate([x["pixels"] for x in rows])),
        **real_lesion_stats(data),
    }


def translation_probe(
    module: Any, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, n: int = PROBE_SLICES
) -> dict[str, float]:
    """A model that translates whole slices (CycleGAN ``translate``): ``n`` lesion slices
    of the source domain, translated; lesion preservation as ``gan evaluate`` measures it
    (`summarise_preservation`: ``contrast_retained``, mean |HU change| in the lesion, HU
    Dice) and lesion HU after vs before."""
    source = direction_sets(module, data, data_b)[0] or []
    slices = spread([s for s in source if s.has_lesion], n)
    if not slices:
        return {}
    translated = module.translate(slices)
    summary = summarise_preservation(
        [lesion_preservation(a, b, hu_range=lesion_hu_range(module.anatomy)) for a, b in zip(slices, translated, strict=True)]
    )
    return {
        "contrast_retained": summary["contrast_retained"],
        "abs_mean_hu_diff": summary["abs_mean_hu_diff"]["mean"],
        "dice_hu": summary["dice_hu"]["mean"],
        **_generated(lesion_pixels(translated)),
        **real_lesion_stats(slices),
    }


def run_probe(
    module: Any, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, seed: int
) -> dict[str, float]:
    """``module.quality_probe``, keys prefixed ``probe/``, with ``probe/seconds``; ``{}``
    when the model has nothing to probe. A probe that fails with a lesionforge error is
    logged and skipped: it must not end a long run."""
    devices = [module.device] if module.device.type == "cuda" else []
    start = time.perf_counter()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            numbers = module.quality_probe(data, data_b, seed=seed)
    except LesionforgeError as e:
        log.warning("quality probe skipped (%s)", e)
        return {}
    finally:
        module.train(was_training)
    if not numbers:
        return {}
    out = {PREFIX + k: float(v) for k, v in numbers.items()}
    out[PREFIX + "seconds"] = time.perf_counter() - start
    return out


__all__ = [
    "PROBE_DRAWS",
    "PROBE_SLICES",
    "hu_stats",
    "lesion_pixels",
    "own_mask_probe",
    "pasted_lesion_probe",
    "real_lesion_stats",
    "run_probe",
    "spread",
    "translation_probe",
]
