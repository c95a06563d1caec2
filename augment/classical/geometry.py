"""Geometric augmentation ops, run through albumentations on image, mask and boxes at once.

Each op draws its parameters (`sample_params`) and hands them to albumentations
transforms built with those values fixed, so the result is a deterministic function of
``(sample, params)``. Masks use nearest-neighbour interpolation and fill 0; the image
fills with ``fill_hu`` (air by default) and is never clipped. Registered on import of
`augment.classical.pipeline`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

# albumentations otherwise asks PyPI for a newer version when imported: a network call
# that stalls offline machines for seconds. Must be set before the import below.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402  (albumentations' own dependency: interpolation/border constants)

from augment.classical.ops import AIR_HU, Op, draw_seed, register_op, uniform  # noqa: E402
from augment.errors import ConfigError, DataError  # noqa: E402
from augment.sample import Sample

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}


def _albumentations(sample: Sample, transforms: list[Any], *, seed: int = 0) -> Sample:
    """Run albumentations transforms on image, mask and boxes at once.

    ``seed`` matters only for transforms that draw inside albumentations (elastic);
    the others are built with their parameters fixed, so they are deterministic.
    """
    pipeline = A.Compose(
        transforms,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
        seed=seed,
        strict=True,
    )
    out = pipeline(image=sample.image, mask=sample.mask, bboxes=sample.boxes, labels=sample.labels)
    image = np.ascontiguousarray(out["image"], dtype=np.float32).reshape(out["mask"].shape[:2])
    mask = np.ascontiguousarray(out["mask"], dtype=np.uint8).reshape(image.shape)
    if sample.has_lesion:  # the mask is the label: its boxes follow from it exactly
        return sample.replace(image=image, mask=mask)
    boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    return sample.replace(image=image, mask=mask, boxes=boxes, labels=labels)


def _affine(sample: Sample, params: dict[str, Any], **affine: Any) -> Sample:
    transform = A.Affine(
        **affine,
        interpolation=_INTERPOLATION[params["interpolation"]],
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=float(params["fill_hu"]),
        fill_mask=0,
        p=1.0,
    )
    return _albumentations(sample, [transform])


@dataclass(frozen=True)
class _GeometricOp(Op):
    fill_hu: float = AIR_HU
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._number("fill_hu")
        self._choice("interpolation", tuple(_INTERPOLATION))

    def _fill(self) -> dict[str, Any]:
        return {"fill_hu": self.fill_hu, "interpolation": self.interpolation}


# ------------------------------------------------------------------------- geometry


@register_op("flip")
@dataclass(frozen=True)
class Flip(Op):
    """Mirror along the listed axes; with two, a random non-empty subset of them."""

    axes: tuple[str, ...] = ("horizontal",)

    def __post_init__(self) -> None:
        super().__post_init__()
        axes = self.axes
        if isinstance(axes, str) or not axes or not set(axes) <= {"horizontal", "vertical"}:
            raise ConfigError(
                f"op 'flip': axes must be a non-empty list of horizontal/vertical, got {axes!r}"
            )
        self._set("axes", tuple(dict.fromkeys(axes)))

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        # Bits 1..2**n-1 of one draw: every non-empty subset equally likely.
        bits = int(rng.integers(1, 2 ** len(self.axes))) if len(self.axes) > 1 else 1
        chosen = {axis for i, axis in enumerate(self.axes) if bits >> i & 1}
        return {"horizontal": "horizontal" in chosen, "vertical": "vertical" in chosen}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        transforms = []
        if params["horizontal"]:
            transforms.append(A.HorizontalFlip(p=1.0))
        if params["vertical"]:
            transforms.append(A.VerticalFlip(p=1.0))
        return _albumentations(sample, transforms)


@register_op("rotate")
@dataclass(frozen=True)
class Rotate(_GeometricOp):
    """Rotate about the image centre by an angle (degrees) drawn from ``degrees_range``."""

    degrees_range: tuple[float, float] = (-15.0, 15.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("degrees_range", -360, 360)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        return {"angle": uniform(rng, self.degrees_range), **self._fill()}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        angle = float(params["angle"])
        return _affine(sample, params, rotate=(angle, angle))


@register_op("scale")
@dataclass(frozen=True)
class Scale(_GeometricOp):
    """Zoom about the image centre by one isotropic factor drawn from ``scale_range``."""

    scale_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("scale_range", 1e-3, 100)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        return {"scale": uniform(rng, self.scale_range), **self._fill()}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        s = float(params["scale"])
        return _affine(sample, params, scale=(s, s))


@register_op("translate")
@dataclass(frozen=True)
class Translate(_GeometricOp):
    """Shift by whole pixels, each axis by a fraction of its size from ``translate_range``.

    Whole pixels keep every HU value exact; a sub-pixel shift would only blur.
    """

    translate_range: tuple[float, float] = (-0.1, 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("translate_range", -1, 1)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        h, w = sample.image.shape
        dx = round(uniform(rng, self.translate_range) * w)
        dy = round(uniform(rng, self.translate_range) * h)
        return {"dx": int(dx), "dy": int(dy), **self._fill()}

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        dx, dy = int(params["dx"]), int(params["dy"])
        return _affine(sample, params, translate_px={"x": (dx, dx), "y": (dy, dy)})


@register_op("random_crop")
@dataclass(frozen=True)
class RandomCrop(_GeometricOp):
    """Crop a random window, then pad it back (centred), resize it back, or keep it.

    The window is ``size`` = [height, width] pixels, or each side times a factor from
    ``scale_range``. ``restore``: ``pad`` (fill with ``fill_hu``/0 back to the input
    size), ``resize`` (zoom back to the input size), ``none`` (output the crop).
    """

    size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.8, 1.0)
    restore: str = "pad"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("scale_range", 1e-3, 1)
        self._choice("restore", ("pad", "resize", "none"))
        if self.size is not None:
            size = self.size
            if (
                isinstance(size, (str, bytes))
                or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            ):
                raise ConfigError(
                    f"op 'random_crop': size must be [height, width] > 0, got {size!r}"
                )
            self._set("size", tuple(size))

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        h, w = sample.image.shape
        if self.size is not None:
            ch, cw = self.size
            if ch > h or cw > w:
                raise DataError(
                    f"{sample.id or 'sample'}: crop size {ch}x{cw} exceeds the {h}x{w} slice"
                )
        else:
            ch = max(1, round(h * uniform(rng, self.scale_range)))
            cw = max(1, round(w * uniform(rng, self.scale_range)))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        return {
            "y0": y0,
            "x0": x0,
            "height": int(ch),
            "width": int(cw),
            "restore": self.restore,
            "out_height": h,
            "out_width": w,
            **self._fill(),
        }

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        y0, x0 = int(params["y0"]), int(params["x0"])
        transforms: list[Any] = [
            A.Crop(x_min=x0, y_min=y0, x_max=x0 + params["width"], y_max=y0 + params["height"])
        ]
        h, w = int(params["out_height"]), int(params["out_width"])
        if params["restore"] == "pad":
            transforms.append(
                A.PadIfNeeded(
                    min_height=h,
                    min_width=w,
                    position="center",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=float(params["fill_hu"]),
                    fill_mask=0,
                )
            )
        elif params["restore"] == "resize":
            transforms.append(
                A.Resize(
                    h,
                    w,
                    interpolation=_INTERPOLATION[params["interpolation"]],
                    mask_interpolation=cv2.INTER_NEAREST,
                )
            )
        return _albumentations(sample, transforms)


@register_op("elastic")
@dataclass(frozen=True)
class Elastic(_GeometricOp):
    """Elastic deformation (Simard et al. 2003) via albumentations' ElasticTransform.

    ``alpha`` (displacement scale, pixels) and ``sigma`` (smoothness of the field,
    pixels) are drawn from their ranges; the random field itself comes from a seed
    drawn here and recorded, which is what makes the deformation replayable.
    """

    alpha_range: tuple[float, float] = (20.0, 40.0)
    sigma_range: tuple[float, float] = (5.0, 7.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._range("alpha_range", 0)
        self._range("sigma_range", 1e-3)

    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "alpha": uniform(rng, self.alpha_range),
            "sigma": uniform(rng, self.sigma_range),
            "seed": draw_seed(rng),
            **self._fill(),
        }

    @classmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        transform = A.ElasticTransform(
            alpha=float(params["alpha"]),
            sigma=float(params["sigma"]),
            interpolation=_INTERPOLATION[params["interpolation"]],
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=float(params["fill_hu"]),
            fill_mask=0,
            p=1.0,
        )
        return _albumentations(sample, [transform], seed=int(params["seed"]))
