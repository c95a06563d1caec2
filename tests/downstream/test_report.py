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
