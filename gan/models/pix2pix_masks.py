"""Masks for the mask-conditioned pix2pix: erase areas, the mask bank, transforms, placement.

Pure numpy/scipy functions, so they are tested (and reusable) without a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from augment.sample import Sample
from augment.window import Window
from gan.models.paste import find_placement

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # as `augment.sample.boxes_from_mask`


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (bool) grown by a disk of ``radius`` pixels (Euclidean)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=disk(radius).astype(bool))


def in_window(image_hu: np.ndarray, window: Window) -> np.ndarray:
    """Pixels whose HU the model can represent (inside the window, edges included)."""
    return (image_hu >= window.low) & (image_hu <= window.high)


def erase_region(
    image_hu: np.ndarray, lesion: np.ndarray, dilate_px: int, window: Window
) -> np.ndarray:
    """The area pix2pix erases and repaints for ``lesion``.

    The lesion grown by a disk of ``dilate_px``, without the grown pixels whose HU lie
    outside ``window`` (bone, air): the generator's output is confined to the window,
    so replacing them would turn skull into soft tissue. Lesion pixels are always in.

    Returns:
        bool (H, W); empty when ``lesion`` is.
    """
    lesion = np.asarray(lesion, dtype=bool)
    return lesion | (dilate(lesion, dilate_px) & in_window(image_hu, window))


def fill_hu(image_hu: np.ndarray, region: np.ndarray, ring_px: int, window: Window) -> float:
    """HU to fill the erased ``region`` with: the median of the in-window tissue in a
    ring of ``max(ring_px, 2)`` pixels around it, or the window centre when the ring
    holds no such tissue (or nothing is erased)."""
    region = np.asarray(region, dtype=bool)
    ring = dilate(region, max(ring_px, 2)) & ~region & in_window(image_hu, window)
    if not ring.any():
        return float(window.center)
    return float(np.median(image_hu[ring]))


def extract_components(mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Every lesion of ``mask`` as ``(bool crop of its bounding box, class)``.

    Lesions are the 8-connected components of each class, ordered by class and then
    component label, as `augment.sample.boxes_from_mask` orders its boxes.
    """
    out: list[tuple[np.ndarray, int]] = []
    for cls in np.unique(mask):
        if cls == 0:
            continue
        components, n = ndimage.label(mask == cls, structure=_EIGHT_CONNECTED)
        for label, sl in enumerate(ndimage.find_objects(components, max_label=n), 1):
            if sl is not None:
                out.append((components[sl] == label, int(cls)))
    return out


def trim(mask: np.ndarray) -> np.ndarray:
    """``mask`` cropped to its bounding box ((0, 0) when empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=bool)
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def transform_mask(crop: np.ndarray, *, flip: bool, angle: float, scale: float) -> np.ndarray:
    """Mirror (left-right), scale, then rotate a binary lesion crop; nearest-neighbour.

    Nearest-neighbour resampling keeps the mask binary; should it split a thin lesion,
    only the largest 8-connected piece is kept, so one bank entry stays one lesion.

    Args:
        crop: bool (h, w).
        flip: mirror left-right first.
        angle: rotation in degrees, counter-clockwise (`scipy.ndimage.rotate`).
        scale: zoom factor (the output is about ``scale`` times larger per side).

    Returns:
        bool, trimmed to the lesion's bounding box; (0, 0) if nothing survives.
    """
    m = np.asarray(crop, dtype=np.uint8)
    if flip:
        m = m[:, ::-1]
    # grid_mode: pixels are areas, so a 3 px lesion scaled by 2 covers 6 px.
    m = ndimage.zoom(m, scale, order=0, mode="grid-constant", grid_mode=True)
    m = ndimage.rotate(m, angle, reshape=True, order=0, mode="constant", cval=0)
    components, n = ndimage.label(m > 0, structure=_EIGHT_CONNECTED)
    if n == 0:
        return np.zeros((0, 0), dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    return trim(components == int(np.argmax(sizes)) + 1)


@dataclass(frozen=True)
class MaskBank:
    """Lesion masks to place: zero-padded crops ``masks`` (N, h, w) uint8 with their true
    ``shapes`` (N, 2), ``classes`` (N,) and ``sources`` (id of the slice each came from)."""

    masks: np.ndarray
    shapes: np.ndarray
    classes: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return len(self.classes)

    def crop(self, j: int) -> np.ndarray:
        """Entry ``j`` as a bool (h, w) crop."""
        h, w = (int(v) for v in self.shapes[j])
        return self.masks[j, :h, :w].astype(bool)


def place_lesions(
    occupied: np.ndarray,
    allowed: np.ndarray,
    bank: MaskBank,
    rng: np.random.Generator,
    *,
    n_range: tuple[int, int],
    scale_range: tuple[float, float],
    rotation_range: tuple[float, float],
    gap: int,
    anchors: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw and place new lesions from ``bank``; every draw comes from ``rng``.

    Draws how many (``n_range``, inclusive), then per lesion: a bank entry, a flip
    (p = 1/2), an angle and a scale, and a uniformly random position where the whole
    lesion lies in ``allowed`` and it stays ``gap`` pixels clear of ``occupied`` and of
    the lesions placed before it. With ``anchors`` (class id -> bool (H, W), from
    `augment.anatomy.lesion_regions`), a lesion's centre must also fall in its class's
    region: IVH in a ventricle, EDH/SDH on the inner table. A lesion with no such
    position is skipped.

    Returns:
        ``(mask, placements)``: uint8 (H, W) holding only the new lesions (class ids),
        and per placed lesion ``bank_index``, ``bank_source``, ``class``, ``flip``,
        ``angle``, ``scale``, ``row``, ``col`` (its top-left pixel), ``height``, ``width``.
    """
    occupied = np.array(occupied, dtype=bool)
    new = np.zeros(occupied.shape, dtype=np.uint8)
    placements: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(n_range[0], n_range[1] + 1))):
        j = int(rng.integers(len(bank)))
        params = {
            "flip": bool(rng.random() < 0.5),
            "angle": float(rng.uniform(*rotation_range)),
            "scale": float(rng.uniform(*scale_range)),
        }
        lesion = transform_mask(bank.crop(j), **params)
        if not lesion.any():
            continue
        roi = np.pad(lesion, gap)
        cls = int(bank.classes[j])
        anchor = anchors.get(cls) if anchors else None
        pos = find_placement(roi, allowed, occupied, rng, clear=dilate(roi, gap), anchor=anchor)
        if pos is None:
            continue
        r, c = pos
        window = (slice(r, r + roi.shape[0]), slice(c, c + roi.shape[1]))
        new[window][roi] = cls
        occupied[window] |= roi
        placements.append(
            {
                "bank_index": j,
                "bank_source": bank.sources[j],
                "class": cls,
                **params,
                "row": r + gap,
                "col": c + gap,
                "height": lesion.shape[0],
                "width": lesion.shape[1],
            }
        )
    return new, placements


def erase(
    image_hu: np.ndarray, lesion: np.ndarray, dilate_px: int, window: Window
) -> tuple[np.ndarray, float]:
    """`erase_region` and its `fill_hu`: ``(bool (H, W) area, fill HU)``."""
    region = erase_region(image_hu, lesion, dilate_px, window)
    return region, fill_hu(image_hu, region, dilate_px, window)


def condition(
    image_hu: np.ndarray, mask: np.ndarray, n_classes: int, dilate_px: int, window: Window
) -> tuple[np.ndarray, np.ndarray, float]:
    """The pix2pix generator input for painting the lesions of ``mask`` into ``image_hu``.

    Returns:
        ``(input, region, fill)``: float32 (1 + n_classes, H, W) in model space (the
        slice with ``region`` set to ``fill`` HU, then a one-hot channel per class
        1..n_classes), the bool (H, W) erased area, and the fill HU.
    """
    region, fill = erase(image_hu, mask > 0, dilate_px, window)
    erased = np.where(region, np.float32(fill), image_hu)
    classes = np.arange(1, n_classes + 1, dtype=mask.dtype)[:, None, None]
    x = np.concatenate([window.to_model(erased)[None], mask[None] == classes])
    return x.astype(np.float32), region, fill


def build_bank(samples: Sequence[Sample]) -> MaskBank:
    """Every lesion component (see `extract_components`) of ``samples``, in order."""
    crops, classes, sources = [], [], []
    for s in samples:
        for crop, cls in extract_components(s.mask):
            crops.append(crop)
            classes.append(cls)
            sources.append(s.id)
    h = max((c.shape[0] for c in crops), default=1)
    w = max((c.shape[1] for c in crops), default=1)
    masks = np.zeros((len(crops), h, w), dtype=np.uint8)
    for k, c in enumerate(crops):
        masks[k, : c.shape[0], : c.shape[1]] = c
    shapes = np.asarray([c.shape for c in crops], dtype=np.int64).reshape(-1, 2)
    return MaskBank(masks, shapes, np.asarray(classes, dtype=np.int64), sources)
