"""A comparison as units of work: what `run_compare` hands to an executor.

A study is many independent pieces: each generator per (budget, seed) — train it, write its
synthetic set, evaluate it — and each strategy per (budget, seed) — train and evaluate every
task, segment first. A strategy unit that trains on synthetic slices waits for its
generator units; nothing else depends on anything. `plan` lists the units in the order one
process runs them; `run_unit` runs one, in this process or on a Ray worker
(`downstream.harness.executors`), and returns a plain dict.

Results never depend on where or when a unit ran: every unit seeds itself from the config
and its (budget, seed), reads the shared output folder and writes its results there under
the content-hash names of `downstream.harness.compare` (atomically), so two workers never
see half a unit and a rerun after a crash recomputes only the units that did not finish.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment.datasets import SliceDataset
from augment.errors import CheckpointError, ConfigError, DataError
from downstream.config import Experiment

log = logging.getLogger(__name__)

GENERATOR, STRATEGY = "generator", "strategy"


@dataclass(frozen=True)
class Unit:
    """One piece of a comparison. ``needs`` are the ids of the generator units whose
    synthetic sets a strategy unit trains on."""

    kind: str  # GENERATOR or STRATEGY
    name: str  # the generator's or the strategy's name
    budget: int
    seed: int
    ceiling: bool = False  # a baseline on every training patient (`Experiment.ceiling`)
    needs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}:b{self.budget}:s{self.seed}" + (":ceiling" if self.ceiling else "")

    def describe(self) -> str:
        what = f"training {self.name}" if self.kind == GENERATOR else self.name
        return f"{what} ({'ceiling, ' if self.ceiling else ''}budget {self.budget}, seed {self.seed})"


@dataclass(frozen=True)
class Context:
    """What every unit needs besides itself (pickled to Ray workers as it is)."""

    exp: Experiment
    out: Path
    device: str


# Errors that no retry or other unit can fix (a config or data problem, a leak of a test
# patient): the comparison stops on the first. Anything else fails its unit only.
FATAL = (ConfigError, DataError, CheckpointError, AssertionError)


def plan(exp: Experiment, splits) -> list[Unit]:
    """Every unit of ``exp``, in the order one process runs them: per (budget, seed) its
    generators, then its strategies; then the ceiling's baselines per seed."""
    from downstream.harness.compare import _baselines

    used = sorted({g for st in exp.strategies for g in st.generators})
    units: list[Unit] = []
    for budget in exp.budgets:
        for seed in exp.seeds:
            gen = {g: Unit(GENERATOR, g, budget, seed) for g in used}
            units += gen.values()
            units += [Unit(STRATEGY, st.name, budget, seed, needs=tuple(gen[g].id for g in st.generators))
                      for st in exp.strategies]
    n_all = len(set(splits.train.patient_ids))
    if n_all not in exp.budgets:
        units += [Unit(STRATEGY, st.name, n_all, seed, ceiling=True) for seed in exp.seeds for st in _baselines(exp)]
    return units


# One process runs many units of the same comparison: its data and splits are read once.
_SPLITS: dict[tuple[str, str], Any] = {}


def context_splits(ctx: Context):
    """The comparison's `Splits`, from the data `run_compare` prepared in ``ctx.out``."""
    from downstream.harness.compare import Splits, config_hash, prepare_data

    key = (str(ctx.out.resolve()), config_hash(ctx.exp.as_dict()))
    if key not in _SPLITS:
        source, target = prepare_data(ctx.exp, ctx.out / "data")
        _SPLITS.clear()
        _SPLITS[key] = Splits(ctx.exp, source, target)
    return _SPLITS[key]


def run_unit(unit: Unit, ctx: Context, needs: dict[str, dict[str, Any]] | None = None, *,
             splits=None, on_task: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one unit; returns ``{"unit", "status", "seconds", "computed", ...}``.

    ``status`` is ``done``, ``skipped`` (a generator it needs made no synthetic set) or
    ``failed`` (with ``error``: the exception in one line, and ``traceback``). Errors in
    `FATAL` propagate: they would fail every unit alike.
    """
    t0 = time.perf_counter()
    splits = splits if splits is not None else context_splits(ctx)
    result: dict[str, Any] = {"unit": unit.id}
    try:
        if unit.kind == GENERATOR:
            result.update(_generator_unit(unit, ctx, splits))
        else:
            result.update(_strategy_unit(unit, ctx, splits, needs or {}, on_task))
    except FATAL:
        raise
    except Exception as e:  # noqa: BLE001 - a unit's failure is reported, the others go on
        log.error("%s failed: %s: %s", unit.describe(), type(e).__name__, e)
        result.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}",
                      traceback=traceback.format_exc(), computed=True)
    result["seconds"] = time.perf_counter() - t0
    return result


def _generator_unit(unit: Unit, ctx: Context, splits) -> dict[str, Any]:
    from downstream.harness.compare import generator_quality, generator_run, synthetic_set
    from gan.base import get_generator

    exp, out = ctx.exp, ctx.out
    spec = exp.generators[unit.name]
    labelled = splits.labelled(unit.budget, unit.seed)
    splits.assert_unseen(f"labelled set (budget {unit.budget}, seed {unit.seed})", labelled)
    unl_b = splits.target_train if get_generator(unit.name).unpaired else None
    if unl_b is not None:
        splits.assert_unseen(f"{unit.name} domain-B training data", unl_b)
    ckpt, ginfo = generator_run(unit.name, spec, labelled, unl_b, seed=unit.seed, root=out / "generators",
                                device=ctx.device)
    try:
        synthetic = synthetic_set(unit.name, ckpt, spec, labelled, seed=unit.seed, root=out / "synthetic",
                                  device=ctx.device)
    except DataError as e:  # e.g. an undertrained DCGAN whose masks are empty: say so, go on
        log.warning("%s made no labelled samples: %s", unit.describe(), e)
        failure = {"generator": unit.name, "budget": unit.budget, "seed": unit.seed, "error": str(e),
                   "run": ginfo["run"]}
        return {"status": "done", "synthetic": None, "failure": failure, "computed": ginfo["computed"]}
    splits.assert_unseen(f"{unit.name} synthetic set", synthetic)
    quality = generator_quality(unit.name, ckpt, ginfo, labelled, splits, synthetic, exp, budget=unit.budget,
                                seed=unit.seed, root=out / "quality", device=ctx.device)
    return {"status": "done", "synthetic": str(synthetic.folder), "quality": quality,
            "computed": ginfo["computed"]}


def _strategy_unit(unit: Unit, ctx: Context, splits, needs: dict[str, dict[str, Any]],
                   on_task: Callable[[str], None] | None) -> dict[str, Any]:
    from downstream.harness.compare import dataset_classes, strategy_runs

    exp = ctx.exp
    strategy = next(s for s in exp.strategies if s.name == unit.name)
    missing = [n for n in unit.needs if not (needs.get(n) or {}).get("synthetic")]
    if missing:  # its generator failed (reported there): nothing to train
        return {"status": "skipped", "rows": [], "reason": f"no synthetic set from {', '.join(missing)}",
                "computed": False}
    synthetic = [SliceDataset(needs[n]["synthetic"]) for n in unit.needs]
    if unit.ceiling:
        labelled = splits.train
        splits.assert_unseen("ceiling training set", labelled)
    else:
        labelled = splits.labelled(unit.budget, unit.seed)
        splits.assert_unseen(f"labelled set (budget {unit.budget}, seed {unit.seed})", labelled)
    rows = strategy_runs(exp, strategy, unit.budget, unit.seed, labelled, synthetic, splits, out=ctx.out,
                         device=ctx.device, classes=dataset_classes(splits.source), on_task=on_task)
    if unit.ceiling:
        for row in rows:
            row["ceiling"] = True
    return {"status": "done", "rows": rows, "computed": not all(r["cached"] for r in rows)}
