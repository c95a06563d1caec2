"""The unit of classical augmentation: an `Op` (TorchIO's pattern: ``sample_params`` draws
every random number once, ``apply`` is its deterministic twin), the `Transform` base that
groups share, and the registry the built-in ops join with ``@register_op("name")``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from augment.errors import ConfigError
from augment.sample import Sample

Augmenter = Callable[[Sample, np.random.Generator], Sample]

OPS: dict[str, type[Op]] = {}
# Names of the groups (`augment.classical.pipeline`): an op may not take one.
GROUP_NAMES = ("compose", "one_of")
AIR_HU = -1000.0
_SEED_MAX = 2**31 - 1


def register_op(name: str):
    """Class decorator: add an `Op` subclass to `OPS` under ``name``."""

    def wrap(cls: type[Op]) -> type[Op]:
        if name in OPS or name in GROUP_NAMES:
            raise ValueError(f"augmentation op {name!r} registered twice")
        cls.name = name
        OPS[name] = cls
        return cls

    return wrap


def happens(p: float, rng: np.random.Generator) -> bool:
    # Draw only for 0 < p < 1, so p = 1 pipelines do not spend random numbers on gates.
    if p >= 1:
        return True
    if p <= 0:
        return False
    return bool(rng.random() < p)


def record_augmentation(sample: Sample, name: str, params: dict[str, Any]) -> Sample:
    history = [*sample.meta.get("augment", []), {"name": name, "params": params}]
    return dataclasses.replace(sample, meta={**sample.meta, "augment": history})


def check_probability(name: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"op {name!r}: p must be a number in [0, 1], got {p!r}")
    return float(p)


def draw_seed(rng: np.random.Generator) -> int:
    """A seed for a sub-generator, drawn from ``rng`` (recorded so the op can be replayed)."""
    return int(rng.integers(0, _SEED_MAX))


class Transform(ABC):
    """Base of ops and groups: ``__call__`` applies `force` with probability ``p``."""

    p: float = 1.0

    @abstractmethod
    def force(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Apply unconditionally (what `OneOf` does with the op it picked)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return self.force(sample, rng) if happens(self.p, rng) else sample


@dataclass(frozen=True)
class Op(Transform):
    """One registered augmentation; its dataclass fields are its YAML options.

    A subclass writes ``sample_params`` (every random draw) and the classmethod
    ``apply`` (deterministic, reading only ``params``); this base owns ``p``, option
    checking and the ``meta["augment"]`` history.
    """

    name: ClassVar[str] = ""
    p: float = 1.0

    def __post_init__(self) -> None:
        self._set("p", check_probability(self.name, self.p))

    @abstractmethod
    def sample_params(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        """Every random draw of the op, JSON-ready; ``apply`` needs nothing else."""

    @classmethod
    @abstractmethod
    def apply(cls, sample: Sample, params: dict[str, Any]) -> Sample:
        """The deterministic twin: the op with ``params`` fixed."""

    def force(self, sample: Sample, rng: np.random.Generator) -> Sample:
        params = self.sample_params(sample, rng)
        return record_augmentation(self.apply(sample, params), self.name, params)

    # Option helpers: normalise YAML values in place, or raise ConfigError naming the op.
    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _range(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> None:
        value = getattr(self, key)
        try:
            a, b = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"op {self.name!r}: {key} must be two numbers [low, high], got {value!r}"
            ) from None
        if not lo <= a <= b <= hi:
            raise ConfigError(
                f"op {self.name!r}: {key} must satisfy {lo} <= low <= high <= {hi}, got {value!r}"
            )
        self._set(key, (a, b))

    def _number(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ConfigError(
                f"op {self.name!r}: {key} must be a number in [{lo}, {hi}], got {value!r}"
            )
        self._set(key, float(value))

    def _choice(self, key: str, choices: Sequence[str]) -> None:
        if getattr(self, key) not in choices:
            raise ConfigError(
                f"op {self.name!r}: {key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}"
            )


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw from ``[low, high)`` as a plain float (JSON-ready for the history)."""
    return float(rng.uniform(bounds[0], bounds[1]))


# --------------------------------------------------------------------------- groups
