"""Test-set evaluation of one trained segmenter or detector: the numbers of the report."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from augment.sample import Sample
from downstream.evaluation import metrics as M

SMALL_DIAMETER_MM = 10.0  # "small lesion": equivalent diameter <= 10 mm ...
SMALL_AREA_PX = 16  # ... or <= 16 px when the pixel spacing is unknown


def small_area_px(spacing: Sequence[float] | None) -> float:
    """Largest area (px) of a "small" lesion for this pixel spacing."""
    if spacing is None:
        return SMALL_AREA_PX
    return float(np.pi * (SMALL_DIAMETER_MM / 2) ** 2 / float(np.prod(spacing)))


def _spacing(samples: Sequence[Sample]) -> list[float] | None:
    sp = samples[0].meta.get("spacing") if samples else None
    return [float(v) for v in sp] if sp else None


def _nanmean(values) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate_segmentation(
    preds: Sequence[np.ndarray], samples: Sequence[Sample], classes: dict[int, str]
) -> dict[str, Any]:
    """Patient-level (volume) Dice/IoU over the patients that have a lesion, per-class
    Dice, slice HD95, lesion sensitivity (all and small), false positives per slice (all
    slices, lesion-free ones included), and ICC(2,1) of per-slice lesion areas."""
    if len(preds) != len(samples):
        raise ValueError(f"{len(preds)} predictions for {len(samples)} test slices")
    spacing = _spacing(samples)
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_patient[s.patient_id].append(i)
    dices, ious, class_dice, lesion_free = [], [], defaultdict(list), 0
    per_patient: dict[str, dict[str, float]] = {}
    for pid, idx in by_patient.items():
        p = np.stack([preds[i] for i in idx])
        t = np.stack([samples[i].mask for i in idx])
        if not t.any():
            # Dice is undefined without a lesion (an empty prediction would score 1, any
            # false positive 0): lesion-free patients count in fp_per_slice instead, as
            # MONAI's DiceMetric(ignore_empty=True) and nnU-Net's evaluation do.
            lesion_free += 1
        else:
            dices.append(M.any_lesion_dice(p, t))
            ious.append(M.iou(p > 0, t > 0))
            per_patient[pid] = {"dice": dices[-1], "iou": ious[-1]}
        for c, v in M.per_class_dice(p, t, classes).items():
            class_dice[c].append(v)
    hd, hd_excluded, records, areas = [], 0, [], []
    px_area = float(np.prod(spacing)) if spacing else 1.0
    for p, s in zip(preds, samples, strict=True):
        pb, tb = p > 0, s.mask > 0
        if pb.any() and tb.any():
            hd.append(M.hd95(pb, tb, spacing))
        elif pb.any() or tb.any():
            hd_excluded += 1
        records.append(M.lesion_detection(pb, tb, spacing))
        if pb.any() or tb.any():
            areas.append((tb.sum() * px_area, pb.sum() * px_area))
    small = small_area_px(spacing)
    return {
        "dice": _nanmean(dices),
        "iou": _nanmean(ious),
        "dice_per_class": {classes.get(c, str(c)): _nanmean(v) for c, v in sorted(class_dice.items())},
        "hd95": _nanmean(hd),
        "hd95_unit": "mm" if spacing else "px",
        "hd95_excluded_slices": hd_excluded,
        "lesion_sensitivity": M.lesion_sensitivity(records),
        "small_lesion_sensitivity": M.lesion_sensitivity(records, max_area_px=small),
        "n_lesions": sum(len(r["lesions"]) for r in records),
        "n_small_lesions": sum(les["area_px"] <= small for r in records for les in r["lesions"]),
        "fp_per_slice": M.fp_per_slice(records),
        "icc_area": M.icc_2_1(np.array(areas)) if len(areas) >= 2 else float("nan"),
        "area_unit": "mm2" if spacing else "px",
        "n_patients": len(by_patient),
        "n_lesion_free_patients": lesion_free,
        "per_patient": per_patient,  # patients with a lesion: the units of the paired statistics
    }


def evaluate_detection(
    preds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], samples: Sequence[Sample], *, theta: float
) -> dict[str, Any]:
    """Class-agnostic mAP@0.5, lesion-level box sensitivity (all and small) and false
    positives per slice at θ, image-level precision/recall/accuracy at θ, and AUC."""
    if len(preds) != len(samples):
        raise ValueError(f"{len(preds)} predictions for {len(samples)} test slices")
    agnostic = [(b, s, np.ones(len(s), np.int64)) for b, s, _ in preds]
    targets = [(s.boxes, np.ones(len(s.boxes), np.int64)) for s in samples]
    scores = np.array([float(s.max()) if len(s) else 0.0 for _, s, _ in preds])
    has_lesion = np.array([s.has_lesion for s in samples])
    small = small_area_px(_spacing(samples))
    fps = []
    for (b, s, _), (tb, _) in zip(agnostic, targets, strict=True):
        kept = np.asarray(b).reshape(-1, 4)[np.asarray(s) >= theta]
        ious = M.box_iou(kept, tb)
        fps.append(int((ious.max(1) < 0.5).sum()) if ious.shape[1] else len(kept))
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_patient[s.patient_id].append(i)
    per_patient = {}
    for pid, idx in by_patient.items():
        if sum(len(targets[i][0]) for i in idx) == 0:
            continue  # AP and sensitivity are undefined without a lesion (FPs count above)
        a = [agnostic[i] for i in idx]
        t = [targets[i] for i in idx]
        per_patient[pid] = {"mAP50": M.average_precision(a, t, iou_threshold=0.5)["mAP"],
                            "box_sensitivity": M.box_sensitivity(a, t, theta=theta)}
    froc = M.sensitivity_at_fp(agnostic, targets, fp_per_image=1.0)
    # The same FROC point with nnDetection's hit criterion for medical lesions (IoU >= 0.1):
    # a box on a 3-4 px bleed that is off by one pixel is a find, not a false positive.
    froc_01 = M.sensitivity_at_fp(agnostic, targets, fp_per_image=1.0, iou_threshold=0.1)
    return {
        "per_patient": per_patient,
        "mAP50": M.average_precision(agnostic, targets, iou_threshold=0.5)["mAP"],
        "box_sensitivity": M.box_sensitivity(agnostic, targets, theta=theta),
        "small_box_sensitivity": M.box_sensitivity(agnostic, targets, theta=theta, max_area_px=small),
        "fp_boxes_per_slice": float(np.mean(fps)) if fps else float("nan"),
        # FROC point: lesion sensitivity at <= 1 false-positive box per slice
        "sens_at_1fp": froc["sensitivity"],
        "sens_at_1fp_threshold": froc["threshold"],
        "sens_at_1fp_iou01": froc_01["sensitivity"],
        "image": M.image_level(scores, has_lesion, theta),
        "auc": M.roc_auc(scores, has_lesion),
        "theta": theta,
    }
