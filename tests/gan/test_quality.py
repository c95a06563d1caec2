"""Quality metrics: Fréchet distance, KID, SSIM/PSNR, Inception features, memorisation.

Inception weights cannot be downloaded here, so the FID tests build pytorch-fid's
network with random (Kaiming) weights, save them where the real file would lie, and
check the code path: our fast extractor against pytorch-fid's own InceptionV3 on the
same weights, FID of a set with itself, FID growing under a shift, the cache, and the
message when the file is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from augment.errors import CheckpointError, DataError
from gan.evaluate import quality as q


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """pytorch-fid's Inception with random weights, saved as the real file is laid out.

    Kaiming-normal convolutions keep activations O(1) through the 90-odd layers (the
    PyTorch default init shrinks them to ~1e-7), so FIDs are well above round-off.
    """
    torch.manual_seed(seed)
    net = q.build_fid_inception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Distinct smooth random images in [0, 1] (Gaussian-filtered noise)."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2.5, 2.5))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo)).astype(np.float32)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A torch hub folder holding random-weight Inception under the expected file name."""
    root = tmp_path_factory.mktemp("hub")
    write_random_inception(root / "checkpoints" / q.FID_WEIGHTS_NAME)
    return root


# ------------------------------------------------------------------------- Fréchet / KID


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_pytorch_fid(seed):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(scale=0.4, size=(24, 24)) + rng.normal(size=24)
    stats = (*q.feature_stats(a), *q.feature_stats(b))
    ours, theirs = q.frechet_distance(*stats), calculate_frechet_distance(*stats)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_frechet_distance_singular_covariance_is_finite_and_zero_on_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 64))  # 10 samples in 64-d: rank-9 covariance
    mu, sigma = q.feature_stats(a)
    assert abs(q.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    mu2, sigma2 = q.feature_stats(a + 1.0)
    # A pure shift by 1 in each of 64 dims: |mu1 - mu2|^2 = 64, covariances equal.
    assert q.frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(64.0, rel=1e-6)


@pytest.mark.parametrize("m,n", [(12, 9), (40, 70)])
def test_frechet_from_features_equals_the_covariance_route(m, n):
    rng = np.random.default_rng(m)
    x, y = rng.normal(size=(m, 32)), rng.normal(loc=0.3, scale=1.5, size=(n, 32))
    direct = q.frechet_distance(*q.feature_stats(x), *q.feature_stats(y))
    assert q.frechet_distance_from_features(x, y) == pytest.approx(direct, rel=1e-6)


def test_mmd2_unbiased_matches_hand_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(loc=0.5, size=(4, 3))

    def k(u, v):
        return (float(np.dot(u, v)) / 3 + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert q.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = q.kid(x, y, n_subsets=20, seed=0)
    shifted = q.kid(x, y + 0.5, n_subsets=20, seed=0)
    assert same["kid_subset_size"] == 100  # half of the smaller set (200 // 2) < 1000
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])
    assert q.kid(x, y, n_subsets=20, seed=0) == same  # seeded subsets
    with pytest.raises(DataError):
        q.kid(x[:1], y)


# ---------------------------------------------------------------------------- SSIM / PSNR


def test_ssim_pairs_matches_skimage():
    x = smooth_images(6, size=24, seed=1)
    rng = np.random.default_rng(2)
    y = np.clip(x + rng.normal(scale=0.05, size=x.shape), 0, 1)
    y[3] = smooth_images(1, size=24, seed=9)[0]  # an unrelated image
    ours = q.ssim_pairs(x, y, data_range=1.0)
    ref = [structural_similarity(a, b, data_range=1.0) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_paired_ssim_psnr_clips_to_the_range_and_respects_the_region():
    rng = np.random.default_rng(0)
    real = rng.uniform(-60, 140, size=(32, 32))
    real[:4] = 1000.0  # bone: clipped to 140 in both, so it cannot dominate
    fake = real.copy()
    fake[:4] = 1500.0
    same = q.paired_ssim_psnr(real, fake, hu_range=(-60.0, 140.0))
    assert same["ssim"] == pytest.approx(1.0) and math.isinf(same["psnr"])

    region = np.zeros((32, 32), bool)
    region[10:20, 10:20] = True
    fake = real + np.where(region, 10.0, 0.0)
    fake[25:, 25:] += 50.0  # outside the region: ignored by the region metrics
    m = q.paired_ssim_psnr(real, fake, hu_range=(-60.0, 140.0), region=region)
    a, b = np.clip(real, -60, 140)[region], np.clip(fake, -60, 140)[region]
    # PSNR by its definition, 10 log10(R^2 / MSE), R = 200 HU, over the region only.
    mse = float(np.mean((a - b) ** 2))
    assert m["psnr"] == pytest.approx(10 * np.log10(200.0**2 / mse), rel=1e-9)
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=200.0))
    _, smap = structural_similarity(
        np.clip(real, -60, 140), np.clip(fake, -60, 140), data_range=200.0, full=True
    )
    assert m["ssim"] == pytest.approx(float(smap[region].mean()))
    assert m["ssim_whole_slice"] < 1.0


# --------------------------------------------------------------------------- Inception


def test_features_match_pytorch_fid_inception(hub, monkeypatch):
    import pytorch_fid.inception as pfi

    weights = hub / "checkpoints" / q.FID_WEIGHTS_NAME
    state = torch.load(weights, weights_only=True)
    # pytorch-fid as shipped, its download replaced by our file.
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)
    reference = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    images = smooth_images(3, size=40, seed=3)[:, :, :36]  # non-square on purpose
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)[:, None].repeat(1, 3, 1, 1))[0]
    ours = q.InceptionFeatures(weights, batch_size=2)(images)
    assert ours.shape == (3, 2048) and ours.dtype == np.float32
    expected = expected.flatten(1).numpy()
    # Folded batch norm / first conv change only float32 rounding.
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_fid_kid_with_local_weights_itself_shift_and_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    real = smooth_images(6, seed=4)
    other = smooth_images(6, seed=5)
    cache = tmp_path / "cache"
    itself = q.fid_kid(real, real, cache_dir=cache)
    assert itself["fid_status"].startswith("ok: pytorch-fid InceptionV3 pool3 (2048-d)")
    assert str(hub) in itself["fid_status"] and itself["fid_reference_cached"] is False
    assert len(list(cache.glob("*.npz"))) == 1
    # One extractor for the rest (loading the weights is the slow part).
    extractor = q.InceptionFeatures(hub / "checkpoints" / q.FID_WEIGHTS_NAME)
    near = q.fid_kid(other, real, cache_dir=cache, extractor=extractor)
    far = q.fid_kid(np.clip(other * 0.4 + 0.6, 0, 1), real, cache_dir=cache, extractor=extractor)
    assert near["fid_reference_cached"] is True and len(list(cache.glob("*.npz"))) == 1
    assert 0 < near["fid"] < far["fid"]
    assert abs(itself["fid"]) < 1e-6 * near["fid"]  # round-off only
    assert near["kid"] < far["kid"]
    # The cache holds exactly what the extractor computes.
    uncached = q.fid_kid(other, real, cache_dir=None, extractor=extractor)
    assert uncached["fid"] == pytest.approx(near["fid"], rel=1e-9)


def test_absent_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    images = smooth_images(4)
    result = q.fid_kid(images, images)
    where = tmp_path / "empty_hub" / "checkpoints" / q.FID_WEIGHTS_NAME
    assert result == {
        "fid": None,
        "kid": None,
        "kid_std": None,
        "fid_status": f"unavailable: Inception weights not found at {where}",
    }
    given = tmp_path / "nowhere.pth"
    assert q.fid_kid(images, images, weights=given)["fid_status"].endswith(str(given))
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    assert q.find_fid_weights(folder) == (None, [folder / q.FID_WEIGHTS_NAME])


def test_unreadable_or_foreign_weights_raise_checkpoint_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        q.InceptionFeatures(junk)
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth: not pytorch-fid Inception weights"):
        q.InceptionFeatures(foreign)


# ------------------------------------------------------------------------ memorisation


def test_planted_copies_are_flagged_and_distinct_images_are_not():
    refs = smooth_images(12, seed=10)
    rng = np.random.default_rng(0)
    queries = np.concatenate(
        [
            refs[3:4],  # exact copy
            np.clip(refs[7:8] + rng.normal(scale=0.005, size=(1, 32, 32)), 0, 1),  # near copy
            refs[5:6] * 0.98 + 0.01,  # copy with 2% less contrast
            smooth_images(4, seed=11),  # new images
        ]
    )
    near = q.nearest_by_ssim(queries, refs, top_k=4)
    assert list(near["index"][:3]) == [3, 7, 5]
    assert near["ssim"][0] == pytest.approx(1.0)
    assert (near["ssim"][:3] >= 0.95).all() and (near["ssim"][3:] < 0.95).all()
    # An exact copy is at distance exactly 0 on every CPU (computed directly, not as
    # ‖a‖²+‖b‖²−2a·b, which left 1e-8 of round-off on AVX-512).
    assert near["pixel_index"][0] == 3 and near["pixel_rms"][0] == 0.0
    summary = q.summarise_nearest(near["ssim"], threshold=0.95)
    assert summary["n_above"] == 3 and summary["n"] == 7
    assert summary["fraction_above_threshold"] == pytest.approx(3 / 7)
    assert summary["max_ssim"] == pytest.approx(1.0)
    # The prefilter finds the same nearest neighbours as the exhaustive search here.
    exhaustive = q.nearest_by_ssim(queries, refs, top_k=None)
    np.testing.assert_array_equal(exhaustive["index"][:3], near["index"][:3])
    # A stricter threshold flags only the exact copy.
    assert q.summarise_nearest(near["ssim"], threshold=0.9999)["n_above"] == 1


def test_excluded_pairs_are_never_matched():
    refs = smooth_images(5, seed=12)
    exclude = np.zeros((2, 5), bool)
    exclude[0, 2] = True  # query 0 is a copy of ref 2, but ref 2 is its own host
    exclude[1, :] = True  # nothing to compare with
    near = q.nearest_by_ssim(refs[[2, 4]], refs, exclude=exclude)
    assert near["index"][0] != 2 and near["ssim"][0] < 0.95
    assert near["index"][1] == -1 and np.isnan(near["ssim"][1]) and np.isnan(near["pixel_rms"][1])
    assert q.summarise_nearest(near["ssim"], 0.95)["n"] == 1


def test_lesion_patches_one_per_component_centred_and_scaled():
    image = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:14, 20:24] = 1  # small lesion: a plain 16 px crop centred on it
    mask[30:60, 30:62] = 2  # 32 px wide: crop of 40 px resized down to 16
    patches, owners = q.lesion_patches([image, image * 0], [mask, mask * 0], side=16)
    assert patches.shape == (2, 16, 16) and list(owners) == [0, 0]
    # Centre of the small lesion is (12, 22): crop rows 4..19, cols 14..29.
    np.testing.assert_array_equal(patches[0], image[4:20, 14:30])
    assert q.largest_component_box(mask > 0) == (slice(30, 60), slice(30, 62))
    assert q.largest_component_box(np.zeros((4, 4))) is None
