"""One training loop for every generator: seeding, devices, logging, grids, checkpoints.

A model writes ``prepare``/``make_batch``/``training_step`` (see `gan.base`); `train`
does the rest, nanoGPT-style, in one readable loop.

Reproducibility: step ``s`` (0-based) draws its batch from
``np.random.default_rng([seed, s])`` and reseeds torch with `torch_seed` ``(seed, s)``
before ``training_step``. Nothing else random carries over between steps except what
the model keeps in its ``state_dict`` (an image pool), so a resumed run on CPU gives
bit-identical weights to an uninterrupted one.

Under ``torchrun --nproc_per_node N`` the same loop runs in N processes that train one
model on one global batch of ``batch_size`` (`gan.train.distributed`): each process keeps
its part of every batch, gradients are averaged, process 0 writes the run folder.

Conventions: "step N" in the log, in checkpoints and in error messages counts
completed updates (the first update is step 1; a checkpoint at step N resumes with
the (N+1)-th update).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from augment.config_types import build_dataclass, check_fields
from augment.datasets import SliceDataset
from augment.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LesionforgeError,
)
from augment.folder import dataset_anatomy
from augment.sample import Sample
from augment.storage import (
    to_jsonable,
    versions,
    write_bytes_atomic,
)
from augment.window import Window
from gan.base import (
    RUN_CHECKPOINT,
    GanModule,
    LinearDecayLR,
    file_sha256,
    get_generator,
    read_checkpoint,
    resolve_device,
)
from gan.networks.small_maps import use_gemm_for_small_maps
from gan.train.compiled import check_compile
from gan.train.config import TrainConfig
from gan.train.data import (
    data_defaults,
    dataset_domain,
    describe_data,
    load_model_config,
    open_dataset,
    require_anatomy,
)
from gan.train.distributed import World, check_batch_split, data_parallel, joined, launched_size
from gan.train.early_stop import QualityStop, check_until, quality_score
from gan.train.ema import complete_ema_state, update_ema
from gan.train.precision import resolve_precision
from gan.train.probes import PREFIX as PROBE_PREFIX
from gan.train.probes import run_probe
from gan.train.run_folder import (
    check_resume,
    check_run_folder,
    remove_stale_run_files,
    save_checkpoint,
)
from gan.train.sinks import JsonlSink, LossMonitor, Sinks, WandbSink

log = logging.getLogger(__name__)

# Tags the torch seed stream so it never coincides with the numpy batch stream.
_TORCH_STREAM = 0x746F7263  # "torc"
# A step index no run reaches, so the initial weights have their own seed stream.
_INIT_STEP = 2**62


def torch_seed(seed: int, step: int) -> int:
    """The torch seed of step ``step`` (0-based): a hash of ``(seed, step)``, 63 bits."""
    state = np.random.SeedSequence([seed, step, _TORCH_STREAM]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def init_seed(seed: int) -> int:
    """The torch seed the networks' initial weights are drawn with (`train_generator`)."""
    return torch_seed(seed, _INIT_STEP)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The numpy generator ``make_batch`` draws step ``step``'s batch from."""
    return np.random.default_rng([seed, step])


@contextlib.contextmanager
def _deferred_sigint(world: World) -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag the loop checks between steps.

    So an interrupted run stops at a step boundary and its checkpoint resumes exactly;
    a second Ctrl-C interrupts at once (weights may then hold a half-done step). Under
    torchrun, which passes the user's Ctrl-C on to its processes (or SIGTERM) and kills
    them 30 s later, every SIGINT and SIGTERM only sets the flag, and the processes stop
    together at the first step boundary where any of them has it.
    """
    flag = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signums = (signal.SIGINT,) if world.size == 1 else (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signums}

    def handler(signum, frame):
        flag["interrupted"] = True
        if world.size == 1:
            log.warning("interrupt: stopping after this step (press Ctrl-C again to stop now)")
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
        else:
            log.warning("%s: stopping after this step", signal.Signals(signum).name)

    for signum in signums:
        signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _grid_hosts(data: Sequence[Sample], n: int) -> list[Sample]:
    """``n`` hosts spread evenly over the data (fixed for a run, so grids show progress)."""
    n = min(n, len(data))
    return [data[int(i)] for i in np.linspace(0, len(data) - 1, n).round()]


def save_progress_grid(
    module: GanModule, hosts: Sequence[Sample], path: Path, *, seed: int, window: Window
) -> Path:
    """Row 1: real host slices; then the model's `preview_rows` (mask contours).

    The legend names classes as the training data's ``dataset.json`` does
    (``module.data_info["classes"]``); the grid states its display ``window``.
    """
    from augment.viz import save_grid

    rows = module.preview_rows(hosts, seed=seed)
    by_id = {h.id: h for h in hosts}
    first = rows[0][1]
    real = [by_id.get(s.meta.get("host_id"), hosts[i % len(hosts)]) for i, s in enumerate(first)]
    save_grid(
        [real, *(row for _, row in rows)],
        path,
        window=window,
        titles=[s.id for s in real],
        row_labels=["real", *(label for label, _ in rows)],
        contour=True,
        class_names=module.data_info.get("classes"),
    )
    return path


def train(
    module: GanModule,
    data: Sequence[Sample],
    data_b: Sequence[Sample] | None,
    cfg: TrainConfig,
    *,
    data_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``module`` on ``data`` (and ``data_b``, CycleGAN's domain B) for ``cfg.steps``.

    Args:
        module: a freshly built `GanModule` (its weights are loaded here on resume).
        data: training slices (HU); also the hosts of the progress grids.
        data_b: second-domain slices for unpaired models, else None.
        cfg: the `TrainConfig`.
        data_info: where the data came from (``folder``, ``folder_b``, ``kind``...),
            merged with the data fingerprint into ``module.data_info``.

    Under torchrun (``WORLD_SIZE`` and the rest in the environment) every process calls
    this with the same arguments; they train together (`gan.train.distributed`), process
    0 writes ``out``, and every process returns the same summary (but ``grids``, which
    only process 0 draws).

    Returns:
        ``step``, mean ``losses`` of the last logging window, ``checkpoint`` and
        ``checkpoint_sha256``, ``log``, ``config``, ``grids`` (paths as strings).

    Raises:
        CheckpointError: resuming without a checkpoint, or with other data or config.
        ConfigError: ``out`` already holds a run and neither resume nor overwrite is set,
            or holds files that are not a run's (`check_run_folder`); under torchrun, a
            batch size the processes cannot split equally.
        NonFiniteLossError: a loss became NaN/inf (named with its step).
    """
    check_batch_split(cfg.batch_size, launched_size())
    check_run_folder(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.compile:
        check_compile(resolve_device(cfg.device))
    check_until(cfg.until, module.name, module.quality_scored)
    with joined(resolve_device(cfg.device)) as world:
        return _train(module, data, data_b, cfg, data_info or {}, world)


def _train(
    module: GanModule,
    data: Sequence[Sample],
    data_b: Sequence[Sample] | None,
    cfg: TrainConfig,
    data_info: dict[str, Any],
    world: World,
) -> dict[str, Any]:
    """`train`, in this process's part of ``world``."""
    out = cfg.out
    ckpt_path = out / RUN_CHECKPOINT
    device = world.device
    module.check_data(
        module.cfg, data, data_b,
        folder=data_info.get("folder") or "data", folder_b=data_info.get("folder_b") or "data_b",
    )  # fmt: skip
    info = {**data_info, **describe_data(data, data_b)}
    resume_from: dict[str, Any] | None = None
    if cfg.resume:
        resume_from = read_checkpoint(ckpt_path)
        check_resume(resume_from, module, info, cfg, ckpt_path)
    if world.is_main:
        remove_stale_run_files(out)

    module.data_info = info
    module.prepare(data, data_b)
    module.to(device)
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    if cfg.small_map_gemm and device.type == "cpu":
        use_gemm_for_small_maps(module)
    start = 0
    if resume_from is not None:
        module.load_state_dict(complete_ema_state(module, resume_from["state_dict"], ckpt_path))
        for name, opt in module.optimizers.items():
            if name not in resume_from.get("optimizers", {}):
                raise CheckpointError(f"{ckpt_path}: has no state for optimizer {name!r}")
            opt.load_state_dict(resume_from["optimizers"][name])
        start = int(resume_from["step"])
        log.info("resuming %s at step %d of %d", out, start, cfg.steps)
    precision = resolve_precision(cfg.precision, device)
    module.scaler = precision.scaler(device)
    if module.scaler is not None and resume_from is not None and "scaler" in resume_from:
        module.scaler.load_state_dict(resume_from["scaler"])
    log.info("%s: training in %s (%s)", module.name, precision.name, precision.why)
    module.train()
    parallel_step = data_parallel(module, world, compile_networks=cfg.compile)

    resolved = {
        "model": module.name,
        "model_config": asdict(module.cfg),
        "train": asdict(cfg),
        "data": info,
        "device": str(device),
        "precision": precision.record(),
        "versions": versions(),
    }
    if world.size > 1:
        resolved["distributed"] = {"world_size": world.size, "backend": world.backend}
    config_path = out / "config.yaml"
    sink_list: list[JsonlSink | WandbSink] = []
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(
            config_path, yaml.safe_dump(to_jsonable(resolved), sort_keys=False).encode()
        )
        sink_list.append(
            JsonlSink(out / "log.jsonl", resume_from=start if resume_from is not None else None)
        )
        if cfg.wandb:
            sink_list.append(
                WandbSink(project=cfg.wandb_project, config=resolved, out=out, name=out.name)
            )
    sinks = Sinks(sink_list)

    hosts = _grid_hosts(data, cfg.grid_n)
    window = module.display_window()
    grids: list[str] = []

    def grid(step: int) -> None:
        path = out / "grids" / f"step_{step:06d}.png"
        try:
            save_progress_grid(module, hosts, path, seed=cfg.seed, window=window)
        except LesionforgeError as e:  # a preview must not end a long run
            log.warning("step %d: no progress grid (%s)", step, e)
            return
        grids.append(str(path))
        sinks.image("grid", path, step)

    monitor = LossMonitor(device)
    losses: dict[str, float] = {}
    done = start
    stopper = QualityStop(cfg.patience) if cfg.until == "quality" else None
    stopped = False
    sha = ""
    autocast = precision.autocast(device)
    bench_flag = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels once
    bar = _progress_bar(cfg, module.name, start, show=world.is_main)
    t0, done_at_t0 = time.perf_counter(), start
    try:
        with _deferred_sigint(world) as sigint:
            for step in range(start, cfg.steps):
                if world.any(sigint["interrupted"]):
                    raise KeyboardInterrupt
                torch.manual_seed(torch_seed(cfg.seed, step))
                # Under torchrun: the whole batch drawn, this process's part kept.
                batch = module.make_batch(step_rng(cfg.seed, step), cfg.batch_size)
                batch = world.shard.local_batch(batch, cfg.batch_size)
                batch = _to_device(batch, device, cfg.channels_last)
                with autocast, parallel_step():
                    step_losses = train_step(module, batch, step)
                if module.scaler is not None:
                    module.scaler.update()  # once per step, after every optimizer stepped
                done = step + 1
                monitor.update(done, world.mean(step_losses))
                last = done == cfg.steps
                if done % cfg.log_every == 0 or last:
                    losses = monitor.flush()
                    rate = (done - done_at_t0) / max(time.perf_counter() - t0, 1e-9)
                    sinks.log({"step": done, **losses, "steps_per_s": rate})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                if world.is_main and ((cfg.grid_every and done % cfg.grid_every == 0) or last):
                    if cfg.grid_n:
                        grid(done)
                    if cfg.probes:  # cheap quality numbers, from the seed alone (gan.train.probes)
                        probe = run_probe(module, data, data_b, seed=cfg.seed)
                        if probe:
                            sinks.log({"step": done, **probe})
                        if stopper is not None and not last:
                            stopped = _quality_stop(stopper, probe, done, cfg, sinks)
                if stopper is not None and cfg.grid_every and done % cfg.grid_every == 0:
                    stopped = world.any(stopped)  # process 0 probed; every process stops
                last = last or stopped
                if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or last:
                    monitor.check()  # never save weights that already went NaN
                    if world.is_main:
                        _, sha = save_checkpoint(module, cfg, done, numbered=not last)
                bar.update(1)
                if stopped:
                    break
    except KeyboardInterrupt:
        if world.is_main:
            save_checkpoint(module, cfg, done, numbered=False)
            log.warning(
                "interrupted: checkpoint at step %d in %s (continue with --resume)", done, ckpt_path
            )
        world.barrier()  # torchrun ends every process once one has left: let 0 finish writing
        raise
    finally:
        bar.close()
        sinks.close()
        torch.backends.cudnn.benchmark = bench_flag
    if start >= cfg.steps:
        if start > cfg.steps:
            log.warning(
                "%s: already trained for %d steps, more than the %d asked for (--steps); nothing "
                "to do (the checkpoint is kept as it is)", out, start, cfg.steps,
            )  # fmt: skip
        else:
            log.info("%s: already trained for %d steps; nothing to do", out, start)
        sha = file_sha256(ckpt_path) if world.is_main else ""
    sha = world.from_main(sha)  # and the others wait until process 0 has written
    return {
        "step": done,
        "stopped_early": stopped,
        "losses": losses,
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha,
        "log": str(out / "log.jsonl"),
        "config": str(config_path),
        "grids": grids,
    }


def _quality_stop(
    stopper: QualityStop, probe: dict[str, float], step: int, cfg: TrainConfig, sinks: Sinks
) -> bool:
    """Feed the probe's score to ``stopper`` (`gan.train.early_stop`); log and say when the
    run stops here."""
    raw = {k.removeprefix(PROBE_PREFIX): v for k, v in probe.items()}
    score = quality_score(raw) if raw else None
    if score is None:  # a skipped probe (logged by run_probe) counts as no improvement
        score = float("nan")
    stop = stopper.update(step, score)
    sinks.log({"step": step, "quality/score": score, "quality/best": stopper.best,
               "quality/best_step": stopper.best_step})  # fmt: skip
    if stop:
        log.warning(
            "--until quality: no better probe score for %d probes (best %.3f at step %d); "
            "stopping at step %d of %d", stopper.patience, stopper.best, stopper.best_step,
            step, cfg.steps,
        )  # fmt: skip
    return stop


def train_step(module: GanModule, batch: dict[str, Tensor], step: int | None = None) -> dict[str, Any]:
    """One update of ``module`` on ``batch``: the learning-rate schedule (when the model
    follows one, `LinearDecayLR`: every optimizer's rate set for update ``step``, default the
    updates it has done, and returned as ``lr``), then ``module.training_step``, then the
    generator's moving average (`gan.train.ema.update_ema`, when the model keeps one)."""
    if not isinstance(module, LinearDecayLR):
        losses = module.training_step(batch)
        update_ema(module)  # the generator's moving average, when the model keeps one
        return losses
    step = module.steps_done if step is None else step
    lr = module.lr_at(step)
    for opt in module.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = lr
    losses = module.training_step(batch)
    update_ema(module)
    module.steps_done = step + 1
    return {**losses, "lr": lr}


def _progress_bar(cfg: TrainConfig, name: str, start: int, *, show: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.steps,
        initial=start,
        desc=f"train {name}",
        unit="step",
        disable=not (cfg.progress and show),
        dynamic_ncols=True,
    )


# ------------------------------------------------------------------ from folders (CLI)


def train_generator(
    model: str,
    data: str | os.PathLike | SliceDataset,
    data_b: str | os.PathLike | SliceDataset | None,
    out: str | os.PathLike,
    *,
    steps: int,
    batch_size: int | None,
    seed: int = 0,
    device: str = "auto",
    model_config: dict[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
    base_config: dict[str, Any] | None = None,
    default_batch_size: int | None = None,
    **train_options: Any,
) -> dict[str, Any]:
    """Train generator ``model`` into the run folder ``out``: what ``lesionforge gan train``
    and the comparison harness both call.

    ``data`` (and ``data_b``, the target domain of unpaired models) is a dataset folder or
    a `SliceDataset` (e.g. the labelled patients of a split); the checkpoint records its
    folder, patients and fingerprint.

    Model options: ``base_config`` (a preset's, `gan.registry.REGISTRY`, or on resume the
    run's own, `resume_defaults`), then ``config_file`` (YAML, see `load_model_config`),
    then ``model_config`` on top; ``anatomy``, ``window`` and ``n_classes`` default to
    what the dataset says (kind and classes in its ``dataset.json``). ``train_options``
    are further `TrainConfig` fields (``resume``, ``ckpt_every``, ``wandb``...).

    ``batch_size`` None takes ``default_batch_size`` (a preset's), lowered (with a
    warning) to what the model can draw from the data (`GanModule.batch_limit`); a
    ``batch_size`` given above that bound is refused. Before any network is built the
    model checks that its options fit the data (`GanModule.check_data`: slice size vs
    network depth, one size in both domains), and ``data_b`` must not be ``data``.
    """
    # Everything that can be checked without the data first: options, device, run folder.
    cls = get_generator(model)
    given_batch = batch_size is not None
    if batch_size is None:
        if default_batch_size is None:
            raise ConfigError("train: give batch_size (or default_batch_size)")
        batch_size = default_batch_size
    cfg = build_dataclass(
        TrainConfig,
        {"steps": steps, "batch_size": batch_size, "seed": seed, "device": device, "out": out}
        | train_options,
    )
    resolve_device(cfg.device)
    source = str(config_file) if config_file is not None else None
    user_values = dict(base_config or {})
    user_values.update(load_model_config(config_file, model) if config_file is not None else {})
    user_values.update(model_config or {})
    check_fields(cls.Config, user_values, source=source)
    check_run_folder(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)

    if data_b is not None and not cls.unpaired:
        raise ConfigError(
            f"--data-b {data_b}: {model} learns from one dataset (--data); a second domain "
            "is for cyclegan"
        )
    if data_b is None and cls.unpaired:
        raise ConfigError(
            f"{model} learns a translation between two domains: give the domain B dataset "
            "folder with --data-b"
        )
    ds = open_dataset(data)
    data = ds.folder
    if data_b is not None and _same_folder(data, Path(getattr(data_b, "folder", data_b))):
        raise DataError(
            f"{getattr(data_b, 'folder', data_b)}: --data-b is the same folder as --data ({data}); {model} "
            "learns a translation between two domains (A -> B): give a dataset of the other domain"
        )
    info, samples = ds.info, ds.samples()
    samples_b = None
    if data_b is not None:
        ds_b = open_dataset(data_b)
        data_b, info_b, samples_b = ds_b.folder, ds_b.info, ds_b.samples()
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    values = data_defaults(fields, info, samples)
    values.update(user_values)
    require_anatomy(fields, values, data, model)
    model_cfg = build_dataclass(cls.Config, values, source=source)
    folder_b = str(data_b) if data_b is not None else "data_b"
    try:
        cls.check_data(model_cfg, samples, samples_b, folder=str(data), folder_b=folder_b)
    except ConfigError as e:  # an option that does not fit the data: name where it was set
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None
    if data_b is not None:
        domain = dataset_domain(info, samples)
        if domain is not None and domain == dataset_domain(info_b, samples_b or []):
            log.warning(
                "%s and %s both say they are domain %s (dataset.json): %s may learn no domain "
                "shift between them", data, data_b, domain, model,
            )  # fmt: skip
    limit = None if cfg.resume else cls.batch_limit(model_cfg, samples, samples_b)
    if limit is not None and 1 <= limit[0] < cfg.batch_size:
        n, what = limit
        if given_batch:
            where = f"{data} and {data_b}" if data_b is not None else str(data)
            raise ConfigError(
                f"--batch-size {cfg.batch_size}: {model} draws whole slices, and {where} has only "
                f"{n} {what}; a larger batch repeats slices in every step (more memory, nothing "
                f"more to learn from): use --batch-size <= {n}"
            )
        log.warning("%s: batch size %d lowered to %d, the %s in %s", model, cfg.batch_size, n, what, data)
        cfg = dataclasses.replace(cfg, batch_size=n)
    torch.manual_seed(init_seed(seed))  # initial weights follow the seed too
    module = cls(model_cfg)
    data_info = {
        "folder": str(data.resolve()),
        "folder_b": str(Path(data_b).resolve()) if data_b is not None else None,
        "anatomy": dataset_anatomy(info),
        "classes": info.get("classes") or {},
        "spacing": info.get("spacing"),
    }
    return train(module, samples, samples_b, cfg, data_info=data_info)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


__all__ = [
    "init_seed",
    "save_progress_grid",
    "step_rng",
    "torch_seed",
    "train",
    "train_generator",
    "train_step",
]
