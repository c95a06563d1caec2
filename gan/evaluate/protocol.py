"""How good is a trained generator? SSIM/PSNR, FID/KID, memorisation, one JSON row.

`evaluate_generator` measures a loaded model on given slices (what the harness calls);
`evaluate_run` loads a run folder or checkpoint, samples from it and writes
``metrics.json`` plus PNG summaries (what ``lesionforge gan evaluate`` calls).

What is compared, per model (chosen by what its class declares, not by its name):

- **SSIM/PSNR** against a ground truth where one exists (`gan.evaluate.paired`:
  ``paired_reference`` "own-mask" for pix2pix, "target-domain" for CycleGAN; DCGAN draws
  new lesions, so None with the reason).
- **FID/KID** (pytorch-fid Inception pool3, `gan.evaluate.quality`) against held-out real
  slices of the output domain, only when the Inception weights are on disk. A Fréchet
  distance on downsampled pixels is always given under its own name.
- **Memorisation** (`gan.evaluate.memorisation`): generated lesions (or translated
  slices) against training lesions (or slices) of other patients, with held-out real
  slices as the baseline.
- **Lesion preservation** for models that translate whole hosts
  (`gan.evaluate.preservation`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.datasets import load_samples
from augment.errors import CheckpointError, ConfigError, DataError
from augment.sample import Sample
from augment.storage import (
    STAGING_RE,
    sha256_file,
    to_jsonable,
    versions,
    write_bytes_atomic,
    write_json_atomic,
)
from augment.viz import save_figure
from gan.base import GanModule, read_checkpoint, resolve_checkpoint, resolve_device
from gan.evaluate import quality as q
from gan.evaluate.memorisation import (
    COPY_THRESHOLD,
    PIXEL_SIDE,
    memorisation,
    pairs_png,
    unit_images,
)
from gan.evaluate.paired import direction_sets, paired_quality
from gan.evaluate.preservation import lesion_hu_range, lesion_preservation, summarise_preservation
from gan.synthesize import chunk_seed
from gan.train.data import data_fingerprint

log = logging.getLogger(__name__)


# An evaluation output folder: ``metrics.json`` says this as its ``format``, and the
# marker file (written first, before any result) says it while the results are written.
EVAL_FORMAT = "lesionforge-gan-evaluation/1"
EVAL_MARKER = ".lesionforge-evaluation"
# Every file `evaluate_run` writes into its output folder.
EVAL_FILES = (
    EVAL_MARKER, "metrics.json", "details.json", "summary.png", "grid.png", "memorisation_pairs.png"
)
# Keys every metrics.json of `evaluate_run` holds, also those written before EVAL_FORMAT.
_EVAL_KEYS = {"checkpoint", "checkpoint_sha256", "step", "config", "versions"}


# ------------------------------------------------------------------------------ helpers


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
            `gan.evaluate.quality.default_cache_dir`).
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
    window = module.model_window()
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
                lesion_preservation(h, s, hu_range=lesion_hu_range(module.anatomy))
                for h, s in hosts
                if h is not None and h.image.shape == s.image.shape
            ]
        )
        reference = direction_sets(module, heldout, heldout_b)[1]
        ref_what = "held-out real slices of the target domain"
    else:
        result["preservation"] = None
        reference, ref_what = heldout, "held-out real slices"

    syn_unit = unit_images(synthetic, window)
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
        ref_unit = unit_images(reference, window)
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
    mem["pairs_png"] = pairs_png(out / "memorisation_pairs.png", arrays, window)
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
            window=module.display_window(),
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
    foreign = [n for n in names if n not in EVAL_FILES and not STAGING_RE.match(n)]
    ours = (out / EVAL_MARKER).is_file() or (
        (out / "metrics.json").is_file() and _is_evaluation_record(out / "metrics.json")
    )
    if not names or (ours and not foreign):
        return
    shown = foreign or [n for n in names if not STAGING_RE.match(n)]
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
    "paired_quality",
    "summary_lines",
]
