"""Figures for looking at the data: slices windowed for viewing, mask contours, boxes.

Shared by the whole project (augmentation previews, synthetic samples, reports). Every
figure is drawn on matplotlib's Agg canvas without pyplot, so no global backend or
figure state is touched, and saved with no timestamp or version metadata, so the same
input gives the same PNG bytes. Files are written atomically.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from skimage.measure import find_contours

from augment.errors import DataError
from augment.sample import Sample
from augment.storage import write_bytes_atomic
from augment.window import WINDOWS, Window, display, get_window

# One colour per lesion class (class k uses entry (k - 1) mod len): saturated hues that
# stand out against a grey CT, in an order that keeps classes 1-3 far apart.
CLASS_COLOURS = (
    "#ff3b30",  # red
    "#30d158",  # green
    "#0a84ff",  # blue
    "#ffd60a",  # yellow
    "#bf5af2",  # purple
    "#ff9f0a",  # orange
    "#64d2ff",  # cyan
    "#ff375f",  # pink
)


# Footer below a grid, in inches: the window caption, then one line per legend row.
CAPTION_INCHES = 0.25
LEGEND_ROW_INCHES = 0.25
LEGEND_ENTRY_INCHES = 0.9  # width one legend entry needs ("IPH", "class 12" ...)


def class_colour(k: int) -> str:
    """The contour/box colour of lesion class ``k`` (k >= 1)."""
    return CLASS_COLOURS[(int(k) - 1) % len(CLASS_COLOURS)]


def mask_contours(mask: np.ndarray, cls: int) -> list[np.ndarray]:
    """Outlines of class ``cls`` in ``mask`` as (N, 2) arrays of (row, col) points.

    The mask is padded by one pixel so that lesions touching the border give closed
    outlines; coordinates are pixel centres, as `imshow` draws them.
    """
    padded = np.pad(np.asarray(mask) == cls, 1).astype(np.float32)
    return [c - 1 for c in find_contours(padded, 0.5)]


def window_label(window: str | Window) -> str:
    """How a figure states its display window: ``brain (C 40 / W 80 HU)``.

    A window that is not one of the named `WINDOWS` is stated by its numbers alone.
    """
    w = get_window(window)
    name = window if isinstance(window, str) else None
    name = name or next((n for n, v in WINDOWS.items() if v == w), None)
    numbers = f"C {w.center:g} / W {w.width:g} HU"
    return f"{name} ({numbers})" if name else numbers


def class_names_of(names: Mapping[int | str, str] | None) -> dict[int, str]:
    """``{class id: name}`` from a ``dataset.json`` ``classes`` map (keys may be strings)."""
    return {int(k): str(v) for k, v in (names or {}).items()}


def grid_figure(
    rows: Sequence[Sequence[Sample]],
    *,
    window: str | Window = "brain",
    titles: Sequence[str] | Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    contour: bool = True,
    boxes: bool = False,
    class_names: Mapping[int | str, str] | None = None,
    cell_inches: float = 2.0,
    dpi: int = 100,
) -> Figure:
    """The figure `save_grid` saves (see there for the arguments)."""
    rows = [list(r) for r in rows]
    n_cols = max((len(r) for r in rows), default=0)
    if n_cols == 0:
        raise DataError("no samples to draw")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    cell_titles = _cell_titles(titles, rows, n_cols)
    width = cell_inches * n_cols
    # Which classes the legend needs is known only after drawing; the footer height
    # (window caption + legend rows) must be known before, so look at the labels first.
    classes = sorted(
        {int(k) for row in rows for s in row for k in np.unique(s.mask) if contour and k}
        | {int(k) for row in rows for s in row for k in s.labels if boxes and k}
    )
    ncol = max(1, min(len(classes), int(width / LEGEND_ENTRY_INCHES)))
    legend_rows = -(-len(classes) // ncol) if classes else 0
    footer = CAPTION_INCHES + LEGEND_ROW_INCHES * legend_rows
    height = cell_inches * len(rows) + footer

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.set_axis_off()
                continue
            _draw(ax, row[c], window, contour=contour, boxes=boxes)
            if cell_titles[r][c]:
                ax.set_title(cell_titles[r][c], fontsize=8)
        if row_labels is not None:
            axes[r][0].set_ylabel(str(row_labels[r]), fontsize=8)
    if classes:
        names = class_names_of(class_names)
        handles = [Line2D([], [], color=class_colour(k), linewidth=2) for k in classes]
        labels = [names.get(k, f"class {k}") for k in classes]
        fig.legend(
            handles,
            labels,
            loc="lower center",
            bbox_to_anchor=(0.5, CAPTION_INCHES / height),
            ncol=ncol,
            fontsize=8,
            frameon=False,
        )
    window_caption(fig, window, height)
    fig.tight_layout(rect=(0, footer / height, 1, 1))
    return fig


def window_caption(fig: Figure, window: str | Window, height: float, note: str = "") -> None:
    """``window: brain (C 40 / W 80 HU)`` at the bottom of a figure ``height`` inches tall."""
    text = f"window: {window_label(window)}" + (f" ({note})" if note else "")
    fig.text(0.5, 0.04 / height, text, ha="center", va="bottom", fontsize=7, color="0.25")


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG, atomically, with no metadata that changes between runs."""
    path = Path(path)
    buf = io.BytesIO()
    # No "Software" (matplotlib version) entry: identical figures give identical bytes.
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())
    return path


def save_grid(rows: Sequence[Sequence[Sample]], path: str | os.PathLike, **options: Any) -> Path:
    """Save a PNG grid of slices, windowed for viewing, with their labels drawn on.

    Below the grid: a legend naming each class drawn, and the display window
    (``window: brain (C 40 / W 80 HU)``).

    Args:
        rows: samples, one list per grid row (rows may differ in length).
        path: where the PNG goes (written atomically).
        options: `grid_figure`'s:
        window: display window name (``"brain"``, ``"liver"``...) or a `Window`.
        titles: one title per column (shown above the first row), or one per cell.
        row_labels: one label per row, shown left of it.
        contour: outline each lesion class in its colour (`class_colour`).
        boxes: draw the sample's boxes (dashed, in the colour of their label).
        class_names: legend names of classes, as ``dataset.json`` ``classes`` holds them
            (``{"1": "IPH", ...}``, int keys too); ``class k`` when missing.
        cell_inches: size of one cell; ``dpi``: resolution.

    Returns:
        ``path`` as a `Path`.
    """
    try:
        fig = grid_figure(rows, **options)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return save_figure(fig, path)


def _cell_titles(
    titles: Sequence[str] | Sequence[Sequence[str]] | None,
    rows: list[list[Sample]],
    n_cols: int,
) -> list[list[str]]:
    out = [[""] * n_cols for _ in rows]
    if titles is None:
        return out
    if all(isinstance(t, str) for t in titles):  # column titles over the first row
        for c, t in enumerate(titles[:n_cols]):
            out[0][c] = str(t)
        return out
    if len(titles) != len(rows):
        raise ValueError(f"{len(titles)} rows of titles for {len(rows)} rows of samples")
    for r, row_titles in enumerate(titles):
        for c, t in enumerate(list(row_titles)[:n_cols]):
            out[r][c] = str(t)
    return out


def _draw(ax, sample: Sample, window: str | Window, *, contour: bool, boxes: bool) -> set[int]:
    """One slice with its outlines and boxes; returns the classes it drew."""
    ax.imshow(
        display(sample.image, window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    drawn: set[int] = set()
    if contour:
        for k in np.unique(sample.mask):
            if k == 0:
                continue
            drawn.add(int(k))
            for line in mask_contours(sample.mask, int(k)):
                ax.plot(line[:, 1], line[:, 0], color=class_colour(k), linewidth=1.0)
    if boxes:
        for (x1, y1, x2, y2), k in zip(sample.boxes, sample.labels, strict=True):
            drawn.add(int(k))
            # Boxes hold pixel edges; imshow puts pixel centres on integers.
            ax.add_patch(
                Rectangle(
                    (x1 - 0.5, y1 - 0.5),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    edgecolor=class_colour(k),
                    linewidth=0.8,
                    linestyle="--",
                )
            )
    h, w = sample.image.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    return drawn


def preview_augmentations(
    samples: Sequence[Sample],
    augmenter: Callable[[Sample, np.random.Generator], Sample],
    rng: np.random.Generator,
    path: str | os.PathLike,
    *,
    n_aug: int = 3,
    window: str | Window = "brain",
    boxes: bool = True,
    class_names: Mapping[int | str, str] | None = None,
) -> Path:
    """A grid with one row per sample: the original, then ``n_aug`` augmented draws.

    Each augmented cell is titled with the ops that ran (from ``meta["augment"]``), so a
    preview shows what a pipeline does and whether masks and boxes stayed on the lesion.
    ``class_names`` (the dataset's ``dataset.json`` ``classes``) name the legend entries;
    the display ``window`` is stated under the grid.

    Returns:
        ``path`` as a `Path`.
    """
    if n_aug < 1:
        raise ValueError(f"n_aug must be >= 1, got {n_aug}")
    rows: list[list[Sample]] = []
    titles: list[list[str]] = []
    for sample in samples:
        before = len(sample.meta.get("augment", []))
        row = [sample]
        row_titles = ["original"]
        for i in range(n_aug):
            out = augmenter(sample, rng)
            ran = [e["name"] for e in out.meta.get("augment", [])[before:]]
            row.append(out)
            text = f"#{i + 1}: " + (", ".join(ran) or "unchanged")
            row_titles.append(textwrap.fill(text, width=30))
        rows.append(row)
        titles.append(row_titles)
    labels = [s.id or f"sample {i}" for i, s in enumerate(samples)]
    return save_grid(
        rows,
        path,
        window=window,
        titles=titles,
        row_labels=labels,
        boxes=boxes,
        class_names=class_names,
    )
