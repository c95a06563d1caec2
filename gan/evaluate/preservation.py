"""Does a translated slice still show its lesion? Measured, not assumed.

CycleGAN carries the mask over unchanged, so the label is only right if the lesion's
HU survive translation. `lesion_preservation` compares one slice before and after,
inside the labelled mask; `summarise_preservation` aggregates over a dataset. Pure
functions over arrays (no torch), runnable later on saved outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from augment.errors import DataError
from augment.sample import Sample

# Acute blood on non-contrast CT (hand-checked against the phantom's 50-90 HU bleeds).
BLOOD_HU_RANGE = (50.0, 90.0)
# The HU that define "the lesion" by intensity, per anatomy: acute blood on head CT;
# hypodense liver tumours in the portal venous phase (40-80 HU against 100-130 HU liver,
# as the phantom renders them, `augment.phantoms.liver`).
LESION_HU_RANGE = {"head-ich": BLOOD_HU_RANGE, "liver": (40.0, 80.0)}
# A ratio of contrasts is only meaningful when there was contrast to keep: below this
# mean |lesion - ring| HU before translation (about the phantom's noise std), it is NaN.
MIN_CONTRAST_HU = 5.0


def lesion_hu_range(kind: str | None) -> tuple[float, float]:
    """`LESION_HU_RANGE` of an anatomy kind (blood when the kind is unknown)."""
    return LESION_HU_RANGE.get(kind or "", BLOOD_HU_RANGE)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")  # nothing in range before or after: undefined, not perfect
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _mean(image: np.ndarray, where: np.ndarray) -> float:
    return float(image[where].mean(dtype=np.float64)) if where.any() else float("nan")


def lesion_preservation(
    before: Sample,
    after: Sample,
    *,
    hu_range: tuple[float, float] = BLOOD_HU_RANGE,
    ring_px: int = 3,
) -> dict[str, Any]:
    """Compare the labelled lesion of one slice before and after translation.

    The lesion is ``before.mask > 0`` (all classes): the label the translated slice
    inherits. The ring is the mask dilated by a disk of ``ring_px`` minus every labelled
    pixel; the HU-thresholded lesion is the set of pixels with ``hu_range[0] <= HU <=
    hu_range[1]`` inside the mask plus ring (so a lesion that shrinks *or* bleeds into
    its surroundings lowers the Dice).

    Args:
        before: the input slice (HU).
        after: the translated slice (HU), same shape.
        hu_range: HU interval that defines the lesion by intensity (blood: 50-90).
        ring_px: ring width in pixels for the contrast.

    Returns:
        ``n_lesion_px``; ``mean_hu_before/after/diff`` inside the mask;
        ``contrast_before/after/diff`` (mean inside - mean in the ring);
        ``dice_hu`` between the thresholded lesion before and after (NaN when neither
        has a pixel in range); ``n_in_range_before/after``; ``mask_unchanged``.
        HU values are NaN when the slice has no lesion (or no ring).

    Raises:
        DataError: the two slices differ in shape.
    """
    if before.image.shape != after.image.shape:
        raise DataError(
            f"{after.id or 'sample'}: shape {after.image.shape} differs from the input "
            f"{before.image.shape}"
        )
    if ring_px < 1:
        raise ValueError(f"ring_px must be >= 1, got {ring_px}")
    lesion = before.mask > 0
    ring = ndimage.binary_dilation(lesion, structure=disk(ring_px)) & (before.mask == 0)
    near = lesion | ring
    lo, hi = hu_range
    in_before = near & (before.image >= lo) & (before.image <= hi)
    in_after = near & (after.image >= lo) & (after.image <= hi)

    mean_before = _mean(before.image, lesion)
    mean_after = _mean(after.image, lesion)
    contrast_before = mean_before - _mean(before.image, ring)
    contrast_after = mean_after - _mean(after.image, ring)
    return {
        "id": after.id or before.id,
        "n_lesion_px": int(lesion.sum()),
        "mean_hu_before": mean_before,
        "mean_hu_after": mean_after,
        "mean_hu_diff": mean_after - mean_before,
        "contrast_before": contrast_before,
        "contrast_after": contrast_after,
        "contrast_diff": contrast_after - contrast_before,
        "dice_hu": _dice(in_before, in_after),
        "n_in_range_before": int(in_before.sum()),
        "n_in_range_after": int(in_after.sum()),
        "mask_unchanged": bool(np.array_equal(before.mask, after.mask)),
    }


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "median": nan, "min": nan, "max": nan, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def summarise_preservation(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate `lesion_preservation` results over slices that have a lesion.

    Returns:
        ``n_slices``, ``n_with_lesion``, ``all_masks_unchanged``, and for each of
        ``mean_hu_diff``, ``abs_mean_hu_diff``, ``contrast_before``, ``contrast_after``,
        ``contrast_diff``, ``dice_hu`` a dict ``mean/std/median/min/max/n`` over the
        finite values (std with ddof=1); plus ``contrast_retained`` = mean contrast
        after / mean contrast before (1 = fully kept, 0 = lesion erased; NaN when the
        lesions had less than `MIN_CONTRAST_HU` of mean contrast to begin with).
    """
    with_lesion = [r for r in results if r["n_lesion_px"] > 0]
    out: dict[str, Any] = {
        "n_slices": len(results),
        "n_with_lesion": len(with_lesion),
        "all_masks_unchanged": all(r["mask_unchanged"] for r in results),
    }
    for key in ("mean_hu_diff", "contrast_before", "contrast_after", "contrast_diff", "dice_hu"):
        out[key] = _stats([r[key] for r in with_lesion])
    out["abs_mean_hu_diff"] = _stats([abs(r["mean_hu_diff"]) for r in with_lesion])
    before, after = out["contrast_before"]["mean"], out["contrast_after"]["mean"]
    out["contrast_retained"] = (
        after / before if np.isfinite(before) and abs(before) >= MIN_CONTRAST_HU else float("nan")
    )
    return out
