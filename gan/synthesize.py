"""Write a labelled synthetic dataset from a generator checkpoint, atomically.

Samples are made in chunks; chunk ``c`` is sampled with seed `chunk_seed` ``(seed, c)``,
so the output is a function of (checkpoint, hosts, n, seed, chunk) alone, and the
first full chunks of a larger run equal those of a smaller one. The folder is staged
and renamed by `augment.folder.DatasetWriter`: an interrupted run leaves nothing that
looks like a dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.datasets import SliceDataset
from augment.errors import CheckpointError, ConfigError, DataError
from augment.folder import DatasetWriter, check_replaceable, dataset_anatomy
from augment.sample import Sample
from augment.storage import to_jsonable
from gan.base import GanModule, file_sha256, read_checkpoint, resolve_checkpoint, resolve_device
from gan.train.data import open_dataset

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("voc", "coco")
# Per synthetic slice on disk: its .npy image (float32 + header) and PNG mask, each in
# whole file-system blocks, and its manifest record (meta with placements and the model
# config); and per dataset (dataset.json, the folders).
_BLOCK = 4096
_NPY_HEADER = 128
_MASK_BYTES_PER_PIXEL = 0.25  # a PNG mask of mostly zeros: at most this
_RECORD_BYTES = 2048
_DATASET_BYTES = 1 << 20


def _blocks(n_bytes: float) -> int:
    return -(-int(n_bytes) // _BLOCK) * _BLOCK


def estimate_bytes(n: int, hosts: Sequence[Sample]) -> int:
    """About how many bytes ``n`` synthetic slices take on disk, each the size of the
    largest host: its float32 image, its mask and its manifest record."""
    pixels = max((int(s.image.shape[0]) * int(s.image.shape[1]) for s in hosts), default=0)
    image = _blocks(pixels * 4 + _NPY_HEADER)
    mask = _blocks(pixels * _MASK_BYTES_PER_PIXEL + 100)
    return n * (image + mask + _RECORD_BYTES) + _DATASET_BYTES


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1000 or unit == "PB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError


def check_disk_space(out: Path, n: int, hosts: Sequence[Sample]) -> None:
    """Refuse ``n`` slices that cannot fit in the free space where ``out`` is written.

    Raises:
        DataError: naming ``out``, the estimate and the free space, before any slice is made.
    """
    where = Path(os.path.abspath(out)).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # not measurable here: the write itself reports a full disk
    need = estimate_bytes(n, hosts)
    if need > free:
        h, w = max((s.image.shape for s in hosts), key=lambda shape: shape[0] * shape[1])
        raise DataError(
            f"{out}: --n {n} synthetic slices of {h}x{w} px need about {_size(need)}, but "
            f"{where} has {_size(free)} free; use a smaller --n or another --out"
        )


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` (0-based) of a run seeded ``seed``; 31 bits."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint32)[0] >> 1)


def hosts_folder(checkpoint: Path, data_info: dict[str, Any]) -> Path:
    """The training data folder a checkpoint records (domain A for CycleGAN)."""
    folder = data_info.get("folder")
    if not folder:
        raise CheckpointError(
            f"{checkpoint}: records no training data folder; pass the host slices with --hosts"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: training data folder recorded in {checkpoint} no longer exists; "
            "pass the host slices with --hosts"
        )
    return folder


def synthesize_dataset(
    checkpoint: str | os.PathLike,
    n: int,
    out: str | os.PathLike,
    *,
    hosts: str | os.PathLike | SliceDataset | None = None,
    seed: int = 0,
    export: str | None = None,
    chunk: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate ``n`` labelled synthetic slices into the dataset folder ``out``.

    Args:
        checkpoint: a generator checkpoint (``last.pt``), its run folder, or a
            generator-only export (`gan.export.export_generator`); loaded with
            ``weights_only``.
        n: number of synthetic slices.
        out: the dataset folder to write (refused if it exists, unless ``overwrite``).
        hosts: the real slices that receive (DCGAN, pix2pix) or are translated into
            (CycleGAN) synthetic lesions: a dataset folder or a `SliceDataset` (e.g. the
            labelled patients of a split); default: the training data folder recorded
            in the checkpoint.
        seed: seeds every draw; same seed and inputs give byte-identical folders.
        export: also write boxes as ``"voc"`` XML files or a ``"coco"`` JSON.
        chunk: slices generated per call (the unit of seeding, so keep it fixed to
            reproduce a dataset; it is recorded in ``dataset.json``).
        device: ``auto``, ``cpu``, ``cuda``...
        overwrite: replace an existing ``out`` (only a dataset folder lesionforge wrote,
            never the hosts or the checkpoint's folder).
        progress: show a tqdm bar.

    Returns:
        ``out``.
    """
    out = Path(out)
    # Everything cheap first: options, output folder, checkpoint, hosts; then the model.
    for name, value, low in (("n", n, 1), ("chunk", chunk, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"synthesize: {name} must be >= {low}, got {value!r}")
    if export is not None and export not in EXPORT_FORMATS:
        raise ConfigError(f"synthesize: unknown export format {export!r}; use voc or coco")
    check_replaceable(out, overwrite=overwrite)
    checkpoint = resolve_checkpoint(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    if hosts is None:
        hosts = hosts_folder(checkpoint, ckpt.get("data", {}))
    host_dir = Path(getattr(hosts, "folder", hosts))
    # Never replace what is read: the hosts, or the folder holding the checkpoint.
    check_replaceable(out, overwrite=overwrite, inputs=[host_dir, checkpoint])
    host_set = open_dataset(hosts)
    host_info, host_samples = host_set.info, host_set.samples()
    if not host_samples:
        raise DataError(f"{host_dir}: no slices to use as hosts")
    check_disk_space(out, n, host_samples)
    train_step = ckpt["step"]
    # An export names the full checkpoint it came from, so the dataset traces back to the run.
    source_sha = ckpt.get("export", {}).get("source_sha256")
    module = GanModule.from_checkpoint(ckpt, checkpoint, device=torch_device)
    del ckpt
    ckpt_sha = file_sha256(checkpoint)
    model_config = to_jsonable(dataclasses.asdict(module.cfg))

    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=f"synthesize {module.name}", unit="slice", disable=not progress)
    extra = {
        "generator": module.name,
        "checkpoint": {
            "path": str(checkpoint.resolve()), "sha256": ckpt_sha, "step": train_step,
            **({"exported_from_sha256": source_sha} if source_sha else {}),
        },
        "model_config": model_config,
        "hosts": str(host_dir.resolve()),
        "n_hosts": len(host_samples),
        "n": n,
        "seed": seed,
        "chunk": chunk,
    }
    try:
        with DatasetWriter(
            out,
            provenance="synthetic",
            anatomy=dataset_anatomy(host_info),
            config={"n": n, "seed": seed, "chunk": chunk, "export": export},
            classes={int(k): v for k, v in (host_info.get("classes") or {}).items()},
            spacing=host_info.get("spacing"),
            overwrite=overwrite,
            extra=extra,
            inputs=[host_dir, checkpoint],
        ) as writer:
            for c, start in enumerate(range(0, n, chunk)):
                k = min(chunk, n - start)
                cseed = chunk_seed(seed, c)
                samples = module.sample(k, seed=cseed, conditions=host_samples)
                if len(samples) != k:
                    raise DataError(
                        f"{checkpoint}: {module.name} returned {len(samples)} samples, not {k}"
                    )
                for i, s in enumerate(samples):
                    s.meta["model_id"] = s.meta.get("id")
                    s.meta["id"] = f"syn_{start + i:06d}"
                    s.meta.update(
                        synthetic=True,
                        generator=module.name,
                        checkpoint_sha256=ckpt_sha,
                        seed=seed,
                        chunk_seed=cseed,
                        host_id=s.meta.get("host_id"),
                        config=model_config,
                    )
                    writer.add(s)
                bar.update(k)
    finally:
        bar.close()
    if export is not None:
        from augment.io.ct import export_boxes

        export_boxes(out, export)
    log.info("wrote %d %s slices to %s", n, module.name, out)
    return out


__all__ = ["check_disk_space", "chunk_seed", "estimate_bytes", "hosts_folder", "synthesize_dataset"]
