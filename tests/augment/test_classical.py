"""Classical augmenters: every registered op, groups, pipelines and their configs."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
from scipy import ndimage

from augment.classical.pipeline import (
    DEFAULT_CONFIG,
    OPS,
    PIPELINES,
    Compose,
    OneOf,
    build_augmenter,
    build_op,
    load_pipelines,
    replay,
)
from augment.errors import ConfigError, DataError
from augment.sample import Sample, boxes_from_mask

H = W = 48
LEVELS = {1: 400.0, 2: 1200.0}  # lesion HU per class in the self-encoding image

# Options per op that make it run (p = 1) with a clearly visible effect.
STRONG: dict[str, dict] = {
    "flip": {"axes": ["horizontal", "vertical"]},
    "rotate": {"degrees_range": [20, 40]},
    "scale": {"scale_range": [0.8, 1.2]},
    "translate": {"translate_range": [-0.15, 0.15]},
    "random_crop": {"scale_range": [0.6, 0.9], "restore": "pad"},
    "elastic": {"alpha_range": [20, 30], "sigma_range": [4, 5]},
    "contrast_brightness": {"contrast_range": [0.8, 1.2], "brightness_range": [-30, 30]},
    "gaussian_noise": {"sigma_range": [5, 15]},
    "salt_pepper": {"amount_range": [0.02, 0.05]},
    "pca_jitter": {"alpha_std": 0.2, "scale_std": 0.2},
    "clip": {"hu_range": [-100, 500]},
}
GEOMETRIC = ("flip", "rotate", "scale", "translate", "random_crop", "elastic")


def make_op(name: str, **extra):
    return build_op({"op": name, "p": 1.0, **STRONG[name], **extra})


def lesion_sample() -> Sample:
    """An image that encodes its own mask: smooth 20-40 HU background, lesions at LEVELS."""
    yy, xx = np.mgrid[:H, :W]
    image = (20.0 + 20.0 * xx / W + 5.0 * np.sin(yy / 7.0)).astype(np.float32)
    mask = np.zeros((H, W), np.uint8)
    mask[((yy - 16) / 6.0) ** 2 + ((xx - 18) / 9.0) ** 2 <= 1] = 1
    mask[((yy - 32) ** 2 + (xx - 30) ** 2) <= 25] = 2
    for k, level in LEVELS.items():
        image[mask == k] = level
    return Sample(image, mask, meta={"id": "p1_s1", "patient_id": "p1"})


def range_sample() -> Sample:
    """Air (-1000) and dense bone (2000) blocks well inside the slice, plus a lesion."""
    image = np.full((H, W), 40.0, np.float32)
    image[14:22, 14:22] = -1000.0
    image[26:34, 26:34] = 2000.0
    mask = np.zeros((H, W), np.uint8)
    mask[10:14, 30:36] = 1
    image[mask == 1] = 70.0
    return Sample(image, mask, meta={"id": "r"})


def image_classes(image: np.ndarray) -> np.ndarray:
    """The class map the self-encoding image implies (thresholds halfway between levels)."""
    out = np.zeros(image.shape, np.uint8)
    out[image > (30 + LEVELS[1]) / 2] = 1
    out[image > (LEVELS[1] + LEVELS[2]) / 2] = 2
    return out


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of any class boundary of ``mask``."""
    band = np.zeros(mask.shape, bool)
    square = np.ones((3, 3), bool)  # 8-connected: diagonal neighbours count as near
    for k in np.unique(mask):
        region = mask == k
        grown = ndimage.binary_dilation(region, square, iterations=width)
        core = ndimage.binary_erosion(region, square, iterations=width, border_value=1)
        band |= grown & ~core
    return band


# --------------------------------------------------------------------- contract


def test_every_registered_op_has_a_dedicated_test():
    # Albumentations-style guard: a newly registered op fails here until it is tested.
    module = sys.modules[__name__]
    missing = [n for n in OPS if not callable(getattr(module, f"test_op_{n}", None))]
    assert not missing, f"ops without a test_op_<name>: {missing}"
    assert set(STRONG) == set(OPS), "STRONG must give options for every registered op"


@pytest.mark.parametrize("name", sorted(OPS))
def test_contract_targets_dtype_meta_and_replay(name):
    sample = lesion_sample()
    before = copy.deepcopy(sample)
    out = make_op(name)(sample, np.random.default_rng(3))

    assert out.image.dtype == np.float32 and out.mask.dtype == np.uint8
    assert out.image.shape == out.mask.shape == (H, W)
    assert set(np.unique(out.mask)) <= set(np.unique(sample.mask)) | {0}
    boxes, labels = boxes_from_mask(out.mask)
    np.testing.assert_array_equal(out.boxes, boxes)
    np.testing.assert_array_equal(out.labels, labels)
    # The input is left untouched (no in-place edits, no shared history list).
    np.testing.assert_array_equal(sample.image, before.image)
    np.testing.assert_array_equal(sample.mask, before.mask)
    assert "augment" not in sample.meta
    # What was drawn is recorded, JSON-ready, and replays to identical bytes.
    (entry,) = out.meta["augment"]
    assert entry["name"] == name
    params = json.loads(json.dumps(entry["params"]))
    again = replay(sample, [{"name": name, "params": params}])
    assert again.image.tobytes() == out.image.tobytes()
    assert again.mask.tobytes() == out.mask.tobytes()
    assert again.meta["augment"] == out.meta["augment"]
    assert out.meta["id"] == "p1_s1"


@pytest.mark.parametrize("name", sorted(OPS))
def test_contract_same_seed_same_bytes(name):
    op = make_op(name)
    a = op(lesion_sample(), np.random.default_rng(11))
    b = op(lesion_sample(), np.random.default_rng(11))
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.meta["augment"] == b.meta["augment"]
    if name != "clip":  # clip has nothing random to draw
        c = [op(lesion_sample(), np.random.default_rng(s)).meta["augment"] for s in range(4)]
        assert any(x != c[0] for x in c[1:])


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_ops_keep_image_and_mask_aligned(name, seed):
    out = make_op(name)(lesion_sample(), np.random.default_rng(seed))
    assert out.has_lesion
    disagree = image_classes(out.image) != out.mask
    # The image is interpolated, the mask is not: they may differ only at boundaries.
    # (A misaligned mask, e.g. flipped without the image, differs over whole lesions.)
    width = 2 if name == "elastic" else 1
    assert not (disagree & ~boundary_band(out.mask, width)).any()
    for k, level in LEVELS.items():
        core = ndimage.binary_erosion(out.mask == k, iterations=width + 1)
        if core.any():
            np.testing.assert_allclose(out.image[core], level, atol=1e-3)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_never_interpolate_mask_classes(name):
    # Classes 3 and 7 touch each other and the background: any blending of labels
    # (linear or cubic mask interpolation) would invent values such as 1, 2, 5 or 6.
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 12:24] = 3
    mask[18:36, 24:34] = 7
    sample = Sample(lesion_sample().image, mask)
    extra = {"restore": "resize"} if name == "random_crop" else {}
    for seed in range(3):
        out = make_op(name, **extra)(sample, np.random.default_rng(seed))
        assert set(np.unique(out.mask)) <= {0, 3, 7}
        assert {3, 7} <= set(np.unique(out.mask))


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_keep_hu_range_without_clipping(name):
    sample = range_sample()
    out = make_op(name)(sample, np.random.default_rng(5))
    # Interpolation (linear) stays within the input values and the air fill.
    assert out.image.min() >= -1000.0 - 1e-3
    assert out.image.max() <= 2000.0 + 1e-3
    # The 8x8 air and bone blocks keep their exact values at their centres.
    assert np.isclose(out.image.min(), -1000.0, atol=1e-2)
    assert np.isclose(out.image.max(), 2000.0, atol=1e-2)


def test_boxes_without_mask_move_with_the_image():
    # Box-only labels (e.g. imported from VOC): albumentations moves the boxes.
    sample = Sample(
        lesion_sample().image,
        np.zeros((H, W), np.uint8),
        boxes=np.array([[5, 6, 15, 20]], np.float32),
        labels=np.array([2]),
    )
    flipped = OPS["flip"].apply(sample, {"horizontal": True, "vertical": False})
    np.testing.assert_allclose(flipped.boxes, [[W - 15, 6, W - 5, 20]])
    np.testing.assert_array_equal(flipped.labels, [2])
    moved = OPS["translate"].apply(
        sample, {"dx": 4, "dy": -3, "fill_hu": -1000.0, "interpolation": "linear"}
    )
    np.testing.assert_allclose(moved.boxes, [[9, 3, 19, 17]])


# ------------------------------------------------------------- one test per op


def test_op_flip():
    sample = range_sample()
    out = OPS["flip"].apply(sample, {"horizontal": True, "vertical": True})
    # Flips are exact: every HU value survives, at the mirrored position.
    np.testing.assert_array_equal(out.image, sample.image[::-1, ::-1])
    np.testing.assert_array_equal(out.mask, sample.mask[::-1, ::-1])
    # Box [30, 10, 36, 14] (edges) mirrors to [W-36, H-14, W-30, H-10].
    np.testing.assert_array_equal(out.boxes, [[W - 36, H - 14, W - 30, H - 10]])
    # One listed axis: flipped every time it runs; two: a non-empty subset each time.
    one = build_op({"op": "flip", "axes": ["vertical"]})
    assert one(sample, np.random.default_rng(0)).meta["augment"][0]["params"] == {
        "horizontal": False,
        "vertical": True,
    }
    both = build_op({"op": "flip", "axes": ["horizontal", "vertical"]})
    seen = {
        tuple(both(sample, np.random.default_rng(s)).meta["augment"][0]["params"].values())
        for s in range(30)
    }
    assert seen == {(True, False), (False, True), (True, True)}


def test_op_rotate():
    sample = lesion_sample()
    params = {"angle": 90.0, "fill_hu": -1000.0, "interpolation": "linear"}
    out = OPS["rotate"].apply(sample, params)
    # +90 degrees is counter-clockwise about the centre: exactly numpy's rot90 (k=1).
    np.testing.assert_allclose(out.image, np.rot90(sample.image), atol=1e-3)
    np.testing.assert_array_equal(out.mask, np.rot90(sample.mask))
    drawn = make_op("rotate")(sample, np.random.default_rng(0)).meta["augment"][0]["params"]
    assert 20 <= drawn["angle"] <= 40 and drawn["fill_hu"] == -1000.0
    # Corners rotate out of the slice and are filled with the configured HU.
    filled = OPS["rotate"].apply(sample, {**params, "angle": 45.0, "fill_hu": -1024.0})
    assert filled.image[0, 0] == -1024.0 and filled.mask[0, 0] == 0


def test_op_scale():
    image = np.zeros((H, W), np.float32)
    mask = np.zeros((H, W), np.uint8)
    mask[20:28, 20:28] = 1  # an 8x8 square centred on the slice centre (23.5, 23.5)
    image[mask == 1] = 500.0
    sample = Sample(image, mask)
    out = OPS["scale"].apply(sample, {"scale": 2.0, "fill_hu": -1000.0, "interpolation": "linear"})
    # Zoom x2 about the centre: edges 20 and 28 map to 23.5 +- 2 * 4 * ... = 16 and 32.
    np.testing.assert_array_equal(out.boxes, [[16, 16, 32, 32]])
    small = OPS["scale"].apply(
        sample, {"scale": 0.5, "fill_hu": -1000.0, "interpolation": "linear"}
    )
    np.testing.assert_array_equal(small.boxes, [[22, 22, 26, 26]])
    assert small.image[0, 0] == -1000.0  # zooming out brings in the air fill


def test_op_translate():
    sample = range_sample()
    out = OPS["translate"].apply(
        sample, {"dx": 5, "dy": -3, "fill_hu": -1000.0, "interpolation": "linear"}
    )
    # Whole-pixel shifts are exact, and the uncovered strips get the fill.
    np.testing.assert_array_equal(out.image[: H - 3, 5:], sample.image[3:, : W - 5])
    np.testing.assert_array_equal(out.mask[: H - 3, 5:], sample.mask[3:, : W - 5])
    assert (out.image[H - 3 :] == -1000.0).all() and (out.image[:, :5] == -1000.0).all()
    np.testing.assert_array_equal(out.boxes, sample.boxes + [5, -3, 5, -3])
    drawn = make_op("translate")(sample, np.random.default_rng(1)).meta["augment"][0]["params"]
    assert isinstance(drawn["dx"], int) and abs(drawn["dx"]) <= round(0.15 * W)


def test_op_random_crop():
    sample = range_sample()
    base = {"y0": 8, "x0": 12, "height": 30, "width": 32, "out_height": H, "out_width": W}
    base |= {"fill_hu": -1000.0, "interpolation": "linear"}
    crop = OPS["random_crop"].apply(sample, {**base, "restore": "none"})
    np.testing.assert_array_equal(crop.image, sample.image[8:38, 12:44])
    np.testing.assert_array_equal(crop.mask, sample.mask[8:38, 12:44])
    padded = OPS["random_crop"].apply(sample, {**base, "restore": "pad"})
    # Centred padding: (48 - 30) / 2 = 9 rows above, (48 - 32) / 2 = 8 columns left.
    np.testing.assert_array_equal(padded.image[9:39, 8:40], crop.image)
    assert (padded.image[:9] == -1000.0).all() and (padded.mask[:9] == 0).all()
    resized = OPS["random_crop"].apply(sample, {**base, "restore": "resize"})
    assert resized.image.shape == (H, W)
    assert set(np.unique(resized.mask)) <= {0, 1}
    fixed = build_op({"op": "random_crop", "size": [20, 24], "restore": "none"})
    assert fixed(sample, np.random.default_rng(0)).image.shape == (20, 24)
    too_big = build_op({"op": "random_crop", "size": [60, 24]})
    with pytest.raises(DataError, match="exceeds"):
        too_big(sample, np.random.default_rng(0))


def test_op_elastic():
    sample = lesion_sample()
    op = make_op("elastic")
    out = op(sample, np.random.default_rng(0))
    params = out.meta["augment"][0]["params"]
    assert 20 <= params["alpha"] <= 30 and 4 <= params["sigma"] <= 5
    assert not np.array_equal(out.mask, sample.mask)  # it did deform
    for k in (1, 2):  # a smooth field moves lesions, it does not erase or double them
        area, new_area = (sample.mask == k).sum(), (out.mask == k).sum()
        assert 0.6 * area <= new_area <= 1.4 * area
    # The random field comes from the recorded seed alone.
    other = OPS["elastic"].apply(sample, {**params, "seed": params["seed"] + 1})
    assert not np.array_equal(other.image, out.image)


def test_op_contrast_brightness():
    sample = range_sample()
    params = {"contrast": 1.5, "brightness": 10.0, "center_hu": 40.0}
    out = OPS["contrast_brightness"].apply(sample, params)
    # By hand: (x - 40) * 1.5 + 40 + 10; -1000 -> -1510 and 2000 -> 2990, not clipped.
    np.testing.assert_allclose(out.image, (sample.image - 40) * 1.5 + 50, rtol=1e-6)
    assert out.image.min() == -1510.0 and out.image.max() == 2990.0
    np.testing.assert_array_equal(out.mask, sample.mask)


def test_op_gaussian_noise():
    sample = range_sample()
    out = OPS["gaussian_noise"].apply(sample, {"sigma": 12.0, "seed": 4})
    diff = (out.image - sample.image).astype(np.float64)
    # 2304 draws: the sample std is within a few percent of sigma, the mean near 0.
    assert abs(diff.std() - 12.0) < 0.1 * 12.0
    assert abs(diff.mean()) < 1.5
    assert out.image.max() > 2000.0 and out.image.min() < -1000.0  # no clipping
    np.testing.assert_array_equal(out.mask, sample.mask)


def test_op_salt_pepper():
    sample = lesion_sample()
    lo, hi = float(sample.image.min()), float(sample.image.max())
    out = OPS["salt_pepper"].apply(
        sample, {"amount": 0.2, "salt_ratio": 0.25, "low_hu": lo, "high_hu": hi, "seed": 0}
    )
    changed = out.image != sample.image
    pepper = changed & (out.image == lo)
    salt = changed & (out.image == hi)
    assert (pepper | salt).sum() == changed.sum()  # changed pixels are only low or high
    # 20% hit, a quarter of them salt (minus pixels already at lo/hi), binomial noise.
    assert 0.15 < (out.image != sample.image).mean() < 0.22
    assert 0.03 < salt.mean() < 0.07
    assert out.image.min() == lo and out.image.max() == hi
    drawn = build_op({"op": "salt_pepper", "low_hu": -2000, "high_hu": 3000})(
        sample, np.random.default_rng(0)
    ).meta["augment"][0]["params"]
    assert (drawn["low_hu"], drawn["high_hu"]) == (-2000.0, 3000.0)
    default = make_op("salt_pepper")(sample, np.random.default_rng(0))
    assert default.meta["augment"][0]["params"]["low_hu"] == lo  # slice min by default


def test_op_pca_jitter():
    sample = range_sample()
    out = make_op("pca_jitter")(sample, np.random.default_rng(2))
    p = out.meta["augment"][0]["params"]
    body = sample.image[sample.image >= -500]  # air excluded by min_hu = -500
    assert p["mean"] == pytest.approx(body.mean()) and p["std"] == pytest.approx(body.std())
    expected = p["mean"] + (1 + p["scale"]) * (sample.image - p["mean"]) + p["alpha"] * p["std"]
    np.testing.assert_allclose(out.image, expected, rtol=1e-5, atol=1e-2)
    assert p["alpha"] != 0 and p["scale"] != 0
    # One channel: the jitter is affine in HU, so the order of intensities is kept.
    order = np.argsort(sample.image, axis=None, kind="stable")
    assert np.all(np.diff(out.image.ravel()[order]) >= -1e-3)


def test_op_clip():
    sample = range_sample()
    out = build_op({"op": "clip", "window": "brain"})(sample, np.random.default_rng(0))
    assert out.image.min() == 0.0 and out.image.max() == 80.0  # brain window 40/80
    assert out.meta["augment"][0]["params"] == {"low": 0.0, "high": 80.0}
    ranged = make_op("clip")(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(ranged.image, np.clip(sample.image, -100, 500))
    with pytest.raises(ConfigError, match="exactly one"):
        build_op({"op": "clip"})


# ------------------------------------------------------------------------ groups


def test_probability_p_and_compose_p():
    sample = lesion_sample()
    op = build_op({"op": "contrast_brightness", "p": 0.3})
    rng = np.random.default_rng(0)
    ran = np.mean([bool(op(sample, rng).meta.get("augment")) for _ in range(1000)])
    assert 0.25 < ran < 0.35  # binomial(1000, 0.3): sd 1.45 %
    never = Compose([build_op({"op": "contrast_brightness"})], p=0.0)
    assert never(sample, rng) is sample


def test_one_of_applies_exactly_one_weighted_by_p():
    sample = lesion_sample()
    group = OneOf([build_op({"op": "clip", "hu_range": [0, 100]}), build_op({"op": "flip"})])
    np.testing.assert_allclose(group.weights, [0.5, 0.5])  # equal p -> equal weights
    weighted = build_op(
        {
            "op": "one_of",
            "ops": [
                {"op": "clip", "p": 0.25, "hu_range": [0, 100]},
                {"op": "contrast_brightness", "p": 0.75},
            ],
        }
    )
    rng = np.random.default_rng(0)
    names = []
    for _ in range(400):
        history = weighted(sample, rng).meta["augment"]
        assert len(history) == 1  # exactly one, and it ran although its own p < 1
        names.append(history[0]["name"])
    share = names.count("clip") / len(names)
    assert 0.18 < share < 0.32  # weight 0.25, binomial(400) sd 2.2 %


# ---------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_builtin_pipelines_run_and_are_deterministic(name):
    aug = build_augmenter(name)
    assert aug.name == name and aug.spec["ops"] == PIPELINES[name]["ops"]
    for seed in range(3):
        a = aug(lesion_sample(), np.random.default_rng(seed))
        b = aug(lesion_sample(), np.random.default_rng(seed))
        assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
        assert a.meta.get("augment", []) == b.meta.get("augment", [])
        assert a.image.dtype == np.float32 and a.image.shape == (H, W)
        again = replay(lesion_sample(), a.meta.get("augment", []))
        assert again.image.tobytes() == a.image.tobytes()


def test_config_file_repeats_the_builtin_pipelines():
    pipelines = load_pipelines(DEFAULT_CONFIG)
    for name, spec in PIPELINES.items():
        assert pipelines[name] == spec, name
    for name in pipelines:  # and every pipeline in it builds
        assert build_augmenter(name).name == name


def test_yaml_pipeline_files(tmp_path):
    single = tmp_path / "mine.yaml"
    single.write_text(
        "name: mine\nops:\n  - {op: rotate, p: 1, degrees_range: [5, 5]}\n"
        "  - op: one_of\n    ops:\n      - {op: gaussian_noise, sigma_range: [1, 2]}\n"
    )
    aug = build_augmenter(str(single))
    out = aug(lesion_sample(), np.random.default_rng(0))
    assert [e["name"] for e in out.meta["augment"]] == ["rotate", "gaussian_noise"]
    assert out.meta["augment"][0]["params"]["angle"] == 5.0
    listed = tmp_path / "list.yml"
    listed.write_text("- {op: flip}\n")
    assert build_augmenter(listed).name == "list"
    many = tmp_path / "many.yaml"
    many.write_text("pipelines:\n  a: {ops: [{op: flip}]}\n  b: {ops: []}\n")
    assert build_augmenter(f"{many}:b").spec["ops"] == []
    with pytest.raises(ConfigError, match="choose a pipeline"):
        build_augmenter(str(many))
    assert build_augmenter("a", config=many).spec["ops"] == [{"op": "flip"}]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"ops": [{"op": "rotat"}]}, "unknown augmentation op 'rotat'"),
        ({"ops": [{"op": "rotate", "degrees": [1, 2]}]}, "op 'rotate': unknown option.*degrees"),
        ({"ops": [{"op": "rotate", "degrees_range": [5, 1]}]}, "op 'rotate': degrees_range"),
        ({"ops": [{"op": "rotate", "degrees_range": 15}]}, "op 'rotate': degrees_range"),
        ({"ops": [{"op": "flip", "p": 1.5}]}, "op 'flip': p"),
        ({"ops": [{"op": "flip", "axes": ["diagonal"]}]}, "op 'flip': axes"),
        ({"ops": [{"op": "rotate", "interpolation": "sinc"}]}, "op 'rotate': interpolation"),
        ({"ops": [{"op": "random_crop", "size": [0, 3]}]}, "op 'random_crop': size"),
        ({"ops": [{"op": "one_of", "ops": []}]}, "op 'one_of'"),
        ({"ops": [{"rotate": 1}]}, "'op' key"),
        ({"steps": []}, "unknown key.*steps"),
        ("no-such-pipeline", "unknown augmentation pipeline 'no-such-pipeline'"),
    ],
)
def test_bad_specs_raise_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_augmenter(spec)
    assert "\n" not in str(info.value)


def test_bad_yaml_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("ops: [ {op: flip\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        build_augmenter(str(broken))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("ops: [{op: rotate, degrees_range: [3, 1]}]\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: op 'rotate'"):
        build_augmenter(str(wrong))
    with pytest.raises(ConfigError, match="missing.yaml: no such pipeline file"):
        build_augmenter(str(tmp_path / "missing.yaml"))
