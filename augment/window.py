"""HU windows: a view for display, or an explicit, recorded model-input transform.

Storage is always HU. A `Window` maps HU to [0, 1] for display and to [-1, 1] for
models whose output goes through ``tanh``; `Window.to_hu` inverts the model mapping
(values outside the window were clipped and come back at the window's edges).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from augment.errors import ConfigError


def _finite(value: Any) -> bool:
    """A real, finite number (not a bool, string or None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value))


@dataclass(frozen=True)
class Window:
    """A CT window, ``center``/``width`` in HU (radiology convention, e.g. brain 40/80)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not _finite(self.center):
            raise ConfigError(f"window center must be a finite number of HU, got {self.center!r}")
        if not (_finite(self.width) and self.width > 0):
            raise ConfigError(f"window width must be a finite number of HU > 0, got {self.width!r}")

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2

    def to_unit(self, hu):
        """HU -> [0, 1], clipped (display, or model input in [0, 1])."""
        return ((hu - self.low) / self.width).clip(0, 1)

    def to_model(self, hu):
        """HU -> [-1, 1], clipped: the range of a ``tanh`` generator output."""
        return self.to_unit(hu) * 2 - 1

    def to_hu(self, x):
        """[-1, 1] -> HU, the inverse of `to_model` inside the window."""
        return (x + 1) / 2 * self.width + self.low

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def as_pair(self) -> tuple[float, float]:
        """``(center, width)``: how model configs and checkpoints store a window."""
        return (float(self.center), float(self.width))


# Display windows named as radiologists name them (center, width in HU).
WINDOWS: dict[str, Window] = {
    "brain": Window(40, 80),
    "blood": Window(50, 100),
    "subdural": Window(75, 215),
    "stroke": Window(40, 40),
    "bone": Window(600, 2800),
    "liver": Window(60, 150),
    "abdomen": Window(40, 400),
    # Model-input windows: wide enough to keep every soft tissue and lesion HU.
    "head-model": Window(40, 200),
    "liver-model": Window(60, 400),
}

# The display window for each phantom/data kind.
DISPLAY_WINDOW = {"head-ich": "brain", "liver": "liver"}
MODEL_WINDOW = {"head-ich": "head-model", "liver": "liver-model"}


def get_window(spec: str | dict[str, Any] | Window | tuple[float, float]) -> Window:
    """A `Window` from a name (``"brain"``), ``{"center":..,"width":..}`` or ``(c, w)``."""
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        if spec not in WINDOWS:
            raise ConfigError(f"unknown window {spec!r}; known: {', '.join(sorted(WINDOWS))}")
        return WINDOWS[spec]
    if isinstance(spec, dict):
        try:
            return Window(float(spec["center"]), float(spec["width"]))
        except KeyError:
            raise ConfigError(f"window needs 'center' and 'width', got {spec}") from None
    c, w = spec
    return Window(float(c), float(w))


def display(image_hu: np.ndarray, window: str | Window = "brain") -> np.ndarray:
    """HU -> float32 [0, 1] for viewing."""
    return np.asarray(get_window(window).to_unit(np.asarray(image_hu, np.float32)), np.float32)
