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
