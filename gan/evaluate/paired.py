"""SSIM/PSNR where a generator has a ground truth: pix2pix regenerating a held-out lesion
slice from that slice's own mask ("own-mask"), CycleGAN translating a held-out slice
compared with its true rendering in the other domain ("target-domain"); what a model
offers is its class's ``paired_reference``. HU are clipped to the model window and
``data_range`` is its width (stated in the output).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from augment.errors import DataError
from augment.sample import Sample
from augment.window import Window
from gan.base import GanModule
from gan.evaluate import quality as q
from gan.evaluate.preservation import lesion_hu_range, lesion_preservation, summarise_preservation

log = logging.getLogger(__name__)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ------------------------------------------------------------------------- SSIM / PSNR


def direction_sets(
    module: GanModule, heldout: Sequence[Sample], heldout_b: Sequence[Sample] | None
) -> tuple[Sequence[Sample] | None, Sequence[Sample] | None]:
    """(source-domain, target-domain) held-out slices of a translation model."""
    if getattr(module.cfg, "direction", "AB") == "BA":
        return heldout_b, heldout
    return heldout, heldout_b


def paired_quality(
    module: GanModule,
    heldout: Sequence[Sample],
    heldout_b: Sequence[Sample] | None,
    window: Window,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """SSIM/PSNR against a ground truth where the model has one; ``(summary, per slice)``."""
    hu_range = (window.low, window.high)
    summary: dict[str, Any] = {
        "ssim": None,
        "ssim_std": None,
        "psnr": None,
        "psnr_std": None,
        "n_pairs": 0,
        "data_range": window.width,
        "hu_range": list(hu_range),
    }
    rows: list[dict[str, Any]] = []
    clip = f"HU clipped to [{window.low:g}, {window.high:g}] (model window), data_range {window.width:g} HU"
    if module.paired_reference == "own-mask":
        what = (
            f"{module.name} regenerating held-out lesion slices from their own masks; mean SSIM map "
            f"and PSNR over the regenerated (erased) pixels; {clip}"
        )
        lesion = [s for s in heldout if s.has_lesion]
        if not lesion:
            summary.update(ssim_what=what, ssim_reason="no held-out slice has a lesion")
        else:
            for s, r in zip(lesion, module.reconstruct(lesion), strict=True):
                region = module.condition(s.image, s.mask)[1]
                rows.append(
                    {
                        "id": s.id,
                        **q.paired_ssim_psnr(s.image, r.image, hu_range=hu_range, region=region),
                    }
                )
            summary["ssim_what"] = what
    elif module.paired_reference == "target-domain":
        direction = getattr(module.cfg, "direction", "AB")
        what = (
            f"{module.name} {direction[0]}->{direction[1]} translation of held-out slices against the true "
            f"domain-{direction[1]} rendering of the same slice id; whole slice; {clip}"
        )
        src, tgt = direction_sets(module, heldout, heldout_b)
        summary["ssim_what"] = what
        if src is None or tgt is None:
            summary["ssim_reason"] = f"no true domain-{direction[1]} renderings given (data_b)"
        else:
            truth = {t.id: t for t in tgt}
            pairs = [(s, truth[s.id]) for s in src if s.id in truth]
            if not pairs:
                raise DataError(
                    f"{tgt[0].meta.get('source_folder', 'domain-B data')}: no slice id also appears in the "
                    "domain-A held-out data (CycleGAN pairs the two by id)"
                )
            translated = module.translate([s for s, _ in pairs], direction)
            for (s, t), y in zip(pairs, translated, strict=True):
                m = q.paired_ssim_psnr(t.image, y.image, hu_range=hu_range)
                raw = q.paired_ssim_psnr(t.image, s.image, hu_range=hu_range)
                rows.append(
                    {
                        "id": s.id,
                        **m,
                        "ssim_untranslated": raw["ssim"],
                        "psnr_untranslated": raw["psnr"],
                    }
                )
            before_truth = [
                lesion_preservation(t, y, hu_range=lesion_hu_range(module.anatomy))
                for (_, t), y in zip(pairs, translated, strict=True)
            ]
            summary["preservation_vs_true"] = summarise_preservation(before_truth)
            summary["ssim_untranslated"], _ = mean_std([r["ssim_untranslated"] for r in rows])
            summary["psnr_untranslated"], _ = mean_std([r["psnr_untranslated"] for r in rows])
    else:
        summary.update(
            ssim_what="none",
            ssim_reason=(
                f"{module.name} draws new lesions: there is no paired ground truth to compare with"
            ),
        )
    if rows:
        summary["ssim"], summary["ssim_std"] = mean_std([r["ssim"] for r in rows])
        summary["psnr"], summary["psnr_std"] = mean_std([r["psnr"] for r in rows])
        summary["ssim_whole_slice"], _ = mean_std([r["ssim_whole_slice"] for r in rows])
        summary["n_pairs"] = len(rows)
        summary["n_identical"] = sum(math.isinf(r["psnr"]) for r in rows)
    else:
        summary["data_range"] = summary["hu_range"] = None  # nothing was compared
    return summary, rows


# ------------------------------------------------------------------------ memorisation
