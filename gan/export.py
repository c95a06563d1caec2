"""Share a trained generator: a generator-only checkpoint (`lesionforge gan export`).

A run's ``last.pt`` holds everything a resume needs: both networks, the optimizers'
moments, RNG states, the training options. Someone who only wants to synthesize needs
the generator: its weights, model config, the fingerprint of the data it was trained on
(for provenance and the memorisation audit) and the versions. The export is that, loads
with ``torch.load(..., weights_only=True)``, and `synthesize_dataset`, `GanModule.load`
(so `augment.datasets.MixedDataset`) and ``gan evaluate`` accept it as they accept a
full checkpoint. It cannot be resumed.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import torch

from augment.errors import ConfigError
from augment.storage import write_bytes_atomic
from gan.base import GanModule, file_sha256, read_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)


def export_generator(
    run: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, object]:
    """Write the generator-only checkpoint of ``run`` (a run folder or checkpoint) to ``out``.

    Returns:
        ``{"path", "model", "step", "bytes", "source", "source_bytes", "left_out"}``.

    Raises:
        CheckpointError: ``run`` is not a readable lesionforge checkpoint.
        ConfigError: ``out`` exists (without ``overwrite``) or is the source checkpoint.
    """
    source = resolve_checkpoint(run)
    out = Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise ConfigError(f"{out}: is the checkpoint being exported; choose another --out")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: exists; choose another --out (or --overwrite to replace it)")
    ckpt = read_checkpoint(source)
    # Building the module checks that the weights fit the config before anything is written.
    module = GanModule.from_checkpoint(ckpt, source)
    exported = module.export_checkpoint(int(ckpt["step"]), source_sha256=file_sha256(source))
    buf = io.BytesIO()
    torch.save(exported, buf)
    write_bytes_atomic(out, buf.getvalue())
    log.info("exported the %s generator of %s to %s", module.name, source, out)
    return {
        "path": out,
        "model": module.name,
        "step": exported["step"],
        "bytes": out.stat().st_size,
        "source": source,
        "source_bytes": source.stat().st_size,
        "left_out": exported["export"]["left_out"],
    }


__all__ = ["export_generator"]
