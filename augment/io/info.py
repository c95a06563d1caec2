"""What is in a dataset folder: counts, lesion sizes, HU statistics (`lesionforge data info`).

A *lesion* here is one 8-connected component of one class in one slice (the same
definition `boxes_from_mask` uses for boxes), so a lesion spanning five slices counts
five times. HU statistics are per class over all its pixels, plus "background in
body": class-0 pixels inside the body outline (``HU > BODY_HU``, holes filled), so that
air around the patient does not swamp the comparison with lesion HU.

`HuAudit` flags images that cannot be CT in HU (values outside `HU_PLAUSIBLE`) and
constant images, one line per source; `data info` and `data import` log them as
warnings, or fail on them with ``--strict`` (`report`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from augment.errors import DataError
from augment.folder import (
    dataset_anatomy,
    dataset_classes,
    dataset_provenance,
    load_sample,
    read_dataset,
)

log = logging.getLogger(__name__)

# Air is about -1000 HU, lung about -800, fat about -100: -500 separates body from air.
BODY_HU = -500.0
BACKGROUND = "background_in_body"

# CT values a scan in HU can hold: air is -1000, dense bone and iodine contrast stay
# below about 3000. Outside this range the values are not HU (wrong or missing rescale
# slope/intercept, an integer export) or the file is corrupt.
HU_PLAUSIBLE = (-2000.0, 4000.0)
_EXAMPLES = 3  # items named per aggregated problem

# HU percentiles come from a 1-HU histogram over the CT range (bins centred on whole
# HU, so whole-HU data gives exact percentiles); values outside are counted at the edges.
_HIST_LOW, _HIST_HIGH = -2048, 4096


class _HuStats:
    """Streaming mean / sd / percentiles of HU values, in bounded memory."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Chan et al. merge of batches)
        self.hist = np.zeros(_HIST_HIGH - _HIST_LOW + 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        n, mean = values.size, float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * self.n * n / total
        self.mean += delta * n / total
        self.n = total
        bins = np.clip(np.rint(values), _HIST_LOW, _HIST_HIGH).astype(np.int64) - _HIST_LOW
        self.hist += np.bincount(bins, minlength=self.hist.size)

    def _percentile(self, q: float) -> float:
        # Smallest value whose cumulative share reaches q (numpy's "inverted_cdf").
        cum = np.cumsum(self.hist)
        return float(np.searchsorted(cum, q / 100 * self.n) + _HIST_LOW)

    def result(self) -> dict[str, float] | None:
        if self.n == 0:
            return None
        return {
            "pixels": self.n,
            "mean": self.mean,
            "sd": float(np.sqrt(self.m2 / self.n)),
            "p1": self._percentile(1),
            "p99": self._percentile(99),
        }


def report(problems: Iterable[str], *, strict: bool, logger: logging.Logger = log) -> None:
    """Log each problem as a warning, or raise the first as a `DataError` when ``strict``."""
    for problem in problems:
        if strict:
            raise DataError(f"{problem} (an error under --strict)")
        logger.warning("%s", problem)


@dataclass
class _Hits:
    n: int = 0
    implausible: list[str] = field(default_factory=list)
    low: float = np.inf
    high: float = -np.inf
    constant: list[tuple[str, float]] = field(default_factory=list)


class HuAudit:
    """Implausible HU and constant images, reported once per source, not once per slice.

    ``add(source, item, image)`` for every image (``source`` a volume, series or
    dataset folder; ``item`` names the image inside it, e.g. ``"slice 12"``); `pop` then
    gives one line per source and kind of problem, e.g.
    ``"vol.nii.gz: 12 of 40 slices are constant (slice 0, slice 1, slice 2, ...; every pixel 0 HU)"``.
    Costs one min and one max per image.
    """

    def __init__(self, unit: str = "slice") -> None:
        self.unit = unit
        self._sources: dict[str, _Hits] = {}

    def add(self, source: str, item: str, image: np.ndarray) -> None:
        hits = self._sources.setdefault(source, _Hits())
        hits.n += 1
        if image.size == 0:
            return
        low, high = float(np.min(image)), float(np.max(image))
        if low == high:
            hits.constant.append((item, low))
        if low < HU_PLAUSIBLE[0] or high > HU_PLAUSIBLE[1]:
            hits.implausible.append(item)
            hits.low, hits.high = min(hits.low, low), max(hits.high, high)

    def pop(self, source: str | None = None) -> list[str]:
        """The problems found in ``source`` (every source when None); forgotten once returned."""
        names = list(self._sources) if source is None else [source] * (source in self._sources)
        problems: list[str] = []
        for name in names:
            hits = self._sources.pop(name)
            if hits.implausible:
                lo, hi = HU_PLAUSIBLE
                problems.append(
                    self._line(
                        name,
                        hits.n,
                        hits.implausible,
                        f"HU outside [{lo:g}, {hi:g}]",
                        ("has", "have"),
                        f"min {hits.low:.6g}, max {hits.high:.6g}",
                    )
                    + "; wrong rescale slope/intercept, or not CT?"
                )
            if hits.constant:
                items = [item for item, _ in hits.constant]
                detail = f"every pixel {hits.constant[0][1]:.6g} HU"
                problems.append(self._line(name, hits.n, items, "constant", ("is", "are"), detail))
        return problems

    def _line(
        self, source: str, n: int, items: list[str], what: str, verbs: tuple[str, str], detail: str
    ) -> str:
        if n == 1:
            return f"{source}: {'constant image' if what == 'constant' else what} ({detail})"
        named = ", ".join(items[:_EXAMPLES]) + (", ..." if len(items) > _EXAMPLES else "")
        verb = verbs[len(items) > 1]
        return f"{source}: {len(items)} of {n} {self.unit}s {verb} {what} ({named}; {detail})"


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": float(min(values)),
        "median": float(np.median(values)),
        "max": float(max(values)),
    }


def dataset_info(
    folder: str | os.PathLike,
    *,
    progress: bool = False,
    verify: bool = False,
    strict: bool = False,
    audit: bool = True,
) -> dict[str, Any]:
    """Summarise a dataset folder (reads every image and mask once).

    Args:
        folder: a dataset folder.
        progress: show a tqdm bar.
        verify: check every file against the manifest's sha256 (a mismatch is a `DataError`).
        strict: implausible HU and constant images are a `DataError`, not a warning.
        audit: look for implausible HU and constant images at all (``data import``
            has already done so on the source files).

    Returns:
        A JSON-able dict: ``n_samples``, ``n_patients``, ``n_lesion_slices``,
        ``n_synthetic``, ``synthetic_fraction``, ``generators`` (count per generator),
        ``image_sizes`` (``[{"height", "width", "count"}]``), ``spacing_mm`` (row/col
        min-max, or None), ``lesions`` per class id (``count``, ``slices``, ``size_px``
        and ``size_mm2`` as ``{min, median, max}``, mm² over lesions whose slice has a
        known spacing), and ``hu`` per class id plus ``"background_in_body"``
        (``pixels, mean, sd, p1, p99``), and ``problems`` (the warnings logged: lines
        naming the folder and the files).
    """
    folder = Path(folder)
    info, records = read_dataset(folder)
    classes = {str(k): v for k, v in (info.get("classes") or {}).items()}
    known = dataset_classes(info, folder / "dataset.json")
    hu_audit = HuAudit("image")
    default_spacing = info.get("spacing")
    structure = np.ones((3, 3), dtype=bool)
    sizes = Counter()
    patients: set[str] = set()
    lesion_slices = 0
    synthetic = 0
    generators: Counter[str] = Counter()
    spacings: list[tuple[float, float]] = []
    lesions: dict[int, dict[str, list[float]]] = {}
    class_slices: Counter[int] = Counter()
    hu: dict[str, _HuStats] = {BACKGROUND: _HuStats()}
    for record in tqdm(records, desc=f"info {folder.name}", unit="slice", disable=not progress):
        sample = load_sample(folder, record, verify=verify, classes=known)
        image, mask = sample.image, sample.mask
        if audit:
            hu_audit.add(str(folder), record["image"], image)
        sizes[image.shape] += 1
        patients.add(sample.patient_id)
        if record.get("synthetic"):
            synthetic += 1
            generators[str(record.get("generator") or "unknown")] += 1
        spacing = record.get("spacing") or default_spacing
        pixel_mm2 = None
        if spacing:
            spacings.append((float(spacing[0]), float(spacing[1])))
            pixel_mm2 = float(spacing[0]) * float(spacing[1])
        body = ndimage.binary_fill_holes(image > BODY_HU)
        hu[BACKGROUND].add(image[body & (mask == 0)])
        present = [int(c) for c in np.unique(mask) if c]
        lesion_slices += bool(present)
        for c in present:
            class_slices[c] += 1
            region = mask == c
            hu.setdefault(str(c), _HuStats()).add(image[region])
            components, n = ndimage.label(region, structure=structure)
            px = np.bincount(components.ravel(), minlength=n + 1)[1:]
            entry = lesions.setdefault(c, {"px": [], "mm2": []})
            entry["px"].extend(float(v) for v in px)
            if pixel_mm2 is not None:
                entry["mm2"].extend(float(v) * pixel_mm2 for v in px)
    problems = hu_audit.pop()
    report(problems, strict=strict)
    spacing_mm = None
    if spacings:
        rows, cols = zip(*spacings, strict=True)
        spacing_mm = {"row": [min(rows), max(rows)], "col": [min(cols), max(cols)]}
    return {
        "folder": str(folder),
        "provenance": dataset_provenance(info),
        "anatomy": dataset_anatomy(info),
        "classes": classes,
        "n_samples": len(records),
        "n_patients": len(patients),
        "n_lesion_slices": lesion_slices,
        "n_lesions": sum(len(v["px"]) for v in lesions.values()),
        "n_synthetic": synthetic,
        "synthetic_fraction": synthetic / len(records),
        "generators": dict(sorted(generators.items())),
        "image_sizes": [
            {"height": h, "width": w, "count": n} for (h, w), n in sorted(sizes.items())
        ],
        "spacing_mm": spacing_mm,
        "lesions": {
            str(c): {
                "name": classes.get(str(c), f"class_{c}"),
                "count": len(v["px"]),
                "slices": class_slices[c],
                "size_px": _summary(v["px"]),
                "size_mm2": _summary(v["mm2"]),
            }
            for c, v in sorted(lesions.items())
        },
        "hu": {
            key: hu[key].result() for key in [BACKGROUND, *sorted(set(hu) - {BACKGROUND}, key=int)]
        },
        "problems": problems,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _triple(summary: dict[str, float] | None, digits: int) -> str:
    if summary is None:
        return "-"
    return " / ".join(_fmt(summary[k], digits) for k in ("min", "median", "max"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def format_info(info: dict[str, Any]) -> str:
    """`dataset_info` as a readable text table."""
    n = info["n_samples"]
    sizes = ", ".join(f"{s['height']}x{s['width']} ({s['count']})" for s in info["image_sizes"])
    lines = [
        f"dataset     {info['folder']}  ({info.get('provenance') or '?'}, anatomy: {info.get('anatomy') or 'not recorded'})",
        f"samples     {n}  from {info['n_patients']} patients",
        f"lesions     {info['n_lesions']} in {info['n_lesion_slices']} slices "
        f"({100 * info['n_lesion_slices'] / n:.1f} % of slices)",
        f"synthetic   {info['n_synthetic']} ({100 * info['synthetic_fraction']:.1f} %)"
        + (
            "  " + ", ".join(f"{g}: {c}" for g, c in info["generators"].items())
            if info["generators"]
            else ""
        ),
        f"image size  {sizes}",
    ]
    spacing = info.get("spacing_mm")
    if spacing:
        lines.append(
            f"spacing     row {spacing['row'][0]:.3g}-{spacing['row'][1]:.3g} mm, "
            f"col {spacing['col'][0]:.3g}-{spacing['col'][1]:.3g} mm"
        )
    else:
        lines.append("spacing     unknown (sizes in pixels only)")
    if info["lesions"]:
        rows = [
            [
                c,
                v["name"],
                str(v["count"]),
                str(v["slices"]),
                _triple(v["size_px"], 0),
                _triple(v["size_mm2"], 1),
            ]
            for c, v in info["lesions"].items()
        ]
        header = ["class", "name", "lesions", "slices", "px min/median/max", "mm² min/median/max"]
        lines += ["", *_table(header, rows)]
    rows = []
    for key, stats in info["hu"].items():
        if stats is None:
            continue
        name = (
            "background (body)"
            if key == "background_in_body"
            else f"{key} {info['lesions'].get(key, {}).get('name', '')}".strip()
        )
        rows.append(
            [
                name,
                str(stats["pixels"]),
                _fmt(stats["mean"]),
                _fmt(stats["sd"]),
                _fmt(stats["p1"], 0),
                _fmt(stats["p99"], 0),
            ]
        )
    if rows:
        lines += ["", *_table(["HU", "pixels", "mean", "sd", "p1", "p99"], rows)]
    return "\n".join(lines) + "\n"
