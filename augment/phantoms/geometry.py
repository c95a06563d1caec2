"""Geometry and seeding shared by the head and abdomen phantoms.

Anatomy is described in millimetres in a patient frame (``x`` = image right, i.e. the
patient's left; ``y`` = image down, i.e. posterior), so the same patient rasterises to
the same shapes at any output size. What one slice of a phantom produces is an
`Anatomy`: the ground-truth HU map split into its unenhanced part and the iodine
enhancement (so a protocol can choose its contrast phase without touching anatomy),
the tissue-label map, the lesion mask, a per-lesion record and named regions of the
anatomy as it was before lesions were painted (where a lesion is allowed to be).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

SLICE_MM = 5.0  # axial slice spacing of every phantom (typical 5 mm reconstructions)
NOMINAL_SLICES = 8  # lesion centres are drawn over this many slices of a patient


def stream(seed: int, *parts: int | str) -> np.random.Generator:
    """An independent generator for ``(seed, *parts)``; strings enter as their CRC32.

    Seeding from a tuple (not by advancing one shared generator) is what makes a slice
    reproducible on its own: slice 5 of patient 3 draws the same numbers whether or
    not slices 0-4 were rendered first.
    """
    words = [int(seed) & 0xFFFFFFFF]
    words += [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass(frozen=True)
class Grid:
    """A square pixel grid covering ``fov_mm`` with ``size`` pixels a side."""

    size: int
    fov_mm: float

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.size

    def coords(self, rotation_deg: float = 0.0, shift_mm: tuple[float, float] = (0.0, 0.0)):
        """Pixel centres in the patient frame: ``(x, y)`` in mm, each (size, size).

        The patient is rotated by ``rotation_deg`` and moved by ``shift_mm`` in the
        scanner, so pixel coordinates are mapped back by the inverse motion.
        """
        c = (np.arange(self.size, dtype=np.float64) + 0.5 - self.size / 2) * self.pixel_mm
        ys, xs = np.meshgrid(c, c, indexing="ij")
        xs = xs - shift_mm[0]
        ys = ys - shift_mm[1]
        a = np.deg2rad(rotation_deg)
        return np.cos(a) * xs + np.sin(a) * ys, -np.sin(a) * xs + np.cos(a) * ys


@dataclass
class Anatomy:
    """One rendered slice before acquisition (all arrays (H, W))."""

    native: np.ndarray  # float32 HU without contrast
    enhancement: np.ndarray  # float32 HU added by iodine at full (phase 1.0) enhancement
    tissue: np.ndarray  # uint8 tissue labels (kind-specific names)
    mask: np.ndarray  # uint8 lesion class ids
    instance: np.ndarray  # int16, 1 + index into ``lesions`` of the lesion painted last, 0 none
    lesions: list[dict[str, Any]] = field(default_factory=list)  # every lesion of the patient
    info: dict[str, Any] = field(default_factory=dict)
    # bool (H, W) maps of the lesion-free anatomy, e.g. "ventricles", "liver"
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    def hu(self, contrast_phase: float) -> np.ndarray:
        return (self.native + np.float32(contrast_phase) * self.enhancement).astype(np.float32)


def ellipse(x, y, cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0):
    """Boolean inside of an ellipse with semi-axes ``ax`` (along x) and ``ay``, rotated."""
    if ax <= 0 or ay <= 0:
        return np.zeros(np.shape(x), dtype=bool)
    return ellipse_rho(x, y, cx, cy, ax, ay, angle_deg) < 1.0


def ellipse_rho(x, y, cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0):
    """Normalised elliptic radius (1 on the boundary) of each point."""
    a = np.deg2rad(angle_deg)
    dx, dy = x - cx, y - cy
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    return np.sqrt((u / max(ax, 1e-6)) ** 2 + (v / max(ay, 1e-6)) ** 2)


def ellipse_radius(theta, ax: float, ay: float):
    """Distance from an ellipse's centre to its boundary in direction ``theta``."""
    return ax * ay / np.sqrt((ay * np.cos(theta)) ** 2 + (ax * np.sin(theta)) ** 2)


def harmonics(theta, amps: np.ndarray, phases: np.ndarray, first: int = 2):
    """``sum_k amps[k] cos((k + first) theta + phases[k])``: a smooth closed wobble."""
    out = np.zeros(np.shape(theta))
    for k, (a, p) in enumerate(zip(amps, phases, strict=True)):
        out = out + a * np.cos((k + first) * theta + p)
    return out


def wrap(angle):
    """Angles to (-pi, pi]."""
    return np.angle(np.exp(1j * np.asarray(angle)))


def cross_section(dz: float, half: float) -> float:
    """Relative radius of an ellipsoid's section ``dz`` from its centre (0 outside)."""
    if half <= 0:
        return 1.0 if dz == 0 else 0.0
    q = 1.0 - (dz / half) ** 2
    return float(np.sqrt(q)) if q > 0 else 0.0


def bump(t: float, centre: float, half_width: float) -> float:
    """``sqrt(1 - ((t - centre) / half_width)^2)`` clipped at 0: a smooth on/off profile."""
    q = 1.0 - ((t - centre) / half_width) ** 2
    return float(np.sqrt(q)) if q > 0 else 0.0


def fold(t: float, lo: float, hi: float) -> float:
    """Reflect ``t`` into [lo, hi] (a triangle wave), so long patients turn back."""
    span = hi - lo
    u = (t - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation (tissue texture)."""
    noise = rng.standard_normal(shape)
    field_ = ndimage.gaussian_filter(noise, max(sigma_px, 0.3), mode="reflect")
    std = field_.std()
    return field_ / std if std > 0 else field_


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def lesion_records(anatomy: Anatomy, hu: np.ndarray, pixel_mm: float) -> list[dict[str, Any]]:
    """Per lesion visible in the slice: its spec plus area, centre and true mean HU."""
    out = []
    for i, spec in enumerate(anatomy.lesions, start=1):
        sel = anatomy.instance == i
        area = int(sel.sum())
        if area == 0:
            continue
        rows, cols = np.nonzero(sel)
        out.append(
            {
                **spec,
                "area_px": area,
                "area_mm2": round(area * pixel_mm**2, 2),
                "centre_rc": [round(float(rows.mean()), 2), round(float(cols.mean()), 2)],
                "hu_true": round(float(hu[sel].mean()), 2),
            }
        )
    return out
