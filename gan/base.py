"""The contract every learned generator satisfies, and its registry.

A model is one `GanModule` subclass, registered with ``@register_generator("name")``.
It writes five things: its ``Config`` dataclass, ``__init__`` (networks + optimizers),
``prepare`` (turn labelled slices into training tensors), ``make_batch`` and
``training_step`` (one optimisation step, returning its losses), and ``synthesize``
(labelled samples from hosts). `gan.trainer` owns devices, seeding, checkpoints,
resume, logging and progress; this base class owns `sample`/`save`/`load`, so every
module *is* a `Generator` in the sense of DESIGN.md.

Reproducibility contract: every random draw inside ``make_batch`` comes from the
``rng`` it is given, and every torch draw inside ``training_step`` from the global
torch RNG, which the trainer reseeds from ``(seed, step)`` before each step. Any other
state that must survive a resume (an image pool, a mask bank) lives in tensors
returned by ``get_extra_state`` so it travels in ``state_dict()``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from augment.errors import CheckpointError, ConfigError
from augment.sample import Sample, sha256_bytes, to_jsonable, versions, write_bytes_atomic

GENERATORS: dict[str, type[GanModule]] = {}

CHECKPOINT_FORMAT = "lesionforge-gan-checkpoint/1"


def register_generator(name: str):
    """Class decorator: add a `GanModule` subclass to `GENERATORS` under ``name``."""

    def wrap(cls: type[GanModule]) -> type[GanModule]:
        if name in GENERATORS:
            raise ValueError(f"generator {name!r} registered twice")
        cls.name = name
        GENERATORS[name] = cls
        return cls

    return wrap


def get_generator(name: str) -> type[GanModule]:
    import gan.models  # noqa: F401  (registers the built-in models)

    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def config_from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    """Build a (frozen) config dataclass, rejecting unknown keys with a clear message."""
    values = dict(values or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{cls.__qualname__}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    for key, value in list(values.items()):
        default = names[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)


@runtime_checkable
class Generator(Protocol):
    """What users and the harness rely on (DESIGN.md)."""

    name: ClassVar[str]

    def fit(self, data, cfg, log) -> None: ...

    def sample(
        self, n: int, *, seed: int, conditions: Sequence[Sample] | None = None
    ) -> list[Sample]: ...

    def save(self, path: Path) -> None: ...


class GanModule(nn.Module):
    """Base class of DCGAN, pix2pix and CycleGAN.

    Subclasses set ``Config`` (a frozen dataclass whose defaults follow the paper) and
    implement the methods below that raise ``NotImplementedError`` here.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        # Filled by the trainer / load(): where the training data lives and its fingerprint.
        self.data_info: dict[str, Any] = {}

    # ---- what a model writes ------------------------------------------------
    def prepare(self, data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> None:
        """Turn labelled training slices into the tensors ``make_batch`` draws from."""
        raise NotImplementedError

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """One training batch (CPU tensors), every random choice drawn from ``rng``."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """One optimisation step on ``batch`` (already on the device); returns its losses."""
        raise NotImplementedError

    def synthesize(
        self, n: int, *, rng: np.random.Generator, hosts: Sequence[Sample]
    ) -> list[Sample]:
        """``n`` labelled synthetic samples in HU, using ``hosts`` as the real slices that
        receive lesions (DCGAN, pix2pix) or are translated (CycleGAN)."""
        raise NotImplementedError

    # ---- plumbing owned by the base -----------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample(
        self, n: int, *, seed: int, conditions: Sequence[Sample] | None = None
    ) -> list[Sample]:
        """``n`` labelled samples, deterministic for ``seed`` (Generator protocol)."""
        if not conditions:
            raise ConfigError(
                f"{self.name}: sampling needs host slices (conditions=...): the real slices "
                "that receive or carry the synthetic lesions"
            )
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                torch.manual_seed(seed)
                out = self.synthesize(n, rng=np.random.default_rng(seed), hosts=conditions)
        finally:
            self.train(was_training)
        for s in out:
            s.meta.setdefault("synthetic", True)
            s.meta.setdefault("generator", self.name)
            s.meta.setdefault("seed", seed)
        return out

    def preview_rows(self, hosts: Sequence[Sample], *, seed: int) -> list[tuple[str, list[Sample]]]:
        """Labelled rows of synthetic samples for the trainer's progress grid.

        The default is one row of `sample` output; a model whose samples can fail
        early in training (DCGAN pasting empty masks) overrides this to show what it
        generates so far.
        """
        return [(self.name, self.sample(len(hosts), seed=seed, conditions=list(hosts)))]

    def fit(self, data, cfg, log=None) -> None:
        """Train with `gan.trainer.train`; ``cfg`` is a `gan.trainer.TrainConfig`."""
        from gan.trainer import train

        train(self, data, cfg)

    def checkpoint(self, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict: data only (tensors, numbers, strings, lists, dicts)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.name,
            "config": to_jsonable(dataclasses.asdict(self.cfg)),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "step": step,
            "data": to_jsonable(self.data_info),
            "versions": versions(),
            **(extra or {}),
        }

    def save(self, path: str | os.PathLike, step: int = 0, extra: dict[str, Any] | None = None) -> str:
        """Save atomically; returns the checkpoint's sha256."""
        buf = io.BytesIO()
        torch.save(self.checkpoint(step, extra), buf)
        data = buf.getvalue()
        write_bytes_atomic(path, data)
        return sha256_bytes(data)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> GanModule:
        """Load any registered model's checkpoint (``GanModule.load``) or this class's."""
        ckpt = read_checkpoint(path)
        model_cls = get_generator(ckpt["model"]) if cls is GanModule else cls
        if model_cls.name != ckpt["model"]:
            raise CheckpointError(f"{path}: is a {ckpt['model']} checkpoint, not {model_cls.name}")
        module = model_cls(config_from_dict(model_cls.Config, ckpt["config"]))
        try:
            module.load_state_dict(ckpt["state_dict"])
            for k, opt in module.optimizers.items():
                if k in ckpt.get("optimizers", {}):
                    opt.load_state_dict(ckpt["optimizers"][k])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{path}: weights do not fit the {model_cls.name} config ({first})") from None
        module.data_info = dict(ckpt.get("data", {}))
        return module.to(device)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint as data (``weights_only=True``), with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a lesionforge generator checkpoint")
    return ckpt


def file_sha256(path: str | os.PathLike) -> str:
    from augment.sample import sha256_file

    return sha256_file(path)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise a torch device string."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but CUDA is not available here")
    return dev
