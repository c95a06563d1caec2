"""The embedded CT phantoms: labelled lesion slices with no download.

Two kinds:

- ``head-ich``: non-contrast head CT with acute haemorrhage, mask classes 1 IPH,
  2 IVH, 3 EDH, 4 SDH, 5 SAH (`augment.phantoms.head`).
- ``liver``: contrast-enhanced abdominal CT with liver tumours, class 1
  (`augment.phantoms.liver`).

A slice is made in two steps with two independent random streams. The *anatomy*
(patient, tissues, lesions, mask) depends only on ``(seed, patient, slice)``; the
*acquisition* (`augment.phantoms.ct_sim`: projection, dose-dependent quantum noise, filtered
back-projection) also depends on the scanner/protocol domain. So the same seed in
domain A and B yields the same ids, masks and boxes with differently acquired images:
paired ground truth for image-translation metrics.

Slices are grouped into synthetic patients: ``slices_per_patient`` adjacent 5 mm
slices share skull/body shape and lesions, whose cross-sections change from slice
to slice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError
from augment.folder import DatasetWriter
from augment.phantoms.ct_sim import Protocol, acquire, n_angles, photons
from augment.phantoms.geometry import (
    NOMINAL_SLICES,
    SLICE_MM,
    Anatomy,
    Grid,
    lesion_records,
    stream,
)
from augment.phantoms.head import HEAD_CLASSES, HEAD_FOV_MM, HEAD_TISSUES, render_head
from augment.phantoms.liver import LIVER_CLASSES, LIVER_FOV_MM, LIVER_TISSUES, render_liver
from augment.sample import Sample
from augment.storage import check_free_space

log = logging.getLogger(__name__)

KINDS = ("head-ich", "liver")
CLASSES: dict[str, dict[int, str]] = {"head-ich": dict(HEAD_CLASSES), "liver": dict(LIVER_CLASSES)}
TISSUES: dict[str, dict[int, str]] = {"head-ich": dict(HEAD_TISSUES), "liver": dict(LIVER_TISSUES)}
FOV_MM: dict[str, float] = {"head-ich": HEAD_FOV_MM, "liver": LIVER_FOV_MM}

# Photons per ray at full dose and 128 px, chosen for domain A noise of ~4-5 HU in white
# matter and ~5-6 HU in liver: clinical 0.5-0.8 mm images have 4-12 HU, and averaging
# them down to 1.6-3 mm pixels lowers that.
FULL_DOSE_PHOTONS: dict[str, float] = {"head-ich": 5.0e5, "liver": 1.1e6}

_PROTOCOLS = {
    "A": Protocol(
        description="standard dose, smooth (hann) kernel, portal venous phase",
        dose=1.0,
        filter="hann",
        angles_per_pixel=1.5,
        hu_offset=0.0,
        contrast_phase=1.0,
    ),
    "B": Protocol(
        description="half dose, sharp (ramp) kernel, fewer views, +6 HU calibration offset, "
        "earlier/weaker contrast phase",
        dose=0.5,
        filter="ramp",
        angles_per_pixel=1.2,
        hu_offset=6.0,
        contrast_phase=0.8,
    ),
}
DOMAINS: dict[str, dict[str, Any]] = {name: p.as_dict() for name, p in _PROTOCOLS.items()}

_RENDER: dict[str, Callable[[Grid, int, int, int], Anatomy]] = {
    "head-ich": render_head,
    "liver": render_liver,
}
MIN_SIZE, MAX_SIZE = 32, 1024


def check_phantom_args(kind: str, domain: str, size: int) -> None:
    """The phantom's kind, domain and size, checked (`ConfigError` naming the bad one)."""
    if kind not in KINDS:
        raise ConfigError(f"phantom: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if domain not in DOMAINS:
        raise ConfigError(
            f"phantom: unknown domain (--domain) {domain!r}; known: {', '.join(DOMAINS)}"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"phantom: size (--size) must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(
            f"phantom: size (--size) must be in {MIN_SIZE}..{MAX_SIZE} pixels, got {size}"
        )


def check_seed(seed: int) -> None:
    """A dataset seed: an integer in 0..2**32-1 (the random streams use 32 bits of it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"phantom: seed (--seed) must be an integer, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"phantom: seed (--seed) must be in 0..{2**32 - 1}, got {seed}")


def estimated_bytes(n: int, size: int) -> int:
    """Disk space ``n`` phantom slices of ``size`` px take: the float32 ``.npy`` images
    (exact) plus about 2 kB a slice for the mask PNG and the manifest line."""
    return int(n) * (4 * int(size) ** 2 + 128 + 2048)


def spacing(kind: str, size: int) -> list[float]:
    """Pixel spacing ``[row_mm, col_mm]`` of a phantom kind at ``size`` pixels."""
    check_phantom_args(kind, "A", size)
    px = FOV_MM[kind] / size
    return [px, px]


def render_anatomy(
    kind: str, patient: int, slice_index: int, *, size: int = 128, seed: int = 0
) -> Anatomy:
    """The ground truth of one phantom slice, before acquisition.

    The same ``(kind, patient, slice_index, size, seed)`` gives the same anatomy in
    every domain. ``anatomy.hu(DOMAINS[d]["contrast_phase"])`` is the noise-free HU map
    that domain ``d`` scans (before its ``hu_offset``); ``anatomy.tissue`` holds labels
    named in ``TISSUES[kind]``; ``anatomy.regions`` the lesion-free regions
    (head: intracranial, parenchyma, ventricles, subarachnoid; liver: body, liver).
    """
    check_phantom_args(kind, "A", size)
    if patient < 0 or slice_index < 0:
        raise ConfigError(f"phantom: patient and slice must be >= 0, got {patient}, {slice_index}")
    return _RENDER[kind](Grid(int(size), FOV_MM[kind]), seed, patient, slice_index)


def render_slice(
    kind: str, patient: int, slice_index: int, *, size: int = 128, domain: str = "A", seed: int = 0
) -> tuple[Sample, Anatomy]:
    """One phantom slice and the ground truth it was scanned from.

    Args:
        kind: ``"head-ich"`` or ``"liver"``.
        patient: synthetic patient number (>= 0).
        slice_index: slice within the patient (>= 0); adjacent indices are 5 mm apart.
        size: output size in pixels (square).
        domain: scanner/protocol domain, a key of `DOMAINS`.
        seed: dataset seed.

    Returns:
        ``(sample, anatomy)``: the acquired slice with its mask, boxes and meta, and
        its `render_anatomy` ground truth (noise-free HU, tissue labels named in
        ``TISSUES[kind]``, lesion-free regions). The mask is the lesion tissue a reader
        can label; in the head it stops `augment.phantoms.head.BONE_RIM_PX` pixels
        short of the skull, where the bone's partial volume dominates the image.
    """
    check_phantom_args(kind, domain, size)
    protocol = _PROTOCOLS[domain]
    grid = Grid(int(size), FOV_MM[kind])
    anatomy = render_anatomy(kind, patient, slice_index, size=size, seed=seed)
    truth = anatomy.hu(protocol.contrast_phase)
    i0 = photons(FULL_DOSE_PHOTONS[kind], protocol, grid.size)
    rng = stream(seed, kind, "acquisition", domain, patient, slice_index)
    image = acquire(truth, pixel_mm=grid.pixel_mm, i0=i0, protocol=protocol, rng=rng)
    lesions = lesion_records(anatomy, truth, grid.pixel_mm)
    sid = f"p{patient:03d}_s{slice_index:03d}"
    meta = {
        "id": sid,
        "patient_id": f"p{patient:03d}",
        "slice_index": int(slice_index),
        "spacing": [grid.pixel_mm, grid.pixel_mm],
        "slice_thickness_mm": SLICE_MM,
        "domain": domain,
        "kind": kind,
        "seed": int(seed),
        "synthetic": False,
        "phantom": True,
        "generator": "phantom",
        "level": anatomy.info["level"],
        "acquisition": {
            "photons_per_ray": round(i0, 1),
            "filter": protocol.filter,
            "n_angles": n_angles(protocol, grid.size),
            "hu_offset": protocol.hu_offset,
            "contrast_phase": protocol.contrast_phase,
        },
        "n_lesions": len(lesions),
        "lesions": lesions,
    }
    return Sample(image=image, mask=anatomy.mask, meta=meta), anatomy


def phantom_samples(
    kind: str,
    n: int,
    *,
    size: int = 128,
    domain: str = "A",
    seed: int = 0,
    slices_per_patient: int = NOMINAL_SLICES,
) -> Iterator[Sample]:
    """``n`` phantom slices, made lazily: slice ``i`` is patient ``i // slices_per_patient``.

    Lesion centres are drawn over the first 8 slices of a patient, so with more
    slices per patient the extra ones are mostly lesion-free. Arguments are checked
    here, at the call, not at the first slice.
    """
    check_phantom_args(kind, domain, size)
    check_seed(seed)
    if n < 0:
        raise ConfigError(f"phantom: number of slices must be >= 0, got {n}")
    if slices_per_patient < 1:
        raise ConfigError(f"phantom: slices_per_patient must be >= 1, got {slices_per_patient}")
    return _samples(kind, n, size, domain, seed, slices_per_patient)


# Slices a worker renders per task, and tasks in flight per worker: enough to keep the
# workers busy, few enough that memory stays bounded whatever the number of slices.
_CHUNK = 4
_IN_FLIGHT_PER_WORKER = 4


def _samples(
    kind: str, n: int, size: int, domain: str, seed: int, slices_per_patient: int, workers: int = 1
) -> Iterator[Sample]:
    # Made lazily: a list of a billion jobs would not fit in memory before the first slice.
    jobs = ((kind, *divmod(i, slices_per_patient), size, domain, seed) for i in range(n))
    import multiprocessing

    if workers <= 1 or n < 2 * workers or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(_render_job, jobs)
        return
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor
    from itertools import islice

    # Forked workers: "spawn" would re-run the caller's script in every worker (a script
    # without a __main__ guard would recurse). Rendering uses NumPy/SciPy only, never
    # torch's OpenMP pool, which is what makes forking a torch process unsafe. Slices
    # come back in order and each depends only on its own arguments, so the files are
    # byte-identical to a one-process run. Tasks are submitted as results are taken
    # (Executor.map would submit every task up front), so only a few slices are ever
    # held in memory.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque[Future[list[Sample]]] = deque()
        try:
            while True:
                while len(pending) < workers * _IN_FLIGHT_PER_WORKER:
                    chunk = list(islice(jobs, _CHUNK))
                    if not chunk:
                        break
                    pending.append(pool.submit(_render_jobs, chunk))
                if not pending:
                    return
                yield from pending.popleft().result()
        finally:
            for future in pending:  # an early stop (error, ^C) waits for no more renders
                future.cancel()


def _render_job(job: tuple[str, int, int, int, str, int]) -> Sample:
    kind, patient, k, size, domain, seed = job
    return render_slice(kind, patient, k, size=size, domain=domain, seed=seed)[0]


def _render_jobs(jobs: list[tuple[str, int, int, int, str, int]]) -> list[Sample]:
    return [_render_job(job) for job in jobs]


def default_workers(n: int) -> int:
    """Processes for rendering ``n`` slices: the CPUs this process may use (up to 8),
    one when there are too few slices to pay for starting them (~1 s each)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8)) if n >= 64 else 1


def write_phantom(
    out: str | os.PathLike,
    kind: str,
    n: int,
    *,
    size: int = 128,
    domain: str = "A",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | Callable[[int], Any] = False,
    slices_per_patient: int = NOMINAL_SLICES,
    workers: int | None = None,
) -> Path:
    """Write ``n`` phantom slices as a dataset folder, atomically.

    Args:
        out: the dataset folder to create.
        kind, n, size, domain, seed, slices_per_patient: as in `phantom_samples`.
        overwrite: replace ``out`` if it exists.
        progress: True for a tqdm bar (rate, ETA), or a callable given 1 per slice.
        workers: processes rendering slices (None: `default_workers`); the files are
            the same whatever the number.

    Returns:
        ``out`` as a Path.
    """
    check_phantom_args(kind, domain, size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"phantom: number of slices (--n) must be an integer >= 1, got {n!r}")
    if slices_per_patient < 1:
        raise ConfigError(f"phantom: slices_per_patient must be >= 1, got {slices_per_patient}")
    check_seed(seed)
    check_free_space(
        out, estimated_bytes(n, size), f"phantom: --n {int(n)} slices of {size}x{size} px"
    )
    workers = default_workers(int(n)) if workers is None else int(workers)
    samples = _samples(kind, int(n), size, domain, seed, slices_per_patient, workers)
    config = {
        "kind": kind,
        "n": int(n),
        "size": int(size),
        "domain": domain,
        "seed": int(seed),
        "slices_per_patient": int(slices_per_patient),
    }
    extra = {
        "phantom": {
            "domain": DOMAINS[domain],
            "full_dose_photons": FULL_DOSE_PHOTONS[kind],
            "fov_mm": FOV_MM[kind],
            "slice_thickness_mm": SLICE_MM,
            "tissues": {str(k): v for k, v in TISSUES[kind].items()},
        },
    }
    from tqdm.auto import tqdm

    # The writer checks the output before any slice is rendered or a bar is drawn.
    with (
        DatasetWriter(
            out,
            provenance="phantom",
            anatomy=kind,
            config=config,
            classes=CLASSES[kind],
            spacing=spacing(kind, size),
            overwrite=overwrite,
            extra=extra,
        ) as writer,
        tqdm(total=n, desc=f"phantom {kind} {domain}", unit="slice", disable=progress is not True) as bar,
    ):
        step = progress if callable(progress) else bar.update
        for sample in samples:
            writer.add(sample)
            step(1)
    log.info("wrote %d %s phantom slices (domain %s) to %s", n, kind, domain, out)
    return Path(out)
