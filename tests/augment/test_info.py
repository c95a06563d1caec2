"""dataset_info / format_info on a small dataset with hand-placed lesions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from augment.errors import DataError
from augment.folder import write_dataset
from augment.io.info import dataset_info, format_info
from augment.sample import Sample


def body_slice(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Air around a square body (rows/cols 4..size-5) of 40-46 HU with a 2x2 air pocket."""
    r, c = np.mgrid[:size, :size]
    image = np.full((size, size), -1000.0, np.float32)
    body = np.zeros((size, size), bool)
    body[4 : size - 4, 4 : size - 4] = True
    image[body] = (40 + (r + c) % 7)[body]
    image[size // 2 : size // 2 + 2, size // 2 : size // 2 + 2] = -1000  # inside the body
    return image, body


def make_dataset(tmp_path):
    a_img, a_body = body_slice(32)
    a_mask = np.zeros((32, 32), np.uint8)
    a_mask[6:10, 6:10] = 1  # 16 px
    a_mask[20:22, 6:8] = 1  # 4 px, a second class-1 lesion
    a_mask[6:8, 20:23] = 2  # 6 px
    a_img[a_mask == 1] = 70 + np.arange(20) % 5
    a_img[a_mask == 2] = -20
    b_img, b_body = body_slice(32)
    c_img, c_body = body_slice(24)
    c_mask = np.zeros((24, 24), np.uint8)
    c_mask[5:8, 5:8] = 1  # 9 px
    c_img[c_mask == 1] = 65
    samples = [
        Sample(a_img, a_mask, meta={"id": "p1_s000", "patient_id": "p1", "spacing": [0.5, 0.5]}),
        Sample(
            b_img,
            np.zeros((32, 32), np.uint8),
            meta={"id": "p1_s001", "patient_id": "p1", "spacing": [0.5, 0.5]},
        ),
        Sample(
            c_img,
            c_mask,
            meta={"id": "syn_0", "patient_id": "p2", "synthetic": True, "generator": "pix2pix"},
        ),
    ]
    folder = write_dataset(tmp_path / "ds", samples, provenance="mixed", classes={1: "ich", 2: "edema"})
    bodies = [a_body, b_body, c_body]
    return folder, samples, bodies


def expected_stats(values: np.ndarray) -> dict[str, float]:
    return {
        "pixels": values.size,
        "mean": pytest.approx(values.mean()),
        "sd": pytest.approx(values.std()),
        # The histogram percentile is numpy's inverted_cdf, exact on whole HU.
        "p1": np.percentile(values, 1, method="inverted_cdf"),
        "p99": np.percentile(values, 99, method="inverted_cdf"),
    }


def test_counts_sizes_and_synthetic_fraction(tmp_path):
    folder, _, _ = make_dataset(tmp_path)
    info = dataset_info(folder)
    assert (info["n_samples"], info["n_patients"], info["n_lesion_slices"]) == (3, 2, 2)
    assert info["n_lesions"] == 4
    assert info["n_synthetic"] == 1 and info["synthetic_fraction"] == pytest.approx(1 / 3)
    assert info["generators"] == {"pix2pix": 1}
    assert info["image_sizes"] == [
        {"height": 24, "width": 24, "count": 1},
        {"height": 32, "width": 32, "count": 2},
    ]
    assert info["spacing_mm"] == {"row": [0.5, 0.5], "col": [0.5, 0.5]}
    ich, edema = info["lesions"]["1"], info["lesions"]["2"]
    assert (ich["name"], ich["count"], ich["slices"]) == ("ich", 3, 2)
    assert ich["size_px"] == {"min": 4, "median": 9, "max": 16}
    # mm² only where spacing is known (not the synthetic slice): 4 and 16 px at 0.25 mm².
    assert ich["size_mm2"] == {"min": 1.0, "median": 2.5, "max": 4.0}
    assert edema["count"] == 1 and edema["size_px"]["max"] == 6 and edema["size_mm2"]["max"] == 1.5
    json.dumps(info)  # JSON-able, for `--json` output


def test_hu_stats_per_class_and_background_in_body(tmp_path):
    folder, samples, bodies = make_dataset(tmp_path)
    info = dataset_info(folder)
    ich = np.concatenate([s.image[s.mask == 1] for s in samples])
    assert info["hu"]["1"] == expected_stats(ich)
    assert info["hu"]["2"] == expected_stats(np.full(6, -20.0))
    # Body = the square with its air pocket filled; lesion pixels excluded.
    background = np.concatenate(
        [s.image[b & (s.mask == 0)] for s, b in zip(samples, bodies, strict=True)]
    )
    assert info["hu"]["background_in_body"] == expected_stats(background)
    # Bodies 24² + 24² + 16² px (air pockets filled in) minus 16 + 4 + 6 + 9 lesion px.
    assert info["hu"]["background_in_body"]["pixels"] == 1373


def test_format_info_is_a_readable_table(tmp_path):
    folder, _, _ = make_dataset(tmp_path)
    text = format_info(dataset_info(folder))
    assert "samples     3  from 2 patients" in text
    assert "synthetic   1 (33.3 %)  pix2pix: 1" in text
    assert "24x24 (1), 32x32 (2)" in text
    lines = text.splitlines()
    ich_row = next(line for line in lines if line.startswith("1 ") and "ich" in line)
    assert ich_row.split()[:4] == ["1", "ich", "3", "2"] and "4 / 9 / 16" in ich_row
    assert any(line.startswith("background (body)") for line in lines)


def test_not_a_dataset(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="no dataset.json"):
        dataset_info(tmp_path / "x")
