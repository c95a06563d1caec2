"""Strategies × seeds × label budgets → result rows, cached by config hash.

For each (budget k, seed s): the k labelled patients are drawn from the training split
(nested across k), every generator is trained on those labelled slices only, its
synthetic set is written to disk, and each task's model is trained under each strategy
and evaluated on the test split, which no model or generator ever sees (asserted).

Every expensive unit (a generator run, a synthetic set, a task run) is stored under a
folder named by the sha256 of everything that determines it, so a rerun with the same
config resumes where it stopped and recomputes nothing it already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from augment.anatomy import check_anatomy
from augment.datasets import SliceDataset
from augment.errors import ConfigError, DataError, LesionforgeError
from augment.sample import Sample
from augment.splits import budget_patients, split_by_patient
from augment.storage import to_jsonable, versions, write_bytes_atomic, write_json_atomic
from downstream.config import Experiment, GeneratorSpec, load_experiment
from gan.base import get_generator

log = logging.getLogger(__name__)

HARNESS_VERSION = 5  # bump when a change makes cached runs stale (3: U-Net prior head, Dice over
# patients with a lesion, pix2pix subtype placement, small-map GEMM in generator training; 4: the
# patch/poly/validation recipe, per-patient metrics, unet-backbone detector from the segmenter; 5: checkpoint chosen by the smoothed validation metric)


def config_hash(obj: Any) -> str:
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LeakageError(AssertionError):
    """A test patient reached a model or generator: the comparison would be invalid."""


# ------------------------------------------------------------------------------ data


def prepare_data(exp: Experiment, root: Path) -> tuple[SliceDataset, SliceDataset | None]:
    """The source dataset and, for domain-shift studies, the target-domain dataset."""
    d = exp.data
    if d.folder:
        source = SliceDataset(d.folder)
        target = SliceDataset(d.target_folder) if d.target_folder else None
        for ds, key in ((source, "folder"), (target, "target_folder")):
            _check_labelled(ds, f"data.{key}")
        if d.anatomy:
            check_anatomy(d.anatomy, "data.anatomy")
            for ds in (source, target):
                if ds is not None:
                    ds.info["anatomy"] = d.anatomy  # read by augment.folder.dataset_anatomy
        return source, target
    from augment.phantoms.render import write_phantom

    def phantom(domain: str) -> SliceDataset:
        spec = {"kind": d.phantom, "n": d.n, "size": d.size, "domain": domain, "seed": d.seed,
                "slices_per_patient": d.slices_per_patient}
        folder = root / f"phantom_{d.phantom}_{domain}_{config_hash(spec)}"
        if not (folder / "dataset.json").exists():
            write_phantom(folder, d.phantom, d.n, size=d.size, domain=domain, seed=d.seed,
                          slices_per_patient=d.slices_per_patient, overwrite=True, progress=True)
        return SliceDataset(folder)

    source = phantom(d.domain)
    target = phantom(d.target_domain) if d.target_domain else None
    return source, target


def _check_labelled(ds: SliceDataset | None, key: str) -> None:
    """A folder imported with ``--unlabelled`` has empty masks that do not mean "no lesion"."""
    if ds is not None and ds.info.get("unlabelled"):
        raise DataError(f"{ds.folder}: imported --unlabelled (no masks), so it cannot be {key}; "
                        "use it as data.unlabelled")


EXTERNAL_PREFIX = "external:"


def external_test_samples(
    external: SliceDataset, source: SliceDataset, train: SliceDataset, val: SliceDataset
) -> list[Sample]:
    """An external cohort's slices as test samples, after checking it can be one.

    Its classes must mean what the source's mean (same ids, same names). Patient ids get
    the prefix ``external:`` (cohorts number their patients independently, and the
    leakage guard compares ids); the guard that matters across cohorts is by content: no
    test image may be byte-identical to a training or validation image.
    """
    src_classes, ext_classes = source.info.get("classes") or {}, external.info.get("classes") or {}
    for k, name in ext_classes.items():
        if src_classes and src_classes.get(k) != name:
            raise DataError(f"{external.folder}: class {k} is {name!r} here but "
                            f"{src_classes.get(k, 'absent')!r} in {source.folder}; the labels must mean the same")
    seen = {r.get("sha256", {}).get("image") for ds in (train, val) for r in ds.records} - {None}
    copies = [r["id"] for r in external.records if r.get("sha256", {}).get("image") in seen]
    if copies:
        raise LeakageError(f"{external.folder}: {len(copies)} test slices are identical to training/validation "
                           f"slices of {source.folder} (e.g. {copies[0]})")
    out = []
    for sample in external.samples():
        sample = sample.copy()
        sample.meta["patient_id"] = EXTERNAL_PREFIX + sample.patient_id
        out.append(sample)
    return out


def dataset_classes(ds: SliceDataset) -> dict[int, str]:
    """The lesion classes a dataset names (``dataset.json``), else one class, ``lesion``."""
    return {int(k): v for k, v in (ds.info.get("classes") or {}).items()} or {1: "lesion"}


def _fingerprint(ds: SliceDataset) -> str:
    return config_hash([[r["id"], r.get("sha256")] for r in ds.records])


class Splits:
    """Patient-level split of the source (and target) data, with the leakage guard."""

    def __init__(self, exp: Experiment, source: SliceDataset, target: SliceDataset | None) -> None:
        parts = self._parts(exp, source)
        self.source, self.target = source, target
        self.train = source.subset(parts["train"])
        self.val = source.subset(parts["val"])
        train_patients = set(self.train.patient_ids)
        test_patients = {source.patient_ids[i] for i in parts["test"]}
        tests = []
        if exp.data.test_on in ("source", "both") and parts["test"]:
            tests.append(source.subset(parts["test"]))
        if target is not None:
            t_test = [i for i, p in enumerate(target.patient_ids) if p in test_patients]
            t_train = [i for i, p in enumerate(target.patient_ids) if p in train_patients]
            self.target_train = target.subset(t_train)
            self.target_val = target.subset(
                [i for i, p in enumerate(target.patient_ids) if p in set(self.val.patient_ids)]
            )
            if exp.data.test_on in ("target", "both"):
                tests.append(target.subset(t_test))
        else:
            self.target_train = None
            self.target_val = None
        self.test_samples: list[Sample] = [s for t in tests for s in t.samples()]
        self.external: SliceDataset | None = None
        if exp.data.test_folder:
            self.external = SliceDataset(exp.data.test_folder)
            _check_labelled(self.external, "data.test_folder")
            self.test_samples += external_test_samples(self.external, source, self.train, self.val)
        self.test_patients = {s.patient_id for s in self.test_samples}
        if not self.test_samples:
            raise DataError("the test split is empty: use more patients or a larger test fraction")
        self.extra_unlabelled: SliceDataset | None = None
        if exp.data.unlabelled:
            self.extra_unlabelled = SliceDataset(exp.data.unlabelled)
            self._check_unlabelled(self.extra_unlabelled, tests)

    def _check_unlabelled(self, extra: SliceDataset, tests: Sequence[SliceDataset]) -> None:
        """The extra unlabelled folder must hold no test scan: by patient id, and by content
        (a byte-identical image, whatever its id)."""
        if not len(extra):
            raise DataError(f"{extra.folder}: data.unlabelled holds no slices")
        self.assert_unseen(f"data.unlabelled {extra.folder} (if it is another cohort whose ids collide, "
                           "prefix them at import)", extra)
        test_hashes = {r.get("sha256", {}).get("image") for t in tests for r in t.records} - {None}
        if self.external is not None:
            test_hashes |= {r.get("sha256", {}).get("image") for r in self.external.records} - {None}
        copies = [r["id"] for r in extra.records if r.get("sha256", {}).get("image") in test_hashes]
        if copies:
            raise LeakageError(f"{extra.folder}: {len(copies)} unlabelled slices are identical to test slices "
                               f"(e.g. {copies[0]})")

    def unlabelled(self, labelled: SliceDataset) -> list[SliceDataset]:
        """A semi-supervised run's unlabelled pool: the training patients outside
        ``labelled`` (their masks are never read) plus ``data.unlabelled`` (checked against
        the test set when the splits were made). No validation or test patient, by
        construction of the split; the test set is asserted as for every training set."""
        have = set(labelled.patient_ids)
        rest = [i for i, p in enumerate(self.train.patient_ids) if p not in have]
        pool = ([self.train.subset(rest)] if rest else []) + ([self.extra_unlabelled] if self.extra_unlabelled else [])
        for ds in pool:
            self.assert_unseen("the unlabelled pool", ds)
        return pool

    @staticmethod
    def _parts(exp: Experiment, source: SliceDataset) -> dict[str, list[int]]:
        """Slice indices per part: from the split file's patient ids, or drawn by fractions."""
        if exp.split.parts is None:
            try:
                return split_by_patient(source.patient_ids, exp.split.fractions, seed=exp.split.seed)
            except DataError as e:
                raise DataError(f"{source.folder}: {e}") from None
        known = set(source.patient_ids)
        where = {}
        for name, ids in exp.split.parts.items():
            missing = sorted(set(ids) - known)
            if missing:
                raise DataError(f"{exp.split.file}: {name} patient(s) {', '.join(missing[:5])} are not in "
                                f"{source.folder}")
            where.update(dict.fromkeys(ids, name))
        unused = sorted(known - set(where))
        if unused:
            log.info("%s: %d patients of %s are in no part of the split (unused): %s", exp.split.file,
                     len(unused), source.folder, ", ".join(unused[:5]))
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for i, p in enumerate(source.patient_ids):
            if p in where:
                parts[where[p]].append(i)
        return parts

    def labelled(self, budget: int, seed: int) -> SliceDataset:
        keep = set(budget_patients(self.train.patient_ids, budget, seed=seed))
        return self.train.subset([i for i, p in enumerate(self.train.patient_ids) if p in keep])

    def assert_unseen(self, what: str, samples: Sequence[Sample] | SliceDataset) -> None:
        """Raise `LeakageError` if any sample belongs to a test patient."""
        ids = samples.patient_ids if isinstance(samples, SliceDataset) else [s.patient_id for s in samples]
        leaked = sorted(set(ids) & self.test_patients)
        if leaked:
            raise LeakageError(f"{what} contains test patients {leaked[:5]}")


# ------------------------------------------------------------------------ generators


def generator_run(
    name: str, spec: GeneratorSpec, labelled: SliceDataset, unlabelled_b: SliceDataset | None,
    *, seed: int, root: Path, device: str,
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) generator ``name`` on the labelled slices with `gan.train_generator`
    (what ``gan train`` runs); returns (checkpoint, info)."""
    from gan.train.trainer import train_generator

    key = config_hash({"v": HARNESS_VERSION, "model": name, "config": spec.config, "steps": spec.steps,
                       "bs": spec.batch_size, "seed": seed, "data": _fingerprint(labelled),
                       "data_b": _fingerprint(unlabelled_b) if unlabelled_b is not None else None,
                       # fp32 runs keep the keys they had before precision was an option
                       **({"precision": spec.precision} if spec.precision != "fp32" else {})})
    run = root / f"{name}_{key}"
    ckpt = run / "last.pt"
    t0 = time.perf_counter()
    computed = not (run / "done.json").exists()
    if computed:
        # The batch is the spec's, lowered (with a warning) to what the labelled slices hold.
        train_generator(name, labelled, unlabelled_b, run, steps=spec.steps, batch_size=None,
                        default_batch_size=spec.batch_size, seed=seed, device=device, model_config=spec.config,
                        ckpt_every=max(spec.steps, 1), grid_every=max(spec.steps, 1), resume=ckpt.exists(),
                        overwrite=True, progress=False, precision=spec.precision)
        write_json_atomic(run / "done.json", {"seconds": time.perf_counter() - t0, "steps": spec.steps})
    info = json.loads((run / "done.json").read_text())
    return ckpt, {"key": key, "run": str(run), "train_seconds": info["seconds"], "computed": computed}


def synthetic_set(
    name: str, ckpt: Path, spec: GeneratorSpec, hosts: SliceDataset, *, seed: int, root: Path, device: str
) -> SliceDataset:
    """Write (or reuse) ``spec.n_synthetic`` labelled synthetic slices from ``ckpt`` on
    ``hosts`` with `gan.synthesize_dataset` (what ``gan synthesize`` runs)."""
    from augment.storage import sha256_file
    from gan.synthesize import synthesize_dataset

    folder = root / f"{name}_{config_hash({'ckpt': sha256_file(ckpt), 'n': spec.n_synthetic, 'seed': seed})}"
    if not (folder / "dataset.json").exists():
        synthesize_dataset(ckpt, spec.n_synthetic, folder, hosts=hosts, seed=seed, device=device, overwrite=True)
    return SliceDataset(folder)


def _device(spec: str):
    from gan.base import resolve_device

    return resolve_device(spec)


# ----------------------------------------------------------------------------- runs


def run_compare(
    config: str | Path | Experiment, *, out: str | Path | None = None, seed: int = 0, device: str = "auto",
    progress: bool = True, executor: str = "local", ray_address: str | None = None, jobs: int = 1,
) -> Path:
    """Run every (budget, seed, task, strategy) of an experiment; returns the report path.

    ``executor`` ``local`` runs the units (`downstream.harness.units`) one after another here
    (``jobs`` > 1: that many at a time in worker processes, the cores shared among them);
    ``ray`` runs them as Ray tasks (`downstream.harness.executors`), on a local Ray instance or
    the cluster at ``ray_address``: the same rows and report either way. A unit that fails
    does not stop the others; the report lists it and `UnitsFailedError` is raised after it.
    """
    from downstream.harness.executors import run_units
    from downstream.harness.units import Context, plan
    from downstream.report import write_report

    exp = config if isinstance(config, Experiment) else load_experiment(config)
    if seed:
        exp = replace(exp, seeds=tuple(s + seed for s in exp.seeds))
    out = Path(out or exp.out)
    check_output_folder(out)
    source, target = prepare_data(exp, out / "data")
    splits = Splits(exp, source, target)
    _check_sizes(exp, splits)
    n_train = len(set(splits.train.patient_ids))
    if max(exp.budgets) > n_train:
        raise ConfigError(f"{exp.source}: budget {max(exp.budgets)} exceeds the {n_train} training patients "
                          f"of {source.folder}")
    for g in sorted({g for st in exp.strategies for g in st.generators}):
        if get_generator(g).unpaired and splits.target_train is None:
            raise DataError(f"the {g} strategy needs a target domain (data.target_domain or target_folder)")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_yaml(out / "config.yaml", {"experiment": exp.as_dict(), "versions": versions()})
    classes = dataset_classes(source)
    units = plan(exp, splits)
    t_start = time.perf_counter()
    results = run_units(units, Context(exp, out, device), executor=executor, ray_address=ray_address,
                        jobs=jobs, splits=splits, progress=progress)
    rows = [row for r in results for row in r.get("rows", [])]
    gen_quality = [r["quality"] for r in results if r.get("quality")]
    failures = [r["failure"] for r in results if r.get("failure")]
    unit_errors = [{"unit": u.describe(), "error": r["error"]} for u, r in zip(units, results, strict=True)
                   if r["status"] == "failed"]
    write_bytes_atomic(out / "results.jsonl",
                       "".join(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in rows).encode())
    write_json_atomic(out / "generator_quality.json", gen_quality)
    write_json_atomic(out / "generator_failures.json", failures)
    write_json_atomic(out / "units.json", {
        "executor": executor if executor != "local" or jobs == 1 else f"local, {jobs} jobs",
        "units": [{"unit": u.id, "status": r["status"], "computed": r.get("computed"), "seconds": r.get("seconds"),
                   **({"error": r["error"]} if "error" in r else {})} for u, r in zip(units, results, strict=True)],
    })
    report = write_report(exp, rows, gen_quality, out, classes=classes, total_seconds=time.perf_counter() - t_start,
                          splits=splits, failures=failures, unit_errors=unit_errors)
    if unit_errors:
        first = unit_errors[0]
        raise UnitsFailedError(f"{len(unit_errors)} of {len(units)} units failed (first: {first['unit']}: "
                               f"{first['error']}); {report} lists them and {out / 'units.json'} has the details. "
                               "A rerun retries only these: finished units are read from the cache")
    return report


class UnitsFailedError(LesionforgeError):
    """Some units of a comparison failed (the others finished and the report was written)."""


# What `run_compare` writes into its output folder (a rerun reuses its caches).
OUTPUT_ENTRIES = {"config.yaml", "data", "generators", "synthetic", "quality", "cache", "plots", "results.jsonl",
                  "report.md", "report.html", "generator_quality.json", "generator_failures.json", "units.json"}


def check_output_folder(out: Path) -> None:
    """``out`` must be new, empty, or an earlier compare output: a rerun writes over it (and
    reuses its cached runs), so a folder holding anything else is refused, never written into."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise ConfigError(f"{out}: not a compare output folder (it holds {', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose another --out")


def _check_sizes(exp: Experiment, splits: Splits) -> None:
    """Patches and whole slices must fit the U-Nets, before anything is trained."""
    side = min(min(s.image.shape) for s in splits.test_samples)
    for task, spec in exp.tasks.items():
        depth = spec.unet_depth(exp.tasks.get("segment"))
        if spec.patch is not None and spec.patch > side:
            raise ConfigError(f"tasks.{task}.patch {spec.patch} is larger than the {side} px slices")
        if depth and side % 2**depth:
            raise ConfigError(f"tasks.{task}: {side} px slices are not a multiple of 2^depth = {2**depth}; "
                              "import at another --size or lower depth")
    seg, extra = exp.tasks.get("segment"), splits.extra_unlabelled
    if extra is not None and seg is not None and any(s.semi_supervised for s in exp.strategies):
        shapes = {np.load(extra.folder / r["image"], mmap_mode="r").shape for r in extra.records}  # header only
        small = [sh for sh in shapes if min(sh) < (seg.patch or 0)]
        if small:
            raise ConfigError(f"{extra.folder}: data.unlabelled has {small[0][0]}x{small[0][1]} px slices, smaller "
                              f"than tasks.segment.patch {seg.patch}")
        if seg.patch is None and shapes != {tuple(splits.test_samples[0].image.shape)}:
            raise ConfigError(f"{extra.folder}: data.unlabelled slices are {sorted(shapes)[0]} px, the data's are "
                              f"{splits.test_samples[0].image.shape}: set tasks.segment.patch, or import at one size")


def _baselines(exp: Experiment):
    """The strategies the full-data ceiling trains (`Experiment.ceiling`)."""
    return [st for st in exp.strategies if st.name in exp.ceiling]


def strategy_runs(
    exp: Experiment, strategy, budget: int, seed: int, labelled: SliceDataset, synthetic: list[SliceDataset],
    splits: Splits, *, out: Path, device: str, classes: dict[int, str], on_task=None,
) -> list[dict[str, Any]]:
    """Every task of one (strategy, budget, seed), segment first: a unet-backbone detector
    starts from the segmenter this same unit trained. Each run is cached under the hash of
    everything that determines it."""
    import torch

    from downstream.harness.tasks import run_task

    rows = []
    seg_state: tuple[Any, dict] | None = None
    seg_key = None
    unlabelled = splits.unlabelled(labelled) if strategy.semi_supervised else []
    # A strategy without semi-supervision keeps the key it had before the option existed.
    semi_key = ({"semi": asdict(exp.semi), "unlabelled": [_fingerprint(d) for d in unlabelled]}
                if strategy.semi_supervised else {})
    strategy_key = {k: v for k, v in asdict(strategy).items() if k != "semi_supervised" or v is not None}
    base = {"v": HARNESS_VERSION, "strategy": strategy_key, "seed": seed, "budget": budget,
            "labelled": _fingerprint(labelled), "synthetic": [_fingerprint(d) for d in synthetic],
            "val": _fingerprint(splits.val), "test": config_hash([x.id for x in splits.test_samples]), **semi_key}
    keep_segmenter = any(spec.uses_segmenter for spec in exp.tasks.values())
    for task in sorted(exp.tasks, key=lambda t: t != "segment"):
        spec = exp.tasks[task]
        needs_seg = spec.uses_segmenter
        if on_task is not None:
            on_task(task)
        key = config_hash({**base, "task": task, "spec": _spec_key(spec), "init": seg_key if needs_seg else None})
        cache = out / "cache" / f"{task}_{strategy.name}_{key}.json"
        weights = cache.with_suffix(".pt")
        keep_weights = task == "segment" and keep_segmenter
        if cache.exists() and (weights.exists() or not keep_weights):
            row = json.loads(cache.read_text())
            row["cached"] = True
            state = torch.load(weights, map_location="cpu", weights_only=True) if keep_weights else None
        else:
            if needs_seg and seg_state is None:
                raise DataError("detect init: segmenter, but the segmenter of this run is missing")
            row, state = run_task(task, spec, strategy, labelled, synthetic, splits.test_samples,
                                  val_samples=splits.val.samples(), seed=seed, device=device, classes=classes,
                                  segmenter=seg_state if needs_seg else None, unlabelled=unlabelled,
                                  semi=exp.semi)
            row.update(task=task, strategy=strategy.name, budget=budget, seed=seed, key=key,
                       n_labelled_slices=len(labelled), n_labelled_patients=budget)
            if keep_weights:
                _save_state_atomic(weights, state)
            write_json_atomic(cache, row)
            row["cached"] = False
        if task == "segment":
            seg_state, seg_key = (spec, state), key
        rows.append(row)
    return rows


def _spec_key(spec) -> dict[str, Any]:
    """A task spec as its runs' cache key holds it: fp32 runs keep the keys they had before
    precision was an option."""
    d = asdict(spec)
    if d.get("precision") == "fp32":
        del d["precision"]
    return d


def _save_state_atomic(path: Path, state: dict[str, Any]) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def generator_quality(
    name: str, ckpt: Path, ginfo: dict[str, Any], labelled: SliceDataset, splits: Splits,
    synthetic: SliceDataset, exp: Experiment, *, budget: int, seed: int, root: Path, device: str,
) -> dict[str, Any]:
    """SSIM/PSNR where a ground truth exists, FID/KID when weights are given, memorisation."""
    from gan.evaluate.protocol import evaluate_generator

    key = config_hash({"ckpt": ginfo["key"], "syn": _fingerprint(synthetic), "q": exp.quality.given(),
                       "val": _fingerprint(splits.val)})
    cache = root / f"{name}_{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from gan.base import GanModule

    module = GanModule.load(ckpt, device=_device(device))
    true_b = splits.target_val.samples() if splits.target_val is not None else None
    result = evaluate_generator(
        module, synthetic=synthetic.samples(), training=labelled.samples(), heldout=splits.val.samples(),
        heldout_b=true_b, fid_weights=exp.quality.fid_weights, seed=seed,
        out=root / f"{name}_{key}",
    )
    row = {"generator": name, "budget": budget, "seed": seed, "train_seconds": ginfo["train_seconds"],
           "run": ginfo["run"], "synthetic_folder": str(synthetic.folder), **result}
    write_json_atomic(cache, row)
    return row


def write_bytes_yaml(path: Path, obj: Any) -> None:
    from augment.storage import write_bytes_atomic

    write_bytes_atomic(path, yaml.safe_dump(to_jsonable(obj), sort_keys=True).encode())

