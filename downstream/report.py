"""The comparison report: report.md + report.html + PNG plots.

The report is built as a list of blocks (heading, paragraph, table, image) rendered
to both Markdown and HTML, so the two never disagree. Every number comes from the
result rows; where a strategy does not significantly beat the baseline the report
says so in words.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from augment.storage import write_bytes_atomic
from downstream.evaluation.stats import mean_sd  # noqa: E402

PRIMARY = {"segment": ("dice", "Dice"), "detect": ("mAP50", "mAP@0.5")}
SECONDARY = {
    "segment": [("iou", "IoU"), ("hd95", "HD95"), ("lesion_sensitivity", "lesion sens."),
                ("small_lesion_sensitivity", "small-lesion sens."), ("fp_per_slice", "FP/slice"),
                ("icc_area", "ICC(2,1) area")],
    "detect": [("sens_at_1fp", "lesion sens. @ 1 FP/slice"),
               ("sens_at_1fp_iou01", "same, IoU ≥ 0.1 (nnDetection)"), ("box_sensitivity", "lesion sens. @θ"), ("small_box_sensitivity", "small-lesion sens. @θ"),
               ("fp_boxes_per_slice", "FP boxes/slice @θ"), ("image.precision", "precision @θ"),
               ("image.recall", "recall @θ"), ("image.accuracy", "accuracy @θ"), ("auc", "AUC")],
}
LOWER_IS_BETTER = {"hd95", "fp_per_slice", "fp_boxes_per_slice"}
# Metrics that live in [0, 1]: their plots show exactly that range (and a little headroom).
UNIT_METRICS = {"dice", "iou", "mAP50", "lesion_sensitivity", "small_lesion_sensitivity", "box_sensitivity",
                "small_box_sensitivity", "sens_at_1fp", "sens_at_1fp_iou01", "auc"}


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "ul" | "table" | "img"
    text: str = ""
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    items: Sequence[str] = ()  # "ul": one bullet each


def _get(metrics: dict[str, Any], dotted: str) -> float:
    v: Any = metrics
    for part in dotted.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(values: Sequence[float]) -> str:
    m, s = mean_sd(values)
    if not math.isfinite(m):
        return "–"
    return f"{m:.3f} ± {s:.3f}" if math.isfinite(s) else f"{m:.3f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def write_report(
    exp, rows: list[dict[str, Any]], gen_quality: list[dict[str, Any]], out: Path, *,
    classes: dict[int, str], total_seconds: float, splits=None, failures: list[dict[str, Any]] | None = None,
    unit_errors: list[dict[str, Any]] | None = None,
) -> Path:
    """Write report.md, report.html and plots into ``out``; returns report.md's path.

    report.md links the PNGs (in ``out/plots`` and the generators' quality folders);
    report.html embeds them, so it is one file that can be mailed or attached as it is.
    """
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [Block("h1", f"lesionforge comparison: {exp.name}")]
    budgets = list(exp.budgets)
    data_desc = (f"phantom `{exp.data.phantom}` ({exp.data.n} slices, {exp.data.size} px, domain "
                 f"{exp.data.domain}{', target ' + exp.data.target_domain if exp.data.target_domain else ''})"
                 if exp.data.phantom else f"folder `{exp.data.folder}`")
    test_desc = ""
    if splits is not None:
        source = f" of the external cohort `{exp.data.test_folder}`" if exp.data.test_folder else ""
        test_desc = (f" Test set{source}: {len(splits.test_samples)} slices of {len(splits.test_patients)} patients, "
                     f"never seen by any model or generator (checked).")
    blocks.append(Block("p", (
        f"Data: {data_desc}. Label budgets (labelled patients): {', '.join(map(str, budgets))}. "
        f"Seeds: {', '.join(map(str, exp.seeds))}. Strategies: {', '.join(s.name for s in exp.strategies)}. "
        f"Every model is trained with the same recipe (patches with foreground oversampling, poly "
        f"learning rate, the checkpoint chosen by the smoothed validation metric) and compared, paired by test "
        f"patient, with `none` and with classical augmentation (see each task's difference table)."
        f"{test_desc} Total run time {total_seconds / 60:.1f} min "
        f"({sum(r.get('cached', False) for r in rows)} of {len(rows)} runs read from cache).")))
    verdict_lines: list[str] = []
    for task in exp.tasks:
        task_rows = [r for r in rows if r["task"] == task]
        blocks += _task_section(task, task_rows, exp, out, verdict_lines)
    blocks.insert(2, Block("h2", "Verdict"))
    # One bullet per comparison (or per reason a comparison was refused): a reader scans them.
    blocks.insert(3, Block("ul", items=verdict_lines) if verdict_lines else Block("p", "No strategy was compared."))
    if failures:
        blocks.insert(4, Block("h3", "Generators that failed"))
        blocks.insert(5, Block("p", "These generators could not make labelled samples, so the strategies that "
                               "need them were not run for that budget and seed (train longer or check the "
                               "progress grids in the run folder): " + "; ".join(
                                   f"{f['generator']} (budget {f['budget']}, seed {f['seed']}): {f['error']}"
                                   for f in failures) + "."))
    if unit_errors:
        at = 6 if failures else 4
        blocks.insert(at, Block("h3", "Units that failed"))
        blocks.insert(at + 1, Block("p", "These units stopped with an error, so their rows are missing from every "
                                    "table below (the other units finished; a rerun of the same command retries "
                                    "only these): " + "; ".join(f"{e['unit']}: {e['error']}" for e in unit_errors)
                                    + "."))
    blocks += _semi_section(rows)
    blocks += _generator_section(gen_quality, out)
    blocks += _timing_section(rows, gen_quality)
    md = _render_md(blocks)
    write_bytes_atomic(out / "report.md", md.encode())
    write_bytes_atomic(out / "report.html", _render_html(blocks, exp.name, out).encode())
    return out / "report.md"


def _per_patient(runs: list[tuple[int, dict[str, Any]]], key: str) -> dict[str, dict[int, float]]:
    """{patient: {seed: metric}} from one strategy's runs at one budget."""
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for seed, m in runs:
        for pid, vals in (m.get("per_patient") or {}).items():
            v = vals.get(key)
            if isinstance(v, (int, float)):
                table[pid][seed] = float(v)
    return dict(table)


def _mark(values: str, undertrained: int) -> str:
    return values + (" †" if undertrained else "")


def _task_section(task: str, rows: list[dict[str, Any]], exp, out: Path, verdicts: list[str]) -> list[Block]:
    from downstream.evaluation.stats import decide

    key, label = PRIMARY[task]
    blocks = [Block("h2", f"{'Segmentation' if task == 'segment' else 'Detection'}: {label}")]
    by = defaultdict(list)  # (strategy, budget) -> [(seed, metrics)]
    under = defaultdict(int)  # (strategy, budget) -> runs still improving at their last step
    ceiling_budget = None
    for r in rows:
        by[(r["strategy"], r["budget"])].append((r["seed"], r["metrics"]))
        under[(r["strategy"], r["budget"])] += bool(r.get("undertrained"))
        if r.get("ceiling"):
            ceiling_budget = r["budget"]
    strategies = [s.name for s in exp.strategies]
    budgets = list(exp.budgets)
    cols = budgets + ([ceiling_budget] if ceiling_budget is not None else [])
    header = ["strategy"] + [f"{b} patients" for b in budgets]
    if ceiling_budget is not None:
        header.append(f"ceiling: all {ceiling_budget} patients")

    def cell(s: str, b: int) -> str:
        if not by.get((s, b)):
            return "–"
        return _mark(_pm([_get(m, key) for _, m in sorted(by[(s, b)], key=lambda x: x[0])]), under[(s, b)])

    table = [[s] + [cell(s, b) for b in cols] for s in strategies]
    n_under = sum(under.values())
    blocks.append(Block("p", f"{label} on the test set, mean ± sd over {len(exp.seeds)} seeds (each seed: the "
                        "metric averaged over test patients with a lesion). † = at least one run was still "
                        "improving on the validation split at its last step (undertrained): its numbers are not "
                        "those of a trained model and it is not compared." + (
                            f" {n_under} run(s) are marked." if n_under else " No run is marked.")))
    blocks.append(Block("table", header=header, rows=table))
    ceiling_mean = (mean_sd([_get(m, key) for _, m in by[("none", ceiling_budget)]])[0]
                    if ceiling_budget is not None else float("nan"))
    diff_rows = []
    baselines = ["none"] + (["classical"] if "classical" in strategies else [])
    for b in budgets:
        note = _nothing_learned(task, [m for (_, bb), runs in by.items() if bb == b for _, m in runs], label)
        if note:
            verdicts.append(f"At {b} patients {note}")
        none_mean = mean_sd([_get(m, key) for _, m in by[("none", b)]])[0]
        gap = ceiling_mean - none_mean
        for base in baselines:
            candidates = [s for s in strategies if s not in ("none", base)]
            family = [s for s in candidates if by.get((s, b))]
            if base == "none":
                for s in candidates:
                    if s not in family:
                        diff_rows.append([s, base, str(b), "–", "–", "–", "–", "–", "not run"])
                        verdicts.append(f"{s} was not run at {b} patients (see 'Generators that failed').")
            if not by.get((base, b)):
                continue
            blocked = {s for s in family + [base] if under[(s, b)]}
            comps = decide({s: _per_patient(by[(s, b)], key) for s in family},
                           _per_patient(by[(base, b)], key), higher_is_better=key not in LOWER_IS_BETTER) \
                if family else {}
            for s in family:
                c = comps[s]
                closes = (c["mean_diff"] / gap if base == "none" and math.isfinite(gap) and gap > 0.01
                          else float("nan"))
                verdict = c["verdict"]
                if blocked & {s, base}:
                    verdict = "not compared (undertrained †)"
                diff_rows.append([s, base, str(b), _fmt(c["mean_diff"]),
                                  f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] ({100 * c['ci_level']:.4g} %)"
                                  if math.isfinite(c.get("ci_level", float("nan"))) else "–",
                                  _p(c["p_holm"]), str(c["n_patients"]),
                                  "–" if not math.isfinite(closes) else f"{100 * closes:.0f} %", verdict])
                if note or blocked & {s, base}:
                    continue
                verdicts.append(_verdict_sentence(task, label, s, base, b, c, verdict, set()))
            if blocked and not note and base == "none":
                verdicts.append(f"{task} at {b} patients: {', '.join(sorted(blocked))} had runs still improving "
                                f"on the validation split at their last step (†), so no comparison involving "
                                f"them is made; raise `tasks.{task}.steps`.")
    versus = " and to `classical`" if "classical" in strategies else ""
    blocks.append(Block("h3", f"Difference to `none`{versus} ({label}), paired by test patient"))
    blocks.append(Block("p", "Each test patient's metric (mean over seeds) under a strategy minus the same patient's "
                        "under the baseline; p: exact sign-flip permutation test over patients, Holm-adjusted "
                        "across the strategies compared with the same baseline at that budget; CI: hierarchical "
                        "bootstrap (patients, then seeds) of the same difference, at the level of the strategy's "
                        "Holm step. A verdict says 'helps' or 'hurts' only when the test rejects and the CI "
                        "excludes 0 on the same side, so the two cannot disagree. 'gap closed': the gain over "
                        "`none` as a fraction of the distance from `none` to the all-patients ceiling."))
    blocks.append(Block("table", header=["strategy", "vs", "budget", "mean diff", "CI", "p (Holm)", "patients",
                                         "gap closed", "verdict"], rows=diff_rows))
    # secondary metrics (largest budget)
    b = budgets[-1]
    sec = SECONDARY[task]
    blocks.append(Block("h3", f"All metrics at {b} labelled patients (mean ± sd)"))
    blocks.append(Block("p", "Small lesions: equivalent diameter ≤ 10 mm (≤ 16 px when spacing is unknown). "
                        + ("HD95 in mm when the pixel spacing is known." if task == "segment"
                           else f"θ = {rows[0]['metrics'].get('theta', '?') if rows else '?'}: a slice is called "
                                "'lesion present' when its best box scores ≥ θ. Backbone: "
                                f"{rows[0]['metrics'].get('backbone', '?') if rows else '?'}.")))
    blocks.append(Block("table", header=["strategy"] + [lab for _, lab in sec],
                        rows=[[s] + [_pm([_get(m, k) for _, m in by[(s, b)]]) for k, _ in sec] for s in strategies]))
    if task == "segment":
        names = sorted({c for r in rows for c in r["metrics"].get("dice_per_class", {})})
        if names:
            blocks.append(Block("h3", f"Per-class Dice at {b} labelled patients"))
            blocks.append(Block("table", header=["strategy"] + names, rows=[
                [s] + [_pm([m.get("dice_per_class", {}).get(c, float("nan")) for _, m in by[(s, b)]]) for c in names]
                for s in strategies]))
    png = out / "plots" / f"{task}_{key}_vs_budget.png"
    _curve(png, strategies, budgets, by, key, label, ceiling=(ceiling_budget, ceiling_mean))
    blocks.append(Block("img", text=str(png.relative_to(out)), header=[f"{label} vs label budget"]))
    png = out / "plots" / f"{task}_validation_curves.png"
    _val_curves(png, rows, key, label)
    blocks.append(Block("img", text=str(png.relative_to(out)),
                        header=[f"validation {label} during training (one line per run; the checkpoint kept is "
                                "where its moving average peaked)"]))
    return blocks


def _verdict_sentence(task, label, s, base, b, c, verdict, blocked) -> str:
    vs = "`none`" if base == "none" else "classical augmentation"
    if blocked:
        return (f"{s} vs {vs} at {b} patients: not compared, because {' and '.join(sorted(blocked))} had runs "
                f"still improving at their last step (raise `tasks.{task}.steps`).")
    ci = f"{100 * c['ci_level']:.4g} % CI [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]"
    if verdict == "helps":
        return (f"**{s}** improves {task} {label} over {vs} at {b} patients ({c['mean_diff']:+.3f}, {ci}, "
                f"Holm p = {_p(c['p_holm'])}, {c['n_patients']} test patients).")
    if verdict == "hurts":
        return (f"**{s}** makes {task} {label} worse than {vs} at {b} patients ({c['mean_diff']:+.3f}, {ci}, "
                f"Holm p = {_p(c['p_holm'])}).")
    if verdict == "not measurable":
        return f"{s} vs {vs} at {b} patients: not measurable ({c.get('reason', '')})."
    extra = ""
    if c.get("consistent"):
        extra = (f"; it was {'better' if c['better'] else 'worse'} for every one of the {c['n_patients']} test "
                 "patients, so more test patients may tell")
    return (f"{s} shows no significant difference to {vs} for {task} {label} at {b} patients "
            f"({c['mean_diff']:+.3f}, {ci}, Holm p = {_p(c['p_holm'])}: {c.get('reason', '')}{extra}).")


# Lesion-level sensitivity of each task (the metric that is 0 when a model finds nothing).
FOUND = {"segment": "lesion_sensitivity", "detect": "box_sensitivity"}


def _nothing_learned(task: str, metrics: list[dict[str, Any]], label: str) -> str:
    """A plain warning when no run of any strategy found a single test lesion: then every
    difference above is a difference between models that learned nothing, not evidence
    about the strategies."""
    if not metrics:
        return ""
    found = [_get(m, FOUND[task]) for m in metrics]
    primary = [_get(m, PRIMARY[task][0]) for m in metrics]
    # Detection: no box at θ on any lesion, and mAP below 1% (a handful of low-score boxes
    # touching a lesion give mAP ~1e-4, which is still nothing learned).
    nothing = all(not (f > 0) for f in found)
    if task == "detect":
        nothing = nothing and all(not (p >= 0.01) for p in primary)
    if not nothing:
        return ""
    return (f"no {task} model found a single test lesion under any strategy ({label} near 0 everywhere): "
            f"its training budget is too small for it to learn, so these {task} numbers say nothing about "
            f"the strategies. Raise `tasks.{task}.steps` (the full studies in configs/ do).")


def _metric_axis(ax, key: str) -> None:
    """A [0, 1] metric on [0, 1.05] (never below 0, whatever the error bars); others from 0."""
    if key in UNIT_METRICS:
        ax.set_ylim(0, 1.05)
    else:
        ax.set_ylim(bottom=0)


def _val_curves(path: Path, rows: list[dict[str, Any]], key: str, label: str):
    """Validation metric against training step, one line per run; returns the Figure."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    colours: dict[str, Any] = {}
    steps: set[int] = set()
    for r in sorted(rows, key=lambda r: (r["strategy"], r["budget"], r["seed"])):
        curve = r.get("val_curve") or []
        if not curve:
            continue
        c = colours.setdefault(r["strategy"], f"C{len(colours) % 10}")
        x, y = zip(*curve, strict=True)
        ax.plot(x, y, color=c, alpha=0.6, lw=1, ls="--" if r.get("ceiling") else "-",
                marker="o" if len(x) <= 12 else None, ms=3,  # few evaluations: show each (one draws no line)
                clip_on=False,  # a run stuck at 0 lies on the x axis: draw it over the spine
                label=r["strategy"] if r["strategy"] not in ax.get_legend_handles_labels()[1] else None)
        steps.update(x)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {label}")
    _metric_axis(ax, key)
    if steps and max(steps) - min(steps) < 2:  # else matplotlib ticks 0.95, 0.975, ... around one step
        ax.set_xlim(min(steps) - 1, max(steps) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if colours:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    return fig


def _curve(path: Path, strategies, budgets, by, key, label, ceiling=(None, float("nan"))):
    """Mean ± sd of the metric against the label budget, one line per strategy; returns the Figure."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if ceiling[0] is not None and math.isfinite(ceiling[1]):
        ax.axhline(ceiling[1], color="grey", ls=":", label=f"none, all {ceiling[0]} patients (ceiling)")
    for i, s in enumerate(strategies):
        ms = [mean_sd([_get(m, key) for _, m in by[(s, b)]]) for b in budgets]
        means = [m for m, _ in ms]
        sds = [0 if not math.isfinite(sd) else sd for _, sd in ms]
        x = np.array(budgets, float) * (1 + 0.015 * (i - len(strategies) / 2))  # dodge overlapping bars
        if key in UNIT_METRICS:  # ± sd bars stop at the metric's bounds
            mu = np.nan_to_num(np.array(means, float))
            sds = [np.minimum(sds, mu), np.minimum(sds, 1 - mu)]
        bars = ax.errorbar(x, means, yerr=sds, marker="o", capsize=3, label=s)
        bars.lines[0].set_clip_on(False)  # a mean of 0 lies on the x axis: draw it over the spine
    ax.set_xlabel("labelled patients")
    ax.set_ylabel(label)
    _metric_axis(ax, key)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    pad = max(0.5, 0.08 * (max(budgets) - min(budgets)))  # room for the dodged points
    ax.set_xlim(min(budgets) - pad, max(budgets) + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    return fig


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _generator_section(gen_quality: list[dict[str, Any]], out: Path) -> list[Block]:
    if not gen_quality:
        return []
    blocks = [Block("h2", "Generator quality")]
    blocks.append(Block("p", (
        "SSIM/PSNR on HU with the data range stated: pix2pix regenerating held-out lesions from their own "
        "masks; CycleGAN A→B against the phantom's true domain-B rendering of the same anatomy. FID/KID use "
        "pytorch-fid's Inception pool features only when its weights are available. Memorisation: for each "
        "synthetic slice the nearest labelled training slice by SSIM; a high fraction above the copy "
        "threshold means the generator is copying patients.")))
    by = defaultdict(list)
    for q in gen_quality:
        by[q["generator"]].append(q)
    rows = []
    for g, qs in sorted(by.items()):
        def col(k, qs=qs):
            return _pm([_get(q, k) for q in qs])
        fid = qs[0].get("fid_status", "")
        rows.append([g, col("ssim"), col("psnr"), col("fid") if "unavailable" not in fid else "unavailable",
                     col("kid") if "unavailable" not in fid else "unavailable",
                     col("memorisation.max_ssim"), col("memorisation.fraction_above_threshold"),
                     col("train_seconds")])
    blocks.append(Block("table", header=["generator", "SSIM", "PSNR (dB)", "FID", "KID", "max SSIM to training",
                                         "copies fraction", "train s"], rows=rows))
    statuses = sorted({q.get("fid_status", "") for q in gen_quality if q.get("fid_status")})
    for s in statuses:
        blocks.append(Block("p", s))
    for q in gen_quality:
        if q.get("data_range") is not None:
            blocks.append(Block("p", f"SSIM/PSNR data range: {q['data_range']} HU ({q.get('ssim_what', '')})."))
            break
    for g, qs in sorted(by.items()):
        for key, title in (("grid_png", "synthetic vs real"), ("memorisation_png", "closest training slices")):
            p = qs[0].get(key)
            if p and Path(p).exists():
                # relpath, not relative_to: a cached quality row may name another folder (an
                # output folder copied or moved since); the link still works from here.
                blocks.append(Block("img", text=os.path.relpath(Path(p).resolve(), out.resolve()),
                                    header=[f"{g}: {title} (budget {qs[0]['budget']}, seed {qs[0]['seed']})"]))
    return blocks


def _semi_section(rows: list[dict[str, Any]]) -> list[Block]:
    """Semi-supervised strategies: their unlabelled pool and the test Dice of each of their
    two networks and of the mean of both (what ``semi.inference`` chooses between)."""
    by = defaultdict(list)
    for r in rows:
        semi = r["task"] == "segment" and (r.get("metrics") or {}).get("semi")
        if semi:
            by[(r["strategy"], r["budget"], semi["method"], semi["inference"])].append(semi)
    if not by:
        return []
    table = [[s, str(b), m, str(int(np.mean([x["n_unlabelled_slices"] for x in v]))),
              *(_pm([x["dice_by_network"][k] for x in v]) for k in ("a", "b", "mean")), inf]
             for (s, b, m, inf), v in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return [Block("h2", "Semi-supervised training"),
            Block("p", "Two U-Nets trained together, network a with transposed-convolution and network b with "
                  "bilinear upsampling, on the labelled patients and on the training patients outside the budget "
                  "(their masks unused). Test Dice of each network and of the average of their probabilities; "
                  "the strategy's rows use the one in the last column (`semi.inference`)."),
            Block("table", header=["strategy", "budget", "method", "unlabelled slices", "Dice a (transposed)",
                                   "Dice b (bilinear)", "Dice mean", "used"], rows=table)]


def _timing_section(rows, gen_quality) -> list[Block]:
    blocks = [Block("h2", "Run times")]
    by = defaultdict(list)
    for r in rows:
        by[(r["task"], r["strategy"])].append(r.get("train_seconds", float("nan")))
    table = [[t, s, _pm(v), str(len(v))] for (t, s), v in sorted(by.items())]
    gens = defaultdict(list)
    for q in gen_quality:
        gens[q["generator"]].append(q.get("train_seconds", float("nan")))
    table += [["generator", g, _pm(v), str(len(v))] for g, v in sorted(gens.items())]
    blocks.append(Block("table", header=["task", "strategy / model", "train seconds", "runs"], rows=table))
    return blocks


def _render_md(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "ul":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(r) + " |" for r in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.header[0] if b.header else ''}]({b.text})", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI, so the HTML report needs no file beside it."""
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# A table cell that holds a number (or "–" for none, a CI, a p-value such as "< 0.001").
_NUMERIC = re.compile(r"^(?:[-+–<≤]?\s*[0-9.]|–$|\[)")


def _render_html(blocks: list[Block], title: str, root: Path) -> str:
    """One self-contained page: image blocks (paths relative to ``root``) are embedded."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lesionforge: {html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".n{text-align:right}img{max-width:100%}code{background:#f3f3f3}"
        "figure{margin:1.5em 0}figcaption{color:#444;font-size:0.9em}</style>",
        "</head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in b.items) + "</ul>")
        elif b.kind == "table":
            # Numbers right-aligned (so their digits line up), words left; per column.
            num = [" class=n" if b.rows and all(_NUMERIC.match(r[i]) for r in b.rows if i < len(r)) else ""
                   for i in range(len(b.header))]
            parts.append("<table><tr>" + "".join(f"<th{n}>{_inline_html(h)}</th>"
                                                 for n, h in zip(num, b.header, strict=True)) + "</tr>")
            parts += ["<tr>" + "".join(f"<td{num[i] if i < len(num) else ''}>{_inline_html(c)}</td>"
                                       for i, c in enumerate(r)) + "</tr>" for r in b.rows]
            parts.append("</table>")
        elif b.kind == "img":
            cap = html.escape(b.header[0]) if b.header else ""
            parts.append(f"<figure><img src='{_data_uri(root / b.text)}' alt='{cap}'>"
                         f"<figcaption>{cap}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
