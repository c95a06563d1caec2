"""Classical augmenters: albumentations geometry plus HU-exact intensity ops.

An augmenter is ``Callable[[Sample, np.random.Generator], Sample]``. Each op follows
TorchIO's pattern: ``sample_params`` draws every random number once from the injected
generator, and the classmethod ``apply`` is its deterministic twin, a pure function of
``(sample, params)``. The image, mask and boxes move together; what was drawn is
appended to ``sample.meta["augment"]`` as ``{"name", "params"}`` so that `replay` can
redo it exactly.

Geometry goes through albumentations (masks with nearest-neighbour interpolation, so a
mask only ever holds the classes it held, plus 0 where the image was filled). Intensity
ops are ours because albumentations' pixel ops assume [0, 1] or uint8 images and clip:
here HU floats stay float32 and are never clipped unless the ``clip`` op asks for it.
When the mask has lesions, boxes are re-derived from the transformed mask; boxes of a
slice without a mask (box-only labels) are moved by albumentations.

Pipelines are built from specs (`build_augmenter`): a name from `PIPELINES` or the
shipped ``augment/classical/pipelines.yaml`` (`DEFAULT_CONFIG`), a YAML file, or a dict/list of
``{"op": name, "p": ..., ...}`` with ``one_of``/``compose`` groups, as in albumentations.

This module holds the groups and builders; the `Op` base and its registry are
`augment.classical.ops`, the ops themselves `augment.classical.geometry` and
`augment.classical.intensity` (imported here, so every op is registered).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from augment.classical import geometry, intensity  # noqa: F401  (the built-in ops register on import)
from augment.classical.ops import (
    GROUP_NAMES,
    OPS,
    Augmenter,
    Transform,
    check_probability,
    record_augmentation,
)
from augment.errors import ConfigError
from augment.sample import Sample

# Package data (pyproject.toml), so every named pipeline works from an installed wheel too;
# `lesionforge configs show pipelines` prints it for a user to copy and edit.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "pipelines.yaml"


class Compose(Transform):
    """Apply ``ops`` in order; the whole group runs with probability ``p``.

    Attributes:
        name: the pipeline's name (``"standard"``, a file name...), for records.
        spec: the spec it was built from, to save beside outputs.
    """

    def __init__(
        self,
        ops: Sequence[Augmenter],
        *,
        p: float = 1.0,
        name: str = "",
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.ops = list(ops)
        self.p = check_probability("compose", p)
        self.name = name
        self.spec = spec if spec is not None else {}

    def force(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for op in self.ops:
            sample = op(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose(name={self.name!r}, p={self.p}, ops={self.ops!r})"


class OneOf(Transform):
    """Apply exactly one of ``ops``, picked with weights proportional to each op's ``p``."""

    def __init__(self, ops: Sequence[Transform], *, p: float = 1.0) -> None:
        self.ops = list(ops)
        self.p = check_probability("one_of", p)
        weights = np.array([op.p for op in self.ops], dtype=np.float64)
        if not self.ops or weights.sum() <= 0:
            raise ConfigError("op 'one_of': needs at least one op with p > 0")
        self.weights = weights / weights.sum()

    def force(self, sample: Sample, rng: np.random.Generator) -> Sample:
        i = int(rng.choice(len(self.ops), p=self.weights))
        return self.ops[i].force(sample, rng)

    def __repr__(self) -> str:
        return f"OneOf(p={self.p}, ops={self.ops!r})"


_GROUPS: dict[str, type[Compose] | type[OneOf]] = {"compose": Compose, "one_of": OneOf}
assert set(_GROUPS) == set(GROUP_NAMES)


def replay(sample: Sample, history: Sequence[dict[str, Any]]) -> Sample:
    """Redo recorded ops exactly, e.g. ``replay(x, augmented.meta["augment"][n_before:])``.

    Each entry is ``{"name": op, "params": ...}`` as an op appends it to
    ``meta["augment"]``; the same entries are appended to the result.
    """
    for entry in history:
        cls = OPS.get(entry.get("name", ""))
        if cls is None:
            raise ConfigError(f"cannot replay unknown augmentation op {entry.get('name')!r}")
        sample = record_augmentation(cls.apply(sample, entry["params"]), cls.name, entry["params"])
    return sample


# ------------------------------------------------------------------------ building


def build_op(spec: dict[str, Any]) -> Transform:
    """One op or group from ``{"op": name, "p": ..., **options}``.

    Groups are ``{"op": "one_of" | "compose", "p": ..., "ops": [...]}``. An unknown op
    or option, or a bad value, raises `ConfigError` naming it.
    """
    if not isinstance(spec, dict) or "op" not in spec:
        raise ConfigError(f"an augmentation op must be a mapping with an 'op' key, got {spec!r}")
    options = dict(spec)
    name = options.pop("op")
    if name in _GROUPS:
        ops = options.pop("ops", None)
        p = options.pop("p", 1.0)
        if options:
            raise ConfigError(f"op {name!r}: unknown option(s) {', '.join(map(str, options))}")
        if not isinstance(ops, list):
            raise ConfigError(f"op {name!r}: 'ops' must be a list of ops")
        return _GROUPS[name]([build_op(o) for o in ops], p=p)
    cls = OPS.get(name)
    if cls is None:
        known = ", ".join(sorted([*OPS, *_GROUPS]))
        raise ConfigError(f"unknown augmentation op {name!r}; known: {known}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(
            f"op {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    return cls(**options)


def load_pipelines(path: str | os.PathLike) -> dict[str, Any]:
    """The ``pipelines:`` mapping (name -> spec) of a YAML file such as `DEFAULT_CONFIG`."""
    data = _load_yaml(Path(path))
    pipelines = data.get("pipelines") if isinstance(data, dict) else None
    if not isinstance(pipelines, dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of name -> spec")
    return pipelines


def build_augmenter(
    spec: dict[str, Any] | list[Any] | str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
) -> Compose:
    """An augmenter from a pipeline spec.

    Args:
        spec: one of
            - a pipeline name: built-in (`PIPELINES`: none, light, standard, heavy) or
              from ``config`` (default `DEFAULT_CONFIG`, ``augment/classical/pipelines.yaml``);
            - a YAML file path holding one pipeline (a mapping with ``ops`` or a list
              of ops), or ``FILE.yaml:NAME`` for one of its ``pipelines:``;
            - a dict ``{"name": ..., "p": ..., "ops": [{"op": "rotate", ...}, ...]}``,
              a list of op dicts, or a single op dict.
        config: the YAML file of named pipelines to look names up in.

    Returns:
        A `Compose` whose ``spec`` is the resolved spec (to save beside outputs).

    Raises:
        ConfigError: unknown pipeline, op or option, or a bad value (naming the file).
    """
    name, where = "", ""
    if isinstance(spec, (str, os.PathLike)):
        config_path = Path(config) if config is not None else DEFAULT_CONFIG
        name, spec, where = _resolve(spec, config_path)
    try:
        return _build_pipeline(spec, default_name=name)
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def _build_pipeline(spec: Any, *, default_name: str) -> Compose:
    if isinstance(spec, list):
        spec = {"ops": spec}
    elif isinstance(spec, dict) and "op" in spec:
        spec = {"ops": [spec]}
    if not isinstance(spec, dict):
        raise ConfigError(f"a pipeline must be a mapping with 'ops' or a list of ops, got {spec!r}")
    unknown = sorted(set(spec) - {"name", "description", "p", "ops"})
    if unknown:
        raise ConfigError(
            f"pipeline: unknown key(s) {', '.join(unknown)}; known: name, description, p, ops"
        )
    ops = spec.get("ops") or []
    if not isinstance(ops, list):
        raise ConfigError("pipeline: 'ops' must be a list of ops")
    name = str(spec.get("name") or default_name)
    resolved = copy.deepcopy({"name": name, "p": spec.get("p", 1.0), "ops": ops})
    return Compose([build_op(o) for o in ops], p=spec.get("p", 1.0), name=name, spec=resolved)


def _resolve(text: str | os.PathLike, config: Path) -> tuple[str, Any, str]:
    """``(name, spec, where)`` for a pipeline name or YAML path; ``where`` prefixes errors."""
    text = os.fspath(text)
    if text in PIPELINES:
        return text, PIPELINES[text], f"pipeline {text!r}"
    path, _, entry = text.rpartition(":")
    if not path.endswith((".yaml", ".yml")):
        path, entry = text, ""
    if path.endswith((".yaml", ".yml")) or Path(path).is_file():
        data = _load_yaml(Path(path))
        if isinstance(data, dict) and "pipelines" in data:
            pipelines = load_pipelines(path)
            if not entry and len(pipelines) == 1:
                entry = next(iter(pipelines))
            if entry not in pipelines:
                raise ConfigError(
                    f"{path}: choose a pipeline as {path}:NAME; it has {', '.join(pipelines)}"
                )
            return entry, pipelines[entry], f"{path}: pipeline {entry!r}"
        return Path(path).stem, data, path
    if config.is_file():
        pipelines = load_pipelines(config)
        if text in pipelines:
            return text, pipelines[text], f"{config}: pipeline {text!r}"
    known = sorted({*PIPELINES, *(load_pipelines(config) if config.is_file() else {})})
    raise ConfigError(
        f"unknown augmentation pipeline {text!r}; known: {', '.join(known)} (or a YAML file)"
    )


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where} ({problem})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


# Built-in pipelines; augment/classical/pipelines.yaml repeats them (a test keeps the two equal) so
# users can copy one and edit it. Probabilities follow common 2D CT practice: mild
# geometry often, intensity changes sometimes.
PIPELINES: dict[str, dict[str, Any]] = {
    "none": {"name": "none", "ops": []},
    "light": {
        "name": "light",
        "ops": [
            {"op": "flip", "p": 0.5, "axes": ["horizontal"]},
            {"op": "rotate", "p": 0.5, "degrees_range": [-10, 10]},
            {
                "op": "contrast_brightness",
                "p": 0.3,
                "contrast_range": [0.95, 1.05],
                "brightness_range": [-5, 5],
            },
        ],
    },
    "standard": {
        "name": "standard",
        "ops": [
            {"op": "flip", "p": 0.5, "axes": ["horizontal"]},
            {"op": "rotate", "p": 0.5, "degrees_range": [-15, 15]},
            {"op": "scale", "p": 0.3, "scale_range": [0.9, 1.1]},
            {"op": "translate", "p": 0.3, "translate_range": [-0.05, 0.05]},
            {
                "op": "contrast_brightness",
                "p": 0.3,
                "contrast_range": [0.9, 1.1],
                "brightness_range": [-10, 10],
            },
            {"op": "gaussian_noise", "p": 0.3, "sigma_range": [0, 10]},
        ],
    },
    "heavy": {
        "name": "heavy",
        "ops": [
            {"op": "flip", "p": 0.5, "axes": ["horizontal", "vertical"]},
            {"op": "rotate", "p": 0.7, "degrees_range": [-30, 30]},
            {"op": "scale", "p": 0.5, "scale_range": [0.8, 1.2]},
            {"op": "translate", "p": 0.5, "translate_range": [-0.1, 0.1]},
            {"op": "elastic", "p": 0.3, "alpha_range": [20, 40], "sigma_range": [5, 7]},
            {"op": "random_crop", "p": 0.3, "scale_range": [0.75, 1.0], "restore": "pad"},
            {
                "op": "contrast_brightness",
                "p": 0.5,
                "contrast_range": [0.85, 1.15],
                "brightness_range": [-15, 15],
            },
            {"op": "pca_jitter", "p": 0.3, "alpha_std": 0.05, "scale_std": 0.05},
            {
                "op": "one_of",
                "p": 0.3,
                "ops": [
                    {"op": "gaussian_noise", "p": 1.0, "sigma_range": [0, 20]},
                    {"op": "salt_pepper", "p": 1.0, "amount_range": [0, 0.005]},
                ],
            },
        ],
    },
}
