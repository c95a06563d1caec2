"""A comparison as units: the plan, failures that do not stop the others, and the same rows
whether the units ran here one after another or as Ray tasks (`--executor ray`).

The Ray tests need the `distributed` extra; CI installs it and fails if they skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from augment.folder import read_dataset
from downstream.config import experiment_from_dict
from downstream.harness.compare import Splits, UnitsFailedError, prepare_data, run_compare
from downstream.harness.units import GENERATOR, STRATEGY, plan
from tests.downstream.test_harness import TINY

ROOT = Path(__file__).resolve().parents[2]

# Keys of a result row that are timings (or say whether it came from the cache): everything
# else must be the same whichever executor ran the unit.
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds", "cached"}


def rows(folder: Path) -> list[dict]:
    out = []
    for line in (folder / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in TIMING_KEYS and not k.endswith("_seconds")})
    return out


def test_plan_lists_generators_before_the_strategies_that_need_them(tmp_path):
    exp = experiment_from_dict({**TINY, "seeds": [0, 1]})
    source, target = prepare_data(exp, tmp_path / "data")
    units = plan(exp, Splits(exp, source, target))
    ids = [u.id for u in units]
    assert len(ids) == len(set(ids))
    # per seed: pix2pix, then none and pix2pix; then the ceiling's none per seed.
    assert [(u.kind, u.name, u.seed, u.ceiling) for u in units] == [
        (GENERATOR, "pix2pix", 0, False), (STRATEGY, "none", 0, False), (STRATEGY, "pix2pix", 0, False),
        (GENERATOR, "pix2pix", 1, False), (STRATEGY, "none", 1, False), (STRATEGY, "pix2pix", 1, False),
        (STRATEGY, "none", 0, True), (STRATEGY, "none", 1, True),
    ]  # fmt: skip
    for u in units:
        assert all(ids.index(n) < ids.index(u.id) for n in u.needs)
    assert units[2].needs == (units[0].id,) and not units[1].needs


def test_a_failed_unit_is_reported_the_others_finish_and_a_rerun_retries_only_it(tmp_path, monkeypatch):
    import downstream.harness.tasks

    real = downstream.harness.tasks.run_task
    calls: list[str] = []

    def flaky(task, spec, strategy, *a, **k):
        calls.append(f"{task}:{strategy.name}")
        if strategy.name == "pix2pix":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(task, spec, strategy, *a, **k)

    monkeypatch.setattr(downstream.harness.tasks, "run_task", flaky)
    exp = experiment_from_dict(TINY)
    with pytest.raises(UnitsFailedError, match=r"1 of 4 units failed \(first: pix2pix \(budget 2, seed 0\): "
                                               r"RuntimeError: CUDA error"):
        run_compare(exp, out=tmp_path, progress=False)
    # The others ran to the end: none, and the ceiling's none, both tasks.
    done = rows(tmp_path)
    assert {(r["strategy"], r.get("ceiling", False)) for r in done} == {("none", False), ("none", True)}
    report = (tmp_path / "report.md").read_text()
    assert "### Units that failed" in report and "pix2pix (budget 2, seed 0): RuntimeError: CUDA error" in report
    units = json.loads((tmp_path / "units.json").read_text())["units"]
    assert [u["status"] for u in units] == ["done", "done", "failed", "done"]

    calls.clear()
    monkeypatch.setattr(downstream.harness.tasks, "run_task",
                        lambda task, spec, strategy, *a, **k: (calls.append(f"{task}:{strategy.name}"),
                                                               real(task, spec, strategy, *a, **k))[1])
    run_compare(exp, out=tmp_path, progress=False)
    assert calls == ["segment:pix2pix", "detect:pix2pix"]  # nothing else was trained again
    assert {r["strategy"] for r in rows(tmp_path)} == {"none", "pix2pix"}
    assert "Units that failed" not in (tmp_path / "report.md").read_text()


def test_executor_ray_without_ray_is_one_clear_line(tmp_path, monkeypatch):
    from augment.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lesionforge\[distributed\]'"):
        run_compare(experiment_from_dict(TINY), out=tmp_path, progress=False, executor="ray")


def test_resources_section_is_checked():
    from augment.errors import ConfigError

    exp = experiment_from_dict({**TINY, "resources": {"generator": {"num_gpus": 1}, "task": {"num_gpus": 0.5}}})
    assert exp.resources.generator.num_gpus == 1 and exp.resources.task.num_gpus == 0.5
    assert exp.resources.task.num_cpus == 1  # Ray's default: one CPU (and one torch thread) per unit
    with pytest.raises(ConfigError, match="resources: unknown unit kind 'trainer'"):
        experiment_from_dict({**TINY, "resources": {"trainer": {"num_gpus": 1}}})
    with pytest.raises(ConfigError, match="resources.task: asks for no CPU and no GPU"):
        experiment_from_dict({**TINY, "resources": {"task": {"num_cpus": 0}}})


def test_two_local_jobs_give_the_rows_one_job_gives(tmp_path):
    """--jobs 2: two units at a time in worker processes (one torch thread each on 2
    cores) against one after another with one thread: the same rows, byte for byte."""
    import torch

    raw = {**TINY, "seeds": [0, 1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        run_compare(experiment_from_dict(raw), out=tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    run_compare(experiment_from_dict(raw), out=tmp_path / "two", progress=False, jobs=2)
    assert json.dumps(rows(tmp_path / "two"), sort_keys=True) == json.dumps(rows(tmp_path / "one"), sort_keys=True)
    units = json.loads((tmp_path / "two" / "units.json").read_text())
    assert units["executor"] == "local, 2 jobs" and len(units["units"]) == 8


# ---------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs (what `--executor ray` starts by itself when none runs)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_rows_one_process_gives(ray_local, tmp_path):
    """Two units at a time on 2 CPUs (one torch thread each) against one after another with
    one thread: every metric, curve and per-patient value is the same, byte for byte."""
    import torch

    raw = {**TINY, "seeds": [0, 1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_compare(experiment_from_dict(raw), out=tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    run_compare(experiment_from_dict(raw), out=tmp_path / "ray", progress=False, executor="ray")
    local, remote = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert len(local) == 2 * 2 * 2 + 2 * 2  # tasks x strategies x seeds + the ceiling's none per seed
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    units = json.loads((tmp_path / "ray" / "units.json").read_text())
    assert units["executor"] == "ray" and {u["status"] for u in units["units"]} == {"done"}
    # The generators' synthetic sets hold the same slices (byte for byte, by their sha256).
    def synthetic(folder: Path) -> dict:
        sets = {}
        for d in (folder / "synthetic").iterdir():
            info, records = read_dataset(d)
            sets[info["generator"], info["seed"]] = [r["sha256"] for r in records]
        return sets

    assert synthetic(tmp_path / "ray") == synthetic(tmp_path / "local") != {}


def _ray_unit_processes() -> list[int]:
    """Pids of Ray workers busy with a strategy unit (Ray names the process after the task:
    ``ray::<unit id>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::strategy:"):
                pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers in /proc")
def test_a_killed_worker_is_retried_and_a_rerun_computes_nothing(tmp_path):
    """kill -9 of a worker busy with a unit: Ray reruns that unit, the report is complete,
    and a rerun of the same command finds every unit in the cache."""
    pytest.importorskip("ray")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "tasks": {**TINY["tasks"], "segment": {
        **TINY["tasks"]["segment"], "steps": 40, "val_every": 10}}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "downstream.cli", "compare", str(config), "--out", str(out),
           "--executor", "ray"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new local instance
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        busy = _ray_unit_processes()
        if busy:
            time.sleep(1.0)  # let it get into its training loop
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=600)
    assert killed is not None, log[-2000:]
    assert proc.returncode == 0, log[-3000:]
    units = json.loads((out / "units.json").read_text())["units"]
    assert {u["status"] for u in units} == {"done"} and all(u["computed"] for u in units)
    assert (out / "report.md").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    units = json.loads((out / "units.json").read_text())["units"]
    assert not any(u["computed"] for u in units), units  # no unit computed twice


def test_auto_jobs_is_one_unit_per_core_within_memory(monkeypatch):
    from downstream.harness import executors

    monkeypatch.setattr(executors.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(executors, "_available_gb", lambda: 64.0)
    assert executors.auto_jobs("cpu") == 8
    monkeypatch.setattr(executors, "_available_gb", lambda: 5.0)  # room for two 2 GB workers
    assert executors.auto_jobs("cpu") == 2
    monkeypatch.setattr(executors, "_available_gb", lambda: 0.5)
    assert executors.auto_jobs("cpu") == 1
    monkeypatch.setattr("gan.base.resolve_device", lambda spec: __import__("torch").device("cuda"))
    assert executors.auto_jobs("cuda") == 1  # a GPU runs one unit at a time
