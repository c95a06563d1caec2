"""Metrics on hand-computed cases and against reference implementations."""

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff
from scipy.stats import mannwhitneyu

from downstream.evaluation import metrics as M
from downstream.evaluation.stats import mean_sd


def test_dice_iou_hand_case():
    pred = np.zeros((4, 4), bool)
    target = np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True
    target[0:2, 1:3] = True
    # TP = 2 (column 1), FP = 2 (column 0), FN = 2 (column 2)
    assert M.confusion(pred, target) == (2, 2, 2)
    assert M.dice(pred, target) == pytest.approx(4 / 8)
    assert M.iou(pred, target) == pytest.approx(2 / 6)
    assert M.dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert M.dice(pred, np.zeros_like(pred)) == 0.0
    with pytest.raises(ValueError, match="differs"):
        M.dice(pred, np.zeros((3, 3)))


def test_per_class_dice_marks_absent_classes_nan():
    pred = np.array([[1, 1, 0], [0, 2, 0]])
    target = np.array([[1, 0, 0], [0, 2, 2]])
    d = M.per_class_dice(pred, target, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / (2 + 1 + 0))  # TP 1, FP 1, FN 0
    assert d[2] == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    assert np.isnan(d[3])


def test_hd95_hand_case_pixels_and_mm():
    a = np.zeros((5, 5), bool)
    b = np.zeros((5, 5), bool)
    a[0, 0] = True
    b[0, 3] = True
    assert M.hd95(a, b) == pytest.approx(3.0)  # 3 columns apart
    assert M.hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0)  # 2 mm per column
    assert np.isnan(M.hd95(a, np.zeros_like(a)))


def test_hd_matches_brute_force_and_scipy():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    a = (yy - 18) ** 2 + (xx - 20) ** 2 < 64
    b = ((yy - 22) ** 2 + (xx - 17) ** 2 < 81) | (rng.random((40, 40)) > 0.995)
    d = M.surface_distances(a, b)
    sa = np.argwhere(M._surface(a))
    sb = np.argwhere(M._surface(b))
    pair = np.sqrt(((sa[:, None] - sb[None]) ** 2).sum(-1))
    brute = np.concatenate([pair.min(1), pair.min(0)])
    np.testing.assert_allclose(np.sort(d), np.sort(brute), atol=1e-9)
    hd100 = max(directed_hausdorff(sa, sb)[0], directed_hausdorff(sb, sa)[0])
    assert d.max() == pytest.approx(hd100)
    assert M.hd95(a, b) == pytest.approx(np.percentile(brute, 95))


def test_lesion_detection_hand_case():
    target = np.zeros((10, 10), bool)
    pred = np.zeros((10, 10), bool)
    target[1:3, 1:3] = True  # lesion 1 (4 px), found
    target[7, 7] = True  # lesion 2 (1 px), missed
    pred[2:4, 2:4] = True  # overlaps lesion 1 at (2, 2)
    pred[5, 0] = True  # false positive
    r = M.lesion_detection(pred, target, spacing=(0.5, 0.5))
    assert [les["found"] for les in r["lesions"]] == [True, False]
    assert [les["area_mm2"] for les in r["lesions"]] == [1.0, 0.25]
    assert r["false_positives"] == 1
    assert M.lesion_sensitivity([r]) == 0.5
    assert M.lesion_sensitivity([r], max_area_px=1) == 0.0
    assert M.fp_per_slice([r, {"lesions": [], "false_positives": 0}]) == 0.5


def test_average_precision_hand_case():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], float)
    scores = np.array([0.9, 0.8, 0.7])
    # ranks: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # all-point AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333
    ap = M.average_precision([(boxes, scores, np.ones(3))], [(gt, np.ones(2))])
    assert ap["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a duplicate detection of a matched box is a false positive
    dup = M.average_precision([(gt[[0, 0]], np.array([0.9, 0.8]), np.ones(2))], [(gt[:1], np.ones(1))])
    assert dup["mAP"] == pytest.approx(1.0)  # precision 1 at recall 1 before the duplicate


def test_box_iou_hand_case():
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7
    assert M.box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)


def test_image_level_and_auc():
    scores = [0.9, 0.6, 0.4, 0.2, 0.7]
    labels = [True, True, True, False, False]
    r = M.image_level(scores, labels, theta=0.5)
    # predicted positive: 0.9, 0.6, 0.7 -> TP 2, FP 1; FN 1 (0.4); TN 1 (0.2)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(3 / 5)
    u = mannwhitneyu([0.9, 0.6, 0.4], [0.2, 0.7]).statistic
    assert M.roc_auc(scores, labels) == pytest.approx(u / 6)
    assert M.roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)  # a tie counts 1/2


def test_icc_2_1_shrout_fleiss_example():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(2,1) = 0.29.
    x = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert M.icc_2_1(x) == pytest.approx(0.29, abs=0.005)
    same = np.array([[1, 1], [2, 2], [5, 5]], float)
    assert M.icc_2_1(same) == pytest.approx(1.0)


def test_mean_sd():
    assert mean_sd([1, 2, 3]) == (2.0, 1.0)
    assert np.isnan(mean_sd([1.0])[1])


def test_report_says_when_every_patient_improved_but_the_test_cannot_tell():
    from downstream.report import _task_section

    class Exp:
        seeds = (0, 1, 2)
        budgets = (6,)
        strategies = [type("S", (), {"name": n}) for n in ("none", "classical")]

    # 4 test patients, each better under classical in every seed: the exact sign-flip
    # test over 4 patients cannot go below p = 2/2^4 = 0.125, so it is not significant,
    # but the report says that every patient moved the same way.
    rows = [{"task": "segment", "strategy": st, "budget": 6, "seed": s,
             "metrics": {"dice": 0.1, "lesion_sensitivity": 0.5,
                         "per_patient": {f"p{p}": {"dice": 0.1 + 0.01 * p + (gain if st == "classical" else 0.0)}
                                         for p in range(4)}}}
            for s, gain in enumerate([0.02, 0.1, 0.05])
            for st in ("none", "classical")]
    verdicts: list[str] = []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "plots").mkdir()
        _task_section("segment", rows, Exp, Path(d), verdicts)
    assert len(verdicts) == 1
    assert "no significant difference" in verdicts[0]
    assert "better for every one of the 4 test patients" in verdicts[0]


def test_sensitivity_at_one_fp_per_slice_by_hand():
    from downstream.evaluation.metrics import sensitivity_at_fp

    lesion = np.array([[10, 10, 20, 20]], float)
    miss = np.array([[40, 40, 50, 50]], float)
    # Slice 1: the lesion found at score 0.9, a false positive at 0.8.
    # Slice 2: a lesion found only at score 0.3; false positives at 0.7 and 0.6.
    preds = [(np.vstack([lesion, miss]), np.array([0.9, 0.8]), np.ones(2)),
             (np.vstack([lesion, miss, miss + 1]), np.array([0.3, 0.7, 0.6]), np.ones(3))]
    targets = [(lesion, np.ones(1)), (lesion, np.ones(1))]
    # Hand computation: at t = 0.7 two FPs on two slices (1.0/slice) and 1 of 2 lesions found;
    # lowering t to 0.6 makes 3 FPs (1.5/slice) > 1, so the point is (0.5, t = 0.7).
    r = sensitivity_at_fp(preds, targets, fp_per_image=1.0)
    assert r == {"sensitivity": 0.5, "threshold": 0.7, "fp_per_image": 1.0}
    # At 2 FP/slice every threshold down to 0.3 is allowed: both lesions found.
    assert sensitivity_at_fp(preds, targets, fp_per_image=2.0)["sensitivity"] == 1.0
    # At 0 FP/slice only t = 0.9 (no FP above 0.8): one lesion.
    assert sensitivity_at_fp(preds, targets, fp_per_image=0.0)["sensitivity"] == 0.5
