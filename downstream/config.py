"""Experiment configs for `lesionforge compare`: YAML in, frozen dataclasses out.

Each component receives only its own section. Unknown keys are errors (a typo in a
study config must not silently run the defaults).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from augment.errors import ConfigError

TASKS = ("segment", "detect")


@dataclass(frozen=True)
class DataSpec:
    """Where the labelled data comes from: an embedded phantom or a dataset folder."""

    phantom: str | None = None  # "head-ich" | "liver"
    folder: str | None = None  # a dataset folder (`lesionforge data import` output)
    anatomy: str | None = None  # head-ich | liver, for a folder imported without --anatomy
    n: int = 192  # phantom slices
    size: int = 64
    domain: str = "A"
    slices_per_patient: int = 8
    seed: int = 0  # the phantom's anatomy seed (not the experiment seed)
    # Domain shift: the same phantom rendered in another domain (unlabelled for training,
    # labelled for testing), or a second folder.
    target_domain: str | None = None
    target_folder: str | None = None
    test_on: str = "source"  # "source" | "target" | "both"


@dataclass(frozen=True)
class SplitSpec:
    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    seed: int = 0


@dataclass(frozen=True)
class SegmentSpec:
    arch: str = "unet"  # "unet" | "attention-unet"
    base: int = 16
    depth: int = 3
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3  # Adam, as in the seed paper
    window: str = "head-model"


@dataclass(frozen=True)
class DetectSpec:
    backbone: str = "mobilenet_v3_large"
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    cost_sensitive: bool = True
    alpha: float = 2.0
    max_ratio: float = 3.0
    theta: float = 0.5  # image-level "bleed present" threshold on the best box score
    kmeans_anchors: bool = True
    representation_size: int = 1024  # box head width (torchvision's default)
    box_batch_size_per_image: int = 64  # RoIs per slice for the box head (downstream.detect)
    window: str = "head-model"


@dataclass(frozen=True)
class GeneratorSpec:
    """How one generator is trained inside the harness (on the labelled subset only)."""

    steps: int = 300
    batch_size: int = 16
    n_synthetic: int = 200
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """One augmentation strategy: what is added to the labelled real slices."""

    name: str
    augment: str | None = None  # classical pipeline name (augment.classical)
    generators: tuple[str, ...] = ()  # synthetic data from these generators
    ratio: float = 0.5  # fraction of synthetic slices in each batch
    synthetic_only: bool = False  # train on synthetic slices alone


@dataclass(frozen=True)
class Experiment:
    name: str
    data: DataSpec
    split: SplitSpec
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    tasks: dict[str, Any]  # "segment" -> SegmentSpec, "detect" -> DetectSpec
    generators: dict[str, GeneratorSpec]
    strategies: tuple[Strategy, ...]
    quality: dict[str, Any] = field(default_factory=dict)  # fid_weights, n
    out: str = "out/compare"
    source: str = ""  # the YAML file it came from

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def _build(cls: type, values: Any, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    clean = {}
    for k, v in values.items():
        if isinstance(v, list):
            v = tuple(v)
        clean[k] = v
    try:
        return cls(**clean)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment YAML."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return experiment_from_dict(raw, where=str(path))


def experiment_from_dict(raw: dict[str, Any], where: str = "config") -> Experiment:
    known = {"name", "data", "split", "budgets", "seeds", "tasks", "generators", "strategies", "quality", "out"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}")
    data = _build(DataSpec, raw.get("data"), f"{where}: data")
    if (data.phantom is None) == (data.folder is None):
        raise ConfigError(f"{where}: data needs exactly one of 'phantom' or 'folder'")
    if data.test_on not in ("source", "target", "both"):
        raise ConfigError(f"{where}: data.test_on must be source, target or both")
    if data.test_on != "source" and not (data.target_domain or data.target_folder):
        raise ConfigError(f"{where}: data.test_on={data.test_on} needs target_domain or target_folder")
    tasks_raw = raw.get("tasks") or {}
    if not tasks_raw:
        raise ConfigError(f"{where}: no tasks (segment, detect)")
    tasks: dict[str, Any] = {}
    for name, spec in tasks_raw.items():
        if name not in TASKS:
            raise ConfigError(f"{where}: unknown task {name!r}; known: {', '.join(TASKS)}")
        tasks[name] = _build(SegmentSpec if name == "segment" else DetectSpec, spec, f"{where}: tasks.{name}")
    generators = {
        name: _build(GeneratorSpec, spec, f"{where}: generators.{name}")
        for name, spec in (raw.get("generators") or {}).items()
    }
    strategies = []
    for i, spec in enumerate(raw.get("strategies") or []):
        s = _build(Strategy, spec, f"{where}: strategies[{i}]")
        for g in s.generators:
            if g not in generators:
                raise ConfigError(f"{where}: strategy {s.name!r} uses generator {g!r} with no 'generators.{g}' section")
        if not 0 <= s.ratio <= 1:
            raise ConfigError(f"{where}: strategy {s.name!r}: ratio must be in [0, 1]")
        if s.synthetic_only and not s.generators:
            raise ConfigError(f"{where}: strategy {s.name!r} is synthetic_only but names no generator")
        strategies.append(s)
    names = [s.name for s in strategies]
    if "none" not in names:
        raise ConfigError(f"{where}: strategies must include the baseline 'none'")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: strategy names must be unique")
    seeds = tuple(int(s) for s in raw.get("seeds") or (0,))
    budgets = tuple(int(b) for b in raw.get("budgets") or ())
    if not budgets:
        raise ConfigError(f"{where}: budgets (labelled patients per run) are required")
    return Experiment(
        name=str(raw.get("name") or Path(where).stem),
        data=data,
        split=_build(SplitSpec, raw.get("split"), f"{where}: split"),
        budgets=budgets,
        seeds=seeds,
        tasks=tasks,
        generators=generators,
        strategies=tuple(strategies),
        quality=dict(raw.get("quality") or {}),
        out=str(raw.get("out") or f"out/{raw.get('name', 'compare')}"),
        source=where,
    )
