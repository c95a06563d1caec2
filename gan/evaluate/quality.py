"""Generator quality, as pure functions over arrays: SSIM/PSNR, FID/KID, memorisation.

- **SSIM/PSNR on HU** (`paired_ssim_psnr`): both images are clipped to a stated HU
  range (the model window: the generators only produce HU inside it) and compared with
  ``data_range`` = that range's width, with `skimage.metrics`.
- **FID/KID** on pytorch-fid's InceptionV3 pool3 features (2048-d), only when its
  weights file is on disk (`find_fid_weights`); nothing is downloaded and no other
  network is ever reported as FID. `InceptionFeatures` gives pytorch-fid's numbers
  (up to float rounding) faster. `frechet_distance` takes the matrix square root by
  eigendecomposition (`frechet_distance_from_features`, used for FID, gets the same
  number from the features without d x d matrices when there are fewer images than
  dimensions); `kid` is the unbiased MMD^2 with the cubic polynomial kernel
  (Binkowski et al. 2018) over random subsets.
- **Memorisation** (`nearest_by_ssim`): for each query image, its nearest reference by
  SSIM (windowed [0, 1], ``data_range`` 1) among the ``top_k`` nearest by a cheap
  pixel distance, and the nearest by that distance itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize
from torch import nn

from augment.errors import CheckpointError, DataError
from augment.storage import sha256_file, write_bytes_atomic
from gan.base import load_torch_data, short_reason

log = logging.getLogger(__name__)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID_WEIGHTS_URL file
FID_DIMS = 2048  # pool3
# Bump when the feature pipeline changes numbers: cached reference features are keyed by it.
FEATURES_VERSION = 1
SSIM_WIN = 7  # skimage's default uniform window
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def default_cache_dir() -> Path:
    """Where reference-set Inception features are cached: ``~/.cache/lesionforge/fid``."""
    return Path.home() / ".cache" / "lesionforge" / "fid"


# ------------------------------------------------------------------------- SSIM / PSNR


def paired_ssim_psnr(
    real_hu: np.ndarray,
    fake_hu: np.ndarray,
    *,
    hu_range: tuple[float, float],
    region: np.ndarray | None = None,
) -> dict[str, float]:
    """SSIM and PSNR of ``fake_hu`` against ``real_hu``, both clipped to ``hu_range``.

    ``data_range`` is ``hu_range[1] - hu_range[0]``. With a ``region`` (bool mask) SSIM is
    the mean of skimage's SSIM map over the region's pixels and PSNR uses the squared
    error over those pixels only, so an unchanged background does not inflate either.

    Returns:
        ``ssim``, ``psnr`` (dB; ``inf`` when the compared pixels are identical) and
        ``ssim_whole_slice`` (skimage's mean SSIM over the whole slice).
    """
    lo, hi = hu_range
    data_range = float(hi - lo)
    a = np.clip(np.asarray(real_hu, np.float64), lo, hi)
    b = np.clip(np.asarray(fake_hu, np.float64), lo, hi)
    whole, smap = structural_similarity(a, b, data_range=data_range, full=True)
    if region is None:
        ssim, ra, rb = float(whole), a, b
    else:
        region = np.asarray(region, bool)
        if not region.any():
            raise ValueError("paired_ssim_psnr: empty region")
        ssim, ra, rb = float(smap[region].mean()), a[region], b[region]
    if np.array_equal(ra, rb):
        psnr = math.inf  # skimage would divide by zero
    else:
        psnr = float(peak_signal_noise_ratio(ra, rb, data_range=data_range))
    return {"ssim": ssim, "psnr": psnr, "ssim_whole_slice": float(whole)}


def ssim_pairs(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, data_range: float = 1.0
) -> np.ndarray:
    """Mean SSIM of each pair ``(a[i], b[i])``, (P, H, W) each, in one vectorised pass.

    The same number as ``skimage.metrics.structural_similarity(a[i], b[i],
    data_range=data_range)`` (7x7 uniform window, sample covariance, K1 = 0.01,
    K2 = 0.03, the border of half a window left out), computed in float64.
    """
    x = torch.as_tensor(a, dtype=torch.float64)[:, None]
    y = torch.as_tensor(b, dtype=torch.float64)[:, None]
    if x.shape != y.shape:
        raise ValueError(f"ssim_pairs: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    if min(x.shape[-2:]) < SSIM_WIN:
        raise ValueError(f"ssim_pairs: images must be at least {SSIM_WIN}x{SSIM_WIN}")

    # Valid pooling == skimage's uniform filter cropped by half a window.
    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WIN, stride=1)

    cov_norm = SSIM_WIN**2 / (SSIM_WIN**2 - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


# ---------------------------------------------------------------------------- FID / KID


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, rows = samples) in float64, as pytorch-fid."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise DataError(f"need at least 2 images for feature statistics, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of two Gaussians.

    ``tr (S1 S2)^(1/2)`` is the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``), with
    ``S1^(1/2)`` from ``eigh``; round-off eigenvalues are zeroed. Unlike
    ``scipy.linalg.sqrtm`` this stays real and finite for singular covariances (fewer
    images than feature dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(_numerical_nonnegative(w))) @ v.T
    inner = root1 @ s2 @ root1
    eigs = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(_numerical_nonnegative(eigs)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_from_features(x: np.ndarray, y: np.ndarray) -> float:
    """`frechet_distance` of the Gaussians fitted to feature sets ``x`` (m, d), ``y`` (n, d).

    With fewer images than dimensions (the usual case: 2048-d features) it avoids the
    d x d matrices: with ``a``, ``b`` the centred features over ``sqrt(m - 1)``,
    ``sqrt(n - 1)`` (so ``S1 = a^T a``, ``S2 = b^T b``), the non-zero eigenvalues of
    ``S1 S2`` are the squared singular values of ``a b^T`` (m x n), so
    ``tr (S1 S2)^(1/2)`` is its nuclear norm. Same number, exactly in exact arithmetic.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if min(m, n) < 2:
        raise DataError(f"need at least 2 images per set for FID, got {m} and {n}")
    if min(m, n) >= x.shape[1]:
        return frechet_distance(*feature_stats(x), *feature_stats(y))
    a = (x - x.mean(axis=0)) / math.sqrt(m - 1)
    b = (y - y.mean(axis=0)) / math.sqrt(n - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = x.mean(axis=0) - y.mean(axis=0)
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * nuclear)


def _numerical_nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off zeroed: below ``n * eps * max|w|`` (the
    numerical-rank cut of ``np.linalg.matrix_rank``), so a singular covariance's zero
    eigenvalues add nothing (their square roots would add ~sqrt(eps) each)."""
    w = np.asarray(eigenvalues, np.float64)
    tol = len(w) * np.finfo(np.float64).eps * (np.abs(w).max() if w.size else 0.0)
    return np.where(w > tol, w, 0.0)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3`` (d = feature dimension)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples ``x`` (m, d) and ``y`` (n, d), polynomial kernel.

    ``sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise DataError(f"MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def kid(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Kernel Inception Distance: `mmd2_unbiased` averaged over random subsets.

    Each subset draws ``size`` rows of each set without replacement, where ``size`` is
    ``subset_size`` (Binkowski et al.: 1000) but at most half the smaller set, so that
    subsets differ and ``kid_std`` means something on small sets.

    Returns:
        ``kid`` (mean), ``kid_std`` (std over subsets, ddof 1), ``kid_subset_size``,
        ``kid_subsets``.
    """
    n_min = min(len(x), len(y))
    size = min(subset_size, max(2, n_min // 2))
    if n_min < 2:
        raise DataError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                x[rng.choice(len(x), size, replace=False)],
                y[rng.choice(len(y), size, replace=False)],
            )
            for _ in range(n_subsets)
        ]
    )
    return {
        "kid": float(values.mean()),
        "kid_std": float(values.std(ddof=1)) if n_subsets > 1 else 0.0,
        "kid_subset_size": int(size),
        "kid_subsets": int(n_subsets),
    }


# ---------------------------------------------------------------------- Inception v3


def fid_weights_candidates(path: str | os.PathLike | None = None) -> list[Path]:
    """Where the weights are looked for: ``path`` (a file, or a folder holding
    `FID_WEIGHTS_NAME`) when given, else the torch hub cache's ``checkpoints/``."""
    if path is not None:
        p = Path(path).expanduser()
        return [p / FID_WEIGHTS_NAME if p.is_dir() else p]
    return [Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME]


def find_fid_weights(path: str | os.PathLike | None = None) -> tuple[Path | None, list[Path]]:
    """``(the weights file found or None, the paths searched)``; never downloads."""
    searched = fid_weights_candidates(path)
    found = next((p for p in searched if p.is_file()), None)
    return found, searched


def build_fid_inception() -> nn.Module:
    """The network a pytorch-fid weights file holds, with its initial (unloaded) weights.

    ``pytorch_fid.inception.fid_inception_v3`` without its download: torchvision's
    InceptionV3 (1008 classes, no aux head) with pytorch-fid's TF-compatible blocks.
    """
    import torchvision
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def _fold_grey_input(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel conv equal to ``conv`` applied to ``2 g - 1`` repeated on 3 channels.

    Exact because the first Inception conv has no padding (every tap sees image).
    """
    if conv.padding != (0, 0) or conv.in_channels != 3:
        raise ValueError("grey folding needs an unpadded 3-channel convolution")
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=conv.stride, bias=True)
    grey.weight.data = 2 * w.sum(dim=1, keepdim=True)
    grey.bias.data = b - w.sum(dim=(1, 2, 3))
    return grey


class InceptionFeatures:
    """pytorch-fid's InceptionV3 pool3 features (2048-d) of grey images in [0, 1].

    Equal, up to float rounding, to ``pytorch_fid.inception.InceptionV3([3])`` on the
    images repeated to 3 channels (bilinear resize to 299 x 299, ``2 x - 1``), but
    faster: batch norm folded into the convolutions, the grey replication and the
    ``2 x - 1`` folded into the first convolution, channels-last memory, inference
    mode, and the resize done once on one channel. It stays float32 (bf16 would move
    FID and only pays on CPUs with native bf16).

    Raises:
        CheckpointError: the weights file cannot be read or does not fit the network.
    """

    dims = FID_DIMS

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        from torch.nn.utils.fusion import fuse_conv_bn_eval
        from torchvision.models.inception import BasicConv2d

        weights = Path(weights)
        state = load_torch_data(weights, what="pytorch-fid Inception weights")
        net = build_fid_inception()
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"{weights}: not pytorch-fid Inception weights ({short_reason(e)})"
            ) from None
        net.eval()
        for m in net.modules():
            if isinstance(m, BasicConv2d):
                m.conv = fuse_conv_bn_eval(m.conv, m.bn)
                m.bn = nn.Identity()
        net.Conv2d_1a_3x3.conv = _fold_grey_input(net.Conv2d_1a_3x3.conv)
        # pytorch-fid's blocks 0-3, in order, up to the final average pool.
        self.net = nn.Sequential(
            net.Conv2d_1a_3x3,
            net.Conv2d_2a_3x3,
            net.Conv2d_2b_3x3,
            nn.MaxPool2d(3, stride=2),
            net.Conv2d_3b_1x1,
            net.Conv2d_4a_3x3,
            nn.MaxPool2d(3, stride=2),
            net.Mixed_5b,
            net.Mixed_5c,
            net.Mixed_5d,
            net.Mixed_6a,
            net.Mixed_6b,
            net.Mixed_6c,
            net.Mixed_6d,
            net.Mixed_6e,
            net.Mixed_7a,
            net.Mixed_7b,
            net.Mixed_7c,
            nn.AdaptiveAvgPool2d(1),
        )
        self.device = torch.device(device)
        self.net = self.net.to(self.device, memory_format=torch.channels_last).requires_grad_(False)
        self.batch_size = batch_size
        self.weights = weights
        self.weights_sha256 = sha256_file(weights)

    def __call__(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """(N, H, W) floats in [0, 1] -> float32 (N, 2048)."""
        from tqdm.auto import tqdm

        images = np.asarray(images, np.float32)
        out = np.zeros((len(images), self.dims), np.float32)
        starts = range(0, len(images), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(
                starts, desc="inception features", unit="batch", disable=not progress
            ):
                x = torch.from_numpy(images[start : start + self.batch_size])[:, None].to(
                    self.device
                )
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                y = self.net(x.contiguous(memory_format=torch.channels_last))
                out[start : start + len(x)] = y.flatten(1).float().cpu().numpy()
        return out


def _images_key(images: np.ndarray, extra: Sequence[Any]) -> str:
    h = hashlib.sha256(repr((FEATURES_VERSION, *extra, images.shape)).encode())
    h.update(np.ascontiguousarray(images, np.float32).tobytes())
    return h.hexdigest()


def cached_features(
    extractor: InceptionFeatures,
    images: np.ndarray,
    *,
    cache_dir: str | os.PathLike | None,
    what: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """``extractor(images)``, cached under ``cache_dir`` by content hash.

    The key hashes the windowed images' bytes (so the HU and the window), the weights'
    sha256 and `FEATURES_VERSION`. Returns ``(features, came_from_cache)``.
    """
    if cache_dir is None:
        return extractor(images, progress=progress), False
    key = _images_key(images, (extractor.weights_sha256,))
    path = Path(cache_dir).expanduser() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                features = z["features"]
            if features.shape == (len(images), extractor.dims):
                return features, True
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable cached features, recomputing", path)
    features = extractor(images, progress=progress)
    buf = io.BytesIO()
    np.savez(buf, features=features, about=np.array(repr(what or {})))
    write_bytes_atomic(path, buf.getvalue())
    return features, False


def fid_kid(
    synthetic: np.ndarray,
    reference: np.ndarray,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    extractor: InceptionFeatures | None = None,
    what: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FID and KID of ``synthetic`` against ``reference`` (grey (N, H, W) in [0, 1]).

    Reference features are cached by content (`cached_features`). Without a weights
    file (`find_fid_weights`), ``fid``/``kid`` are None and ``fid_status`` says
    ``"unavailable: Inception weights not found at <paths>"``.
    """
    if extractor is None:
        found, searched = find_fid_weights(weights)
        if found is None:
            where = ", ".join(str(p) for p in searched)
            return {
                "fid": None,
                "kid": None,
                "kid_std": None,
                "fid_status": f"unavailable: Inception weights not found at {where}",
            }
        extractor = InceptionFeatures(found, device=device)
    f_ref, cached = cached_features(
        extractor, reference, cache_dir=cache_dir, what=what, progress=progress
    )
    f_syn = extractor(synthetic, progress=progress)
    result: dict[str, Any] = {
        "fid": frechet_distance_from_features(f_syn, f_ref),
        **kid(f_syn, f_ref, seed=seed),
        "fid_status": (
            f"ok: pytorch-fid InceptionV3 pool3 ({FID_DIMS}-d), weights {extractor.weights}; "
            f"{len(f_syn)} synthetic vs {len(f_ref)} real images (FID is biased upwards "
            "for small sets: compare only at equal sizes)"
        ),
        "fid_weights_sha256": extractor.weights_sha256,
        "fid_n_synthetic": len(f_syn),
        "fid_n_reference": len(f_ref),
        "fid_reference_cached": cached,
    }
    return result


# ------------------------------------------------------------------------ memorisation


def downsample(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W) -> (N, side * side) float64 by area averaging (adaptive average pool)."""
    x = torch.as_tensor(np.asarray(images, np.float64))[:, None]
    side_h, side_w = min(side, x.shape[-2]), min(side, x.shape[-1])
    return F.adaptive_avg_pool2d(x, (side_h, side_w)).flatten(1).numpy()


def nearest_by_ssim(
    queries: np.ndarray,
    references: np.ndarray,
    *,
    top_k: int | None = 32,
    exclude: np.ndarray | None = None,
    feature_side: int = 16,
    chunk: int = 2048,
) -> dict[str, np.ndarray]:
    """Each query's nearest reference, by SSIM and by a pixel distance.

    Images are (N, H, W) in [0, 1] (windowed), SSIM with ``data_range`` 1. The pixel
    distance is the RMS difference of the images area-downsampled to ``feature_side``
    squared; SSIM is computed for each query's ``top_k`` nearest references by that
    distance (all references when ``top_k`` is None), which keeps it fast: an exact or
    near copy is also the nearest by pixels.

    Args:
        exclude: bool (n_queries, n_references); True pairs are never matched (e.g. a
            synthetic slice and the training slice it was painted into).

    Returns:
        ``ssim``, ``index`` (nearest by SSIM; NaN / -1 where every reference is
        excluded), ``pixel_rms``, ``pixel_index`` (nearest by the pixel distance).
    """
    q, r = np.asarray(queries, np.float64), np.asarray(references, np.float64)
    if q.shape[1:] != r.shape[1:]:
        raise DataError(
            f"memorisation: query images {q.shape[1:]} and references {r.shape[1:]} differ"
        )
    nq, nr = len(q), len(r)
    fq, fr = downsample(q, feature_side), downsample(r, feature_side)
    d2 = (fq * fq).sum(1)[:, None] + (fr * fr).sum(1)[None] - 2 * fq @ fr.T
    dist = np.sqrt(np.clip(d2, 0, None) / fq.shape[1])
    if exclude is not None:
        dist = np.where(np.asarray(exclude, bool), np.inf, dist)
    k = nr if top_k is None else min(top_k, nr)
    cand = np.argsort(dist, axis=1, kind="stable")[:, :k]
    usable = np.isfinite(np.take_along_axis(dist, cand, axis=1))
    scores = np.full((nq, k), -np.inf)
    qi, ci = np.nonzero(usable)
    ri = cand[qi, ci]
    for start in range(0, len(qi), chunk):
        sl = slice(start, start + chunk)
        scores[qi[sl], ci[sl]] = ssim_pairs(q[qi[sl]], r[ri[sl]], data_range=1.0)
    best = scores.argmax(axis=1) if k else np.zeros(nq, int)
    any_ok = usable.any(axis=1) if k else np.zeros(nq, bool)
    rows = np.arange(nq)
    # The matrix-product distance above ranks candidates; ‖a‖²+‖b‖²−2a·b loses digits to
    # cancellation (an exact copy came out at ~1e-8, and differently on AVX2 and AVX-512
    # BLAS). The reported distance is recomputed directly on the few best candidates, so
    # an exact copy is exactly 0 on every CPU.
    pixel_index = np.full(nq, -1)
    pixel_rms = np.full(nq, np.nan)
    if nr:
        near = cand[:, : min(k, 4)] if k else dist.argmin(axis=1)[:, None]
        exact = np.sqrt(((fq[:, None, :] - fr[near]) ** 2).mean(axis=2))
        exact = np.where(np.isfinite(np.take_along_axis(dist, near, axis=1)), exact, np.inf)
        pick = exact.argmin(axis=1)
        pixel_index = near[rows, pick]
        pixel_rms = exact[rows, pick]
    return {
        "ssim": np.where(any_ok, scores[rows, best] if k else np.nan, np.nan),
        "index": np.where(any_ok, cand[rows, best] if k else -1, -1),
        "pixel_rms": np.where(np.isfinite(pixel_rms), pixel_rms, np.nan),
        "pixel_index": np.where(np.isfinite(pixel_rms), pixel_index, -1),
    }


def summarise_nearest(ssim: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """``median_ssim``, ``p95_ssim``, ``max_ssim``, ``fraction_above_threshold`` (SSIM >=
    ``threshold``), ``n_above``, ``n`` over the finite nearest-SSIM values."""
    v = np.asarray(ssim, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {
            "median_ssim": None,
            "p95_ssim": None,
            "max_ssim": None,
            "fraction_above_threshold": None,
            "n_above": 0,
            "n": 0,
        }
    above = int((v >= threshold).sum())
    return {
        "median_ssim": float(np.median(v)),
        "p95_ssim": float(np.percentile(v, 95)),
        "max_ssim": float(v.max()),
        "fraction_above_threshold": above / v.size,
        "n_above": above,
        "n": int(v.size),
    }


def square_patch(image: np.ndarray, rows: slice, cols: slice, side: int) -> np.ndarray:
    """A ``side`` x ``side`` patch centred on the box ``(rows, cols)``.

    The crop is ``side`` wide, or the box's extent plus a quarter when larger (then
    resized down to ``side``), shifted to stay inside the image (edge-padded where the
    image is smaller than the crop).
    """
    h, w = image.shape
    extent = max(rows.stop - rows.start, cols.stop - cols.start)
    crop = max(side, math.ceil(extent * 1.25))
    top = round((rows.start + rows.stop - crop) / 2)
    left = round((cols.start + cols.stop - crop) / 2)
    top = min(max(top, 0), max(h - crop, 0))
    left = min(max(left, 0), max(w - crop, 0))
    pad = max(crop - h, crop - w, 0)
    padded = np.pad(image, ((0, pad), (0, pad)), mode="edge") if pad else image
    patch = padded[top : top + crop, left : left + crop]
    if crop != side:
        patch = resize(patch, (side, side), order=1, anti_aliasing=True, preserve_range=True)
    return np.asarray(patch, np.float64)


def lesion_patches(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], side: int
) -> tuple[np.ndarray, np.ndarray]:
    """One `square_patch` per connected lesion component (mask > 0, 8-connected).

    Returns:
        ``(patches (N, side, side), owners (N,))``: ``owners[i]`` is the index of the
        image patch ``i`` came from.
    """
    patches, owners = [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        components, _ = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
        for rows, cols in ndimage.find_objects(components):
            patches.append(square_patch(image, rows, cols, side))
            owners.append(i)
    if not patches:
        return np.zeros((0, side, side)), np.zeros(0, np.int64)
    return np.stack(patches), np.asarray(owners, np.int64)


def largest_component_box(region: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of the largest 8-connected component of ``region`` (None if empty)."""
    components, n = ndimage.label(np.asarray(region, bool), structure=_EIGHT_CONNECTED)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    return ndimage.find_objects(components)[int(sizes.argmax())]


__all__ = [
    "FID_DIMS",
    "FID_WEIGHTS_NAME",
    "InceptionFeatures",
    "build_fid_inception",
    "cached_features",
    "default_cache_dir",
    "downsample",
    "feature_stats",
    "fid_kid",
    "fid_weights_candidates",
    "find_fid_weights",
    "frechet_distance",
    "frechet_distance_from_features",
    "kid",
    "largest_component_box",
    "lesion_patches",
    "mmd2_unbiased",
    "nearest_by_ssim",
    "paired_ssim_psnr",
    "polynomial_kernel",
    "square_patch",
    "ssim_pairs",
    "summarise_nearest",
]
