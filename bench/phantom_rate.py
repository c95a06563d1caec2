"""How fast the embedded CT phantom writes a dataset, against a bare FBP of one slice.

Times `augment.phantoms.render.write_phantom` end to end (anatomy, simulated acquisition,
mask/box derivation, files, manifest) into a temporary folder and prints slices per
second and the projected time for 1,000 slices. The reference, measured in the same
run, is skimage's ``radon`` + ``iradon`` of one slice at the same size, view count
and filter as the domain's protocol: the part of a phantom slice that no phantom code
can make cheaper. Their ratio says how much the phantom adds on top of it; the
anatomy alone (`render_anatomy`) is timed too, so the rest is visible.

    .venv/bin/python bench/phantom_rate.py [--kind head-ich] [--n 200] [--size 128] [--seed 0] [--domain A]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage.transform import iradon, radon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.phantoms.ct_sim import MU_WATER, Protocol, n_angles  # noqa: E402
from augment.phantoms.render import DOMAINS, KINDS, render_anatomy, spacing, write_phantom  # noqa: E402


def bare_fbp_seconds(kind: str, size: int, domain: str, seed: int, reps: int) -> float:
    """Best-of-``reps`` seconds of radon + iradon of one phantom slice's attenuation map."""
    protocol = Protocol(**DOMAINS[domain])
    pixel_mm = spacing(kind, size)[0]
    hu = render_anatomy(kind, 0, 3, size=size, seed=seed).hu(protocol.contrast_phase)
    c = np.arange(size) - size // 2
    mu = MU_WATER * np.clip(1.0 + hu.astype(np.float64) / 1000.0, 0.0, None) * pixel_mm
    mu[(c[:, None] ** 2 + c[None, :] ** 2) > (size // 2) ** 2] = 0.0
    theta = np.linspace(0.0, 180.0, n_angles(protocol, size), endpoint=False)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        sino = radon(mu, theta, circle=True, preserve_range=True)
        iradon(
            sino,
            theta,
            output_size=size,
            filter_name=protocol.filter,
            circle=True,
            preserve_range=True,
        )
        best = min(best, time.perf_counter() - t0)
    return best


def anatomy_seconds(kind: str, size: int, seed: int, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        render_anatomy(kind, i // 8, i % 8, size=size, seed=seed)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="head-ich", choices=KINDS)
    p.add_argument("--n", type=int, default=200, help="slices to write")
    p.add_argument("--size", type=int, default=128, help="slice size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", default="A", choices=sorted(DOMAINS))
    p.add_argument("--reps", type=int, default=5, help="repetitions of the bare FBP (best taken)")
    a = p.parse_args(argv)

    fbp_before = bare_fbp_seconds(a.kind, a.size, a.domain, a.seed, a.reps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_phantom(Path(tmp) / "ds", a.kind, a.n, size=a.size, domain=a.domain, seed=a.seed)
        total = time.perf_counter() - t0
    fbp = min(fbp_before, bare_fbp_seconds(a.kind, a.size, a.domain, a.seed, a.reps))
    anatomy = anatomy_seconds(a.kind, a.size, a.seed, min(a.n, 32))

    per_slice = total / a.n
    views = n_angles(Protocol(**DOMAINS[a.domain]), a.size)
    print(
        f"phantom {a.kind}, domain {a.domain}, {a.size} px, {views} views, {a.n} slices, seed {a.seed}"
    )
    print(
        f"  write_phantom      {total:8.2f} s   {a.n / total:7.1f} slices/s   {per_slice * 1e3:7.1f} ms/slice"
    )
    print(f"  projected 1,000    {per_slice * 1000:8.1f} s   ({per_slice * 1000 / 60:.1f} min)")
    print(
        f"  anatomy only       {anatomy * 1e3:7.1f} ms/slice   (render_anatomy, mean of {min(a.n, 32)})"
    )
    print(
        f"  reference: bare skimage radon+iradon of one slice   {fbp * 1e3:7.1f} ms   (best of {2 * a.reps})"
    )
    print(f"  ratio phantom slice / bare FBP   {per_slice / fbp:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
