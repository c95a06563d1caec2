"""Units per hour of a small study: `--executor local` against Ray with 1 and 2 local workers.

Runs the same experiment (default: the shipped ``smoke`` config with its task training made
longer, so a unit is seconds of work, not milliseconds) three times into fresh folders:
``local`` (one unit after another in this process, torch with one thread: the reference),
then ``--executor ray`` on a local Ray instance with 1 and with 2 CPUs (one unit per CPU,
one torch thread each). Prints per run: wall time, units per hour, the speed-up over the
reference, and Ray's overhead per unit, ``(workers x wall - sum of unit times) / units``:
the seconds a worker slot spent not running a unit (Ray's start-up, scheduling, passing
results, units waiting for their generators). Checks that every run wrote the same rows.

Run it on an idle machine (another busy process distorts every number):

    .venv/bin/python bench/ray_scaling.py [--config smoke] [--steps 60] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream.config import load_experiment, resolve_experiment  # noqa: E402
from downstream.harness.compare import prepare_data, run_compare  # noqa: E402


def numbers(folder: Path) -> list[str]:
    keep = ("task", "strategy", "budget", "seed", "metrics", "val_curve")
    return [json.dumps({k: json.loads(line)[k] for k in keep}, sort_keys=True)
            for line in (folder / "results.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="smoke", help="a shipped config name or a YAML file")
    ap.add_argument("--steps", type=int, default=60, help="training steps of every task run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    import ray
    import torch

    exp = load_experiment(resolve_experiment(args.config))
    tasks = {k: replace(v, steps=args.steps, val_every=max(1, args.steps // 4)) for k, v in exp.tasks.items()}
    exp = replace(exp, tasks=tasks, seeds=tuple(args.seeds))
    print(f"{exp.name}: tasks {', '.join(tasks)} at {args.steps} steps, seeds {list(args.seeds)}, "
          f"{torch.get_num_threads()} cores seen by torch")
    rows, reference = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("local", 1), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
            out = Path(tmp) / name.replace(", ", "_").replace(" ", "")
            prepare_data(exp, out / "data")  # the phantom, outside the timing
            executor = "local" if name == "local" else "ray"
            if executor == "ray":
                ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False,
                         log_to_driver=False, object_store_memory=100 * 2**20)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            try:
                run_compare(exp, out=out, progress=False, executor=executor)
            finally:
                wall = time.perf_counter() - t0
                torch.set_num_threads(threads)
                if executor == "ray":
                    ray.shutdown()
            units = json.loads((out / "units.json").read_text())["units"]
            busy = sum(u["seconds"] for u in units)
            per_hour = len(units) / wall * 3600
            reference = reference or wall
            overhead = (workers * wall - busy) / len(units)
            print(f"{name:>15}: {len(units)} units in {wall:6.1f} s  {per_hour:7.0f} units/h  "
                  f"x{reference / wall:4.2f} vs local  overhead {overhead:5.2f} s/unit")
            rows[name] = numbers(out)
    same = len({json.dumps(r) for r in rows.values()}) == 1
    print("rows identical across executors:", "yes" if same else "NO")


if __name__ == "__main__":
    main()
