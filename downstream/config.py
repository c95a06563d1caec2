"""Experiment configs for `lesionforge compare`: YAML in, frozen dataclasses out.

Each component receives only its own section. Unknown keys are errors (a typo in a
study config must not silently run the defaults).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from augment.config_types import build_dataclass
from augment.errors import ConfigError
from gan.train.config import PRECISIONS

TASKS = ("segment", "detect")


@dataclass(frozen=True)
class DataSpec:
    """Where the labelled data comes from: an embedded phantom or a dataset folder."""

    phantom: str | None = None  # "head-ich" | "liver"
    folder: str | None = None  # a dataset folder (`lesionforge data import` output)
    anatomy: str | None = None  # head-ich | liver, for a folder imported without --anatomy
    n: int = 192  # phantom slices
    size: int = 64
    domain: str = "A"
    slices_per_patient: int = 8
    seed: int = 0  # the phantom's anatomy seed (not the experiment seed)
    # Domain shift: the same phantom rendered in another domain (unlabelled for training,
    # labelled for testing), or a second folder.
    target_domain: str | None = None
    target_folder: str | None = None
    test_on: str = "source"  # "source" | "target" | "both"
    # An external labelled cohort as the test set (e.g. train on your scans, test on a
    # public set): every slice of it is tested, none of the source's patients is.
    test_folder: str | None = None
    # Extra unlabelled scans for semi-supervised strategies (a dataset folder; its masks, if
    # any, are never read). The training patients outside the label budget are always used.
    unlabelled: str | None = None


@dataclass(frozen=True)
class SplitSpec:
    """Which patients train, validate and test: fractions drawn with ``seed``, or a file.

    ``file``: nnU-Net's ``splits_final.json`` (a list of folds ``{"train": [...], "val":
    [...]}``; ``fold`` picks one; the test set is then ``data.test_folder``) or
    ``{"train": [...], "val": [...], "test": [...]}``, patient ids either way. A relative
    path is read next to the experiment YAML.
    """

    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    seed: int = 0
    file: str | None = None
    fold: int = 0
    # The parts read from `file` (filled by `load_split_file` when the config is loaded).
    parts: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class RecipeSpec:
    """The training recipe both tasks share (`downstream.harness.recipe`)."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" | "sgd" (nnU-Net's Nesterov SGD)
    schedule: str = "poly"  # "poly" (nnU-Net) | "constant"
    patch: int | None = None  # training patch side in px (None: whole slices)
    fg_fraction: float = 0.33  # patches centred on a lesion (nnU-Net: one third)
    val_every: int = 50  # steps between validation scores (best checkpoint kept)
    window: str = "head-model"
    # Training precision (`gan.train.precision`): fp32 (as the shipped studies were measured),
    # bf16, fp16 (with a gradient scaler), or auto (bf16 where the CPU/GPU has it natively).
    # Validation and test predictions run in fp32 whatever this says.
    precision: str = "fp32"


@dataclass(frozen=True)
class SegmentSpec(RecipeSpec):
    arch: str = "unet"  # "unet" | "attention-unet"
    base: int = 16
    depth: int = 3

    @property
    def uses_segmenter(self) -> bool:
        """Whether this task starts from the segmenter trained in the same run."""
        return False

    def unet_depth(self, segment: SegmentSpec | None) -> int | None:
        """Depth of the U-Net this task runs (slices must be a multiple of 2^depth)."""
        return self.depth


@dataclass(frozen=True)
class DetectSpec(RecipeSpec):
    # "unet": the segmenter's U-Net as feature pyramid with an auxiliary segmentation loss
    # (Retina U-Net); "mobilenet_v3_large" | "resnet50": torchvision's FPN backbones.
    backbone: str = "unet"
    # unet backbone: start from the segmenter trained in the same run ("segmenter"; the
    # architecture is then tasks.segment's) or from random weights ("scratch").
    init: str = "segmenter"
    aux_weight: float = 1.0  # weight of the unet backbone's segmentation loss
    # unet backbone from the segmenter: keep its U-Net fixed and train only the detection
    # heads (and the lateral 1x1 convolutions) on its features. Several times cheaper per
    # step; the segmentation loss is then moot.
    freeze_backbone: bool = False
    levels: tuple[int, ...] = (1, 2)  # unet backbone: decoder levels fed to the RPN (0 = full resolution)
    backbone_weights: str | None = None  # "imagenet" or a state-dict path; None: from scratch
    arch: str = "attention-unet"  # unet backbone from scratch: its architecture
    base: int = 8
    depth: int = 3
    cost_sensitive: bool = True
    alpha: float = 2.0
    max_ratio: float = 3.0
    theta: float = 0.5  # image-level "bleed present" threshold on the best box score
    kmeans_anchors: bool = True
    representation_size: int = 1024  # box head width (torchvision's default)
    box_batch_size_per_image: int = 64  # RoIs per slice for the box head (downstream.models.detect)
    # RPN proposals kept per image before / after its NMS, (training, test): NMS over
    # thousands of anchors of a 32 px patch was 20 % of a CPU step (downstream.models.detect).
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500)
    detach_box_head: bool = False  # unet backbone: box head trained on detached features (faster)
    rpn_fg_iou_thresh: float = 0.7  # anchor IoU for an RPN positive (torchvision's 0.7; small lesions: 0.5)
    rpn_bg_iou_thresh: float = 0.3
    rpn_post_nms_top_n: tuple[int, int] = (300, 100)
    # unet backbone: the segmentation head's lesion components join the RPN's proposals
    # (downstream.models.detect.SegmentationProposalHeads): small lesions the anchors miss.
    seg_proposals: bool = False

    @property
    def uses_segmenter(self) -> bool:
        """Whether this task starts from the segmenter trained in the same run."""
        return self.backbone == "unet" and self.init == "segmenter"

    def unet_depth(self, segment: SegmentSpec | None) -> int | None:
        """Depth of the U-Net backbone (the segmenter's when it starts from it); None for
        torchvision's backbones, which take any size."""
        if self.backbone != "unet":
            return None
        return segment.depth if self.uses_segmenter and segment is not None else self.depth


@dataclass(frozen=True)
class GeneratorSpec:
    """How one generator is trained inside the harness (on the labelled subset only)."""

    steps: int = 300
    batch_size: int = 16
    n_synthetic: int = 200
    config: dict[str, Any] = field(default_factory=dict)
    # Training precision (`gan.train.precision`): fp32, as the shipped studies were measured;
    # auto takes bf16 where the hardware has it natively.
    precision: str = "fp32"


@dataclass(frozen=True)
class Strategy:
    """One augmentation strategy: what is added to the labelled real slices."""

    name: str
    augment: str | None = None  # classical pipeline name (augment.classical.pipeline)
    generators: tuple[str, ...] = ()  # synthetic data from these generators
    ratio: float = 0.5  # fraction of synthetic slices in each batch
    synthetic_only: bool = False  # train on synthetic slices alone
    # Also learn from the unlabelled training scans (`downstream.models.semi`): "spmc" or
    # "cps" (its reference). YAML: ``semi-supervised: spmc``. Options: the `semi:` section.
    semi_supervised: str | None = None


@dataclass(frozen=True)
class SemiSpec:
    """The ``semi:`` section: how semi-supervised strategies train (`downstream.models.semi`).

    The optimiser, learning rate, steps and labelled batches are the segment task's own, so
    that a semi-supervised strategy differs from ``none`` only by what it learns from the
    unlabelled scans. Defaults are SPMC's: ``tau`` 0.7, ``beta`` 0.5, ``temperature`` 0.1,
    ``lambda_max`` 0.1 with ramp ``exp(-ramp (1 - t/t_max)^2)``, ``ramp`` 5.
    """

    tau: float = 0.7  # a pixel is suspicious to a network when its top class probability is <= tau
    beta: float = 0.5  # weight of SPLAT against CPS
    temperature: float = 0.1  # sharpening of the confident network's probabilities (SPLAT)
    lambda_max: float = 0.1  # the unsupervised weight after the ramp
    ramp: float = 5.0
    cdps_weight: float = 1.0  # weight of CDPS in the supervised loss
    unlabelled_batch_size: int | None = None  # unlabelled patches per step (None: the task's batch_size)
    inference: str = "mean"  # predict with network a, b, or the mean of both networks' probabilities

    def __post_init__(self) -> None:
        checks = [(0 < self.tau < 1, f"tau must be in (0, 1), got {self.tau}"),
                  (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
                  (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                  (self.lambda_max >= 0 and self.ramp >= 0, "lambda_max and ramp must be >= 0"),
                  (self.cdps_weight >= 0, f"cdps_weight must be >= 0, got {self.cdps_weight}"),
                  (self.unlabelled_batch_size is None or self.unlabelled_batch_size >= 1,
                   f"unlabelled_batch_size must be >= 1, got {self.unlabelled_batch_size}"),
                  (self.inference in ("a", "b", "mean"), f"inference must be a, b or mean, got {self.inference!r}")]
        for ok, what in checks:
            if not ok:
                raise ConfigError(what)


@dataclass(frozen=True)
class QualitySpec:
    """The ``quality:`` section: how the harness evaluates each generator."""

    fid_weights: str | None = None  # pytorch-fid Inception weights (a local file) for FID/KID

    def given(self) -> dict[str, Any]:
        """The options set (as written in YAML): what a run's cache key and record hold."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class UnitResources:
    """What one unit asks a Ray cluster for (``--executor ray``; ``local`` ignores it).

    ``num_cpus`` is also the unit's torch thread count on its worker. ``max_retries``: how
    often Ray reruns a unit whose worker died (killed, preempted, out of memory) before it is
    reported as failed; the unit resumes from what it had written.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3


@dataclass(frozen=True)
class ResourcesSpec:
    """The ``resources:`` section: per kind of unit, e.g. ``{generator: {num_gpus: 1},
    task: {num_gpus: 0.5}}``. Not part of any cache key: where a unit runs does not change it."""

    generator: UnitResources = field(default_factory=UnitResources)
    task: UnitResources = field(default_factory=UnitResources)


@dataclass(frozen=True)
class Experiment:
    name: str
    data: DataSpec
    split: SplitSpec
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    tasks: dict[str, Any]  # "segment" -> SegmentSpec, "detect" -> DetectSpec
    generators: dict[str, GeneratorSpec]
    strategies: tuple[Strategy, ...]
    quality: QualitySpec = field(default_factory=QualitySpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    semi: SemiSpec = field(default_factory=SemiSpec)
    out: str = "out/compare"
    # The full-data ceiling each gain is measured against: these strategies are also
    # trained on every training patient. `ceiling: true` in YAML = every strategy without
    # generators or semi-supervision (none, classical); false = none; or a list of names.
    ceiling: tuple[str, ...] = ("none",)
    source: str = ""  # the YAML file it came from

    def as_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        d["quality"] = self.quality.given()
        return d


# Seeds (and budgets) feed numpy's and torch's generators: at most 2^31 - 1.
MAX_INT = 2**31 - 1


def _int_list(v: Any, where: str, *, low: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ConfigError(f"{where}: expected a list of integers, got {v!r}")
    if any(not low <= x <= MAX_INT for x in v):
        raise ConfigError(f"{where}: values must be in {low}..{MAX_INT}, got {list(v)}")
    if len(set(v)) != len(v):
        raise ConfigError(f"{where}: values repeat ({list(v)}): each would be run twice")
    return tuple(v)


def _ceiling(v: Any, strategies: list[Strategy], where: str) -> tuple[str, ...]:
    if v is True:  # a semi-supervised strategy on every training patient has no unlabelled scan
        return tuple(s.name for s in strategies if not s.generators and not s.semi_supervised)
    if v is False or v is None:
        return ()
    names = {s.name: s for s in strategies}
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: expected true, false or a list of strategy names, got {v!r}")
    for x in v:
        if x not in names:
            raise ConfigError(f"{where}: unknown strategy {x!r}; known: {', '.join(names)}")
        if names[x].generators:
            raise ConfigError(f"{where}: {x!r} uses generators, which are trained per label budget; the "
                              "ceiling trains strategies without generators")
    return tuple(v)



DETECT_BACKBONES = ("unet", "mobilenet_v3_large", "resnet50")


def _check_recipe(spec: RecipeSpec, where: str) -> None:
    """Types and ranges of a task's training recipe, checked before any work starts."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need(is_int(spec.steps) and spec.steps >= 1, f"steps must be an integer >= 1, got {spec.steps!r}")
    need(is_int(spec.batch_size) and spec.batch_size >= 1,
         f"batch_size must be an integer >= 1, got {spec.batch_size!r}")
    need(isinstance(spec.lr, (int, float)) and not isinstance(spec.lr, bool) and spec.lr > 0,
         f"lr must be a number > 0, got {spec.lr!r}")
    need(spec.optimizer in ("adam", "sgd"), f"optimizer must be adam or sgd, got {spec.optimizer!r}")
    need(spec.schedule in ("poly", "constant"), f"schedule must be poly or constant, got {spec.schedule!r}")
    need(spec.patch is None or (is_int(spec.patch) and spec.patch >= 8),
         f"patch must be null or an integer >= 8 (px), got {spec.patch!r}")
    need(isinstance(spec.fg_fraction, (int, float)) and 0 <= spec.fg_fraction <= 1,
         f"fg_fraction must be in [0, 1], got {spec.fg_fraction!r}")
    need(is_int(spec.val_every) and spec.val_every >= 1, f"val_every must be an integer >= 1, got {spec.val_every!r}")
    need(spec.precision in PRECISIONS,
         f"precision must be auto, fp32, bf16 or fp16, got {spec.precision!r}")
    need(isinstance(spec.window, str), f"window must be a window name, got {spec.window!r}")
    from augment.window import WINDOWS

    need(spec.window in WINDOWS, f"window {spec.window!r} is unknown; known: {', '.join(sorted(WINDOWS))}")
    base = getattr(spec, "base", 1)
    need(is_int(base) and base >= 1, f"base must be an integer >= 1, got {base!r}")
    arch = getattr(spec, "arch", "unet")
    need(arch in ("unet", "attention-unet"), f"arch must be unet or attention-unet, got {arch!r}")
    depth = getattr(spec, "depth", 0)
    need(is_int(depth) and depth >= 1, f"depth must be an integer >= 1, got {depth!r}")
    need(spec.patch is None or spec.patch % 2**depth == 0,
         f"patch {spec.patch} must be a multiple of 2^depth = {2**depth} (the U-Net halves it depth times)")


# The shipped experiment configs are package data (pyproject.toml), so `compare NAME`,
# `demo` and `lesionforge configs` work from an installed wheel, in any directory.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Name -> file of every experiment config shipped with lesionforge (demo, smoke, ...)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_experiment(spec: str | Path) -> Path:
    """The experiment YAML ``spec`` names: an existing path, else a shipped config's name
    (``smoke`` or ``smoke.yaml``; a file of that name in the working directory wins)."""
    path = Path(spec)
    if path.exists():
        return path
    shipped = shipped_configs()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    raise ConfigError(
        f"{path}: config file not found, and not a shipped config "
        f"({', '.join(shipped) or 'none installed'}; `lesionforge configs list`)"
    )


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment YAML: a file, or a shipped config's name."""
    path = resolve_experiment(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected an experiment YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected an experiment YAML)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return experiment_from_dict(raw, where=str(path))


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping (name: settings), got {type(v).__name__} {v!r}")
    return v


def _resources(raw: Any, where: str) -> ResourcesSpec:
    parts = {}
    for kind, spec in _mapping(raw, where).items():
        if kind not in ("generator", "task"):
            raise ConfigError(f"{where}: unknown unit kind {kind!r}; known: generator, task")
        r = build_dataclass(UnitResources, spec, f"{where}.{kind}", sep=".")
        if r.num_cpus < 0 or r.num_gpus < 0 or r.max_retries < 0:
            raise ConfigError(f"{where}.{kind}: num_cpus, num_gpus and max_retries must be >= 0")
        if r.num_cpus == 0 and r.num_gpus == 0:
            raise ConfigError(f"{where}.{kind}: asks for no CPU and no GPU; Ray would run every unit at once")
        parts[kind] = r
    return ResourcesSpec(**parts)


def _check_data(data: DataSpec, where: str) -> None:
    if (data.phantom is None) == (data.folder is None):
        raise ConfigError(f"{where}: data needs exactly one of 'phantom' or 'folder'")
    if data.phantom is not None:
        from augment.phantoms.render import check_phantom_args

        try:
            check_phantom_args(data.phantom, data.domain, data.size)
            if data.target_domain is not None:
                check_phantom_args(data.phantom, data.target_domain, data.size)
        except ConfigError as e:
            raise ConfigError(f"{where}: data: {e}") from None
        if data.n < 1 or data.slices_per_patient < 1:
            raise ConfigError(f"{where}: data.n and data.slices_per_patient must be >= 1, "
                              f"got {data.n} and {data.slices_per_patient}")
    if data.test_on not in ("source", "target", "both"):
        raise ConfigError(f"{where}: data.test_on must be source, target or both")
    if data.test_on != "source" and not (data.target_domain or data.target_folder):
        raise ConfigError(f"{where}: data.test_on={data.test_on} needs target_domain or target_folder")
    if data.test_folder is not None and (data.target_domain or data.target_folder):
        raise ConfigError(f"{where}: data.test_folder (an external test cohort) cannot be combined with a "
                          "target domain; use test_on: target for a domain-shift test")


def _check_split(split: SplitSpec, data: DataSpec, where: str) -> None:
    train, val, test = split.fractions
    if not all(math.isfinite(f) for f in split.fractions):
        raise ConfigError(f"{where}: split.fractions must be finite numbers, got {list(split.fractions)}")
    external = data.test_folder is not None
    if split.file is not None:
        test = len(split.parts["test"]) if split.parts else 0
        if external and test:
            raise ConfigError(f"{where}: split.file names test patients and data.test_folder is the test set; "
                              "keep one")
        if not external and not test:
            raise ConfigError(f"{where}: split.file {split.file} names no test patients; add a 'test' list or "
                              "set data.test_folder")
        return
    if min(split.fractions) < 0 or train <= 0 or (test <= 0 and not external):
        raise ConfigError(f"{where}: split.fractions (train, val, test) must be >= 0 with train and test > 0, "
                          f"got {list(split.fractions)}")
    if external and test > 0:
        raise ConfigError(f"{where}: data.test_folder is the test set: set the test part of split.fractions to 0, "
                          f"got {list(split.fractions)}")


def _check_detect(det: DetectSpec, seg: SegmentSpec | None, where: str) -> None:
    """The detector's own options: ranges torchvision would only trip over mid-training."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {what}")

    for key in ("representation_size", "box_batch_size_per_image"):
        need(getattr(det, key) >= 1, f"{key} must be >= 1, got {getattr(det, key)}")
    need(0 < det.rpn_bg_iou_thresh <= det.rpn_fg_iou_thresh <= 1,
         f"rpn IoU thresholds need 0 < rpn_bg_iou_thresh <= rpn_fg_iou_thresh <= 1, got "
         f"{det.rpn_bg_iou_thresh}, {det.rpn_fg_iou_thresh}")
    need(det.alpha > 0, f"alpha must be > 0, got {det.alpha}")
    need(det.max_ratio >= 1, f"max_ratio must be >= 1, got {det.max_ratio}")
    need(0 <= det.theta <= 1, f"theta must be in [0, 1], got {det.theta}")
    need(det.aux_weight >= 0, f"aux_weight must be >= 0, got {det.aux_weight}")
    need(all(n >= 1 for n in (*det.rpn_pre_nms_top_n, *det.rpn_post_nms_top_n)),
         "rpn_pre_nms_top_n and rpn_post_nms_top_n must be >= 1")
    depth = seg.depth if (det.backbone == "unet" and det.init == "segmenter" and seg is not None) else det.depth
    if det.backbone == "unet":
        need(bool(det.levels) and all(0 <= lv <= depth for lv in det.levels),
             f"levels {list(det.levels)} must lie in 0..{depth} (the U-Net's depth)")
    w = det.backbone_weights
    need(w is None or w == "imagenet" or Path(w).is_file(),
         f"backbone_weights {w!r}: not 'imagenet' and no such file")


def load_split_file(path: Path, fold: int, where: str) -> dict[str, tuple[str, ...]]:
    """``{"train", "val", "test"}`` patient ids from a split file (see `SplitSpec`)."""
    if not path.is_file():
        raise ConfigError(f"{where}: split.file {path}: not found")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON split file ({str(e).splitlines()[0]})") from None
    if isinstance(raw, list):  # nnU-Net's splits_final.json: one {train, val} per fold
        if not raw or not 0 <= fold < len(raw):
            raise ConfigError(f"{path}: has {len(raw)} folds; split.fold {fold} is not one of them")
        raw = raw[fold]
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {{train, val, test}} lists of patient ids or nnU-Net's list of folds")
    unknown = sorted(set(raw) - {"train", "val", "test"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; expected train, val, test")
    parts: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        ids = raw.get(name) or []
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ConfigError(f"{path}: '{name}' must be a list of patient ids (strings)")
        for pid in ids:
            if pid in seen:
                raise ConfigError(f"{path}: patient {pid!r} is in both '{seen[pid]}' and '{name}'")
            seen[pid] = name
        parts[name] = tuple(ids)
    if not parts["train"]:
        raise ConfigError(f"{path}: no training patients")
    return parts


def phantom_train_patients(data: DataSpec, split: SplitSpec) -> int:
    """Training patients a phantom study will have: known before a slice is rendered."""
    from augment.splits import split_by_patient

    if split.parts is not None:
        return len(split.parts["train"])
    spp = data.slices_per_patient
    patient_ids = [f"p{i // spp:03d}" for i in range(data.n)]  # augment.phantoms.render's numbering
    return len({patient_ids[i] for i in split_by_patient(patient_ids, split.fractions, seed=split.seed)["train"]})


def experiment_from_dict(raw: dict[str, Any], where: str = "config") -> Experiment:
    known = {"name", "data", "split", "budgets", "seeds", "tasks", "generators", "strategies", "quality", "out",
             "ceiling", "resources", "semi"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}")
    data = build_dataclass(DataSpec, raw.get("data"), f"{where}: data", sep=".")
    _check_data(data, where)
    split = build_dataclass(SplitSpec, raw.get("split"), f"{where}: split", sep=".")
    if split.parts is not None:
        raise ConfigError(f"{where}: split.parts is filled from split.file; do not set it")
    if split.file is not None:
        given = set(raw.get("split") or {}) & {"fractions", "seed"}
        if given:
            raise ConfigError(f"{where}: split has a file and {', '.join(sorted(given))}; the file decides, "
                              "remove the others")
        file = Path(split.file)
        if not file.is_absolute() and (Path(where).parent / file).is_file():
            file = Path(where).parent / file
        split = dataclasses.replace(split, file=str(file), parts=load_split_file(file, split.fold, where))
    _check_split(split, data, where)
    tasks_raw = _mapping(raw.get("tasks"), f"{where}: tasks")
    if not tasks_raw:
        raise ConfigError(f"{where}: no tasks (segment, detect)")
    tasks: dict[str, Any] = {}
    for name, spec in tasks_raw.items():
        if name not in TASKS:
            raise ConfigError(f"{where}: unknown task {name!r}; known: {', '.join(TASKS)}")
        tasks[name] = build_dataclass(SegmentSpec if name == "segment" else DetectSpec, spec, f"{where}: tasks.{name}", sep=".")
    for name, spec in tasks.items():
        _check_recipe(spec, f"{where}: tasks.{name}")
    det = tasks.get("detect")
    if det is not None:
        _check_detect(det, tasks.get("segment"), f"{where}: tasks.detect")
        if det.backbone not in DETECT_BACKBONES:
            raise ConfigError(f"{where}: tasks.detect.backbone must be one of {', '.join(DETECT_BACKBONES)}")
        if det.init not in ("segmenter", "scratch"):
            raise ConfigError(f"{where}: tasks.detect.init must be segmenter or scratch, got {det.init!r}")
        if det.seg_proposals and det.backbone != "unet":
            raise ConfigError(f"{where}: tasks.detect.seg_proposals needs backbone: unet (its segmentation head)")
        if det.init == "segmenter" and det.backbone == "unet" and "segment" not in tasks:
            raise ConfigError(f"{where}: tasks.detect.init: segmenter needs a tasks.segment section "
                              "(or set init: scratch)")
    generators = {}
    for name, spec in _mapping(raw.get("generators"), f"{where}: generators").items():
        from gan.base import get_generator

        try:
            model = get_generator(name)
        except ConfigError as e:
            raise ConfigError(f"{where}: generators: {e}") from None
        g = build_dataclass(GeneratorSpec, spec, f"{where}: generators.{name}", sep=".")
        build_dataclass(model.Config, g.config, source=f"{where}: generators.{name}.config")
        if g.precision not in PRECISIONS:
            raise ConfigError(f"{where}: generators.{name}.precision must be auto, fp32, bf16 or fp16, "
                              f"got {g.precision!r}")
        for key in ("steps", "batch_size", "n_synthetic"):
            if getattr(g, key) < 1:
                raise ConfigError(f"{where}: generators.{name}.{key} must be >= 1, got {getattr(g, key)}")
        generators[name] = g
    strategies_raw = raw.get("strategies") or []
    if not isinstance(strategies_raw, list):
        raise ConfigError(f"{where}: strategies: expected a list of {{name: ...}} entries")
    strategies = []
    for i, spec in enumerate(strategies_raw):
        if isinstance(spec, dict) and "semi-supervised" in spec:  # the YAML spelling
            spec = {("semi_supervised" if k == "semi-supervised" else k): v for k, v in spec.items()}
        s = build_dataclass(Strategy, spec, f"{where}: strategies[{i}]", sep=".")
        if s.semi_supervised is not None:
            from downstream.models.semi import METHODS

            if s.semi_supervised not in METHODS:
                raise ConfigError(f"{where}: strategy {s.name!r}: semi-supervised must be one of "
                                  f"{', '.join(METHODS)}, got {s.semi_supervised!r}")
            if "segment" not in tasks:
                raise ConfigError(f"{where}: strategy {s.name!r} is semi-supervised, which trains the segmenter; "
                                  "add a tasks.segment section")
        for g in s.generators:
            if g not in generators:
                raise ConfigError(f"{where}: strategy {s.name!r} uses generator {g!r} with no 'generators.{g}' section")
        if not 0 <= s.ratio <= 1:
            raise ConfigError(f"{where}: strategy {s.name!r}: ratio must be in [0, 1]")
        if s.synthetic_only and not s.generators:
            raise ConfigError(f"{where}: strategy {s.name!r} is synthetic_only but names no generator")
        if s.augment is not None:
            from augment.classical.pipeline import build_augmenter

            try:
                build_augmenter(s.augment)
            except ConfigError as e:
                raise ConfigError(f"{where}: strategy {s.name!r}: {e}") from None
        strategies.append(s)
    names = [s.name for s in strategies]
    if "none" not in names:
        raise ConfigError(f"{where}: strategies must include the baseline 'none'")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: strategy names must be unique")
    seeds = _int_list(raw.get("seeds") or [0], f"{where}: seeds", low=0)
    budgets = _int_list(raw.get("budgets") or [], f"{where}: budgets", low=1)
    if not budgets:
        raise ConfigError(f"{where}: budgets (labelled patients per run) are required")
    if data.phantom is not None:
        n_train = phantom_train_patients(data, split)
        if max(budgets) > n_train:
            raise ConfigError(f"{where}: budget {max(budgets)} exceeds the {n_train} training patients of the "
                              f"phantom (data.n / data.slices_per_patient patients, split {list(split.fractions)})")
    quality = build_dataclass(QualitySpec, _mapping(raw.get("quality"), f"{where}: quality"), f"{where}: quality", sep=".")
    fid = quality.fid_weights
    if fid is not None and not Path(fid).is_file():
        raise ConfigError(f"{where}: quality.fid_weights {fid!r}: no such file (pytorch-fid's Inception weights)")
    resources = _resources(raw.get("resources"), f"{where}: resources")
    semi = build_dataclass(SemiSpec, _mapping(raw.get("semi"), f"{where}: semi"), f"{where}: semi", sep=".")
    if data.unlabelled is not None and not Path(data.unlabelled).is_dir():
        raise ConfigError(f"{where}: data.unlabelled {data.unlabelled!r}: no such folder")
    for key in ("name", "out"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key}: expected a string, got {raw[key]!r}")
    return Experiment(
        name=str(raw.get("name") or Path(where).stem),
        data=data,
        split=split,
        budgets=budgets,
        seeds=seeds,
        tasks=tasks,
        generators=generators,
        strategies=tuple(strategies),
        quality=quality,
        resources=resources,
        semi=semi,
        out=str(raw.get("out") or f"out/{raw.get('name', 'compare')}"),
        ceiling=_ceiling(raw.get("ceiling", True), strategies, f"{where}: ceiling"),
        source=where,
    )
