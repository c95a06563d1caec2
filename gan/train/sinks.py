"""Where training metrics go: JSON lines always, Weights & Biases when asked for.

`LossMonitor` averages the losses of a logging window on the device and stops a run
whose loss went NaN/inf (torchvision references). Every logged record is one JSON object per line in ``log.jsonl`` (stylegan2-style), so
curves can be re-plotted later from the run folder alone. wandb is one optional sink,
imported only when a run asks for it (nanoGPT): nothing here imports it at module load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from augment.errors import ConfigError, NonFiniteLossError
from augment.storage import to_jsonable, write_bytes_atomic

log = logging.getLogger(__name__)


class LossMonitor:
    """Averages losses on the device and remembers the first non-finite one.

    Each step adds a handful of tiny device ops and no host sync; `flush` (every
    ``log_every`` steps, before every checkpoint) is the only place the host waits.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] = []

    def _reset(self, keys: list[str], vec: Tensor) -> None:
        self.keys = keys
        self.total = torch.zeros_like(vec)
        self.count = 0
        self.first_bad = torch.full_like(vec, -1.0, dtype=torch.float64)
        self.bad_value = torch.zeros_like(vec)

    def update(self, step: int, losses: dict[str, Tensor | float]) -> None:
        keys = sorted(losses)
        vec = torch.stack(
            [
                torch.as_tensor(losses[k], device=self.device).detach().float().reshape(())
                for k in keys
            ]
        )
        if keys != self.keys:
            if self.keys:
                self.flush()
            self._reset(keys, vec)
        self.total += vec
        self.count += 1
        new_bad = ~torch.isfinite(vec) & (self.first_bad < 0)
        self.first_bad = torch.where(new_bad, float(step), self.first_bad)
        self.bad_value = torch.where(new_bad, vec, self.bad_value)

    def check(self) -> None:
        """Raise `NonFiniteLossError` naming the first step and loss that went NaN/inf."""
        if not self.keys:
            return
        first_bad = self.first_bad.tolist()
        if max(first_bad) >= 0:
            step, i = min((s, i) for i, s in enumerate(first_bad) if s >= 0)
            raise NonFiniteLossError(
                f"step {int(step)}: loss {self.keys[i]!r} is {self.bad_value[i].item()}; "
                "training stopped (lower the learning rate, or check the data for outliers)"
            )

    def flush(self) -> dict[str, float]:
        """Mean losses since the last flush (after `check`)."""
        self.check()
        if not self.keys or self.count == 0:
            return {}
        means = (self.total / self.count).tolist()
        self.total.zero_()
        self.count = 0
        return dict(zip(self.keys, means, strict=True))


class JsonlSink:
    """Append one JSON object per line to ``path``.

    Args:
        path: the log file (created with its folder when missing).
        resume_from: when resuming from a checkpoint at this step, records with
            ``step > resume_from`` left by the interrupted run are dropped first, so the log reads as one
            uninterrupted run.
    """

    def __init__(self, path: str | os.PathLike, *, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            write_bytes_atomic(self.path, b"")
        elif self.path.exists():
            self._truncate(resume_from)

    def _truncate(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a crash: the run it came from is being replaced.
                continue
            if isinstance(record, dict) and record.get("step", -1) <= step:
                kept.append(line + "\n")
        write_bytes_atomic(self.path, "".join(kept).encode())

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

    def image(self, key: str, path: str | os.PathLike, step: int) -> None:
        self.log({"step": step, key: str(path)})

    def close(self) -> None:
        """Nothing is held open between records."""


class WandbSink:
    """Log losses, grid images and the resolved config to Weights & Biases.

    The run is offline unless the user set ``WANDB_MODE`` (e.g. ``online`` or
    ``disabled``), so a training run never needs a network or an account by default.
    """

    def __init__(
        self, *, project: str, config: dict[str, Any], out: str | os.PathLike, name: str | None
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "wandb logging asked for, but the wandb package is not installed"
            ) from None
        self._wandb = wandb
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(
            project=project,
            config=to_jsonable(config),
            dir=str(out),
            name=name,
            mode=mode,
        )
        log.info("wandb run started (mode=%s)", mode)

    def log(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step"}
        self.run.log(values, step=int(record["step"]))

    def image(self, key: str, path: str | os.PathLike, step: int) -> None:
        self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """Fan one record out to several sinks."""

    def __init__(self, sinks: list[JsonlSink | WandbSink]) -> None:
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(record)

    def image(self, key: str, path: str | os.PathLike, step: int) -> None:
        for s in self.sinks:
            s.image(key, path, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
