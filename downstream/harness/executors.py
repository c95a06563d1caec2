"""Where a comparison's units run: one after another here (``local``), or as Ray tasks.

``local`` (the default, needs nothing more) runs `downstream.harness.units.plan` in order in
this process, or ``jobs`` units at a time in worker processes on this machine. ``ray`` submits every unit as a Ray task with the resources the experiment's
``resources:`` section asks for, a strategy unit taking its generator units' results as
arguments (Ray starts it when they are done), on a local Ray instance or the cluster at
``--ray-address``. Either way the results come back in plan order, so the rows, the
report and every file a unit writes are the same whichever executor ran them.

A unit that fails is reported with its error and the others go on; `run_units` returns
every result, and `run_compare` lists the failures in the report and exits non-zero, so a
rerun retries just them (finished units are read from the output folder's cache).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from augment.errors import ConfigError
from downstream.harness.units import GENERATOR, Context, Unit, run_unit

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
# Resident memory one worker process needs for the shipped configs' units, with margin
# (measured: 0.9-1.1 GB per unit process on the 128 px studies).
WORKER_GB = 2.0


def auto_jobs(device: str) -> int:
    """Units at a time for ``--jobs auto``: on the CPU one per core (each with one torch
    thread), as many as the available memory holds at `WORKER_GB` each; on a GPU one.

    One thread per unit, several units side by side, because the units' convolutions are
    small: two threads barely beat one (a demo task run: 15 s vs 16 s), and beside a busy
    process a thread waiting for a taken core stalls every one of them (bench/busy_neighbour.py).
    The rows do not depend on it beyond the thread count, which is one per unit on any
    machine with the memory for one unit per core.
    """
    from gan.base import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, int(_available_gb() // WORKER_GB)))


def _available_gb() -> float:
    """Memory available to new processes (Linux ``MemAvailable``: free + reclaimable cache);
    unbounded where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def run_units(
    units: Sequence[Unit], ctx: Context, *, executor: str = "local", ray_address: str | None = None,
    jobs: int = 1, splits=None, progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``units`` with ``executor``; returns their results in the order of ``units``.

    ``jobs`` > 1 (local only): that many units at a time in worker processes on this
    machine, each with an equal share of its cores as torch threads.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if jobs < 1 or (jobs > 1 and executor != "local"):
        raise ConfigError(f"--jobs {jobs}: a positive number, for --executor local (Ray sizes its own "
                          "workers from resources:)")
    bar = tqdm(total=len(units), desc=f"compare {ctx.exp.name}", unit="unit", disable=not progress,
               dynamic_ncols=True)
    try:
        if executor == "ray":
            return _run_ray(units, ctx, ray_address, bar)
        if jobs > 1:
            return _run_processes(units, ctx, jobs, bar)
        return _run_local(units, ctx, splits, bar)
    finally:
        bar.close()


def _counts(results: dict[str, dict[str, Any]], running: int) -> str:
    failed = sum(r["status"] == "failed" for r in results.values())
    return f"done {len(results) - failed}, running {running}, failed {failed}"


def _run_local(units: Sequence[Unit], ctx: Context, splits, bar) -> list[dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for unit in units:
        def on_task(what: str, unit: Unit = unit) -> None:
            bar.set_postfix_str(f"{_counts(results, 1)} | {what} {unit.describe()}")

        bar.set_postfix_str(f"{_counts(results, 1)} | {unit.describe()}")
        results[unit.id] = run_unit(unit, ctx, {n: results[n] for n in unit.needs}, splits=splits,
                                    on_task=on_task)
        bar.update(1)
    return [results[u.id] for u in units]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_processes(units: Sequence[Unit], ctx: Context, jobs: int, bar) -> list[dict[str, Any]]:
    """``jobs`` units at a time in worker processes, started in plan order as their
    generator units finish."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    # This process's torch threads (one per core, or --threads), shared among the jobs.
    threads = max(1, torch.get_num_threads() // jobs)
    results: dict[str, dict[str, Any]] = {}
    waiting = list(units)
    running: dict[Any, Unit] = {}
    # spawn, not fork: a forked torch (its thread pools, an initialised CUDA) is not safe.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        while waiting or running:
            for unit in [u for u in waiting if all(n in results for n in u.needs)][: jobs - len(running)]:
                waiting.remove(unit)
                running[pool.submit(run_unit, unit, ctx, {n: results[n] for n in unit.needs})] = unit
            bar.set_postfix_str(f"{_counts(results, len(running))}, waiting {len(waiting)} | "
                                + ", ".join(u.describe() for u in running.values()))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = running.pop(future)
                results[unit.id] = future.result()  # a FATAL error ends the comparison here
                bar.update(1)
    return [results[u.id] for u in units]


# ------------------------------------------------------------------------------- Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray, an optional dependency: "
                          "pip install 'lesionforge[distributed]'") from None
    return ray


class _Started:
    """A Ray actor the units tell when they start: the progress bar's "running" count."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def add(self, unit_id: str) -> None:
        self.ids.add(unit_id)

    def get(self) -> set[str]:
        return self.ids


def _remote_unit(unit: Unit, ctx: Context, threads: int, started, *needs: dict[str, Any]) -> dict[str, Any]:
    """A unit on a Ray worker: torch gets as many threads as the task reserved CPUs."""
    import torch

    started.add.remote(unit.id)
    torch.set_num_threads(threads)
    return run_unit(unit, ctx, {n: r for n, r in zip(unit.needs, needs, strict=True)})


def _run_ray(units: Sequence[Unit], ctx: Context, address: str | None, bar) -> list[dict[str, Any]]:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # A cluster's address (or RAY_ADDRESS), else a new local instance on this machine.
        # Workers import lesionforge from the driver's environment: install it on every node.
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ConfigError(f"--executor ray: cannot start or reach {where} "
                              f"({' '.join(str(e).split())[:300]})") from None
    try:
        remote = ray.remote(_remote_unit)
        started = ray.remote(num_cpus=0)(_Started).remote()
        res = ctx.exp.resources
        refs: dict[str, Any] = {}
        unit_of: dict[Any, Unit] = {}
        for unit in units:
            want = res.generator if unit.kind == GENERATOR else res.task
            options = {"num_cpus": want.num_cpus, "num_gpus": want.num_gpus, "max_retries": want.max_retries,
                       "name": unit.id}
            ref = remote.options(**options).remote(unit, ctx, max(1, int(want.num_cpus)), started,
                                                   *(refs[n] for n in unit.needs))
            refs[unit.id] = ref
            unit_of[ref] = unit
        results: dict[str, dict[str, Any]] = {}
        pending = list(refs.values())
        t0 = time.perf_counter()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
            for ref in ready:
                unit = unit_of[ref]
                results[unit.id] = _ray_result(ray, ref, unit, results)
                bar.update(1)
            running = len(ray.get(started.get.remote()) - results.keys())
            bar.set_postfix_str(f"{_counts(results, running)}, waiting {len(pending) - running}")
        log.info("ray: %d units in %.0f s", len(units), time.perf_counter() - t0)
        return [results[u.id] for u in units]
    finally:
        if started_here:
            ray.shutdown()


def _ray_result(ray, ref, unit: Unit, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A finished Ray task's result; a crash Ray could not retry away becomes a failed unit."""
    from downstream.harness.units import FATAL

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause()
        if isinstance(cause, FATAL):
            raise cause from None
        error = f"{type(cause).__name__}: {' '.join(str(cause).split())[:500]}"
    except ray.exceptions.RayError as e:  # the worker died (killed, out of memory) more often than retried
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
    failed = [n for n in unit.needs if results.get(n, {}).get("status") == "failed"]
    if failed:
        error = f"not run: {', '.join(failed)} failed"
    log.error("%s failed: %s", unit.describe(), error)
    return {"unit": unit.id, "status": "failed", "error": error, "computed": True, "seconds": float("nan")}

