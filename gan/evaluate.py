"""How good is a trained generator? SSIM/PSNR, FID/KID, memorisation, one JSON row.

`evaluate_generator` measures a loaded model on given slices (what the harness calls);
`evaluate_run` loads a run folder or checkpoint, samples from it and writes
``metrics.json`` plus PNG summaries (what ``lesionforge gan evaluate`` calls).

What is compared, per model (chosen by what the model can do, not by its name):

- **SSIM/PSNR** need a ground truth. A model with ``reconstruct`` (pix2pix) regenerates
  each held-out lesion slice from its own mask; SSIM (mean of the SSIM map) and PSNR
  are taken over the regenerated (erased) pixels only, since the rest is the input
  copied bit for bit. A model with ``translate`` (CycleGAN) translates held-out slices
  and is compared, whole slice, with the true rendering of the same slice id in the
  other domain (the phantom renders each id in both). A DCGAN draws new lesions: no
  ground truth, so None with the reason. HU are clipped to the model window and
  ``data_range`` is its width (stated in the output).
- **FID/KID** (pytorch-fid Inception pool3) against held-out real slices of the output
  domain, only when the Inception weights are on disk. A Fréchet distance on
  downsampled pixels is always given under its own name.
- **Memorisation**: a synthetic slice is a real training slice (its host) plus
  generated content, so whole-slice similarity to training would only find the host.
  For models that paint lesions into hosts the audit compares the *generated lesion*
  (a patch around it) with every training lesion patch, except those of its own host;
  for translation models the whole translated slice is compared with the training
  slices of other patients. Held-out real slices go through the same audit, as the
  baseline of how similar an unseen real lesion (or slice) is to training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.datasets import load_samples
from augment.errors import CheckpointError, ConfigError, DataError
from augment.sample import (
    Sample,
    sha256_file,
    to_jsonable,
    versions,
    write_bytes_atomic,
    write_json_atomic,
)
from augment.viz import save_figure
from augment.window import DISPLAY_WINDOW, MODEL_WINDOW, WINDOWS, Window
from gan import quality as q
from gan.base import GanModule, read_checkpoint, resolve_checkpoint, resolve_device
from gan.preservation import lesion_hu_range, lesion_preservation, summarise_preservation
from gan.synthesize import chunk_seed
from gan.train_data import data_fingerprint

log = logging.getLogger(__name__)

COPY_THRESHOLD = 0.95  # nearest-training SSIM at or above which a sample counts as a copy
PIXEL_SIDE = 16  # side of the downsampled images behind the pixel distances
PAIRS_SHOWN = 8

# An evaluation output folder: ``metrics.json`` says this as its ``format``, and the
# marker file (written first, before any result) says it while the results are written.
EVAL_FORMAT = "lesionforge-gan-evaluation/1"
EVAL_MARKER = ".lesionforge-evaluation"
# Every file `evaluate_run` writes into its output folder.
EVAL_FILES = (
    EVAL_MARKER, "metrics.json", "details.json", "summary.png", "grid.png", "memorisation_pairs.png"
)
_STAGING = re.compile(r"^\..+\.(tmp|partial|old)-\d+$")
# Keys every metrics.json of `evaluate_run` holds, also those written before EVAL_FORMAT.
_EVAL_KEYS = {"checkpoint", "checkpoint_sha256", "step", "config", "versions"}


# ------------------------------------------------------------------------------ helpers


def model_window(module: GanModule) -> Window:
    """The HU window the model sees (its ``window``, else its data kind's model window)."""
    w = getattr(module, "window", None)
    if isinstance(w, Window):
        return w
    if getattr(module.cfg, "window", None) is not None:
        return Window(*module.cfg.window)
    kind = module.data_info.get("kind")
    if kind in MODEL_WINDOW:
        return WINDOWS[MODEL_WINDOW[kind]]
    raise ConfigError(f"{module.name}: no HU window in its config or data kind to evaluate with")


def _display_window(module: GanModule, fallback: Window) -> Window:
    kind = getattr(module.cfg, "anatomy", None) or module.data_info.get("kind")
    return WINDOWS[DISPLAY_WINDOW[kind]] if kind in DISPLAY_WINDOW else fallback


def _unit(samples: Sequence[Sample], window: Window) -> np.ndarray:
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        where = samples[0].meta.get("source_folder") or samples[0].id
        raise DataError(f"{where}: slices of several sizes {sorted(shapes)}; resample to one size")
    if not samples:
        return np.zeros((0, 1, 1), np.float32)
    return np.stack([window.to_unit(s.image) for s in samples]).astype(np.float32)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ------------------------------------------------------------------------- SSIM / PSNR


def _direction_sets(
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
        src, tgt = _direction_sets(module, heldout, heldout_b)
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
                lesion_preservation(t, y, hu_range=lesion_hu_range(module.data_info.get("kind")))
                for (_, t), y in zip(pairs, translated, strict=True)
            ]
            summary["preservation_vs_true"] = summarise_preservation(before_truth)
            summary["ssim_untranslated"], _ = _mean_std([r["ssim_untranslated"] for r in rows])
            summary["psnr_untranslated"], _ = _mean_std([r["psnr_untranslated"] for r in rows])
    else:
        summary.update(
            ssim_what="none",
            ssim_reason=(
                f"{module.name} draws new lesions: there is no paired ground truth to compare with"
            ),
        )
    if rows:
        summary["ssim"], summary["ssim_std"] = _mean_std([r["ssim"] for r in rows])
        summary["psnr"], summary["psnr_std"] = _mean_std([r["psnr"] for r in rows])
        summary["ssim_whole_slice"], _ = _mean_std([r["ssim_whole_slice"] for r in rows])
        summary["n_pairs"] = len(rows)
        summary["n_identical"] = sum(math.isinf(r["psnr"]) for r in rows)
    else:
        summary["data_range"] = summary["hu_range"] = None  # nothing was compared
    return summary, rows


# ------------------------------------------------------------------------ memorisation


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
        queries, refs = _unit(synthetic, window), _unit(training, window)
        ref_owner = np.arange(len(training))
        exclude = np.array(
            [[s.patient_id == t.patient_id for t in training] for s in synthetic], bool
        )
        base_queries = _unit(heldout, window)
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


def _summary_png(
    path: Path,
    name: str,
    paired: list[dict[str, Any]],
    mem: dict[str, Any],
    threshold: float,
    paired_what: str,
) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_s, ax_p, ax_m = fig.subplots(1, 3)
    for ax, key, label in ((ax_s, "ssim", "SSIM"), (ax_p, "psnr", "PSNR (dB)")):
        values = [r[key] for r in paired if np.isfinite(r[key])]
        if values:
            ax.hist(values, bins=min(20, max(5, len(values) // 2)), color="tab:blue")
            ax.set_xlabel(label)
            ax.set_ylabel("slices")
        else:
            ax.text(0.5, 0.5, f"no {label}:\nno paired ground truth", ha="center", va="center")
            ax.set_axis_off()
    ax_s.set_title(f"{name}: paired {len(paired)} slices", fontsize=9)
    ax_p.set_title(paired_what[:70] + ("..." if len(paired_what) > 70 else ""), fontsize=7)
    syn = mem["ssim"][np.isfinite(mem["ssim"])]
    held = mem["heldout_ssim"][np.isfinite(mem["heldout_ssim"])]
    bins = np.linspace(min([0.0, *syn, *held]), 1.0, 26)
    if len(syn):
        ax_m.hist(syn, bins=bins, alpha=0.6, label="synthetic", color="tab:red")
    if len(held):
        ax_m.hist(held, bins=bins, alpha=0.6, label="held-out real", color="tab:green")
    ax_m.axvline(
        threshold, color="k", linestyle="--", linewidth=1, label=f"copy threshold {threshold:g}"
    )
    ax_m.set_xlabel("SSIM to nearest training")
    ax_m.set_title("memorisation", fontsize=9)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    return str(save_figure(fig, path))


def _pairs_png(path: Path, mem: dict[str, Any], window: Window, n: int = PAIRS_SHOWN) -> str | None:
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


def evaluate_generator(
    module: GanModule,
    *,
    synthetic: Sequence[Sample],
    training: Sequence[Sample],
    heldout: Sequence[Sample],
    heldout_b: Sequence[Sample] | None = None,
    fid_weights: str | os.PathLike | None = None,
    seed: int = 0,
    out: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    fid_extractor: q.InceptionFeatures | None = None,
    copy_threshold: float = COPY_THRESHOLD,
    top_k: int | None = 32,
    patch_px: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Quality of ``module``'s ``synthetic`` samples: one flat, JSON-able dict.

    Args:
        module: the loaded generator (its device runs the Inception network too).
        synthetic: samples it made (hosts drawn from ``training``).
        training: the labelled slices it was trained on (memorisation references).
        heldout: real slices no model saw (SSIM/PSNR ground truth, FID reference);
            domain A for CycleGAN.
        heldout_b: CycleGAN: the true domain-B renderings of ``heldout`` (same ids).
        fid_weights: pytorch-fid Inception weights file (or folder); None looks in the
            torch hub cache. Nothing is downloaded.
        seed: seeds the KID subsets.
        out: folder for ``summary.png``, ``grid.png``, ``memorisation_pairs.png`` and
            ``details.json`` (per-slice values).
        cache_dir: reference-set Inception features cache (default
            `gan.quality.default_cache_dir`).
        fid_extractor: the Inception network, already loaded (then ``fid_weights`` is
            not read); `evaluate_run` loads it before sampling, so bad weights fail first.
        copy_threshold: nearest-training SSIM counted as a copy.
        top_k: SSIM is computed for this many nearest references by pixel distance.
        patch_px: side of the lesion patches of the memorisation audit.

    Returns:
        ``ssim``, ``psnr`` (+ ``_std``, ``n_pairs``, ``ssim_what``,
        ``ssim_reason`` when None, ``data_range``, ``hu_range``); ``fid``, ``kid``,
        ``kid_std``, ``fid_status``; ``feature_distance_name``/``feature_distance``;
        ``memorisation`` (median/p95/max nearest SSIM, ``fraction_above_threshold``,
        ``threshold``, held-out baseline, ``pairs_png``); ``preservation`` (translation
        models); ``summary_png``, ``grid_png``, ``memorisation_png``.
    """
    out = Path(out)
    if not synthetic:
        raise DataError(f"{out}: no synthetic samples to evaluate")
    if not heldout:
        raise DataError(f"{out}: no held-out real slices to evaluate against")
    window = model_window(module)
    result: dict[str, Any] = {
        "generator": module.name,
        "window": [window.center, window.width],
        "n_synthetic": len(synthetic),
        "n_training": len(training),
        "n_heldout": len(heldout),
        "n_heldout_b": len(heldout_b) if heldout_b is not None else None,
        "copy_threshold": copy_threshold,
    }
    paired, paired_rows = paired_quality(module, heldout, heldout_b, window)
    result.update(paired)

    if module.translates_hosts:
        by_id = {t.id: t for t in training}
        hosts = [(by_id.get(s.meta.get("host_id")), s) for s in synthetic]
        result["preservation"] = summarise_preservation(
            [
                lesion_preservation(h, s, hu_range=lesion_hu_range(module.data_info.get("kind")))
                for h, s in hosts
                if h is not None and h.image.shape == s.image.shape
            ]
        )
        reference = _direction_sets(module, heldout, heldout_b)[1]
        ref_what = "held-out real slices of the target domain"
    else:
        result["preservation"] = None
        reference, ref_what = heldout, "held-out real slices"

    syn_unit = _unit(synthetic, window)
    if reference is None or len(reference) < 2 or len(synthetic) < 2:
        why = (
            "no target-domain real slices (data_b)"
            if reference is None
            else "fewer than 2 images in a set"
        )
        result.update(
            fid=None,
            kid=None,
            kid_std=None,
            fid_status=f"unavailable: {why}",
            feature_distance_name=None,
            feature_distance=None,
        )
    else:
        ref_unit = _unit(reference, window)
        if ref_unit.shape[1:] != syn_unit.shape[1:]:
            raise DataError(
                f"synthetic slices {syn_unit.shape[1:]} and real slices {ref_unit.shape[1:]} differ in size"
            )
        result["fid_reference"] = f"{len(reference)} {ref_what}"
        result.update(
            q.fid_kid(
                syn_unit,
                ref_unit,
                weights=fid_weights,
                extractor=fid_extractor,
                device=module.device,
                seed=seed,
                cache_dir=q.default_cache_dir() if cache_dir is None else cache_dir,
                what={"window": [window.center, window.width], "n": len(reference)},
                progress=progress,
            )
        )
        f_syn, f_ref = q.downsample(syn_unit, PIXEL_SIDE), q.downsample(ref_unit, PIXEL_SIDE)
        result["feature_distance_name"] = (
            f"Frechet distance of {PIXEL_SIDE}x{PIXEL_SIDE} area-downsampled windowed pixels (not FID)"
        )
        result["feature_distance"] = q.frechet_distance_from_features(f_syn, f_ref)

    mem, arrays = memorisation(
        module,
        synthetic,
        training,
        heldout,
        window,
        threshold=copy_threshold,
        top_k=top_k,
        patch_px=patch_px,
    )
    out.mkdir(parents=True, exist_ok=True)
    # First: marks the folder as an evaluation's, so a later one may replace it.
    write_bytes_atomic(out / EVAL_MARKER, (json.dumps({"format": EVAL_FORMAT}) + "\n").encode())
    mem["pairs_png"] = _pairs_png(out / "memorisation_pairs.png", arrays, window)
    result["memorisation"] = mem
    result["memorisation_png"] = mem["pairs_png"]
    result["summary_png"] = _summary_png(
        out / "summary.png",
        module.name,
        paired_rows,
        arrays,
        copy_threshold,
        paired.get("ssim_what", ""),
    )
    from augment.viz import save_grid

    shown = min(6, len(synthetic))
    real_row = list(reference or heldout)[:shown]
    result["grid_png"] = str(
        save_grid(
            [list(synthetic[:shown]), real_row],
            out / "grid.png",
            window=_display_window(module, window),
            row_labels=[f"{module.name} synthetic", "real (held-out)"],
            contour=True,
            titles=[s.id for s in synthetic[:shown]],
            class_names=module.data_info.get("classes"),
        )
    )
    details = {
        "paired": paired_rows,
        "memorisation": [
            {"id": i, "nearest_training": n, "ssim": s, "pixel_rms": p}
            for i, n, s, p in zip(
                arrays["query_ids"],
                arrays["nearest_ids"],
                arrays["ssim"],
                arrays["pixel_rms"],
                strict=True,
            )
        ],
    }
    write_json_atomic(out / "details.json", details)
    result["details_json"] = str(out / "details.json")
    return to_jsonable(result)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_lines(m: dict[str, Any]) -> list[str]:
    """What ``lesionforge gan evaluate`` prints, from an `evaluate_generator` dict."""
    lines = []
    if m.get("ssim") is not None:
        lines.append(
            f"SSIM {_fmt(m['ssim'])} ± {_fmt(m['ssim_std'])}, PSNR {_fmt(m['psnr'], '.2f')} ± "
            f"{_fmt(m['psnr_std'], '.2f')} dB over {m['n_pairs']} slices: {m['ssim_what']}"
        )
        if m.get("ssim_untranslated") is not None:
            lines.append(
                f"  untranslated input vs truth: SSIM {_fmt(m['ssim_untranslated'])}, "
                f"PSNR {_fmt(m['psnr_untranslated'], '.2f')} dB"
            )
    else:
        lines.append(f"SSIM/PSNR: n/a ({m.get('ssim_reason', 'no ground truth')})")
    if m.get("fid") is not None:
        lines.append(
            f"FID {m['fid']:.3f}, KID {m['kid']:.5f} ± {m['kid_std']:.5f} ({m['fid_status']})"
        )
    else:
        lines.append(f"FID/KID {m['fid_status']}")
    if m.get("feature_distance") is not None:
        lines.append(f"{m['feature_distance_name']}: {m['feature_distance']:.4f}")
    mem = m["memorisation"]
    if mem.get("n"):
        held = mem["heldout"]
        lines.append(
            f"memorisation ({mem['mode']}): nearest-training SSIM median {_fmt(mem['median_ssim'])}, "
            f"p95 {_fmt(mem['p95_ssim'])}, max {_fmt(mem['max_ssim'])}; {mem['n_above']}/{mem['n']} "
            f"({100 * mem['fraction_above_threshold']:.1f}%) at or above {mem['threshold']:g}"
            + (
                f"; held-out real: median {_fmt(held['median_ssim'])}, {held['n_above']}/{held['n']} above"
                if held.get("n")
                else ""
            )
        )
    else:
        lines.append(f"memorisation: n/a ({mem.get('reason', 'nothing to compare')})")
    p = m.get("preservation")
    if p and p.get("n_with_lesion"):
        lines.append(
            f"lesion preservation ({p['n_with_lesion']} slices): contrast retained "
            f"{_fmt(p['contrast_retained'])}, |mean HU change| {_fmt(p['abs_mean_hu_diff']['mean'], '.1f')} HU"
        )
    lines.append(f"summary figure: {m['summary_png']}")
    return lines


def _is_evaluation_record(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and (doc.get("format") == EVAL_FORMAT or _EVAL_KEYS <= doc.keys())


def check_evaluation_out(out: Path) -> None:
    """Refuse an output folder `evaluate_run` must not write into, before any work.

    Accepted: a new folder, an empty one, or the output of an earlier evaluation (its
    marker file, or a ``metrics.json`` lesionforge wrote, and none but `EVAL_FILES`),
    which is replaced. Anything else (a dataset, a run folder, the user's own files)
    is refused: the evaluation would overwrite ``metrics.json`` and the PNGs there.
    """
    if out.is_symlink() and not out.exists() or out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another --out")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n not in EVAL_FILES and not _STAGING.match(n)]
    ours = (out / EVAL_MARKER).is_file() or (
        (out / "metrics.json").is_file() and _is_evaluation_record(out / "metrics.json")
    )
    if not names or (ours and not foreign):
        return
    shown = foreign or [n for n in names if not _STAGING.match(n)]
    listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    raise DataError(
        f"{out}: not a gan evaluate output (it holds {listed}); choose another --out "
        "(a new or empty folder, or an earlier evaluation's, which is replaced)"
    )


def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike,
    data_b: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    fid_weights: str | os.PathLike | None = None,
    n: int = 200,
    seed: int = 0,
    device: str = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    chunk: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained generator: sample ``n`` slices, measure, write ``metrics.json``.

    Args:
        run: a run folder (holding ``last.pt``) or a checkpoint file (`resolve_checkpoint`).
        data: dataset folder of held-out real slices (domain A for CycleGAN).
        data_b: CycleGAN: dataset folder of the true domain-B renderings of ``data``.
        out: output folder; default ``RUN/eval`` (beside the checkpoint for a file).
        fid_weights, cache_dir: see `evaluate_generator`.
        n: synthetic slices, sampled like `gan.synthesize` (chunks of ``chunk`` seeded
            by `chunk_seed`), from hosts in the training folder the checkpoint records.
        seed: sampling and KID seed.
        device: ``auto``, ``cpu``, ``cuda``...

    Returns:
        ``summary_lines`` (list of str), ``metrics_path``, ``metrics`` (the dict written).
    """
    from tqdm.auto import tqdm

    # Everything cheap first (options, files, folders, weights), then sampling.
    for name, value, low in (("n", n, 2), ("chunk", chunk, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"evaluate: {name} must be >= {low}, got {value!r}")
    ckpt = resolve_checkpoint(run)
    out = Path(out) if out is not None else ckpt.parent / "eval"
    check_evaluation_out(out)
    found_weights = None
    if fid_weights is not None:
        found_weights, searched = q.find_fid_weights(fid_weights)
        if found_weights is None:
            raise DataError(f"{searched[0]}: Inception weights file not found (--fid-weights)")
    heldout = load_samples(data)
    if not heldout:
        raise DataError(f"{data}: no slices to evaluate against")
    heldout_b = load_samples(data_b) if data_b is not None else None
    checkpoint = read_checkpoint(ckpt)
    step = checkpoint["step"]
    module = GanModule.from_checkpoint(checkpoint, ckpt, device=resolve_device(device))
    del checkpoint
    extractor = None
    if found_weights is not None:
        extractor = q.InceptionFeatures(found_weights, device=module.device)
    info = module.data_info
    folder = info.get("folder") or info.get("data")
    if not folder:
        raise CheckpointError(
            f"{ckpt}: records no training data folder (needed for hosts and the memorisation audit)"
        )
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: training data folder recorded in {ckpt} no longer exists")
    training = load_samples(folder)
    folder_b = info.get("folder_b") or info.get("data_b")
    matches = None
    if info.get("fingerprint"):
        train_b = load_samples(folder_b) if folder_b and Path(folder_b).is_dir() else None
        matches = data_fingerprint(training, train_b) == info["fingerprint"]
        if not matches:
            log.warning("%s: training data differs from what %s was trained on", folder, ckpt)
    # Synthetic slices take the hosts' (training) size; every comparison needs one size.
    train_shapes = {s.image.shape for s in training}
    for where, samples in ((data, heldout), (data_b, heldout_b or [])):
        odd = {s.image.shape for s in samples} - train_shapes
        if odd:
            raise DataError(
                f"{where}: slices of size {sorted(odd)[0]}, but the training slices ({folder}) are "
                f"{sorted(train_shapes)[0]}; evaluate on slices of the training size"
            )
    synthetic: list[Sample] = []
    bar = tqdm(total=n, desc=f"sample {module.name}", unit="slice", disable=not progress)
    for c, start in enumerate(range(0, n, chunk)):
        batch = module.sample(min(chunk, n - start), seed=chunk_seed(seed, c), conditions=training)
        for i, s in enumerate(batch):
            s.meta["id"] = f"syn_{start + i:06d}"
        synthetic.extend(batch)
        bar.update(len(batch))
    bar.close()

    metrics = evaluate_generator(
        module,
        synthetic=synthetic,
        training=training,
        heldout=heldout,
        heldout_b=heldout_b,
        fid_weights=fid_weights,
        seed=seed,
        out=out,
        cache_dir=cache_dir,
        fid_extractor=extractor,
        progress=progress,
    )
    # Patient ids are only labels (two phantoms both have p000), so leakage is checked on
    # content: a held-out slice identical to a training slice.
    seen = {hashlib.sha256(t.image.tobytes()).digest() for t in training}
    leaked = [h.id for h in heldout if hashlib.sha256(h.image.tobytes()).digest() in seen]
    record = {
        **metrics,
        "format": EVAL_FORMAT,
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": sha256_file(ckpt),
        "step": step,
        "config": {
            "model": to_jsonable(dataclasses.asdict(module.cfg)),
            "data": str(Path(data).resolve()),
            "data_b": str(Path(data_b).resolve()) if data_b is not None else None,
            "training_data": str(Path(folder).resolve()),
            "training_data_matches_checkpoint": matches,
            "n": n,
            "seed": seed,
            "chunk": chunk,
            "device": str(module.device),
            "fid_weights": str(fid_weights) if fid_weights is not None else None,
        },
        "heldout_slices_in_training": leaked,
        "versions": versions(),
    }
    path = out / "metrics.json"
    write_json_atomic(path, record)
    lines = [
        f"{module.name} {ckpt} (step {step}): {n} synthetic slices, seed {seed}, "
        f"{len(heldout)} held-out real slices"
    ]
    if leaked:
        lines.append(
            f"WARNING: {len(leaked)} held-out slices are identical to training slices "
            f"({', '.join(leaked[:3])}...): not a held-out evaluation"
        )
    if matches is False:
        lines.append(f"WARNING: {folder} differs from the data the checkpoint was trained on")
    lines += summary_lines(metrics)
    return {"summary_lines": lines, "metrics_path": str(path), "metrics": record}


__all__ = [
    "COPY_THRESHOLD",
    "EVAL_FORMAT",
    "check_evaluation_out",
    "evaluate_generator",
    "evaluate_run",
    "memorisation",
    "model_window",
    "paired_quality",
    "summary_lines",
]
