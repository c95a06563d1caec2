"""Segmentation, detection and agreement metrics, named as the literature names them.

Pure functions over numpy arrays returning plain floats/dicts. Conventions:

* Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN). Both empty -> 1.0 (nothing
  to find, nothing found: a perfect answer); exactly one empty -> 0.0.
* HD95: the 95th percentile of the pooled symmetric surface distances (as MONAI's
  ``compute_hausdorff_distance(percentile=95)`` and medpy's ``hd95``), in mm when a
  pixel spacing is given, in pixels otherwise. NaN when either mask is empty (the
  distance is undefined; callers report how many slices were excluded).
* Lesions are 8-connected components. A reference lesion is *found* when a predicted
  component overlaps it by at least one pixel; a predicted component that overlaps no
  reference lesion is a false positive.
* mAP@0.5: per class, detections sorted by score, greedily matched to the unmatched
  reference box of highest IoU >= 0.5; AP is the area under the precision envelope at
  every recall step (all-point interpolation, PASCAL VOC 2010+); mAP averages classes
  that have reference boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

_EIGHT = np.ones((3, 3), dtype=bool)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    return pred.astype(bool), target.astype(bool)


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` pixel counts of two binary masks."""
    p, t = _pair(pred, target)
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    tp, fp, fn = confusion(pred, target)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    tp, fp, fn = confusion(pred, target)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def per_class_dice(pred: np.ndarray, target: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """Dice per class id; NaN for a class absent from both (excluded from means)."""
    pred, target = np.asarray(pred), np.asarray(target)
    out = {}
    for c in classes:
        p, t = pred == c, target == c
        out[int(c)] = float("nan") if not p.any() and not t.any() else dice(p, t)
    return out


def any_lesion_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of "any lesion" (all classes > 0 merged)."""
    return dice(np.asarray(pred) > 0, np.asarray(target) > 0)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_EIGHT, border_value=0)


def surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Distances from every surface pixel of each mask to the other mask's surface, pooled."""
    p, t = _pair(pred, target)
    sampling = tuple(spacing) if spacing is not None else None
    sp, st = _surface(p), _surface(t)
    to_t = ndimage.distance_transform_edt(~st, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return np.concatenate([to_t[sp], to_p[st]])


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance (mm with ``spacing``, else pixels)."""
    p, t = _pair(pred, target)
    if not p.any() or not t.any():
        return float("nan")
    return float(np.percentile(surface_distances(p, t, spacing), 95))


def lesion_detection(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, Any]:
    """Lesion-level matching of one slice.

    Returns ``{"lesions": [{"area_px", "area_mm2", "found"}...], "false_positives": n}``.
    """
    p, t = _pair(pred, target)
    t_lab, n_t = ndimage.label(t, structure=_EIGHT)
    p_lab, n_p = ndimage.label(p, structure=_EIGHT)
    px_mm2 = float(np.prod(spacing)) if spacing is not None else None
    lesions = []
    for k in range(1, n_t + 1):
        comp = t_lab == k
        area = int(comp.sum())
        lesions.append({
            "area_px": area,
            "area_mm2": area * px_mm2 if px_mm2 is not None else None,
            "found": bool(p[comp].any()),
        })
    hit_pred = set(np.unique(p_lab[t])) - {0}
    return {"lesions": lesions, "false_positives": int(n_p - len(hit_pred))}


def lesion_sensitivity(records: Iterable[dict[str, Any]], *, max_area_px: float | None = None) -> float:
    """Fraction of reference lesions found, over many slices' `lesion_detection` results;
    ``max_area_px`` restricts to small lesions. NaN when there is no such lesion."""
    found = [
        les["found"]
        for r in records
        for les in r["lesions"]
        if max_area_px is None or les["area_px"] <= max_area_px
    ]
    return float(np.mean(found)) if found else float("nan")


def fp_per_slice(records: Sequence[dict[str, Any]]) -> float:
    return float(np.mean([r["false_positives"] for r in records])) if records else float("nan")


# --------------------------------------------------------------------------- boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes (continuous coordinates, as torchvision's box_iou)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _ap_from_matches(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(float)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    # all-point interpolation: precision envelope, summed over recall steps
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP at ``iou_threshold`` over images.

    Args:
        predictions: per image ``(boxes (N,4), scores (N,), labels (N,))``.
        targets: per image ``(boxes (M,4), labels (M,))``.

    Returns:
        ``{"mAP": float, "per_class": {class: AP}}``; NaN mAP when no reference box exists.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction sets for {len(targets)} images")
    classes = sorted({int(c) for _, lab in targets for c in np.asarray(lab).reshape(-1)})
    per_class: dict[int, float] = {}
    for c in classes:
        scores, tps = [], []
        n_gt = 0
        for (pb, ps, pl), (tb, tl) in zip(predictions, targets, strict=True):
            pb, ps, pl = np.asarray(pb).reshape(-1, 4), np.asarray(ps).reshape(-1), np.asarray(pl).reshape(-1)
            tb, tl = np.asarray(tb).reshape(-1, 4), np.asarray(tl).reshape(-1)
            gt = tb[tl == c]
            n_gt += len(gt)
            keep = pl == c
            boxes, sc = pb[keep], ps[keep]
            order = np.argsort(-sc, kind="stable")
            ious = box_iou(boxes[order], gt) if len(gt) else np.zeros((len(order), 0))
            used = np.zeros(len(gt), bool)
            for row, j in enumerate(order):
                scores.append(sc[j])
                best = -1
                if len(gt):
                    cand = np.where(~used, ious[row], -1.0)
                    k = int(np.argmax(cand))
                    if cand[k] >= iou_threshold:
                        best = k
                if best >= 0:
                    used[best] = True
                tps.append(best >= 0)
        per_class[c] = _ap_from_matches(np.array(scores), np.array(tps, bool), n_gt) if n_gt else float("nan")
    vals = [v for v in per_class.values() if np.isfinite(v)]
    return {"mAP": float(np.mean(vals)) if vals else float("nan"), "per_class": per_class}


def box_sensitivity(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    theta: float,
    iou_threshold: float = 0.5,
    max_area_px: float | None = None,
) -> float:
    """Fraction of reference boxes matched (IoU >= threshold) by a box scoring >= θ."""
    found = []
    for (pb, ps, _), (tb, _) in zip(predictions, targets, strict=True):
        tb = np.asarray(tb).reshape(-1, 4)
        pb = np.asarray(pb).reshape(-1, 4)[np.asarray(ps) >= theta]
        ious = box_iou(tb, pb)
        for k, b in enumerate(tb):
            if max_area_px is not None and (b[2] - b[0]) * (b[3] - b[1]) > max_area_px:
                continue
            found.append(bool(ious.shape[1] and ious[k].max() >= iou_threshold))
    return float(np.mean(found)) if found else float("nan")


def sensitivity_at_fp(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    fp_per_image: float = 1.0,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """One point of the FROC curve: lesion sensitivity at the lowest score threshold whose
    false positives per image stay <= ``fp_per_image`` (LUNA16 reports the curve at
    1/8 ... 8 FP per scan; a slice is our image).

    A lesion is found when a box scoring >= the threshold overlaps it with IoU >=
    ``iou_threshold``; a box is a false positive when it overlaps no lesion that well
    (the definitions of `box_sensitivity` and the report's FP boxes per slice).

    Returns ``{"sensitivity", "threshold", "fp_per_image"}`` (threshold inf when even the
    highest-scoring box exceeds the FP rate; NaN sensitivity without any lesion).
    """
    gt_best: list[float] = []  # per lesion: the best score of a box that finds it
    fp_scores: list[float] = []
    for (pb, ps, _), (tb, _) in zip(predictions, targets, strict=True):
        pb, ps = np.asarray(pb).reshape(-1, 4), np.asarray(ps, float).reshape(-1)
        tb = np.asarray(tb).reshape(-1, 4)
        ious = box_iou(pb, tb) if len(tb) else np.zeros((len(pb), 0))
        hit = ious >= iou_threshold
        fp_scores += list(ps[~hit.any(1)]) if hit.shape[1] else list(ps)
        for k in range(len(tb)):
            gt_best.append(float(ps[hit[:, k]].max()) if hit[:, k].any() else -np.inf)
    n_images = max(len(predictions), 1)
    if not gt_best:
        return {"sensitivity": float("nan"), "threshold": float("nan"), "fp_per_image": float("nan")}
    gt = np.asarray(gt_best)
    fps = np.sort(np.asarray(fp_scores))[::-1]
    # Thresholds worth trying: every score; the FP count at threshold t is #(fp >= t).
    candidates = np.unique(np.concatenate([gt[np.isfinite(gt)], fps, [np.inf]]))[::-1]
    best = (0.0, float("inf"), 0.0)
    for t in candidates:
        fp_rate = float(np.count_nonzero(fps >= t)) / n_images
        if fp_rate > fp_per_image:
            break
        best = (float(np.mean(gt >= t)), float(t), fp_rate)
    return {"sensitivity": best[0], "threshold": best[1], "fp_per_image": best[2]}


# ------------------------------------------------------------------- image level


def image_level(scores: Sequence[float], labels: Sequence[bool], theta: float) -> dict[str, float]:
    """Image-level diagnosis "lesion present" when score >= θ."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pred = s >= theta
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())
    nan = float("nan")
    return {
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "accuracy": (tp + tn) / len(y) if len(y) else nan,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "theta": float(theta),
    }


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2
    (the Mann-Whitney U statistic divided by n_pos * n_neg). NaN with one class only."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


# --------------------------------------------------------------------- agreement


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1): two-way random effects, absolute agreement, single rater
    (Shrout & Fleiss 1979; McGraw & Wong's ICC(A,1)).

    Args:
        ratings: (n_targets, k_raters), e.g. column 0 the reference lesion areas and
            column 1 the predicted ones.
    """
    x = np.asarray(ratings, float)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 2:
        raise ValueError(f"ICC needs an (n >= 2, k >= 2) matrix, got shape {x.shape}")
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    denom = bms + (k - 1) * ems + k * (jms - ems) / n
    return float((bms - ems) / denom) if denom != 0 else float("nan")
