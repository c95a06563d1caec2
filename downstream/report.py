"""The comparison report: report.md + report.html + PNG plots.

The report is built as a list of blocks (heading, paragraph, table, image) rendered
to both Markdown and HTML, so the two never disagree. Every number comes from the
result rows; where a strategy does not significantly beat the baseline the report
says so in words.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from augment.sample import write_bytes_atomic  # noqa: E402
from downstream.stats import mean_sd, summarise_paired  # noqa: E402

PRIMARY = {"segment": ("dice", "Dice"), "detect": ("mAP50", "mAP@0.5")}
SECONDARY = {
    "segment": [("iou", "IoU"), ("hd95", "HD95"), ("lesion_sensitivity", "lesion sens."),
                ("small_lesion_sensitivity", "small-lesion sens."), ("fp_per_slice", "FP/slice"),
                ("icc_area", "ICC(2,1) area")],
    "detect": [("box_sensitivity", "lesion sens. @θ"), ("small_box_sensitivity", "small-lesion sens. @θ"),
               ("fp_boxes_per_slice", "FP boxes/slice @θ"), ("image.precision", "precision @θ"),
               ("image.recall", "recall @θ"), ("image.accuracy", "accuracy @θ"), ("auc", "AUC")],
}
LOWER_IS_BETTER = {"hd95", "fp_per_slice", "fp_boxes_per_slice"}


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "img"
    text: str = ""
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()


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
) -> Path:
    """Write report.md, report.html and plots into ``out``; returns report.md's path."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [Block("h1", f"lesionforge comparison: {exp.name}")]
    budgets = list(exp.budgets)
    data_desc = (f"phantom `{exp.data.phantom}` ({exp.data.n} slices, {exp.data.size} px, domain "
                 f"{exp.data.domain}{', target ' + exp.data.target_domain if exp.data.target_domain else ''})"
                 if exp.data.phantom else f"folder `{exp.data.folder}`")
    test_desc = ""
    if splits is not None:
        test_desc = (f" Test set: {len(splits.test_samples)} slices of {len(splits.test_patients)} patients, "
                     f"never seen by any model or generator (checked).")
    blocks.append(Block("p", (
        f"Data: {data_desc}. Label budgets (labelled patients): {', '.join(map(str, budgets))}. "
        f"Seeds: {', '.join(map(str, exp.seeds))}. Strategies: {', '.join(s.name for s in exp.strategies)}. "
        f"Differences are paired by (budget, seed) against `none`; 95% CIs are percentile bootstraps "
        f"of the mean paired difference; p-values from a Wilcoxon signed-rank test (≥ 6 pairs) or a "
        f"paired t-test (fewer).{test_desc} Total run time {total_seconds / 60:.1f} min "
        f"({sum(r.get('cached', False) for r in rows)} of {len(rows)} runs read from cache).")))
    verdict_lines: list[str] = []
    for task in exp.tasks:
        task_rows = [r for r in rows if r["task"] == task]
        blocks += _task_section(task, task_rows, exp, out, verdict_lines)
    blocks.insert(2, Block("h2", "Verdict"))
    blocks.insert(3, Block("p", " ".join(verdict_lines) or "No strategy was compared."))
    if failures:
        blocks.insert(4, Block("h3", "Generators that failed"))
        blocks.insert(5, Block("p", "These generators could not make labelled samples, so the strategies that "
                               "need them were not run for that budget and seed (train longer or check the "
                               "progress grids in the run folder): " + "; ".join(
                                   f"{f['generator']} (budget {f['budget']}, seed {f['seed']}): {f['error']}"
                                   for f in failures) + "."))
    blocks += _generator_section(gen_quality, out)
    blocks += _timing_section(rows, gen_quality)
    md = _render_md(blocks)
    write_bytes_atomic(out / "report.md", md.encode())
    write_bytes_atomic(out / "report.html", _render_html(blocks, exp.name).encode())
    return out / "report.md"


def _task_section(task: str, rows: list[dict[str, Any]], exp, out: Path, verdicts: list[str]) -> list[Block]:
    key, label = PRIMARY[task]
    blocks = [Block("h2", f"{'Segmentation' if task == 'segment' else 'Detection'}: {label}")]
    by = defaultdict(list)  # (strategy, budget) -> [(seed, metrics)]
    for r in rows:
        by[(r["strategy"], r["budget"])].append((r["seed"], r["metrics"]))
    strategies = [s.name for s in exp.strategies]
    budgets = list(exp.budgets)
    header = ["strategy"] + [f"{b} patients" for b in budgets]
    table = [[s] + [_pm([_get(m, key) for _, m in sorted(by[(s, b)])]) for b in budgets] for s in strategies]
    blocks.append(Block("p", f"{label} on the test set, mean ± sd over {len(exp.seeds)} seeds."))
    blocks.append(Block("table", header=header, rows=table))
    # paired differences to none
    diff_rows = []
    for b in budgets:
        base = dict(by[("none", b)])
        # When no model of any strategy learned anything, one sentence says so instead
        # of a verdict per strategy comparing zeros.
        note = _nothing_learned(task, [m for (_, bb), runs in by.items() if bb == b for _, m in runs], label)
        if note:
            verdicts.append(f"At {b} patients {note}")
        quiet = bool(note)
        for s in strategies:
            if s == "none":
                continue
            cur = dict(by[(s, b)])
            seeds = sorted(set(base) & set(cur))
            if not seeds:
                diff_rows.append([s, str(b), "–", "–", "–", "–", "not run"])
                verdicts.append(f"{s} was not run at {b} patients (see 'Generators that failed').")
                continue
            summ = summarise_paired([_get(cur[x], key) for x in seeds], [_get(base[x], key) for x in seeds])
            diff_rows.append([s, str(b), _fmt(summ["mean_diff"]), f"[{_fmt(summ['ci_low'])}, {_fmt(summ['ci_high'])}]",
                              _p(summ["p_value"]), summ["test"], summ["verdict"]])
            if quiet:
                continue
            if summ["verdict"] == "helps":
                verdicts.append(f"**{s}** improves {task} {label} at {b} patients "
                                f"(+{summ['mean_diff']:.3f}, p = {_p(summ['p_value'])}).")
            elif summ["verdict"] == "hurts":
                verdicts.append(f"**{s}** makes {task} {label} worse at {b} patients "
                                f"({summ['mean_diff']:.3f}, p = {_p(summ['p_value'])}).")
            elif summ["consistent"]:
                direction = "better" if summ["better"] else "worse"
                verdicts.append(f"{s} is {direction} than `none` for {task} {label} in all {summ['n']} paired "
                                f"runs at {b} patients (difference {summ['mean_diff']:+.3f}, 95% CI "
                                f"[{_fmt(summ['ci_low'])}, {_fmt(summ['ci_high'])}]), but with {summ['n']} pairs the "
                                f"{summ['test']} is not significant (p = {_p(summ['p_value'])}): suggestive, not "
                                f"yet evidence; more seeds would tell.")
            else:
                verdicts.append(f"{s} does not significantly change {task} {label} at {b} patients "
                                f"(difference {_fmt(summ['mean_diff'])}, 95% CI [{_fmt(summ['ci_low'])}, "
                                f"{_fmt(summ['ci_high'])}]): no evidence that it helps.")
    blocks.append(Block("h3", f"Difference to `none` ({label})"))
    blocks.append(Block("table", header=["strategy", "budget", "mean diff", "95% CI", "p", "test", "verdict"],
                        rows=diff_rows))
    # secondary metrics (largest budget)
    b = budgets[-1]
    sec = SECONDARY[task]
    blocks.append(Block("h3", f"All metrics at {b} labelled patients (mean ± sd)"))
    blocks.append(Block("p", "Small lesions: equivalent diameter ≤ 10 mm (≤ 16 px when spacing is unknown). "
                        + ("HD95 in mm when the pixel spacing is known." if task == "segment"
                           else f"θ = {rows[0]['metrics'].get('theta', '?') if rows else '?'}: a slice is called "
                                "'lesion present' when its best box scores ≥ θ.")))
    blocks.append(Block("table", header=["strategy"] + [lab for _, lab in sec],
                        rows=[[s] + [_pm([_get(m, k) for _, m in by[(s, b)]]) for k, _ in sec] for s in strategies]))
    if task == "segment":
        names = sorted({c for r in rows for c in r["metrics"].get("dice_per_class", {})})
        if names:
            blocks.append(Block("h3", f"Per-class Dice at {b} labelled patients"))
            blocks.append(Block("table", header=["strategy"] + names, rows=[
                [s] + [_pm([m.get("dice_per_class", {}).get(c, float("nan")) for _, m in by[(s, b)]]) for c in names]
                for s in strategies]))
    # curve
    png = out / "plots" / f"{task}_{key}_vs_budget.png"
    _curve(png, strategies, budgets, by, key, label)
    blocks.append(Block("img", text=str(png.relative_to(out)), header=[f"{label} vs label budget"]))
    return blocks


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


def _curve(path: Path, strategies, budgets, by, key, label) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for i, s in enumerate(strategies):
        ms = [mean_sd([_get(m, key) for _, m in by[(s, b)]]) for b in budgets]
        means = [m for m, _ in ms]
        sds = [0 if not math.isfinite(sd) else sd for _, sd in ms]
        x = np.array(budgets, float) * (1 + 0.015 * (i - len(strategies) / 2))  # dodge overlapping bars
        ax.errorbar(x, means, yerr=sds, marker="o", capsize=3, label=s)
    ax.set_xlabel("labelled patients")
    ax.set_ylabel(label)
    ax.set_xticks(budgets)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


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
                blocks.append(Block("img", text=str(Path(p).resolve().relative_to(out.resolve())),
                                    header=[f"{g}: {title} (budget {qs[0]['budget']}, seed {qs[0]['seed']})"]))
    return blocks


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


def _render_html(blocks: list[Block], title: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lesionforge: {html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f3f3f3}</style>",
        "</head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{_inline_html(h)}</th>" for h in b.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows]
            parts.append("</table>")
        elif b.kind == "img":
            cap = html.escape(b.header[0]) if b.header else ""
            parts.append(f"<figure><img src='{html.escape(b.text)}' alt='{cap}'><figcaption>{cap}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
