"""Intensity augmentation ops in Hounsfield units, exact and unclipped.

albumentations' pixel transforms assume uint8 or [0, 1] images and clip to that range;
CT slices are float HU from about -1000 (air) to several thousand (bone, metal), so
these ops are written here: float32 in, float32 out, no clipping unless the ``clip``
op is asked for. None of them touches the mask or boxes. Registered on import of
`augment.classical.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from augment.classical.ops import Op, draw_seed, register_op, uniform
from augment.errors import ConfigError
from augment.sample import Sample
from augment.window import get_window


def _with_image(sample: Sample, image: np.ndarray) -> Sample:
    return sample.replace(image=np.asarray(image, dtype=np.float32))


@register_op("contrast_brightness")
@dataclass(frozen=True)
class ContrastBrightness(Op):
    """``(x - center_hu) * contrast + center_hu + brightness``, both factors drawn.

    Scaling about a soft-tissue centre (40 HU by default) changes contrast where it
    matters without moving that tissue; ``brightness`` is an offset in HU.
    """

    contrast_range: tuple[float, float] = (0.9, 1.1)
    brightness_range: tuple[float, float] = (-10.0, 10.0)
    center_hu: float = 40.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("contrast_range", 0)
        self._range("brightness_range")
        self._number("center_hu")

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "contrast": uniform(rng, self.contrast_range),
            "brightness": uniform(rng, self.brightness_range),
            "center_hu": self.center_hu,
        }

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        c = np.float32(params["center_hu"])
        image = (sample.image - c) * np.float32(params["contrast"]) + c
        return _with_image(sample, image + np.float32(params["brightness"]))


@register_op("gaussian_noise")
@dataclass(frozen=True)
class GaussianNoise(Op):
    """Add zero-mean Gaussian noise whose standard deviation (HU) is drawn from ``sigma_range``."""

    sigma_range: tuple[float, float] = (0.0, 10.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("sigma_range", 0)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": uniform(rng, self.sigma_range), "seed": draw_seed(rng)}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        noise = np.random.default_rng(int(params["seed"])).standard_normal(
            sample.image.shape, dtype=np.float32
        )
        return _with_image(sample, sample.image + noise * np.float32(params["sigma"]))


@register_op("salt_pepper")
@dataclass(frozen=True)
class SaltPepper(Op):
    """Set a drawn fraction of pixels to a low ("pepper") or high ("salt") HU value.

    ``amount_range``: fraction of pixels hit; ``salt_ratio``: share of them set high.
    ``low_hu``/``high_hu`` default to the slice's own minimum/maximum, so the HU range
    of the slice never grows.
    """

    amount_range: tuple[float, float] = (0.0, 0.01)
    salt_ratio: float = 0.5
    low_hu: float | None = None
    high_hu: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("amount_range", 0, 1)
        self._number("salt_ratio", 0, 1)
        for key in ("low_hu", "high_hu"):
            if getattr(self, key) is not None:
                self._number(key)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        image = sample.image
        return {
            "amount": uniform(rng, self.amount_range),
            "salt_ratio": self.salt_ratio,
            "low_hu": float(image.min()) if self.low_hu is None else self.low_hu,
            "high_hu": float(image.max()) if self.high_hu is None else self.high_hu,
            "seed": draw_seed(rng),
        }

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        u = np.random.default_rng(int(params["seed"])).random(sample.image.shape)
        amount = float(params["amount"])
        pepper_cut = amount * (1.0 - float(params["salt_ratio"]))
        image = sample.image.copy()
        image[u < pepper_cut] = params["low_hu"]
        image[(u >= pepper_cut) & (u < amount)] = params["high_hu"]
        return _with_image(sample, image)


@register_op("pca_jitter")
@dataclass(frozen=True)
class PCAJitter(Op):
    """AlexNet "fancy PCA" colour jitter, reduced to one-channel CT.

    Krizhevsky et al. (2012) add ``sum_i alpha_i * lambda_i * p_i`` to every RGB pixel,
    with ``(lambda_i, p_i)`` the eigenpairs of the pixel covariance and
    ``alpha_i ~ N(0, 0.1)``. With a single channel the covariance is the scalar
    variance ``lambda``, its only principal component is the intensity axis itself,
    and the jitter reduces to a random global brightness/contrast perturbation along
    that axis: the deviation from the mean is scaled by ``1 + scale`` (as albumentations'
    FancyPCA does for grayscale) and the whole slice is shifted by ``alpha * sqrt(lambda)``
    (AlexNet's shift, using the standard deviation so that it is in HU)::

        x' = mean + (1 + scale) * (x - mean) + alpha * std

    ``alpha ~ N(0, alpha_std)``, ``scale ~ N(0, scale_std)``. Mean and std are taken
    over pixels of at least ``min_hu`` (default -500: the body, not the air around it,
    which would otherwise dominate the variance); all pixels when too few qualify.
    """

    alpha_std: float = 0.1
    scale_std: float = 0.1
    min_hu: float | None = -500.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._number("alpha_std", 0, 10)
        # Beyond ~0.3 a draw below -1 (an inverted image) stops being vanishingly rare.
        self._number("scale_std", 0, 0.3)
        if self.min_hu is not None:
            self._number("min_hu")

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        values = sample.image
        if self.min_hu is not None and np.count_nonzero(values >= self.min_hu) >= 2:
            values = values[values >= self.min_hu]
        return {
            "mean": float(values.mean(dtype=np.float64)),
            "std": float(values.std(dtype=np.float64)),
            "alpha": float(rng.normal(0.0, self.alpha_std)),
            "scale": float(rng.normal(0.0, self.scale_std)),
        }

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        mean = np.float32(params["mean"])
        shift = np.float32(params["alpha"] * params["std"])
        image = mean + (sample.image - mean) * np.float32(1.0 + params["scale"]) + shift
        return _with_image(sample, image)


@register_op("clip")
@dataclass(frozen=True)
class Clip(Op):
    """Clip HU to a named window (``window: brain``) or ``hu_range: [low, high]``.

    The only op that clips: other ops keep every HU value, so windowing happens only
    where a pipeline asks for it, and it is recorded like any other op.
    """

    window: str | None = None
    hu_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.window is None) == (self.hu_range is None):
            raise ConfigError("op 'clip': give exactly one of window or hu_range")
        if self.window is not None:
            try:
                w = get_window(self.window)
            except (TypeError, ValueError):
                raise ConfigError(f"op 'clip': window {self.window!r} is not a window") from None
            self._set("hu_range", (w.low, w.high))
        else:
            self._range("hu_range")

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        assert self.hu_range is not None  # set in __post_init__
        return {"low": self.hu_range[0], "high": self.hu_range[1]}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        return _with_image(sample, np.clip(sample.image, params["low"], params["high"]))
