"""Where a lesion may lie, found from HU alone (so it works on real scans as on phantoms).

`allowed_region` is what the generators use to place synthetic lesions:

- ``head-ich``: the brain inside the skull. Bone (> 300 HU) is closed into a ring,
  its filled inside taken, soft tissue of 0-100 HU kept (on a lightly smoothed image,
  so noise does not punch holes) and the result eroded a little, away from the inner
  table where the skull's partial volume raises HU.
- ``liver``: the largest connected region of liver-like HU (70-160 HU, contrast
  enhanced), smoothed, opened to cut thin bridges to the vena cava or kidneys, holes
  (vessels, tumours) filled and the outline closed.

Sizes of the morphological steps scale with the image (given in pixels at 128 px, or
in millimetres when ``spacing`` is known).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image, disk

from augment.errors import ConfigError, DataError

BONE_HU = 300.0
BRAIN_HU = (0.0, 100.0)
LIVER_HU = (70.0, 160.0)
AIR_BODY_HU = -500.0
ANATOMY_KINDS = ("head-ich", "liver")


def check_anatomy(kind: str, where: str) -> str:
    """``kind`` if it is a known anatomy, else a ConfigError naming ``where`` it came from."""
    if kind not in ANATOMY_KINDS:
        raise ConfigError(f"{where}: unknown anatomy {kind!r}; use one of {', '.join(ANATOMY_KINDS)}")
    return kind


def _radius(image: np.ndarray, mm: float, px_at_128: float, spacing: Sequence[float] | None) -> int:
    """A structuring-element radius: ``mm`` when spacing is known, else scaled pixels."""
    if spacing is not None:
        return max(1, int(round(mm / float(min(spacing)))))
    return max(1, int(round(px_at_128 * max(image.shape) / 128)))


def _check(image_hu: np.ndarray) -> np.ndarray:
    image = np.asarray(image_hu, dtype=np.float32)
    if image.ndim != 2:
        raise DataError(f"anatomy: need a 2D HU slice, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError("anatomy: HU slice contains NaN or infinite values")
    return image


def _largest(region: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(region)
    if n == 0:
        return region
    sizes = ndimage.sum_labels(region, labels, index=np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def body_mask(image_hu: np.ndarray) -> np.ndarray:
    """The patient's body: everything denser than air, holes filled, table and noise dropped.

    Args:
        image_hu: (H, W) slice in HU.

    Returns:
        bool (H, W), the largest connected non-air region with its holes (bowel gas,
        airways) filled.
    """
    image = _check(image_hu)
    dense = ndimage.median_filter(image, size=3) > AIR_BODY_HU
    dense = ndimage.binary_opening(dense, structure=disk(1))
    return ndimage.binary_fill_holes(_largest(dense))


def allowed_region(
    image_hu: np.ndarray, kind: str, *, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Pixels where a lesion of ``kind`` may be placed, from HU alone.

    Args:
        image_hu: (H, W) slice in HU.
        kind: ``"head-ich"`` (brain parenchyma inside the skull) or ``"liver"``.
        spacing: pixel spacing ``(row_mm, col_mm)`` if known; sizes the morphology.

    Returns:
        bool (H, W). Empty when the slice shows no brain / no liver.
    """
    if kind not in ANATOMY_KINDS:
        raise ConfigError(f"anatomy: unknown kind {kind!r}; known: {', '.join(ANATOMY_KINDS)}")
    image = _check(image_hu)
    if kind == "head-ich":
        return _brain(image, spacing)
    return _liver(image, spacing)


# Below this (smoothed), brain-interior pixels are CSF: partial volume at 64 px lifts
# 5-10 HU ventricles to 15-20 HU; parenchyma lies at 25-35 HU.
CSF_HU = 20.0

# Where the centre of a new lesion of each ICH subtype belongs (`lesion_regions` names).
# EDH/SDH lie on the inner table, SAH in the surface sulci, IVH in a ventricle, IPH in
# the parenchyma; unknown class names may go anywhere in the brain.
SUBTYPE_REGION = {"IPH": "parenchyma", "IVH": "ventricles", "EDH": "periphery", "SDH": "periphery",
                  "SAH": "periphery"}


def lesion_regions(
    image_hu: np.ndarray, kind: str, *, spacing: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Sub-regions of `allowed_region` where lesions of a given subtype belong, from HU.

    ``head-ich`` gives ``brain`` (= `allowed_region`), ``periphery`` (brain within ~6 mm
    of its outline: the inner table, where EDH/SDH/SAH lie), ``ventricles`` (CSF-density
    pixels deeper than ~12 mm from the outline: the ventricular system, not the surface
    sulci) and ``parenchyma`` (brain that is neither CSF nor periphery). ``liver`` gives
    ``liver``. Each is bool (H, W) and may be empty (no ventricle at this level).
    """
    image = _check(image_hu)
    brain = allowed_region(image, kind, spacing=spacing)
    if kind == "liver":
        return {"liver": brain}
    depth = ndimage.distance_transform_edt(brain)  # px from the brain's outline
    periphery_px = _radius(image, 6.0, 5, spacing)
    deep_px = _radius(image, 12.0, 10, spacing)
    csf = brain & (ndimage.gaussian_filter(image, 1.0) < CSF_HU)
    periphery = brain & (depth <= periphery_px)
    return {
        "brain": brain,
        "periphery": periphery,
        "ventricles": _drop_specks(csf & (depth > deep_px), min_px=4),
        "parenchyma": brain & ~csf & ~periphery,
    }


def _drop_specks(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= min_px))


def class_anchor(name: str, regions: dict[str, np.ndarray]) -> np.ndarray:
    """Where the centre of a new lesion of class ``name`` may go, given `lesion_regions`."""
    region = SUBTYPE_REGION.get(str(name).upper())
    if region in regions:
        return regions[region]
    return regions.get("brain", regions.get("liver"))


def _brain(image: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    smooth = ndimage.gaussian_filter(image, 1.0)
    bone = ndimage.median_filter(image, size=3) > BONE_HU
    if not bone.any():
        return np.zeros(image.shape, bool)
    closed = ndimage.binary_closing(bone, structure=disk(_radius(image, 3.0, 2, spacing)))
    inside = ndimage.binary_fill_holes(closed) & ~closed
    if inside.sum() < 0.01 * image.size:  # open skull (craniectomy, skull base): use its hull
        inside = convex_hull_image(bone) & ~closed
    brain = inside & (smooth >= BRAIN_HU[0]) & (smooth <= BRAIN_HU[1])
    brain = ndimage.binary_erosion(brain, structure=disk(_radius(image, 1.6, 1, spacing)))
    if not brain.any():
        return brain
    brain = ndimage.binary_fill_holes(brain)  # CSF dipping below 0 HU in noise
    labels, n = ndimage.label(brain)
    sizes = ndimage.sum_labels(brain, labels, index=np.arange(1, n + 1))
    keep = 1 + np.flatnonzero(sizes >= 0.1 * sizes.max())  # drop crumbs near the skull
    return np.isin(labels, keep)


def _liver(image: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    smooth = ndimage.gaussian_filter(image, 1.0)
    body = body_mask(image)
    cand = body & (smooth >= LIVER_HU[0]) & (smooth <= LIVER_HU[1])
    cand = ndimage.binary_opening(cand, structure=disk(_radius(image, 6.0, 2, spacing)))
    if not cand.any():
        return cand
    liver = ndimage.binary_fill_holes(_largest(cand))
    liver = ndimage.binary_closing(liver, structure=disk(_radius(image, 9.0, 3, spacing)))
    return ndimage.binary_fill_holes(liver) & body
