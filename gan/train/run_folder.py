"""A generator's run folder: what it may hold, checkpoints written into it, and resuming
from it (the checkpoint must match the model, data and options it is resumed with).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from augment.config_types import build_dataclass
from augment.errors import (
    CheckpointError,
    ConfigError,
)
from augment.storage import (
    STAGING_RE,
    remove_stale_staging,
    to_jsonable,
    write_bytes_atomic,
)
from gan.base import (
    RUN_CHECKPOINT,
    GanModule,
    get_generator,
    read_checkpoint,
)
from gan.train.config import TrainConfig

log = logging.getLogger(__name__)

# Model options added after runs were already being written, with the values those runs
# trained with: a checkpoint whose config lacks one resumes with this value, so an old run
# continues as it started (`gan.train.diffaugment`, `gan.train.ema`: both off).
LEGACY_OPTIONS: dict[str, Any] = {"diffaugment": "", "ema": 0.0}


def with_legacy_options(config: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``config`` with the `LEGACY_OPTIONS` among ``fields`` it does not name filled in."""
    return {**{k: v for k, v in LEGACY_OPTIONS.items() if k in fields}, **config}


def check_resume(
    ckpt: dict[str, Any], module: GanModule, info: dict[str, Any], cfg: TrainConfig, path: Path
) -> None:
    if ckpt.get("model") != module.name:
        raise CheckpointError(
            f"{path}: is a {ckpt.get('model')} run, cannot resume it as {module.name}"
        )
    config = to_jsonable(asdict(module.cfg))
    old = with_legacy_options(ckpt.get("config") or {}, set(config))
    if old != config:
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise CheckpointError(
            f"{path}: model config differs from the checkpoint's ({', '.join(changed)}); "
            "resume with the same options"
        )
    if ckpt.get("data", {}).get("fingerprint") != info["fingerprint"]:
        raise CheckpointError(
            f"{path}: the training data differs from the data this run was trained on "
            "(fingerprint mismatch); resume with the same data"
        )
    train_cfg = ckpt.get("train", {})
    for key in ("seed", "batch_size"):
        if key in train_cfg and train_cfg[key] != getattr(cfg, key):
            raise CheckpointError(
                f"{path}: was trained with {key}={train_cfg[key]}, not {getattr(cfg, key)}; "
                f"an exact resume needs the same value (leave out --{key.replace('_', '-')}: "
                "a resume takes the run's own)"
            )


# What a run folder holds: `train`'s files, ``gan evaluate``'s ``eval/``, wandb's folder,
# the harness's ``done.json``, numbered checkpoints and staging files of atomic writes.
_RUN_ENTRIES = {RUN_CHECKPOINT, "config.yaml", "log.jsonl", "grids", "eval", "wandb", "done.json"}
_RUN_ENTRY_RE = re.compile(r"^(ckpt_\d+\.pt|\..+\.(tmp|partial|old)-\d+)$")


def _is_run_config(path: Path) -> bool:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and "model" in doc and "train" in doc


def check_run_folder(out: Path, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse a run folder `train` must not write into, before any work starts.

    Resuming needs ``out/last.pt``. A new run needs ``out`` new, empty, or a run folder
    without a checkpoint (one stopped before its first save). A checkpoint there is
    replaced only with ``overwrite`` (the harness's own folders): the command line has
    no ``--overwrite`` for runs, so a run that took hours is never one flag away from
    being lost. A folder holding anything a run does not write (a dataset, the user's
    files) is refused: the run would overwrite its ``config.yaml`` and ``log.jsonl``.
    """
    ckpt = out / RUN_CHECKPOINT
    if out.is_symlink() and not out.exists() or out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another --out")
    if resume:
        if not ckpt.is_file():
            raise CheckpointError(
                f"{ckpt}: checkpoint not found; nothing to resume (start a new run without --resume)"
            )
        return
    if not out.is_dir() or overwrite:
        return
    if ckpt.exists():
        raise ConfigError(
            f"{out}: already holds a training run; continue it with --resume (a larger --steps "
            "trains further) or choose another --out"
        )
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in _RUN_ENTRIES and not _RUN_ENTRY_RE.match(p.name)
    )
    if not foreign and (out / "config.yaml").is_file() and not _is_run_config(out / "config.yaml"):
        foreign = ["config.yaml"]
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise ConfigError(
            f"{out}: not a training run folder (it holds {shown}); choose another --out"
        )


def remove_stale_run_files(out: Path) -> list[Path]:
    """Delete the staging files of killed runs in ``out`` and ``out/grids``.

    A ``kill -9`` while a checkpoint is written leaves ``.last.pt.tmp-PID`` (the size of
    a checkpoint); only those of processes that no longer run are removed
    (`augment.storage.remove_stale_staging`). Returns what was removed.
    """
    removed: list[Path] = []
    for folder in (out, out / "grids"):
        if not folder.is_dir():
            continue
        names = sorted({m["name"] for p in folder.iterdir() if (m := STAGING_RE.match(p.name))})
        for name in names:
            removed += remove_stale_staging(folder / name)
    for path in removed:
        log.info("removed %s, left by a run that was killed", path)
    return removed


def save_checkpoint(
    module: GanModule, cfg: TrainConfig, step: int, *, numbered: bool
) -> tuple[Path, str]:
    path = cfg.out / "last.pt"
    extra = {
        "train": to_jsonable(asdict(cfg)),
        "rng": {
            "scheme": "batch: numpy default_rng([seed, step]); torch: manual_seed(torch_seed(seed, step))",
            "seed": cfg.seed,
            "next_step": step,
            "torch_cpu": torch.get_rng_state(),
        },
    }
    if module.scaler is not None:  # fp16: the loss scale continues on resume
        extra["scaler"] = module.scaler.state_dict()
    sha = module.save(path, step, extra=extra)
    if numbered and cfg.keep_checkpoints:
        copy = cfg.out / f"ckpt_{step:06d}.pt"
        copy.unlink(missing_ok=True)
        try:
            # last.pt is later replaced by rename, so the link keeps these bytes.
            copy.hardlink_to(path)
        except OSError:
            write_bytes_atomic(copy, path.read_bytes())
    log.info("step %d: checkpoint %s (sha256 %s)", step, path, sha[:12])
    return path, sha


def resume_defaults(model: str, out: str | os.PathLike) -> dict[str, Any]:
    """What ``gan train --resume`` defaults to: the run's own model options (``config``),
    ``steps`` and ``batch_size``, as its checkpoint recorded them (``steps`` and
    ``batch_size`` are absent where an older checkpoint did not record them).

    So resuming needs no flags, whatever presets have become since the run started.

    Raises:
        CheckpointError: no ``out/last.pt``, a damaged one, another model's, or options
            this version does not know.
    """
    out = Path(out)
    check_run_folder(out, resume=True)
    path = out / RUN_CHECKPOINT
    ckpt = read_checkpoint(path)
    cls = get_generator(model)
    if ckpt["model"] != cls.name:
        raise CheckpointError(f"{path}: is a {ckpt['model']} run, cannot resume it as {cls.name}")
    try:
        build_dataclass(cls.Config, ckpt["config"], source=f"{path}: config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    found: dict[str, Any] = {"config": with_legacy_options(dict(ckpt["config"]), fields)}
    recorded = ckpt.get("train") or {}
    for key in ("steps", "batch_size"):
        value = recorded.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            found[key] = value
    return found
