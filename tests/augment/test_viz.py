"""Preview figures: windowed slices, class-coloured contours, boxes, stable PNG bytes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augment.classical.pipeline import build_augmenter
from augment.errors import DataError
from augment.sample import Sample
from augment.viz import (
    class_colour,
    grid_figure,
    mask_contours,
    preview_augmentations,
    save_grid,
    window_label,
)
from augment.window import Window

N = 40


def sample(i: int = 0, *, classes: tuple[int, ...] = (1, 2)) -> Sample:
    yy, xx = np.mgrid[:N, :N]
    image = np.where((yy - 20) ** 2 + (xx - 20) ** 2 < 18**2, 35.0, -1000.0).astype(np.float32)
    mask = np.zeros((N, N), np.uint8)
    if 1 in classes:
        mask[8:16, 10:20] = 1
    if 2 in classes:
        mask[24:30, 22:30] = 2
    image[mask == 1] = 70.0
    image[mask == 2] = 60.0
    return Sample(image, mask, meta={"id": f"s{i}"})


def rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def colour_pixels(pixels: np.ndarray, hex_colour: str, tol: int = 40) -> int:
    """How many pixels are within ``tol`` of a colour on every channel."""
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target) <= tol).all(axis=-1).sum())


def test_mask_contours_follow_pixel_edges():
    mask = np.zeros((10, 10), np.uint8)
    mask[3:6, 4:8] = 1
    (line,) = mask_contours(mask, 1)
    # Level 0.5 between pixel centres: rows 3..5 -> 2.5..5.5, cols 4..7 -> 3.5..7.5.
    assert line[:, 0].min() == 2.5 and line[:, 0].max() == 5.5
    assert line[:, 1].min() == 3.5 and line[:, 1].max() == 7.5
    edge = np.zeros((10, 10), np.uint8)
    edge[0:3, 0:3] = 2  # touches the border: padding still closes the outline
    (closed,) = mask_contours(edge, 2)
    np.testing.assert_array_equal(closed[0], closed[-1])
    assert closed[:, 0].min() == -0.5
    assert mask_contours(edge, 1) == []


def test_save_grid_draws_contours_per_class_and_is_byte_stable(tmp_path):
    rows = [[sample(0), sample(1)], [sample(2)]]
    path = save_grid(rows, tmp_path / "grid.png", titles=["a", "b"], row_labels=["r0", "r1"])
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2000
    pixels = rgb(path)
    # Figure: 2 columns x 2 rows of 2-inch cells at 100 dpi, plus a 0.5-inch footer
    # (one legend row, the window caption).
    assert pixels.shape == (450, 400, 3)
    assert colour_pixels(pixels, class_colour(1)) > 50
    assert colour_pixels(pixels, class_colour(2)) > 50
    # Same input, same bytes: no timestamp, no version string.
    again = save_grid(rows, tmp_path / "again.png", titles=["a", "b"], row_labels=["r0", "r1"])
    assert again.read_bytes() == data
    assert b"matplotlib" not in data.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "grid.png"]  # no temps


def test_save_grid_contour_and_boxes_switches(tmp_path):
    plain = rgb(save_grid([[sample(classes=(1,))]], tmp_path / "p.png", contour=False))
    assert colour_pixels(plain, class_colour(1)) == 0  # nothing red without outlines
    boxed = rgb(save_grid([[sample(classes=(1,))]], tmp_path / "b.png", contour=False, boxes=True))
    assert colour_pixels(boxed, class_colour(1)) > 20
    # The window is a view: a brain window shows 35 HU tissue as mid grey, air black.
    centre = plain[plain.shape[0] // 2 - 20, plain.shape[1] // 2]
    assert 60 <= centre[0] <= 120 and centre[0] == centre[1] == centre[2]


def test_save_grid_rejects_nothing_to_draw(tmp_path):
    with pytest.raises(DataError, match="no samples"):
        save_grid([[], []], tmp_path / "x.png")
    with pytest.raises(ValueError, match="row labels"):
        save_grid([[sample()]], tmp_path / "x.png", row_labels=["a", "b"])
    assert class_colour(1) != class_colour(2) and class_colour(9) == class_colour(1)


def test_preview_augmentations_grid(tmp_path):
    samples = [sample(0), sample(1)]
    aug = build_augmenter("heavy")
    path = preview_augmentations(samples, aug, np.random.default_rng(0), tmp_path / "pre.png")
    pixels = rgb(path)
    assert pixels.shape == (450, 800, 3)  # 2 rows x (original + 3 augmented) columns
    assert colour_pixels(pixels, class_colour(1)) > 100
    same = preview_augmentations(samples, aug, np.random.default_rng(0), tmp_path / "same.png")
    other = preview_augmentations(samples, aug, np.random.default_rng(1), tmp_path / "other.png")
    assert same.read_bytes() == path.read_bytes()
    assert other.read_bytes() != path.read_bytes()
    # The originals shown first are left as they were.
    assert "augment" not in samples[0].meta
    np.testing.assert_array_equal(samples[0].image, sample(0).image)
    with pytest.raises(ValueError, match="n_aug"):
        preview_augmentations(samples, aug, np.random.default_rng(0), tmp_path / "n.png", n_aug=0)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def figure_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_window_label_names_the_window_and_its_numbers():
    assert window_label("brain") == "brain (C 40 / W 80 HU)"
    assert window_label(Window(60, 150)) == "liver (C 60 / W 150 HU)"  # a named one, by value
    assert window_label(Window(35.5, 90)) == "C 35.5 / W 90 HU"  # unnamed: its numbers


def test_grid_legend_names_classes_and_the_window_is_stated():
    rows = [[sample(0), sample(1, classes=(2,))]]
    # dataset.json's classes as read from JSON: string keys.
    fig = grid_figure(rows, class_names={"1": "IPH", "2": "IVH", "3": "EDH"})
    assert legend_texts(fig) == ["IPH", "IVH"]  # only the classes drawn, in id order
    assert figure_texts(fig) == ["window: brain (C 40 / W 80 HU)"]
    # Without names (a dataset that has none) the legend falls back to the id.
    fig = grid_figure(rows, window=Window(35, 90), class_names={2: "IVH"})
    assert legend_texts(fig) == ["class 1", "IVH"]
    assert figure_texts(fig) == ["window: C 35 / W 90 HU"]
    # Nothing drawn on the slices: no legend, the window is still stated.
    fig = grid_figure([[sample(classes=())]], window="liver")
    assert legend_texts(fig) == [] and figure_texts(fig) == ["window: liver (C 60 / W 150 HU)"]


def test_boxes_alone_name_their_classes_too():
    fig = grid_figure([[sample()]], contour=False, boxes=True, class_names={1: "IPH"})
    assert legend_texts(fig) == ["IPH", "class 2"]


def test_preview_names_classes_and_states_its_window(tmp_path, monkeypatch):
    import augment.viz as viz

    saved = []
    write = viz.save_figure
    monkeypatch.setattr(viz, "save_figure", lambda fig, path: saved.append(fig) or write(fig, path))
    preview_augmentations(
        [sample(0)],
        build_augmenter("heavy"),
        np.random.default_rng(0),
        tmp_path / "pre.png",
        n_aug=1,
        window="blood",
        class_names={"1": "IPH", "2": "IVH"},
    )
    (fig,) = saved
    assert legend_texts(fig) == ["IPH", "IVH"]
    assert figure_texts(fig) == ["window: blood (C 50 / W 100 HU)"]
