"""The ``lesionforge`` command line.

The only place that talks to the terminal: library code raises `LesionforgeError`
subclasses, and `main` turns them into one line on stderr and exit code 2.
Heavy imports happen inside each command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from augment.errors import LesionforgeError

log = logging.getLogger("lesionforge")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------ commands


def cmd_data_phantom(a: argparse.Namespace) -> None:
    from augment.phantoms.render import write_phantom

    out = write_phantom(
        a.out, a.kind, a.n, size=a.size, domain=a.domain, seed=a.seed, overwrite=a.overwrite, progress=True
    )
    print(f"wrote {a.n} {a.kind} phantom slices (domain {a.domain}) to {out}")


def cmd_data_import(a: argparse.Namespace) -> None:
    from augment.io.ct import import_dataset

    window = None
    if a.window:
        window = {"center": a.window[0], "width": a.window[1]}
    out = import_dataset(
        a.src,
        a.out,
        fmt=a.format,
        lesion_labels=a.lesion_labels,
        slices=a.slices,
        size=a.size,
        window=window,
        mask_dir=a.mask_dir,
        anatomy=a.anatomy,
        overwrite=a.overwrite,
        # A bar only on a terminal: in a log it is noise around the one-line messages.
        progress=sys.stderr.isatty(),
        strict=a.strict,
        unlabelled=a.unlabelled,
    )
    from augment.io.info import dataset_info, format_info

    # The import has audited HU on the source files already; do not warn twice.
    print(format_info(dataset_info(out, audit=False)))
    print(f"imported {a.src} to {out}")


def cmd_data_info(a: argparse.Namespace) -> None:
    from augment.io.info import dataset_info, format_info

    print(format_info(dataset_info(a.dir, verify=a.verify, strict=a.strict)))


def cmd_data_export(a: argparse.Namespace) -> None:
    from augment.errors import ConfigError

    volumes = a.format in ("nnunet", "nifti")
    unused = [
        option
        for option, given, applies in (
            ("--out", a.out is not None, volumes),
            ("--restack", a.restack, volumes),
            ("--overwrite", a.overwrite, volumes),
            ("--dataset-id", a.dataset_id is not None, a.format == "nnunet"),
            ("--name", a.name is not None, a.format == "nnunet"),
            ("--window", a.window is not None, a.format == "coco"),
        )
        if given and not applies
    ]
    if unused:
        raise ConfigError(f"data export --format {a.format}: {unused[0]} does not apply")
    if not volumes:
        if len(a.dirs) != 1:
            raise ConfigError(f"data export --format {a.format}: one dataset folder at a time")
        from augment.io.ct import export_boxes

        path = export_boxes(a.dirs[0], a.format, window=a.window)
        what = "COCO instance masks + PNGs" if a.format == "coco" else "VOC boxes"
        print(f"wrote {what}: {path}")
        return
    if a.out is None:
        raise ConfigError(f"data export --format {a.format}: give --out")
    from augment.io.nnunet import export_nifti, export_nnunet

    common = {"restack": a.restack, "overwrite": a.overwrite, "progress": sys.stderr.isatty()}
    if a.format == "nnunet":
        dataset_id = 501 if a.dataset_id is None else a.dataset_id
        name = "Lesion" if a.name is None else a.name
        path = export_nnunet(a.dirs, a.out, dataset_id=dataset_id, name=name, **common)
    else:
        path = export_nifti(a.dirs, a.out, **common)
    print(f"wrote {a.format} dataset: {path}")


def cmd_augment_preview(a: argparse.Namespace) -> None:
    import numpy as np

    from augment.classical.pipeline import build_augmenter
    from augment.datasets import SliceDataset
    from augment.viz import preview_augmentations
    from augment.window import DISPLAY_WINDOW

    ds = SliceDataset(a.data)
    augmenter = build_augmenter(a.pipeline)
    rng = np.random.default_rng(a.seed)
    # Prefer slices with lesions: they show that masks and boxes move with the image.
    order = rng.permutation(len(ds))
    picked = [i for i in order if ds.load(int(i)).has_lesion][: a.n] or list(order[: a.n])
    samples = [ds.load(int(i)) for i in picked]
    window = a.window or DISPLAY_WINDOW.get(ds.anatomy, "brain")
    path = preview_augmentations(
        samples, augmenter, rng, a.out, n_aug=a.n_aug, window=window,
        class_names=ds.info.get("classes"),
    )
    print(f"wrote augmentation preview: {path}")


def cmd_gan_train(a: argparse.Namespace) -> None:
    from augment.errors import ConfigError
    from gan.registry import MAX_BATCH_SIZE

    for option, value, low in (("--steps", a.steps, 1), ("--batch-size", a.batch_size, 1),
                               ("--ckpt-every", a.ckpt_every, 0), ("--grid-every", a.grid_every, 0),
                               ("--seed", a.seed, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{option} must be >= {low}, got {value}")
    if a.batch_size is not None and a.batch_size > MAX_BATCH_SIZE:
        raise ConfigError(
            f"--batch-size must be <= {MAX_BATCH_SIZE}, got {a.batch_size} (the GAN papers train "
            "at 1 to 128; a larger batch mostly runs out of memory)"
        )
    from gan.base import resolve_device
    from gan.registry import REGISTRY, preset_text
    from gan.train.run_folder import resume_defaults
    from gan.train.trainer import train_generator

    steps, batch_size, base_config, default_batch = a.steps, a.batch_size, None, None
    if a.resume and a.preset is None:
        # The run's own settings: a resume needs no flags, whatever the presets are now.
        own = resume_defaults(a.model, a.out)
        base_config = own["config"]
        steps = steps if steps is not None else own.get("steps")
        batch_size = batch_size if batch_size is not None else own.get("batch_size")
        log.info("gan train %s --resume: %s steps (%s), batch %s (%s), the run's model options",
                 a.model, steps, "--steps" if a.steps is not None else "the run's",
                 batch_size, "--batch-size" if a.batch_size is not None else "the run's")  # fmt: skip
    preset_name = a.preset or "auto"
    if preset_name == "auto":
        preset_name = "paper" if resolve_device(a.device).type == "cuda" else "cpu"
    _cpu_threads_for(preset_name, a)
    if steps is None or batch_size is None or base_config is None:
        preset = REGISTRY[a.model].presets[preset_name]
        log.info("gan train %s: preset %s (%s)", a.model, preset_name, preset_text(preset))
        steps = steps if steps is not None else preset["steps"]
        default_batch = preset["batch_size"]
        base_config = preset["config"] if base_config is None else base_config
    result = train_generator(
        a.model,
        a.data,
        a.data_b,
        a.out,
        steps=steps,
        batch_size=batch_size,
        default_batch_size=default_batch,
        seed=a.seed,
        device=a.device,
        config_file=a.config,
        base_config=base_config,
        progress=True,
        resume=a.resume,
        wandb=a.wandb,
        ckpt_every=a.ckpt_every,
        grid_every=a.grid_every,
        precision=a.precision,
        compile=a.compile,
        until=a.until,
        patience=a.patience,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one line, not one per process
        print(f"trained {a.model} to step {result['step']}; checkpoint: {result['checkpoint']}")


def _cpu_threads_for(preset: str, a: argparse.Namespace) -> None:
    """``gan train`` on the CPU without ``--threads``: one torch thread for the ``cpu`` and
    ``tiny`` presets (and a resume), every core for ``paper``.

    The small presets' convolutions barely use a second thread, and beside a busy process a
    thread waiting for a taken core stalls each of them. bench/busy_neighbour.py on the 2-core
    VM, CycleGAN's cpu preset, 60 steps: two threads 7.2 s idle and 22.7 s beside one busy
    process (3.2x); one thread 8.4 s and 8.5 s (1.0x).
    """
    import torch

    from gan.base import resolve_device

    if a.threads or preset == "paper" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    if resolve_device(a.device).type == "cpu" and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        log.info("gan train: one torch thread (small convolutions; robust beside other busy processes); "
                 "--threads N to use more")


def cmd_gan_evaluate(a: argparse.Namespace) -> None:
    from augment.errors import ConfigError

    for option, value, low in (("--n", a.n, 2), ("--seed", a.seed, 0)):
        if value < low:
            raise ConfigError(f"{option} must be >= {low}, got {value}")
    from gan.evaluate.protocol import evaluate_run

    result = evaluate_run(
        a.run,
        a.data,
        data_b=a.data_b,
        out=a.out,
        fid_weights=a.fid_weights,
        n=a.n,
        seed=a.seed,
        device=a.device,
    )
    for line in result["summary_lines"]:
        print(line)
    print(f"wrote {result['metrics_path']}")


def cmd_synthesize(a: argparse.Namespace) -> None:
    from augment.errors import ConfigError

    for option, value, low in (("--n", a.n, 1), ("--seed", a.seed, 0)):
        if value < low:
            raise ConfigError(f"{option} must be >= {low}, got {value}")
    from gan.synthesize import synthesize_dataset

    out = synthesize_dataset(
        a.checkpoint,
        a.n,
        a.out,
        hosts=a.hosts,
        seed=a.seed,
        export=a.export,
        device=a.device,
        overwrite=a.overwrite,
        progress=True,
    )
    print(f"wrote {a.n} synthetic slices to {out}")


def cmd_compare(a: argparse.Namespace) -> None:
    from downstream.harness.compare import run_compare
    from downstream.harness.executors import auto_jobs

    jobs = a.jobs if a.jobs != "auto" else (auto_jobs(a.device) if a.executor == "local" else 1)
    report = run_compare(a.config, out=a.out, seed=a.seed, device=a.device, executor=a.executor,
                         ray_address=a.ray_address, jobs=jobs)
    print(f"report: {report}")


def cmd_demo(a: argparse.Namespace) -> None:
    from downstream.demo import run_demo

    report = run_demo(out=a.out, seed=a.seed, device=a.device, jobs=a.jobs)
    print(f"report: {report}")


PIPELINES_CONFIG = "pipelines"  # `configs show` name of augment's named-pipelines file


def _shipped_files() -> dict[str, Path]:
    from augment.classical.pipeline import DEFAULT_CONFIG
    from downstream.config import shipped_configs

    return {**shipped_configs(), PIPELINES_CONFIG: DEFAULT_CONFIG}


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            text = line.lstrip("# ").rstrip()
            return text if len(text) <= 78 else text[:75] + "..."
    return ""


def cmd_configs_list(a: argparse.Namespace) -> None:
    files = _shipped_files()
    pipelines = files.pop(PIPELINES_CONFIG)
    print("experiments (`lesionforge compare NAME`; `lesionforge configs show NAME > my.yaml` to edit one):")
    for name, path in files.items():
        print(f"  {name:<15} {_first_comment(path)}")
    print("augmentation pipelines (`--pipeline NAME`, or `--pipeline my.yaml:NAME` for an edited copy):")
    from augment.classical.pipeline import load_pipelines

    print(f"  {PIPELINES_CONFIG:<15} {', '.join(load_pipelines(pipelines))}")


def cmd_configs_show(a: argparse.Namespace) -> None:
    from augment.errors import ConfigError

    files = _shipped_files()
    name = a.name.removesuffix(".yaml")
    if name not in files:
        raise ConfigError(f"{a.name}: not a shipped config; known: {', '.join(files)}")
    sys.stdout.write(files[name].read_text(encoding="utf-8"))


def cmd_gan_export(a: argparse.Namespace) -> None:
    from gan.export import export_generator

    r = export_generator(a.run, a.out, overwrite=a.overwrite)
    print(f"exported the {r['model']} generator (step {r['step']}) of {r['source']} to {r['path']}: "
          f"{r['bytes'] / 1e6:.2f} MB (the full checkpoint: {r['source_bytes'] / 1e6:.2f} MB)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lesionforge")
    except PackageNotFoundError:
        return "unknown (not installed)"


# -------------------------------------------------------------------------- parser


def _jobs(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


# Seeds feed numpy's and torch's generators, and studies add their own offsets: 0 .. 2^31-1.
MAX_SEED = 2**31 - 1


def _seed(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{MAX_SEED}, got {text!r}")
    return n


def _output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    return path


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help`` (unless its help already says it, or there is
    none to show), and epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other lesionforge error, and
    every default shown in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=_seed, default=0, help="random seed (same seed + config = same files)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    device.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads for torch (default: one per core; gan train: one with the cpu and tiny presets; "
        "compare/demo: one per unit, --jobs units at a time). Beside other busy processes a thread "
        "waiting for a taken core stalls every small convolution (3-4x slower, bench/busy_neighbour.py)",
    )

    p = _Parser(
        prog="lesionforge",
        description="Make more labelled lesion CT data out of little, and measure whether it helps.",
    )
    p.add_argument("--version", action="version", version=f"lesionforge {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # data
    data = sub.add_parser("data", help="phantom data, import scans, dataset info").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    ph = data.add_parser("phantom", parents=[common], help="write an embedded CT phantom dataset")
    ph.add_argument("--kind", default="head-ich", choices=["head-ich", "liver"], help="anatomy and lesions")
    ph.add_argument("--n", type=int, default=500, help="number of slices (default: %(default)s)")
    ph.add_argument("--size", type=int, default=128, help="slice size in pixels (default: %(default)s)")
    ph.add_argument("--domain", default="A", help="scanner/protocol domain (A, B)")
    ph.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    ph.add_argument("--overwrite", action="store_true", help="replace --out if lesionforge wrote it")
    ph.set_defaults(func=cmd_data_phantom)

    im = data.add_parser("import", parents=[common], help="import NIfTI/DICOM/PNG/NPY scans into a dataset folder")
    im.add_argument("src", type=Path, help="folder (or file) with the scans")
    im.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    im.add_argument("--format", default="auto", choices=["auto", "nifti", "dicom", "png", "npy"],
                    help="input format (auto: detected from the files)")
    im.add_argument(
        "--lesion-labels",
        help="label values kept as lesion: '2' (label 2 -> class 1), '1,2' (each its own class) "
        "or '1:0,2:1' (source:class; a map must list every label, 0 drops one); default: every "
        "non-zero label is its own class",
    )
    im.add_argument("--slices", default="all", choices=["all", "lesion", "nonempty"],
                    help="slices kept: all, those with a lesion, or those with any label (e.g. the liver)")
    im.add_argument("--size", type=_positive_int, help="resample slices to SIZE x SIZE pixels")
    im.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), help="window the PNGs were exported with")
    im.add_argument("--mask-dir", type=Path, help="masks for DICOM/PNG/NPY input")
    im.add_argument("--anatomy", choices=["head-ich", "liver"],
                    help="what the scans show; the generators place lesions by it (brain / liver)")
    im.add_argument("--overwrite", action="store_true", help="replace --out if lesionforge wrote it")
    im.add_argument("--strict", action="store_true",
                    help="fail instead of warning on HU outside [-2000, 4000], constant slices, a "
                    "--lesion-labels value found in no mask, DICOM without rescale tags")
    im.add_argument("--unlabelled", action="store_true",
                    help="scans without masks, for an experiment's data.unlabelled (semi-supervised "
                    "strategies): every volume/series/slice file is an image")
    im.set_defaults(func=cmd_data_import)

    info = data.add_parser("info", parents=[common], help="counts, patients, lesion sizes, HU per class")
    info.add_argument("dir", type=Path, help="dataset folder")
    info.add_argument("--verify", action="store_true",
                      help="check every file against the sha256 in the manifest")
    info.add_argument("--strict", action="store_true",
                      help="fail instead of warning on HU outside [-2000, 4000] or constant images")
    info.set_defaults(func=cmd_data_info)

    ex = data.add_parser(
        "export", parents=[common],
        help="VOC boxes, COCO instance masks + PNGs, an nnU-Net v2 raw dataset, or MONAI NIfTI",
    )  # fmt: skip
    ex.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                    help="dataset folder; nnunet/nifti take several (e.g. REAL SYNTHETIC)")
    ex.add_argument("--format", required=True, choices=["voc", "coco", "nnunet", "nifti"],
                    help="voc/coco: written into DIR (voc/, annotations_coco.json + coco/images/); "
                    "nnunet: OUT/DatasetXXX_NAME; nifti: OUT with MONAI's datalist.json")
    ex.add_argument("--out", type=Path,
                    help="nnunet: the nnUNet_raw folder; nifti: the folder to write")
    ex.add_argument("--window", help="coco: window of the 8-bit PNGs, a name (brain, liver, ...) or "
                    "CENTER,WIDTH in HU (--window=-600,1500 for a negative centre; default: the "
                    "display window of the dataset's anatomy)")
    ex.add_argument("--restack", action="store_true",
                    help="nnunet/nifti: one volume per patient, slices sorted by slice index "
                    "(default: one 2D case per slice)")
    ex.add_argument("--dataset-id", type=_positive_int, metavar="ID",
                    help="nnunet: dataset id 1..999 (default: 501)")
    ex.add_argument("--name", help="nnunet: dataset name (default: Lesion)")
    ex.add_argument("--overwrite", action="store_true",
                    help="nnunet/nifti: replace an earlier export (only one lesionforge wrote)")
    ex.set_defaults(func=cmd_data_export)

    # augment
    aug = sub.add_parser("augment", help="classical augmentation").add_subparsers(
        dest="augment_command", required=True, metavar="SUBCOMMAND"
    )
    pv = aug.add_parser("preview", parents=[common], help="PNG grid: original vs augmented, mask overlay")
    pv.add_argument("--data", type=Path, required=True, help="dataset folder")
    pv.add_argument("--pipeline", default="standard", help="pipeline name or YAML file")

    def _figure_count(high: int):
        """1..high: the preview is one figure, a row per slice and a column per draw."""

        def parse(text: str) -> int:
            n = _positive_int(text)
            if n > high:
                raise argparse.ArgumentTypeError(
                    f"at most {high} (the preview is one figure), got {text!r}"
                )
            return n

        return parse

    pv.add_argument("--n", type=_figure_count(64), default=4, help="number of slices, 1..64 (default: %(default)s)")
    pv.add_argument("--n-aug", type=_figure_count(16), default=3,
                    help="augmented versions per slice, 1..16 (default: %(default)s)")
    pv.add_argument("--window", help="display window name (default from the data kind)")
    pv.add_argument("--out", type=_output_file, default=Path("augment_preview.png"), help="PNG file (default: %(default)s)")
    pv.set_defaults(func=cmd_augment_preview)

    # gan
    g = sub.add_parser("gan", help="train and evaluate generators").add_subparsers(
        dest="gan_command", required=True, metavar="SUBCOMMAND"
    )
    from gan.registry import MAX_BATCH_SIZE, PRESET_NAMES, REGISTRY, presets_help
    from gan.train.config import PRECISIONS, TrainConfig
    from gan.train.early_stop import UNTIL

    TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

    tr = g.add_parser("train", parents=[common, device], help=f"train {', '.join(REGISTRY)}",
                      epilog=presets_help())
    tr.add_argument("model", choices=list(REGISTRY))
    tr.add_argument("--preset", choices=["auto", *PRESET_NAMES],
                    help="training size: steps, batch and network widths (below); with --resume "
                    "the run's own unless given (default: auto)")
    tr.add_argument("--data", type=Path, required=True, help="training dataset folder (domain A for CycleGAN)")
    tr.add_argument("--data-b", type=Path, help="domain B dataset folder (CycleGAN)")
    tr.add_argument("--steps", type=int,
                    help="total optimisation steps, >= 1; with --resume, train on up to this many "
                    "(default: the preset's; with --resume the run's own)")
    tr.add_argument("--batch-size", type=int,
                    help=f"slices (DCGAN: lesion ROIs) per step, 1..{MAX_BATCH_SIZE}; pix2pix and CycleGAN at most "
                    "the slices they draw from (default: the preset's, lowered to that; with --resume "
                    "the run's own)")
    tr.add_argument("--out", type=Path, required=True,
                    help="run folder: new, or one of an earlier run with --resume (a run is never replaced: "
                    "choose another --out to start over)")
    tr.add_argument("--config", type=Path,
                    help="YAML with model options: a section named after the model (e.g. `pix2pix:`), or the options at top level")
    tr.add_argument("--resume", action="store_true",
                    help="continue from RUN/last.pt with the run's own steps, batch size and model "
                    "options (no other flag needed; a larger --steps trains further)")
    tr.add_argument("--wandb", action="store_true", help="log to wandb (offline unless configured)")
    tr.add_argument("--ckpt-every", type=int, default=TRAIN_DEFAULTS["ckpt_every"],
                    help="write RUN/last.pt (and a numbered copy) every N steps; 0: only at the end (default: %(default)s)")
    tr.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto: bf16 autocast where the CPU (AMX, AVX512-BF16) or GPU computes it natively, "
                    "fp16 with a gradient scaler on older GPUs, else fp32 (default: %(default)s; the run's "
                    "config.yaml records what was used)")
    tr.add_argument("--grid-every", type=int, default=TRAIN_DEFAULTS["grid_every"],
                    help="write a progress grid PNG every N steps; 0: only at the end (default: %(default)s)")
    tr.add_argument("--until", choices=UNTIL, default="steps",
                    help="quality: also stop once --patience probes in a row (one per --grid-every) "
                    "have not improved the probe score (DCGAN: pasteable draws and lesion HU vs real; "
                    "pix2pix: SSIM); --steps stays the cap (default: %(default)s)")
    tr.add_argument("--patience", type=int, default=TRAIN_DEFAULTS["patience"],
                    help="probes without improvement that end an --until quality run (default: %(default)s)")
    tr.add_argument("--compile", action="store_true",
                    help="torch.compile the training step: ~1-2 min of compilation first; on the CPU "
                    "it pays for CycleGAN at bf16 (1.8x per step), not for pix2pix or DCGAN's cpu preset "
                    "(gan/train/compiled.py has the measurements; needs g++ on the CPU)")
    tr.set_defaults(func=cmd_gan_train)

    ev = g.add_parser("evaluate", parents=[common, device], help="SSIM/PSNR, FID/KID, memorisation audit")
    ev.add_argument("run", type=Path, help="run folder or checkpoint")
    ev.add_argument("--data", type=Path, required=True, help="held-out real slices")
    ev.add_argument("--data-b", type=Path, help="true domain-B renderings (CycleGAN)")
    ev.add_argument("--fid-weights", type=Path, help="pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    ev.add_argument("--n", type=int, default=200, help="synthetic slices to evaluate, >= 2 (default: %(default)s)")
    ev.add_argument("--out", type=Path,
                    help="output folder: new, empty, or an earlier `gan evaluate` output, which is "
                    "replaced (nothing else is written into; default: RUN/eval)")
    ev.set_defaults(func=cmd_gan_evaluate)

    # Commands with nothing random in them take -v alone.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    gx = g.add_parser("export", parents=[verbose],
                      help="generator-only checkpoint to share (no discriminator, no optimizer)")
    gx.add_argument("run", type=Path, help="run folder (its last.pt) or checkpoint")
    gx.add_argument("--out", type=_output_file, required=True, help="file to write, e.g. gen.pt")
    gx.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gx.set_defaults(func=cmd_gan_export)

    sy = sub.add_parser("synthesize", parents=[common, device], help="write a labelled synthetic dataset")
    sy.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file, or a run folder (its last.pt)")
    sy.add_argument("--n", type=int, required=True, help="synthetic slices to write, >= 1")
    sy.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    sy.add_argument("--hosts", type=Path, help="real slices that receive / carry the lesions")
    sy.add_argument("--export", choices=["voc", "coco"], help="also write boxes as VOC XML or COCO JSON")
    sy.add_argument("--overwrite", action="store_true",
                    help="replace --out if it is a dataset folder lesionforge wrote (nothing else)")
    sy.set_defaults(func=cmd_synthesize)

    cp = sub.add_parser("compare", parents=[common, device], help="compare augmentation strategies (YAML config)")
    cp.add_argument("config", type=Path,
                    help="experiment YAML, or the name of a shipped one (`lesionforge configs list`)")
    cp.add_argument("--out", type=Path, help="output folder (default from the config)")
    cp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: every unit on this machine (default; --jobs at a time); "
                    "ray: every unit a Ray task "
                    "(resources from the config's `resources:`), on a new local Ray instance or --ray-address. "
                    "Needs pip install 'lesionforge[distributed]'")
    cp.add_argument("--jobs", type=_jobs, default="auto", metavar="N",
                    help="--executor local: N units at a time in worker processes, the CPU cores shared "
                    "among them; auto (default): on the CPU one unit per core with one thread each (as "
                    "many as memory allows), on a GPU one at a time; 1: one after another, torch using "
                    "every core")
    cp.add_argument("--ray-address", metavar="ADDR",
                    help="the Ray cluster to run on (e.g. ray://head:10001, or `auto` for the cluster this "
                    "machine belongs to); default RAY_ADDRESS, else a new local instance")
    cp.set_defaults(func=cmd_compare)

    dm = sub.add_parser("demo", parents=[common, device], help="the quick end-to-end run on the head-ICH phantom")
    dm.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    dm.add_argument("--jobs", type=_positive_int, metavar="N",
                    help="units at a time in worker processes, the cores shared among them "
                    "(default: one per core, each with one thread, as many as memory allows)")
    dm.set_defaults(func=cmd_demo)

    cf = sub.add_parser("configs", help="the shipped experiment configs and pipelines").add_subparsers(
        dest="configs_command", required=True, metavar="SUBCOMMAND"
    )
    cl = cf.add_parser("list", parents=[verbose], help="names of the shipped configs, one line each")
    cl.set_defaults(func=cmd_configs_list)
    cs = cf.add_parser("show", parents=[verbose], help="print a shipped config's YAML (`> my.yaml` to copy and edit it)")
    cs.add_argument("name", help="a name from `lesionforge configs list`")
    cs.set_defaults(func=cmd_configs_show)
    return p


def _user_error(message: str, args: argparse.Namespace) -> int:
    """One line on stderr (the traceback too with --verbose, for bug reports)."""
    if getattr(args, "verbose", False):
        log.debug("details", exc_info=True)
    print(f"lesionforge: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: process 0 speaks for the others
        logging.getLogger().setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_MODE", "offline")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except LesionforgeError as e:
        return _user_error(str(e), args)
    except OSError as e:
        # The file system said no (permission, disk full, a path that cannot exist):
        # something the user can fix, so one line, not a traceback.
        where = e.filename if e.filename is not None else "lesionforge"
        return _user_error(f"{where}: {e.strerror or e}", args)
    except MemoryError:
        return _user_error("out of memory (use a smaller --size, batch or dataset)", args)
    except KeyboardInterrupt:
        print("lesionforge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
