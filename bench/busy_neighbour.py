"""What a busy neighbour costs: training time idle vs beside niced CPU-bound processes.

On a small machine shared with other work, torch's intra-op threads (one per core by
default) wait for each other at the end of every parallel region; when a neighbour holds
one of the cores, each small convolution waits for the scheduler to give the other thread
its turn, and a step can take many times longer (the issue measured CycleGAN's demo
training at 10 s idle and 259 ± 306 s beside one or two niced processes).

For each workload and thread policy this script times the same training twice, alternating
rounds: idle, and with ``--neighbours`` processes spinning a core each at ``--nice``
(default 10, as a background job or a second user's batch work would be; 0: a neighbour as
important as we are) (``python -c "while True: pass"``). It prints seconds and the ratio busy / idle per policy, and each policy's
idle time against the all-cores idle time (what the policy costs on an idle machine).

Workloads (the shapes the demo trains):

* ``unit``: one harness segmentation run, the demo's recipe (Attention U-Net base 8, depth
  3, batch 8 of 48 px patches) for ``--steps`` steps on 128 px head-phantom slices;
* ``cyclegan``: ``gan train cyclegan`` with the CPU preset for ``--steps`` steps on 64 px
  head-phantom slices (domain A -> B).

Policies: ``all`` (one torch thread per core, torch's default) and ``1`` (one thread:
what `lesionforge compare`/`demo` run each unit with, several units side by side).

    .venv/bin/python bench/busy_neighbour.py [--workload unit cyclegan] [--policy all 1]
        [--neighbours 1] [--steps 60] [--rounds 2]

Run it on an otherwise idle machine: the "idle" rows must be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_UNIT = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from augment.datasets import SliceDataset
from downstream.config import SegmentSpec, Strategy
from downstream.harness.compare import dataset_classes
from downstream.harness.tasks import run_task
ds = SliceDataset({data!r})
pids = sorted(set(ds.patient_ids))
train = ds.subset([i for i, p in enumerate(ds.patient_ids) if p in pids[:4]])
test = ds.subset([i for i, p in enumerate(ds.patient_ids) if p in pids[4:6]]).samples()
spec = SegmentSpec(arch="attention-unet", base=8, depth=3, steps={steps}, batch_size=8, patch=48,
                   fg_fraction=0.5, val_every={steps})
t = time.perf_counter()
row, _ = run_task("segment", spec, Strategy("none"), train, [], test, seed=0, device="cpu",
                  classes=dataset_classes(ds))
print(row["train_seconds"])
"""

_CYCLEGAN = """
import sys, time, torch, tempfile
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from augment.datasets import SliceDataset
from gan.registry import REGISTRY
from gan.train.trainer import train_generator
preset = REGISTRY["cyclegan"].presets["cpu"]
with tempfile.TemporaryDirectory() as out:
    t = time.perf_counter()
    train_generator("cyclegan", SliceDataset({data!r}), SliceDataset({data_b!r}), out, steps={steps},
                    batch_size=None, default_batch_size=preset["batch_size"], seed=0, device="cpu",
                    model_config=preset["config"], ckpt_every={steps}, grid_every={steps}, progress=False,
                    precision="fp32")
    print(time.perf_counter() - t)
"""


def _phantoms(root: Path) -> dict[str, str]:
    from augment.phantoms.render import write_phantom

    out = {}
    for name, size, domain in (("unit", 128, "A"), ("a64", 64, "A"), ("b64", 64, "B")):
        folder = root / name
        if not (folder / "dataset.json").exists():
            write_phantom(folder, "head-ich", 48, size=size, domain=domain, seed=0, slices_per_patient=8,
                          overwrite=True, progress=False)
        out[name] = str(folder)
    return out


def _time(workload: str, threads: int, steps: int, data: dict[str, str]) -> float:
    code = (_UNIT if workload == "unit" else _CYCLEGAN).format(
        root=str(ROOT), threads=threads, steps=steps, data=data["unit" if workload == "unit" else "a64"],
        data_b=data["b64"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def _neighbours(n: int, nice: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", nargs="+", default=["unit", "cyclegan"], choices=["unit", "cyclegan"])
    ap.add_argument("--policy", nargs="+", default=["all", "1"], help="'all' (one thread per core) or a count")
    ap.add_argument("--neighbours", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10, help="the neighbours' niceness (0: as important as us)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _phantoms(Path(tmp))
        for workload in args.workload:
            for policy in args.policy:
                threads = cores if policy == "all" else int(policy)
                idle, busy = [], []
                for r in range(args.rounds):
                    idle.append(_time(workload, threads, args.steps, data))
                    procs = _neighbours(args.neighbours, args.nice)
                    try:
                        time.sleep(0.5)
                        busy.append(_time(workload, threads, args.steps, data))
                    finally:
                        for p in procs:
                            p.kill()
                            p.wait()
                    print(f"{workload} threads={threads} round {r}: idle {idle[-1]:.1f} s, busy {busy[-1]:.1f} s",
                          file=sys.stderr, flush=True)
                results.append({"workload": workload, "policy": policy, "threads": threads,
                                "idle_s": min(idle), "busy_s": sum(busy) / len(busy), "busy_max_s": max(busy),
                                "idle_rounds": idle, "busy_rounds": busy})
    print(f"{cores} cores, {args.neighbours} neighbour(s) at nice {args.nice}, {args.steps} steps, {args.rounds} "
          "rounds: idle = "
          "best round, busy = mean (and worst) round")
    print(f"{'workload':10} {'threads':>7} {'idle s':>8} {'busy s':>8} {'worst':>8} {'busy/idle':>9} "
          f"{'idle vs all':>11}")
    for r in results:
        ref = next(x["idle_s"] for x in results if x["workload"] == r["workload"] and x["policy"] == "all") \
            if any(x["policy"] == "all" and x["workload"] == r["workload"] for x in results) else float("nan")
        print(f"{r['workload']:10} {r['threads']:>7} {r['idle_s']:>8.1f} {r['busy_s']:>8.1f} {r['busy_max_s']:>8.1f} "
              f"{r['busy_s'] / r['idle_s']:>9.2f} {r['idle_s'] / ref:>11.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
