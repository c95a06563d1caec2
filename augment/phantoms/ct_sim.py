"""A CT acquisition, simulated: HU map -> sinogram -> noisy counts -> filtered back-projection.

Model (parallel-beam, monoenergetic):

1. HU to linear attenuation, ``mu = MU_WATER * (1 + HU / 1000)`` (air 0, never negative).
2. Line integrals ``p = radon(mu * pixel_mm)`` over ``n_angles`` views in [0, 180).
3. Transmission counts ``N ~ Poisson(I0 * exp(-p)) + Normal(0, ELECTRONIC_SIGMA)``:
   quantum noise whose variance in the log domain is ``~ exp(p) / I0``, so rays through
   bone and long paths are noisier, which is where the streaks come from; electronic
   noise matters only in photon-starved rays. Counts are floored at 1 before the log.
4. ``p_hat = ln(I0 / N)``, reconstructed with skimage ``iradon`` and a chosen filter
   ('hann' = smooth soft-tissue kernel, 'ramp' = sharp kernel), then back to HU plus
   the protocol's calibration offset.

``I0`` (photons per ray) is the dose knob. Reconstructed noise also depends on the
pixel grid: at a fixed ``I0`` its standard deviation grows about as ``size ** 0.45``
(measured on a water ellipse at 64/128/256 px, 1.5 views per pixel), so `photons`
scales ``I0`` by ``(size / 128) ** 0.9`` to keep a protocol's HU noise roughly the
same at every output size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.transform import iradon, radon

from augment.errors import ConfigError

# Linear attenuation of water at a ~70 keV effective energy, 1/mm (NIST XCOM: 0.193 /cm).
MU_WATER = 0.0193
ELECTRONIC_SIGMA = 2.0  # counts, detector read-out noise
REFERENCE_SIZE = 128
_SIZE_EXPONENT = 0.9
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


@dataclass(frozen=True)
class Protocol:
    """How a scanner/protocol domain acquires and reconstructs a slice.

    Attributes:
        description: one line for humans.
        dose: relative tube current-time product; photons per ray scale with it.
        filter: reconstruction filter of `skimage.transform.iradon`.
        angles_per_pixel: views over 180 degrees per pixel of output size.
        hu_offset: calibration offset added after reconstruction (HU).
        contrast_phase: fraction of the full iodine enhancement present at scan time.
    """

    description: str
    dose: float
    filter: str
    angles_per_pixel: float
    hu_offset: float
    contrast_phase: float

    def as_dict(self) -> dict:
        return asdict(self)


def n_angles(protocol: Protocol, size: int) -> int:
    return max(16, int(round(protocol.angles_per_pixel * size)))


def photons(full_dose_i0: float, protocol: Protocol, size: int) -> float:
    """Photons per ray for a kind's full-dose ``I0`` (at 128 px) under ``protocol``."""
    return full_dose_i0 * protocol.dose * (size / REFERENCE_SIZE) ** _SIZE_EXPONENT


def acquire(
    hu: np.ndarray,
    *,
    pixel_mm: float,
    i0: float,
    protocol: Protocol,
    rng: np.random.Generator,
) -> np.ndarray:
    """Scan a square HU map and reconstruct it; returns float32 HU of the same shape.

    Everything outside the inscribed circle must be air (the scanner's field of view);
    it is forced to -1000 HU in the output as on a real scanner.
    """
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ConfigError(f"acquire: need a square 2D HU map, got shape {hu.shape}")
    if protocol.filter not in FILTERS:
        raise ConfigError(
            f"acquire: unknown filter {protocol.filter!r}; known: {', '.join(FILTERS)}"
        )
    size = hu.shape[0]
    # The field of view exactly as skimage defines its reconstruction circle.
    c = np.arange(size) - size // 2
    outside = (c[:, None] ** 2 + c[None, :] ** 2) > (size // 2) ** 2
    mu = MU_WATER * np.clip(1.0 + hu.astype(np.float64) / 1000.0, 0.0, None) * pixel_mm
    mu[outside] = 0.0
    theta = np.linspace(0.0, 180.0, n_angles(protocol, size), endpoint=False)
    sinogram = radon(mu, theta, circle=True, preserve_range=True)
    counts = rng.poisson(i0 * np.exp(-sinogram)).astype(np.float64)
    counts += rng.normal(0.0, ELECTRONIC_SIGMA, counts.shape)
    measured = np.log(i0 / np.maximum(counts, 1.0))
    recon = iradon(
        measured,
        theta,
        output_size=size,
        filter_name=protocol.filter,
        circle=True,
        preserve_range=True,
    )
    out = (recon / pixel_mm / MU_WATER - 1.0) * 1000.0 + protocol.hu_offset
    out[outside] = -1000.0
    return out.astype(np.float32)
