"""Report wording: a task where no model learned anything is called out, not compared."""

from __future__ import annotations

from downstream.report import _nothing_learned


def test_nothing_learned_is_said_plainly():
    blind = [{"dice": 0.143, "lesion_sensitivity": 0.0}, {"dice": 0.0, "lesion_sensitivity": 0.0}]
    note = _nothing_learned("segment", blind, "Dice")
    assert "no segment model found a single test lesion" in note and "tasks.segment.steps" in note
    one_found = blind + [{"dice": 0.2, "lesion_sensitivity": 0.1}]
    assert _nothing_learned("segment", one_found, "Dice") == ""


def test_nothing_learned_detection_needs_zero_map_and_zero_sensitivity():
    blind = [{"mAP50": 0.0, "box_sensitivity": 0.0}] * 3
    assert "no detect model" in _nothing_learned("detect", blind, "mAP@0.5")
    assert "no detect model" in _nothing_learned("detect", [{"mAP50": 2e-4, "box_sensitivity": 0.0}], "mAP@0.5")
    some_map = [{"mAP50": 0.05, "box_sensitivity": 0.0}]
    assert _nothing_learned("detect", some_map, "mAP@0.5") == ""
    assert _nothing_learned("detect", [], "mAP@0.5") == ""


def test_nothing_learned_replaces_the_per_strategy_verdicts(tmp_path):
    from downstream.report import _task_section

    class Exp:
        seeds = (0, 1, 2)
        budgets = (6,)
        strategies = [type("S", (), {"name": n}) for n in ("none", "classical", "pix2pix")]

    rows = [{"task": "detect", "strategy": st, "budget": 6, "seed": s,
             "metrics": {"mAP50": 1e-4 * s, "box_sensitivity": 0.0, "theta": 0.5}}
            for s in range(3) for st in ("none", "classical", "pix2pix")]
    (tmp_path / "plots").mkdir()
    verdicts: list[str] = []
    blocks = _task_section("detect", rows, Exp, tmp_path, verdicts)
    assert len(verdicts) == 1 and "no detect model found a single test lesion" in verdicts[0]
    diff_table = next(b for b in blocks if b.kind == "table" and "verdict" in b.header)
    assert len(diff_table.rows) == 3  # the numbers are still shown (2 vs none, pix2pix vs classical)


class _Exp:
    seeds = (0, 1, 2)
    budgets = (6,)
    strategies = [type("S", (), {"name": n}) for n in ("none", "classical", "pix2pix")]


def _rows(effects: dict[str, float], *, budget: int = 6, undertrained=(), ceiling: float | None = None):
    """Segment rows over 8 test patients x 3 seeds: patient p's Dice under strategy s is
    0.3 + 0.02 p + effects[s] + a small seed wobble."""
    rows = []
    for st, eff in effects.items():
        for seed in range(3):
            pp = {f"p{p}": {"dice": 0.3 + 0.02 * p + eff + 0.005 * ((seed + p) % 3 - 1)} for p in range(8)}
            rows.append({"task": "segment", "strategy": st, "budget": budget, "seed": seed,
                         "undertrained": st in undertrained,
                         "metrics": {"dice": sum(v["dice"] for v in pp.values()) / 8, "lesion_sensitivity": 0.5,
                                     "per_patient": pp}})
    if ceiling is not None:
        for seed in range(3):
            pp = {f"p{p}": {"dice": ceiling} for p in range(8)}
            rows.append({"task": "segment", "strategy": "none", "budget": 14, "seed": seed, "ceiling": True,
                         "metrics": {"dice": ceiling, "lesion_sensitivity": 0.9, "per_patient": pp}})
    return rows


def _section(tmp_path, rows):
    from downstream.report import _task_section

    (tmp_path / "plots").mkdir(exist_ok=True)
    verdicts: list[str] = []
    blocks = _task_section("segment", rows, _Exp, tmp_path, verdicts)
    tables = [b for b in blocks if b.kind == "table"]
    return verdicts, tables[0], tables[1]


def test_a_clear_gain_is_called_with_its_ci_and_gap_to_the_ceiling(tmp_path):
    rows = _rows({"none": 0.0, "classical": 0.1, "pix2pix": 0.15}, ceiling=0.7)
    verdicts, table, diff = _section(tmp_path, rows)
    assert table.header[-1] == "ceiling: all 14 patients" and table.rows[0][-1].startswith("0.700")
    row = next(r for r in diff.rows if r[0] == "pix2pix" and r[1] == "none")
    assert row[-1] == "helps" and row[3] == "0.150"
    # every patient improved: the exact sign-flip p over 8 patients is 2/2^8 = 0.0078, Holm x2 = 0.016
    assert row[5] == "0.016"
    # gap closed: 0.15 / (0.7 - mean none); mean none = 0.3 + 0.02 * 3.5 = 0.37 -> 45 %
    assert row[7] == "45 %"
    vs_classical = next(r for r in diff.rows if r[0] == "pix2pix" and r[1] == "classical")
    assert vs_classical[3] == "0.050" and vs_classical[-1] == "helps"
    assert any(v.startswith("**pix2pix** improves segment Dice over `none`") for v in verdicts)
    assert any("over classical augmentation" in v for v in verdicts)


def test_no_effect_is_not_called_a_gain(tmp_path):
    rows = _rows({"none": 0.0, "classical": 0.0, "pix2pix": 0.0})
    verdicts, _, diff = _section(tmp_path, rows)
    assert all(r[-1] == "no significant difference" for r in diff.rows)
    assert not any("improves" in v for v in verdicts)


def test_undertrained_runs_are_marked_and_not_compared(tmp_path):
    rows = _rows({"none": 0.0, "classical": 0.1, "pix2pix": 0.15}, undertrained={"pix2pix"})
    verdicts, table, diff = _section(tmp_path, rows)
    assert table.rows[2][1].endswith("†") and not table.rows[0][1].endswith("†")
    assert all(r[-1] == "not compared (undertrained †)" for r in diff.rows if r[0] == "pix2pix")
    assert next(r for r in diff.rows if r[0] == "classical")[-1] == "helps"
    assert any(v.startswith("segment at 6 patients: pix2pix had runs still improving") for v in verdicts)
    assert not any(v.startswith("**pix2pix**") or v.startswith("pix2pix shows") for v in verdicts)


def _report(tmp_path, rows, gen_quality=()):
    from types import SimpleNamespace

    from downstream.report import write_report

    data = SimpleNamespace(phantom="head-ich", n=48, size=64, domain="A", target_domain=None)
    exp = SimpleNamespace(name="t", budgets=_Exp.budgets, seeds=_Exp.seeds, strategies=_Exp.strategies,
                          tasks=["segment"], data=data)
    return write_report(exp, rows, list(gen_quality), tmp_path, classes={1: "IPH"}, total_seconds=1.0)


def test_html_report_is_one_file_with_every_image_embedded(tmp_path):
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    from augment.sample import Sample
    from augment.viz import save_grid

    mask = np.zeros((32, 32), np.uint8)
    mask[10:16, 10:16] = 1
    slice_ = Sample(np.where(mask > 0, 70.0, 30.0).astype(np.float32), mask, meta={"id": "s0"})
    grid = save_grid([[slice_]], tmp_path / "quality" / "g" / "grid.png", class_names={1: "IPH"})
    quality = {"generator": "pix2pix", "budget": 6, "seed": 0, "grid_png": str(grid), "fid_status": ""}
    md = _report(tmp_path, _rows({"none": 0.0, "classical": 0.1, "pix2pix": 0.15}), [quality])
    text = (tmp_path / "report.html").read_text()
    sources = re.findall(r"""src\s*=\s*["']([^"']*)["']""", text)
    assert len(sources) == 3  # Dice vs budget, validation curves, the generator's grid
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # no file paths
    for s in sources:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert len(re.findall(r"<img\b", text)) == 3
    # The PNGs are still written beside it, and report.md links them.
    assert "](plots/segment_dice_vs_budget.png)" in md.read_text()
    assert (tmp_path / "plots" / "segment_dice_vs_budget.png").exists()


def test_metric_axes_stay_in_0_1_and_budgets_are_integers(tmp_path):
    from collections import defaultdict

    from downstream.report import _curve, _val_curves

    # Means near 0 with a large sd: the error bars would reach below 0.
    by = defaultdict(list)
    for b in (2, 4, 8):
        by[("none", b)] = [(0, {"dice": 0.02}), (1, {"dice": 0.3})]
        by[("pix2pix", b)] = [(0, {"dice": 0.0}), (1, {"dice": 0.0})]
    fig = _curve(tmp_path / "c.png", ["none", "pix2pix"], [2, 4, 8], by, "dice", "Dice", ceiling=(14, 0.7))
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, 1.05)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "8"]
    lo, hi = ax.get_xlim()
    assert lo < 2 and hi > 8
    rows = [{"strategy": "none", "budget": 2, "seed": 0, "val_curve": [[1, 0.0]]},
            {"strategy": "pix2pix", "budget": 2, "seed": 0, "val_curve": [[1, 0.1]]}]
    fig = _val_curves(tmp_path / "v.png", rows, "mAP50", "mAP@0.5")
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, 1.05)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # steps, never 0.975
    # A metric that is not a fraction keeps its own top.
    by = {("none", 2): [(0, {"hd95": 12.0})]}
    (ax,) = _curve(tmp_path / "h.png", ["none"], [2], by, "hd95", "HD95").axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 12
