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
    assert len(diff_table.rows) == 2  # the numbers are still shown
