"""Inception feature extraction: pytorch-fid as shipped vs `gan.evaluate.quality.InceptionFeatures`.

Both run in this process on the same images and the same weights. The weights are
random (Kaiming-initialised, saved in pytorch-fid's file layout): timing does not depend
on weight values, and the real file cannot be downloaded here. pytorch-fid's path is
its ``get_activations`` loop: ``InceptionV3([3])`` in eval mode, 3-channel batches in
[0, 1], resized inside the model, under ``torch.no_grad``.

Prints seconds per image for both, the speed-up, the largest feature difference and
the FID between two image sets computed from each extractor's features.

    .venv/bin/python bench/fid_features.py [--n 32] [--size 64] [--batch-size 50] [--device cpu]

Ours runs at its own default batch size (`InceptionFeatures`, 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan.evaluate import quality as q  # noqa: E402


def images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random grey images in [0, 1], like windowed CT texture at this scale."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def random_weights(path: Path) -> Path:
    torch.manual_seed(0)
    net = q.build_fid_inception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def pytorch_fid_features(model, x: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """pytorch_fid.fid_score.get_activations, minus its file loading."""
    out = np.empty((len(x), 2048), np.float32)
    for start in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[start : start + batch_size])[:, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            pred = model(batch.to(device))[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = torch.nn.functional.adaptive_avg_pool2d(pred, output_size=(1, 1))
        out[start : start + len(batch)] = pred.squeeze(3).squeeze(2).cpu().numpy()
    return out


def interleaved_best(fns, reps: int) -> list[tuple[float, np.ndarray]]:
    """Best of ``reps`` timings of each function, run in turn (A B A B ...), so that
    load from other processes on a shared machine hits both alike."""
    results = [fn() for fn in fns]  # warm-up (allocations, oneDNN primitive selection)
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(best, results, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="images per set")
    p.add_argument("--size", type=int, default=64, help="image side before the 299 px resize")
    p.add_argument(
        "--batch-size", type=int, default=50, help="pytorch-fid's batch (its default: 50)"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    import pytorch_fid.inception as pfi

    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / q.FID_WEIGHTS_NAME)
        state = torch.load(weights, weights_only=True)
        with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kw: state):
            theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
        ours = q.InceptionFeatures(weights, device=device)  # its own default batch size

    x, y = images(a.n, a.size, seed=0), images(a.n, a.size, seed=1)
    (t_theirs, f_theirs), (t_ours, f_ours) = interleaved_best(
        [lambda: pytorch_fid_features(theirs, x, a.batch_size, device), lambda: ours(x)], a.reps
    )
    g_theirs = pytorch_fid_features(theirs, y, a.batch_size, device)
    g_ours = ours(y)
    fid_theirs = q.frechet_distance_from_features(f_theirs, g_theirs)
    fid_ours = q.frechet_distance_from_features(f_ours, g_ours)
    scale = np.abs(f_theirs).max()
    print(
        f"device {device}, {torch.get_num_threads()} threads, {a.n} images of {a.size}px, "
        f"batch {a.batch_size} (pytorch-fid) / {ours.batch_size} (ours)"
    )
    print(f"pytorch-fid InceptionV3 : {t_theirs / a.n:.4f} s/img")
    print(f"InceptionFeatures (ours): {t_ours / a.n:.4f} s/img")
    print(f"speed-up                : {t_theirs / t_ours:.2f}x")
    print(f"max |feature diff| / max|feature|: {np.abs(f_ours - f_theirs).max() / scale:.2e}")
    print(
        f"FID(set A, set B): pytorch-fid features {fid_theirs:.6f}, ours {fid_ours:.6f} "
        f"(relative difference {abs(fid_ours - fid_theirs) / fid_theirs:.2e})"
    )


if __name__ == "__main__":
    main()
