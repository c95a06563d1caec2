"""Is a generator copying its training patients? The memorisation audit.

A synthetic slice is a real training slice (its host) plus generated content, so
whole-slice similarity to training would only find the host. For models that paint
lesions into hosts the audit compares the *generated lesion* (a patch around it) with
every training lesion patch, except those of its own host; for models that translate
whole hosts the translated slice is compared with the training slices of other
patients. Held-out real slices go through the same audit, as the baseline of how
similar an unseen real lesion (or slice) is to training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import DataError
from augment.sample import Sample
from augment.viz import save_figure
from augment.window import Window
from gan.base import GanModule
from gan.evaluate import quality as q

log = logging.getLogger(__name__)

COPY_THRESHOLD = 0.95  # nearest-training SSIM at or above which a sample counts as a copy
PIXEL_SIDE = 16  # side of the downsampled images behind the pixel distances
PAIRS_SHOWN = 8


def unit_images(samples: Sequence[Sample], window: Window) -> np.ndarray:
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        where = samples[0].meta.get("source_folder") or samples[0].id
        raise DataError(f"{where}: slices of several sizes {sorted(shapes)}; resample to one size")
    if not samples:
        return np.zeros((0, 1, 1), np.float32)
    return np.stack([window.to_unit(s.image) for s in samples]).astype(np.float32)


def _generated_box(s: Sample, host: Sample | None) -> tuple[slice, slice] | None:
    """Box of the largest generated lesion of ``s``: where it differs from its host
    (restricted to its mask when that leaves anything), else its mask."""
    if host is not None and host.image.shape == s.image.shape:
        changed = s.image != host.image
        lesion = changed & (s.mask > 0)
        return q.largest_component_box(lesion if lesion.any() else changed)
    return q.largest_component_box(s.mask > 0)


def memorisation(
    module: GanModule,
    synthetic: Sequence[Sample],
    training: Sequence[Sample],
    heldout: Sequence[Sample],
    window: Window,
    *,
    threshold: float = COPY_THRESHOLD,
    top_k: int | None = 32,
    patch_px: int = 32,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Nearest-training SSIM of the generated content; ``(summary, arrays for plots)``."""
    pixel_name = (
        f"RMS difference of {PIXEL_SIDE}x{PIXEL_SIDE} area-downsampled windowed images ([0, 1])"
    )
    base: dict[str, Any] = {
        "threshold": threshold,
        "top_k": top_k,
        "pixel_distance_name": pixel_name,
        "window": [window.center, window.width],
    }
    if module.translates_hosts:
        mode = "whole slices"
        what = (
            "each translated slice vs the training slices of other patients (its own patient's "
            "slices include its untranslated host); SSIM on the windowed [0, 1] slices, data_range 1"
        )
        queries, refs = unit_images(synthetic, window), unit_images(training, window)
        ref_owner = np.arange(len(training))
        exclude = np.array(
            [[s.patient_id == t.patient_id for t in training] for s in synthetic], bool
        )
        base_queries = unit_images(heldout, window)
        base_exclude = np.array(
            [[h.patient_id == t.patient_id for t in training] for h in heldout], bool
        )
        query_ids = [s.id for s in synthetic]
        skipped = 0
    else:
        mode = "lesion patches"
        side = min(patch_px, *training[0].image.shape) if training else patch_px
        what = (
            f"a {side}x{side} patch around each synthetic slice's generated lesion vs every training "
            "lesion patch (one per connected lesion) except its own host's; SSIM on windowed [0, 1] "
            "patches, data_range 1"
        )
        train_unit = [window.to_unit(t.image) for t in training]
        refs, ref_owner = q.lesion_patches(train_unit, [t.mask for t in training], side)
        by_id = {t.id: i for i, t in enumerate(training)}
        patches, hosts, query_ids = [], [], []
        for s in synthetic:
            hi = by_id.get(s.meta.get("host_id"))
            box = _generated_box(s, training[hi] if hi is not None else None)
            if box is None:
                continue
            patches.append(q.square_patch(window.to_unit(s.image), *box, side))
            hosts.append(-1 if hi is None else hi)
            query_ids.append(s.id)
        skipped = len(synthetic) - len(patches)
        queries = np.stack(patches) if patches else np.zeros((0, side, side))
        exclude = np.asarray(hosts)[:, None] == ref_owner[None, :]
        held_unit = [window.to_unit(h.image) for h in heldout]
        base_queries, _ = q.lesion_patches(held_unit, [h.mask for h in heldout], side)
        base_exclude = None
        base["patch_px"] = side
    base.update(mode=mode, what=what, n_references=len(refs), n_skipped=skipped)
    if len(refs) == 0 or len(queries) == 0:
        empty = "training lesions" if len(refs) == 0 else "generated lesions"
        base.update(
            q.summarise_nearest(np.zeros(0), threshold),
            reason=f"no {empty} to compare",
        )
        none = np.zeros(0)
        return base, {
            "ssim": none,
            "heldout_ssim": none,
            "query_ids": [],
            "nearest_ids": [],
            "pixel_rms": none,
        }
    near = q.nearest_by_ssim(queries, refs, top_k=top_k, exclude=exclude, feature_side=PIXEL_SIDE)
    summary = q.summarise_nearest(near["ssim"], threshold)
    base.update(summary)
    finite = near["pixel_rms"][np.isfinite(near["pixel_rms"])]
    base["median_pixel_rms"] = float(np.median(finite)) if finite.size else None
    held = np.zeros(0)
    if len(base_queries):
        held = q.nearest_by_ssim(
            base_queries, refs, top_k=top_k, exclude=base_exclude, feature_side=PIXEL_SIDE
        )["ssim"]
    base["heldout"] = q.summarise_nearest(held, threshold)
    owners = [training[int(ref_owner[i])].id if i >= 0 else None for i in near["index"]]
    arrays = {
        "ssim": near["ssim"],
        "heldout_ssim": held,
        "queries": queries,
        "refs": refs,
        "index": near["index"],
        "query_ids": query_ids,
        "nearest_ids": owners,
        "pixel_rms": near["pixel_rms"],
    }
    return base, arrays


# ------------------------------------------------------------------------------ figures


def pairs_png(path: Path, mem: dict[str, Any], window: Window, n: int = PAIRS_SHOWN) -> str | None:
    """The synthetic images (or lesion patches) closest to a training one, above it,
    shown in ``window``, the window SSIM was computed in."""
    if "queries" not in mem or not np.isfinite(mem["ssim"]).any():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from augment.viz import window_caption

    ssim = np.where(np.isfinite(mem["ssim"]), mem["ssim"], -np.inf)
    order = [int(i) for i in np.argsort(-ssim, kind="stable")[:n] if np.isfinite(ssim[i])]
    caption_in = 0.25
    height = 4.0 + caption_in
    fig = Figure(figsize=(max(1.8 * len(order), 3.6), height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(order), squeeze=False)
    for c, i in enumerate(order):
        for r, (image, title) in enumerate(
            (
                (mem["queries"][i], f"{mem['query_ids'][i]}\nSSIM {mem['ssim'][i]:.3f}"),
                (mem["refs"][mem["index"][i]], f"{mem['nearest_ids'][i]}"),
            )
        ):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("synthetic", fontsize=8)
    axes[1][0].set_ylabel("nearest training", fontsize=8)
    window_caption(fig, window, height, "the window SSIM is computed in")
    fig.tight_layout(rect=(0, caption_in / height, 1, 1))
    return str(save_figure(fig, path))


# ------------------------------------------------------------------------------- entry
