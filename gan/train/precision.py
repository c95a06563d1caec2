"""Training precision: ``fp32``, ``bf16`` or ``fp16`` autocast, or ``auto`` (what the hardware
runs natively).

``auto`` picks

- on CUDA: ``bf16`` where the GPU computes it natively (Ampere and newer), else ``fp16``
  with a gradient scaler (fp16's range is too small for unscaled GAN gradients);
- on CPU: ``bf16`` where the CPU has native bf16 instructions (AMX or AVX512-BF16, which
  oneDNN uses for convolutions and matrix products), else ``fp32`` (without them bf16 is
  emulated and slower than fp32).

Autocast keeps the weights, the optimizer state and the losses' reductions in float32 and
runs convolutions and matrix products in the lower precision; see
https://pytorch.org/docs/stable/amp.html. What was asked and what was used, and why, is
recorded in the run's ``config.yaml``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from augment.errors import ConfigError
from gan.train.config import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated in float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (``fp32``/``bf16``/``fp16``), what was asked, and why."""

    name: str
    asked: str
    why: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.name, torch.float32)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context a training step runs in (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler (None otherwise)."""
        return torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def record(self) -> dict[str, str]:
        return {"asked": self.asked, "used": self.name, "why": self.why}


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``name`` (one of `PRECISIONS`) on ``device``, ``auto`` decided.

    Raises:
        ConfigError: an unknown name, or ``bf16`` asked on a GPU without it.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    native = native_bf16(device)
    if name == "auto":
        if native:
            where = "a GPU" if device.type == "cuda" else "a CPU (AMX or AVX512-BF16)"
            return Precision("bf16", name, f"{where} with native bf16")
        if device.type == "cuda":
            return Precision("fp16", name, "a GPU without native bf16: fp16 with a gradient scaler")
        return Precision("fp32", name, f"no native bf16 on this {device.type.upper()}")
    if name == "bf16" and device.type == "cuda" and not native:
        raise ConfigError("precision bf16: this GPU has no native bfloat16; use fp16 (or auto)")
    emulated = name != "fp32" and device.type != "cuda" and not native
    why = "asked (this CPU has no native bf16/fp16: emulated, expect it slower than fp32)" if emulated else "asked"
    return Precision(name, name, why)


__all__ = ["PRECISIONS", "Precision", "native_bf16", "resolve_precision"]
