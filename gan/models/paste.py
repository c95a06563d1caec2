"""Put a generated lesion into a real slice: clean its mask, place it, blend it.

Pure numpy functions, shared by the generators that paste lesions into host slices.
The blend weight ``alpha`` is 1 on the lesion, falls off smoothly over a few pixels
around it and is *exactly* 0 beyond, so a pasted lesion has no seam and every pixel
where ``alpha == 0`` keeps the host's HU bit for bit. The pasted mask (merged into
the host's mask, boxes re-derived) is the label.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from skimage.morphology import disk

from augment.sample import Sample

# Gaussian kernel radius in sigmas: beyond 3 sigma the truncated tail left in alpha is
# ~0.1 %, i.e. well under 1 HU for any soft-tissue contrast.
_TRUNCATE = 3.0
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def feather_reach(dilate_px: int, sigma: float) -> int:
    """How far (pixels, chessboard distance) `feather_alpha` is non-zero beyond the mask."""
    return dilate_px + (int(_TRUNCATE * sigma + 0.5) if sigma > 0 else 0)


def feather_alpha(mask: np.ndarray, dilate_px: int = 2, sigma: float = 1.0) -> np.ndarray:
    """Blend weight for pasting: the mask dilated by ``dilate_px`` and Gaussian-feathered.

    Args:
        mask: bool/0-1 (h, w), the lesion.
        dilate_px: dilation (by a disc of this radius) before feathering, so the transition
            lies in the tissue around the lesion rather than on its edge.
        sigma: Gaussian feather width in pixels (0: a hard edge at the dilated mask).

    Returns:
        float32 (h, w) in [0, 1]: exactly 1 on ``mask``, exactly 0 farther than
        `feather_reach` from it (the canvas is treated as zero-padded, not reflected).
    """
    lesion = np.asarray(mask).astype(bool)
    grown = ndimage.binary_dilation(lesion, structure=disk(dilate_px)) if dilate_px > 0 else lesion
    alpha = grown.astype(np.float32)
    if sigma > 0:
        alpha = ndimage.gaussian_filter(alpha, sigma, mode="constant", cval=0.0, truncate=_TRUNCATE)
    # Exactly 1 on the lesion, so its HU are the generated ones and the label is honest.
    return np.clip(np.maximum(alpha, lesion), 0.0, 1.0).astype(np.float32)


def clean_mask(channel: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Threshold a generated mask channel, keep its largest 8-connected component, fill holes.

    Returns:
        bool array, all False when nothing exceeds ``threshold``.
    """
    binary = np.asarray(channel) > threshold
    components, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    if n == 0:
        return np.zeros(binary.shape, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


def _overlap_counts(field: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """For every placement (r, c) of ``footprint`` inside ``field``: how many True pixels it covers."""
    h, w = footprint.shape
    out_shape = (field.shape[0] - h + 1, field.shape[1] - w + 1)
    if not field.any() or not footprint.any():
        return np.zeros(out_shape)
    # Correlation as convolution with the flipped footprint; "valid" = fully inside.
    return fftconvolve(
        field.astype(np.float64), footprint[::-1, ::-1].astype(np.float64), mode="valid"
    )


def find_placement(
    mask_roi: np.ndarray,
    allowed: np.ndarray,
    occupied: np.ndarray | None,
    rng: np.random.Generator,
    *,
    clear: np.ndarray | None = None,
    anchor: np.ndarray | None = None,
) -> tuple[int, int] | None:
    """A uniformly random top-left corner where the ROI can go, or None if there is none.

    Every valid position is enumerated (one FFT correlation per constraint), so this
    never misses a place that exists and needs no retry limit.

    Args:
        mask_roi: bool (h, w), the lesion; every lesion pixel must fall in ``allowed``.
        allowed: bool (H, W), where lesions may lie (e.g. `augment.anatomy.allowed_region`).
        occupied: bool (H, W) or None, pixels that must not be touched (existing lesions).
        rng: the only source of randomness.
        clear: bool (h, w), the footprint that must avoid ``occupied``; defaults to
            ``mask_roi``. Pass the blend's support (``alpha > 0``) so blending never
            alters an existing lesion.
        anchor: bool (H, W) or None: where the lesion's centre must fall (its pixel
            nearest the centroid, so crescents count too), e.g. the ventricles for IVH
            (`augment.anatomy.lesion_regions`).

    Returns:
        ``(row, col)`` of the ROI's top-left pixel in the host, the ROI lying fully
        inside the host, or None.
    """
    lesion = np.asarray(mask_roi).astype(bool)
    allowed = np.asarray(allowed).astype(bool)
    if lesion.ndim != 2 or allowed.ndim != 2:
        raise ValueError("mask_roi and allowed must be 2D")
    if not lesion.any():
        raise ValueError("mask_roi is empty: nothing to place")
    footprint = lesion if clear is None else np.asarray(clear).astype(bool)
    if footprint.shape != lesion.shape:
        raise ValueError(f"clear has shape {footprint.shape}, mask_roi {lesion.shape}")
    if lesion.shape[0] > allowed.shape[0] or lesion.shape[1] > allowed.shape[1]:
        return None
    bad = _overlap_counts(~allowed, lesion)
    if occupied is not None:
        occupied = np.asarray(occupied).astype(bool)
        if occupied.shape != allowed.shape:
            raise ValueError(f"occupied has shape {occupied.shape}, allowed {allowed.shape}")
        bad = bad + _overlap_counts(occupied, footprint)
    # The counts are integers computed by FFT, so "zero" means below one half.
    ok = bad < 0.5
    if anchor is not None:
        anchor = np.asarray(anchor).astype(bool)
        if anchor.shape != allowed.shape:
            raise ValueError(f"anchor has shape {anchor.shape}, allowed {allowed.shape}")
        cy, cx = _centre_pixel(lesion)
        ok &= anchor[cy : cy + ok.shape[0], cx : cx + ok.shape[1]]
    rows, cols = np.nonzero(ok)
    if len(rows) == 0:
        return None
    k = int(rng.integers(len(rows)))
    return int(rows[k]), int(cols[k])


def _centre_pixel(mask: np.ndarray) -> tuple[int, int]:
    """The lesion pixel nearest the lesion's centroid (row, col)."""
    rows, cols = np.nonzero(mask)
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[k]), int(cols[k])


def paste(
    host: Sample,
    roi_hu: np.ndarray,
    roi_mask: np.ndarray,
    cls: int,
    position: tuple[int, int],
    alpha: np.ndarray,
) -> Sample:
    """Blend ``roi_hu`` into ``host`` at ``position`` and add ``roi_mask`` as class ``cls``.

    ``image = host * (1 - alpha) + roi_hu * alpha`` inside the ROI; pixels with
    ``alpha == 0`` keep the host's value exactly. The lesion joins the host's mask and
    the boxes are re-derived from the merged mask; the host's meta is copied.

    Args:
        host: the slice receiving the lesion (HU).
        roi_hu: float (h, w), the generated ROI in HU.
        roi_mask: bool (h, w), the lesion inside the ROI.
        cls: the lesion's class id (1..255).
        position: ``(row, col)`` of the ROI's top-left pixel in the host.
        alpha: float (h, w) in [0, 1], e.g. from `feather_alpha`.

    Raises:
        ValueError: shapes differ, the ROI leaves the host, or the lesion overlaps an
            existing one.
    """
    lesion = np.asarray(roi_mask).astype(bool)
    roi_hu = np.asarray(roi_hu, dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    if not (lesion.shape == roi_hu.shape == alpha.shape):
        raise ValueError(
            f"roi_hu {roi_hu.shape}, roi_mask {lesion.shape} and alpha {alpha.shape} differ"
        )
    if not 1 <= int(cls) <= 255:
        raise ValueError(f"class id must be in 1..255, got {cls}")
    if alpha.min() < 0 or alpha.max() > 1:
        raise ValueError("alpha must lie in [0, 1]")
    r, c = (int(v) for v in position)
    h, w = lesion.shape
    if r < 0 or c < 0 or r + h > host.image.shape[0] or c + w > host.image.shape[1]:
        raise ValueError(f"ROI {h}x{w} at {(r, c)} leaves the {host.image.shape} host")
    window = (slice(r, r + h), slice(c, c + w))
    if host.mask[window][lesion].any():
        raise ValueError(f"lesion at {(r, c)} overlaps an existing lesion of the host")
    image = host.image.copy()
    region = image[window]
    blended = region * (1 - alpha) + roi_hu * alpha
    image[window] = np.where(alpha > 0, blended, region)
    mask = host.mask.copy()
    mask[window][lesion] = int(cls)
    return host.replace(image=image, mask=mask)
