"""Test-set evaluation of a segmenter on hand-made slices: patient-level Dice over the
patients that have a lesion, false positives counted on every slice."""

from __future__ import annotations

import numpy as np
import pytest

from augment.sample import Sample
from downstream.evaluation.evaluate import evaluate_segmentation


def _slice(patient: str, mask: np.ndarray, i: int) -> Sample:
    return Sample(np.zeros(mask.shape, np.float32), mask.astype(np.uint8), meta={"id": f"{patient}_{i}",
                                                                                  "patient_id": patient})


def test_lesion_free_patients_do_not_enter_dice_but_their_false_positives_count():
    lesion = np.zeros((8, 8), np.uint8)
    lesion[2:4, 2:4] = 1  # 4 px
    empty = np.zeros((8, 8), np.uint8)
    samples = [_slice("p1", lesion, 0), _slice("p1", empty, 1), _slice("p2", empty, 0), _slice("p2", empty, 1)]
    pred_hit = np.zeros((8, 8), np.uint8)
    pred_hit[2:4, 2:3] = 1  # 2 of the 4 lesion px, nothing else
    pred_fp = np.zeros((8, 8), np.uint8)
    pred_fp[6, 6] = 1  # one false-positive component on a lesion-free patient
    preds = [pred_hit, empty, pred_fp, empty]
    m = evaluate_segmentation(preds, samples, {1: "lesion"})
    # p1: TP 2, FP 0, FN 2 -> Dice 4/6; p2 has no lesion, so it is not averaged in
    # (it would add 0 with its false positive, or 1 without one).
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(0.5)
    assert m["n_patients"] == 2 and m["n_lesion_free_patients"] == 1
    assert m["fp_per_slice"] == pytest.approx(1 / 4)  # one FP component over four slices
    assert m["lesion_sensitivity"] == 1.0 and m["n_lesions"] == 1


def test_detection_froc_point_at_both_hit_criteria():
    from downstream.evaluation.evaluate import evaluate_detection

    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:7, 4:7] = 1  # a 3 x 3 px lesion: box [4, 4, 7, 7]
    samples = [_slice("p1", lesion, 0)]
    # A box one pixel off in x and y: IoU = 4 / 14 = 0.29 (2 x 2 overlap, 9 + 9 - 4 union).
    preds = [(np.array([[5.0, 5.0, 8.0, 8.0]]), np.array([0.9]), np.array([1]))]
    m = evaluate_detection(preds, samples, theta=0.5)
    assert m["sens_at_1fp"] == 0.0  # IoU 0.29 < 0.5: a miss (and a false positive)
    assert m["sens_at_1fp_iou01"] == 1.0  # >= 0.1 (nnDetection's criterion): found
