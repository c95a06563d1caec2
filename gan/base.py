"""The contract every learned generator satisfies, and how a name becomes its class.

A model is one `GanModule` subclass with an entry in `gan.registry.REGISTRY`, found by
name with `get_generator`. It declares what it is in class attributes (``name``,
``Config``, ``unpaired``, ``paired_reference``, ``translates_hosts``) and writes five
things: its ``Config`` dataclass, ``__init__`` (networks + optimizers),
``prepare`` (turn labelled slices into training tensors), ``make_batch`` and
``training_step`` (one optimisation step, returning its losses), and ``synthesize``
(labelled samples from hosts). `gan.train.trainer` owns devices, seeding, checkpoints,
resume, logging and progress; this base class owns `sample`/`save`/`load`, so every
module *is* a `Generator` in the sense of DESIGN.md.

Reproducibility contract: every random draw inside ``make_batch`` comes from the
``rng`` it is given, and every torch draw inside ``training_step`` from the global
torch RNG, which the trainer reseeds from ``(seed, step)`` before each step. Any other
state that must survive a resume (an image pool, a mask bank) lives in tensors
returned by ``get_extra_state`` so it travels in ``state_dict()``. Under torchrun a
process's ``training_step`` sees its part of the batch; a draw made per sample goes
through ``self.shard`` (``self.shard.randn``, ``self.shard.gather``), so that N processes
draw what one process draws for the whole batch (`gan.train.distributed`).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pickle
import re
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from augment.config_types import build_dataclass, show_value
from augment.errors import CheckpointError, ConfigError
from augment.sample import Sample
from augment.storage import sha256_bytes, to_jsonable, versions, write_bytes_atomic
from augment.window import DISPLAY_WINDOW, MODEL_WINDOW, WINDOWS, Window
from gan.registry import REGISTRY
from gan.train.distributed import WHOLE_BATCH, BatchShard
from gan.train.ema import complete_ema_state, ema_of

# The generator classes by name, imported from `gan.registry.REGISTRY` on first use (tests
# may add their own here).
GENERATORS: dict[str, type[GanModule]] = {}

CHECKPOINT_FORMAT = "lesionforge-gan-checkpoint/1"


def generator_names() -> list[str]:
    """Every generator `get_generator` knows, registry order first."""
    return list(REGISTRY) + sorted(set(GENERATORS) - set(REGISTRY))


def get_generator(name: str) -> type[GanModule]:
    """The `GanModule` class of generator ``name`` (imported on first use)."""
    if name not in GENERATORS:
        entry = REGISTRY.get(name)
        if entry is None:
            raise ConfigError(f"unknown generator {name!r}; known: {', '.join(generator_names())}")
        module_name, _, attr = entry.cls.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, GanModule)) or cls.name != name:
            raise TypeError(f"gan.registry: {entry.cls} is not a GanModule named {name!r}")
        GENERATORS[name] = cls
    return GENERATORS[name]


@runtime_checkable
class Generator(Protocol):
    """What users and the harness rely on (DESIGN.md)."""

    name: ClassVar[str]

    def fit(self, data, cfg, log) -> Any: ...

    def sample(
        self, n: int, *, seed: int, conditions: Sequence[Sample] | None = None
    ) -> list[Sample]: ...

    def save(self, path: Path) -> Any: ...

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator: ...


class GanModule(nn.Module, ABC):
    """Base class of DCGAN, pix2pix and CycleGAN.

    Subclasses set ``Config`` (a frozen dataclass whose defaults follow the paper) and
    implement the four abstract methods below (a class missing one cannot be built).
    """

    # Its key in `gan.registry.REGISTRY` (also written into every checkpoint).
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    # Top-level submodules that only training needs, beyond the networks of the "D"
    # optimizer (found by `training_only_keys`), e.g. image pools: `export` leaves them out.
    training_only: ClassVar[tuple[str, ...]] = ()
    # Unpaired translation (CycleGAN) trains on a second domain (``data_b``, --data-b);
    # every other model on one dataset.
    unpaired: ClassVar[bool] = False
    # What SSIM/PSNR compares against (`gan.evaluate.paired.paired_quality`): "own-mask" (the model
    # regenerates a held-out lesion slice from that slice's own mask: ``reconstruct`` and
    # ``condition``, pix2pix), "target-domain" (a held-out slice translated, against its true
    # rendering in the target domain: ``translate``, CycleGAN), or None (nothing to compare
    # with: DCGAN's lesions are new).
    paired_reference: ClassVar[str | None] = None
    # The synthetic slice is its whole host translated (CycleGAN), not the host's pixels with
    # generated lesions pasted in: memorisation compares whole slices, and the evaluation
    # checks that the host's lesions survived.
    translates_hosts: ClassVar[bool] = False
    # This process's part of each training batch: the whole batch, except inside a training
    # step under torchrun, where the trainer sets it (`gan.train.distributed.data_parallel`).
    shard: BatchShard = WHOLE_BATCH
    # fp16 training's gradient scaler (`gan.train.precision`), set by the trainer; None
    # otherwise. A ``training_step`` calls `backward` and `optimizer_step` so that it applies.
    scaler: torch.amp.GradScaler | None = None

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        # Filled by the trainer / load(): where the training data lives and its fingerprint.
        self.data_info: dict[str, Any] = {}

    def generator_net(self, name: str) -> nn.Module:
        """The network synthesis runs for the generator attribute ``name``: its moving
        average when the model keeps one (``ema`` > 0, `gan.train.ema`), else the network."""
        ema = ema_of(self)
        return ema.nets[name] if ema is not None and name in ema.nets else getattr(self, name)

    # Whether `quality_probe` gives a score `gan.train.early_stop` can stop on (--until quality).
    quality_scored: bool = False

    def quality_probe(
        self, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, seed: int
    ) -> dict[str, float]:
        """A few cheap numbers that say whether training is getting anywhere (lesion HU of
        generated vs real, ...), logged with every progress grid (`gan.train.probes`).

        Drawn from ``seed`` alone, without touching the training RNG or any state. The
        default has none to offer: ``{}``.
        """
        return {}

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled first under fp16 (`scaler`)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()``; under fp16 the scaler's (gradients unscaled, a step with inf/NaN
        gradients skipped; the trainer updates the scale once per training step)."""
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    # ---- what a model writes ------------------------------------------------
    @abstractmethod
    def prepare(self, data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> None:
        """Turn labelled training slices into the tensors ``make_batch`` draws from."""

    @abstractmethod
    def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """One training batch (CPU tensors), every random choice drawn from ``rng``."""

    @abstractmethod
    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """One optimisation step on ``batch`` (already on the device); returns its losses."""

    @abstractmethod
    def synthesize(
        self, n: int, *, rng: np.random.Generator, hosts: Sequence[Sample]
    ) -> list[Sample]:
        """``n`` labelled synthetic samples in HU, using ``hosts`` as the real slices that
        receive lesions (DCGAN, pix2pix) or are translated (CycleGAN)."""

    # ---- what a model may check before training (cheap: no network is built) ----
    @classmethod
    def check_data(
        cls,
        cfg: Any,
        data: Sequence[Sample],
        data_b: Sequence[Sample] | None,
        *,
        folder: str = "data",
        folder_b: str = "data_b",
    ) -> None:
        """Refuse training data ``cfg`` cannot train on, before anything is built.

        E.g. slices smaller than the networks' depth allows, or two domains of other
        sizes: a `ConfigError` (an option does not fit the data) or `DataError` naming
        the option, the folder (``folder``, ``folder_b``) and the size. The default
        accepts everything; ``prepare`` still checks what it needs.
        """

    @classmethod
    def batch_limit(
        cls, cfg: Any, data: Sequence[Sample], data_b: Sequence[Sample] | None
    ) -> tuple[int, str] | None:
        """The largest batch worth drawing from this data, and what it counts (a text
        such as ``"lesion slices"``); None: no bound but the trainer's `MAX_BATCH_SIZE`."""
        return None

    # ---- plumbing owned by the base -----------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def anatomy(self) -> str | None:
        """What the training slices show (``head-ich``/``liver``): the model's own
        ``anatomy`` option, else its data's (``data_info``; checkpoints before 0.2 call it
        ``kind``); None when neither says."""
        value = (getattr(self.cfg, "anatomy", None) or self.data_info.get("anatomy")
                 or self.data_info.get("kind"))
        return value if value in DISPLAY_WINDOW else None

    def model_window(self) -> Window:
        """The HU window the networks see: the model's ``window``, else its anatomy's
        model window."""
        if getattr(self.cfg, "window", None) is not None:
            return Window(*self.cfg.window)
        if self.anatomy is not None:
            return WINDOWS[MODEL_WINDOW[self.anatomy]]
        raise ConfigError(f"{self.name}: no HU window in its config, and no anatomy to take one from")

    def display_window(self) -> Window:
        """The window figures show its slices in: the anatomy's display window (e.g. brain
        40/80), else the model window, else the brain window."""
        if self.anatomy is not None:
            return WINDOWS[DISPLAY_WINDOW[self.anatomy]]
        try:
            return self.model_window()
        except ConfigError:
            return WINDOWS["brain"]

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
        # The torch draws of ``synthesize`` (latent codes, pix2pix's dropout noise) come from
        # the global RNG seeded with ``seed`` inside a fork of it: the caller's RNG state is
        # restored afterwards, so sampling live inside a training loop (`MixedDataset`)
        # never resets the trainer's random stream. Dropout cannot take a local
        # `torch.Generator`, hence the fork rather than a generator argument.
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
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

    def fit(
        self, data: Sequence[Sample], cfg: Any, log: Any = None, *, data_b: Sequence[Sample] | None = None
    ) -> dict[str, Any]:
        """Train in place with `gan.train.trainer.train` (Generator protocol); ``cfg`` is a
        `gan.train.trainer.TrainConfig`, ``data_b`` the target domain of unpaired models. ``log``
        is accepted for the protocol; the trainer logs to ``cfg.out`` (and wandb).
        Returns the trainer's summary (step, losses, checkpoint)."""
        from gan.train.trainer import train

        return train(self, data, data_b, cfg)

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

    def save(
        self, path: str | os.PathLike, step: int = 0, extra: dict[str, Any] | None = None
    ) -> str:
        """Save atomically; returns the checkpoint's sha256."""
        buf = io.BytesIO()
        torch.save(self.checkpoint(step, extra), buf)
        data = buf.getvalue()
        write_bytes_atomic(path, data)
        return sha256_bytes(data)

    def training_only_keys(self) -> set[str]:
        """State-dict keys synthesis never reads: those of the top-level submodules whose
        parameters the ``"D"`` optimizer trains (the discriminators) or that
        `training_only` names."""
        d_opt = self.optimizers.get("D")
        d_params = {id(q) for g in (d_opt.param_groups if d_opt else []) for q in g["params"]}
        dropped = set(self.training_only)
        for child_name, child in self.named_children():
            params = list(child.parameters())
            if params and all(id(q) in d_params for q in params):
                dropped.add(child_name)
        return {k for k in self.state_dict() if k.split(".", 1)[0] in dropped}

    def export_checkpoint(self, step: int, source_sha256: str | None = None) -> dict[str, Any]:
        """A generator-only checkpoint, to share: what `checkpoint` holds but the
        discriminators (and whatever `training_only` names) and the optimizer state.

        It keeps the model config, the training data's fingerprint (``data``) and the
        versions, loads with `GanModule.load` / `read_checkpoint` like a full checkpoint,
        and records what it left out under ``export``.
        """
        left_out = self.training_only_keys()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.name,
            "config": to_jsonable(dataclasses.asdict(self.cfg)),
            "state_dict": {
                k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k not in left_out
            },
            "step": step,
            "data": to_jsonable(self.data_info),
            "versions": versions(),
            "export": {
                "source_sha256": source_sha256,
                "left_out": sorted({k.split(".", 1)[0] for k in left_out}),
            },
        }

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> GanModule:
        """Load any registered model's checkpoint (``GanModule.load``) or this class's.

        ``path`` is a checkpoint file or a run folder (its ``last.pt``, `resolve_checkpoint`).
        """
        path = resolve_checkpoint(path)
        return cls.from_checkpoint(read_checkpoint(path), path, device)

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict[str, Any], path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> GanModule:
        """Build the module a `read_checkpoint` dict describes (``path`` names it in errors)."""
        name = ckpt["model"]
        if cls is GanModule:
            try:
                model_cls = get_generator(name)
            except ConfigError:
                raise CheckpointError(
                    f"{path}: made by generator {name!r}, which this lesionforge does not know "
                    f"(known: {', '.join(generator_names())})"
                ) from None
        else:
            model_cls = cls
        if model_cls.name != name:
            raise CheckpointError(f"{path}: is a {name} checkpoint, not {model_cls.name}")
        try:
            cfg = build_dataclass(model_cls.Config, ckpt["config"], source=f"{path}: config")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        module = model_cls(cfg)
        state = complete_ema_state(module, ckpt["state_dict"], path)
        try:
            if "export" in ckpt:
                # A generator-only export: everything but what training alone needs.
                missing, unexpected = module.load_state_dict(state, strict=False)
                needed = sorted(set(missing) - module.training_only_keys())
                if needed or unexpected:
                    raise ValueError(
                        f"missing {', '.join(needed[:3]) or 'nothing'}; "
                        f"unexpected {', '.join(unexpected[:3]) or 'nothing'}"
                    )
            else:
                module.load_state_dict(state)
            for k, opt in module.optimizers.items():
                if k in ckpt.get("optimizers", {}):
                    opt.load_state_dict(ckpt["optimizers"][k])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{path}: weights do not fit the {model_cls.name} config ({short_reason(e)})"
            ) from None
        module.data_info = dict(ckpt.get("data", {}))
        return module.to(device)


class LinearDecayLR:
    """Mixin for models on junyanz's linear learning-rate policy (pix2pix, CycleGAN).

    ``cfg.lr`` for the first ``cfg.n_steps_constant`` updates, then down linearly over
    ``cfg.n_steps_decay`` more (0: constant): ``1 - max(0, step + 1 - n_constant) /
    (n_decay + 1)``, the epoch formula of pytorch-CycleGAN-and-pix2pix counted in steps.
    The trainer applies it (`gan.train.trainer.train` sets every optimizer's rate to `lr_at`
    before each update) and counts the updates into ``steps_done``, which travels in the
    state dict as extra state (the checkpoint format these models have always had).
    """

    steps_done: int = 0

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based)."""
        cfg = self.cfg  # type: ignore[attr-defined]
        if cfg.n_steps_decay == 0:
            return cfg.lr
        late = max(0, step + 1 - cfg.n_steps_constant)
        return cfg.lr * max(0.0, 1.0 - late / (cfg.n_steps_decay + 1))

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps_done, dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        self.steps_done = int(state)


RUN_CHECKPOINT = "last.pt"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: itself, or a run folder's ``last.pt``.

    What ``synthesize --checkpoint`` and ``gan evaluate`` accept.
    """
    path = Path(path)
    if path.is_dir():
        ckpt = path / RUN_CHECKPOINT
        if not ckpt.is_file():
            raise CheckpointError(f"{path}: no {RUN_CHECKPOINT} in this run folder")
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def short_reason(e: BaseException, limit: int = 160) -> str:
    """An exception in one line: its first line (and the next when that one ends in a
    colon, as ``load_state_dict``'s "Error(s) in loading ...:" does), cut to ``limit``."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_failure(path: Path, e: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words.

    Never PyTorch's own advice: it suggests ``weights_only=False``, which runs any code
    a crafted file holds.
    """
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what}, not only tensors and plain data; "
            "refused for safety, as such a file can run code when loaded"
        )
    try:
        if not zipfile.is_zipfile(path):
            return "not a PyTorch file, or a truncated one"
    except OSError:
        pass
    first = short_reason(e).split(". ")[0].rstrip(".")
    if "weights_only" in first or len(first) > 120:
        first = type(e).__name__
    return f"damaged or not a PyTorch file: {first}"


def load_torch_data(path: str | os.PathLike, what: str = "a lesionforge checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, or one line "PATH: not WHAT (why)"."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: not {what} (empty file)")
        # torch warns (on two lines) about pickle protocols before it fails: the one-line
        # error below says all there is to say.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not {what} ({_load_failure(path, e)})") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Checkpoint fields: (check, what it must be, required).
_CHECKPOINT_FIELDS: dict[str, tuple[Any, str, bool]] = {
    "model": (lambda v: isinstance(v, str), "text (the generator name)", True),
    "config": (lambda v: isinstance(v, dict), "a mapping of model options", True),
    "state_dict": (
        lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and isinstance(t, Tensor) for k, t in v.items())
        ),
        "a mapping of names to tensors",
        True,
    ),
    "optimizers": (
        lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
        "a mapping of optimizer states",
        False,
    ),
    "step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
    "data": (lambda v: isinstance(v, dict), "a mapping", False),
    "train": (lambda v: isinstance(v, dict), "a mapping", False),
    "rng": (lambda v: isinstance(v, dict), "a mapping", False),
    "export": (lambda v: isinstance(v, dict), "a mapping", False),
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file as data (``weights_only=True``), every field checked.

    Raises:
        CheckpointError: one line naming ``path`` and what is wrong: missing, not a
            PyTorch file, Python objects inside (refused, never unpickled), not written
            by lesionforge, or a field missing or of the wrong kind.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file")
    ckpt = load_torch_data(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: not a lesionforge checkpoint (it holds a {type(ckpt).__name__}, not a checkpoint dict)"
        )
    fmt = ckpt.get("format")
    if fmt != CHECKPOINT_FORMAT:
        why = (
            "no 'format' field"
            if fmt is None
            else f"format {show_value(fmt)}, expected {CHECKPOINT_FORMAT!r}"
        )
        raise CheckpointError(f"{path}: not a lesionforge checkpoint ({why})")
    for key, (ok, what, required) in _CHECKPOINT_FIELDS.items():
        if key not in ckpt:
            if required:
                raise CheckpointError(f"{path}: checkpoint field {key!r} is missing")
            continue
        if not ok(ckpt[key]):
            shown = show_value(ckpt[key]) if not isinstance(ckpt[key], dict) else "another mapping"
            raise CheckpointError(f"{path}: checkpoint field {key!r} must be {what}, got {shown}")
    check_finite(ckpt, path)
    return ckpt


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor in nested dicts/lists (an optimizer state)."""
    if isinstance(value, Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]")


def check_finite(ckpt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights (or optimizer state) hold NaN or inf.

    Such weights make every synthetic slice NaN, or a resumed run diverge at its first
    step: name the checkpoint and the first bad tensor now, not a sample later.
    """
    for where in ("state_dict", "optimizers"):
        for name, t in _tensors(ckpt.get(where) or {}, ""):
            if t.is_floating_point() or t.is_complex():
                bad = ~torch.isfinite(t)
                if bool(bad.any()):
                    raise CheckpointError(
                        f"{path}: {'weight' if where == 'state_dict' else 'optimizer state'} "
                        f"{name!r} holds {int(bad.sum())} NaN/inf value(s) of {t.numel()} "
                        "(a diverged run or a damaged file); use an earlier checkpoint"
                    )


def file_sha256(path: str | os.PathLike) -> str:
    from augment.storage import sha256_file

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
