"""Procedural non-contrast head CT with the five acute haemorrhage subtypes.

A patient is a skull of its own shape, size, thickness and tilt, a brain with its own
atrophy (CSF spaces, sulcal width, ventricle size) and 0-3 bleeds. Slices are 5 mm
apart through the supratentorial brain; the head narrows towards the vertex, the
ventricles and basal ganglia come and go with the level, and each bleed is an
ellipsoid-like body whose cross-section grows and shrinks over adjacent slices.

Bleeds follow their textbook shape and place: IPH an irregular clot in the basal
ganglia or a lobe with a low-density oedema rim; IVH blood layering in the dependent
(posterior) part of a ventricle or a cast of it; EDH a biconvex lens on the inner
table; SDH a thin crescent along the inner table; SAH a thin band filling the
subarachnoid space, sulci and fissures of one region.

The mask is the label a reader would draw on the acquired image, not every pixel the
blood was painted on: it stops `BONE_RIM_PX` short of the skull. Next to 1,250-1,600
HU bone the simulated FBP (`augment.phantoms.ct_sim`) adds several hundred HU to the adjacent
pixels, so that rim reads as bone, not blood (see `BONE_RIM_PX`); an EDH or SDH too
thin to reach a pixel past the rim has no label. The tissue map keeps the blood up to
the inner table, as the ground truth that was scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from augment.phantoms.geometry import (
    NOMINAL_SLICES,
    SLICE_MM,
    Anatomy,
    Grid,
    bump,
    cross_section,
    ellipse,
    ellipse_radius,
    ellipse_rho,
    fold,
    harmonics,
    loguniform,
    smooth_field,
    stream,
    wrap,
)

HEAD_FOV_MM = 210.0
HEAD_CLASSES = {1: "IPH", 2: "IVH", 3: "EDH", 4: "SDH", 5: "SAH"}
HEAD_TISSUES = {
    0: "air",
    1: "scalp",
    2: "bone",
    3: "csf",
    4: "grey matter",
    5: "white matter",
    6: "falx",
    7: "blood",
    8: "oedema",
}
AIR, SCALP, BONE, CSF, GREY, WHITE, FALX, BLOOD, OEDEMA = range(9)

# No lesion pixel whose centre is within this many pixels of a bone pixel's centre is
# labelled. The FBP point-spread is fixed in pixels, not mm, so the rim is too.
# Noise-free bone spill into soft tissue by distance from the nearest bone pixel
# (1, 1.41, 2, 2.24, 2.83 px), measured at 64/128/256 px: domain A's hann kernel
# +380..460, +150..185, +50..62, +14..20, ~0 HU; domain B's ramp +250..275, +26..39,
# ~0 HU. Masks are shared by both domains, so the smoother one sets the width: the
# rim ends where the spill falls to a noise-sized 20 HU. Before the rim, EDH/SDH
# masks at 64 px had median 121/202 HU in domain A (IQR up to 350/400). The price: a
# bleed on the table thinner than the rim plus a pixel (~11 mm at 64 px, ~5 mm at
# 128 px) has no label, as on the image it is lost in the skull's blur too.
BONE_RIM_PX = 2.0
# The cut runs at a radial depth from the drawn inner table; radial depth overstates
# the distance to the nearest bone pixel centre by up to ~0.25 px on these skulls
# (measured: depth > 2.25 px left no pixel within 2 px of bone at 64-256 px).
_RADIAL_SLACK_PX = 0.25

# Axial levels run from the skull base (0) to the vertex (1); a patient's slices are
# SLICE_MM apart over a ~110 mm supratentorial height.
_T_LO, _T_HI = 0.05, 0.9
_DZ = SLICE_MM / 110.0


@dataclass(frozen=True)
class HeadPatient:
    """Everything about one synthetic patient that stays the same from slice to slice."""

    a0: float  # outer skull semi-axis, anterior-posterior (mm), at the widest level
    b0: float  # outer skull semi-axis, left-right (mm)
    rotation: float  # head tilt in the scanner (degrees)
    shift: tuple[float, float]
    shape: tuple[np.ndarray, np.ndarray]  # harmonic wobble of the skull outline
    thick_mm: float
    thick_wobble: tuple[np.ndarray, np.ndarray]
    scalp_mm: float
    atrophy: float  # 0 young, 1 atrophic: wider CSF spaces and ventricles
    csf_mm: float
    sulcus_mm: float
    cortex_mm: float
    sulci: np.ndarray  # (K, 4): angle, depth (mm), wiggle amplitude, wiggle phase
    vent_scale: float
    t_start: float
    hu: dict[str, float]
    lesions: tuple[dict[str, Any], ...]  # public spec + private geometry under "_geo"


def head_level(patient: HeadPatient, slice_index: int) -> float:
    return fold(patient.t_start + slice_index * _DZ, _T_LO, _T_HI)


def _ventricle_level(t: float) -> float:
    return bump(t, 0.32, 0.22)


def sample_head_patient(seed: int, patient: int) -> HeadPatient:
    """Draw a patient from its own stream: the same ``(seed, patient)`` gives the same person."""
    rng = stream(seed, "head-ich", "patient", patient)
    a0 = rng.uniform(80.0, 88.0)
    atrophy = float(rng.beta(1.5, 2.5))
    sulci = []
    for side_start in (-np.pi / 2, np.pi / 2):  # one hemisphere each side of the midline
        n = int(rng.integers(11, 15))
        base = np.linspace(side_start + 0.2, side_start + np.pi - 0.2, n)
        for ang in base + rng.uniform(-0.08, 0.08, n):
            sulci.append(
                [ang, rng.uniform(6.0, 16.0), rng.uniform(0.0, 0.12), rng.uniform(0, 2 * np.pi)]
            )
    hu = {
        "grey": rng.uniform(36.0, 39.0),  # the slow drift adds up to ~1 HU to a slice
        "white": rng.uniform(26.0, 29.0),
        "csf": rng.uniform(4.0, 10.0),
        "falx": rng.uniform(50.0, 65.0),
        "cortical": rng.uniform(1250.0, 1600.0),
        "diploe": rng.uniform(750.0, 950.0),  # bone is >= 700 HU everywhere, spongy layer included
        "skin": rng.uniform(35.0, 50.0),
        "fat": rng.uniform(-90.0, -60.0),
    }
    t_start = rng.uniform(0.05, 0.5)
    proto = HeadPatient(
        a0=a0,
        b0=a0 * rng.uniform(0.76, 0.86),
        rotation=rng.uniform(-6.0, 6.0),
        shift=(rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0)),
        shape=(rng.uniform(0.0, 0.015, 4), rng.uniform(0, 2 * np.pi, 4)),
        thick_mm=rng.uniform(4.5, 7.0),
        thick_wobble=(rng.uniform(0.0, 0.12, 3), rng.uniform(0, 2 * np.pi, 3)),
        scalp_mm=rng.uniform(3.5, 6.0),
        atrophy=atrophy,
        csf_mm=0.8 + 2.2 * atrophy,
        sulcus_mm=1.2 + 2.0 * atrophy,
        cortex_mm=rng.uniform(2.5, 3.5),
        sulci=np.asarray(sulci),
        vent_scale=rng.uniform(0.8, 1.2) * (0.85 + 0.6 * atrophy),
        t_start=t_start,
        hu=hu,
        lesions=(),
    )
    vent_slices = [
        k for k in range(NOMINAL_SLICES) if _ventricle_level(head_level(proto, k)) >= 0.4
    ]
    n_lesions = int(rng.choice(4, p=[0.06, 0.28, 0.33, 0.33]))
    lesions = []
    for i in range(n_lesions):
        cls = int(rng.integers(1, 6))
        if cls == 2 and not vent_slices:  # IVH needs a ventricle in this patient's slices
            cls = 1
        lesions.append(_sample_lesion(rng, i + 1, cls, vent_slices))
    return replace(proto, lesions=tuple(lesions))


def _sample_lesion(rng: np.random.Generator, index: int, cls: int, vent_slices: list[int]):
    name = HEAD_CLASSES[cls]
    # Centres away from the patient's first/last slice so most of a lesion is seen.
    geo: dict[str, Any] = {"kc": int(rng.integers(1, NOMINAL_SLICES - 1)), "hu": 0.0}
    if cls == 1:  # IPH: hypertensive (deep) or lobar, often small
        radius = loguniform(rng, 1.5, 20.0)
        geo.update(
            radius=radius,
            half=max(radius * rng.uniform(1.0, 1.6) / SLICE_MM, 0.6),  # clots run along z
            deep=bool(rng.random() < 0.5),
            side=float(rng.choice([-1.0, 1.0])),
            deep_xy=(rng.uniform(14.0, 26.0), rng.uniform(-12.0, 12.0)),
            lobar=(rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 0.6)),
            aspect=rng.uniform(0.6, 1.0),
            angle=rng.uniform(0.0, 180.0),
            wobble=(
                rng.uniform(0.0, 0.12, 5) / np.arange(1, 6) ** 0.5,
                rng.uniform(0, 2 * np.pi, 5),
            ),
            oedema=rng.uniform(0.15, 0.6),
            oedema_hu=rng.uniform(12.0, 20.0),
            hu=rng.uniform(62.0, 85.0),
        )
        size = 2 * radius
    elif cls == 2:  # IVH: dependent layering or a cast of one or both lateral ventricles
        geo.update(
            kc=int(rng.choice(vent_slices)),
            half=rng.uniform(1.5, 3.5),
            side=int(rng.integers(-1, 2)),
            cast=bool(rng.random() < 0.35),
            fraction=rng.uniform(0.25, 0.7),
            hu=rng.uniform(55.0, 78.0),
        )
        size = float("nan")
    elif cls == 3:  # EDH: biconvex, limited extent, can be thick
        geo.update(
            theta=rng.uniform(-np.pi, np.pi),
            width=rng.uniform(0.2, 0.5),
            thick=loguniform(rng, 4.0, 25.0),
            half=rng.uniform(1.5, 4.0),
            hu=rng.uniform(60.0, 85.0),
        )
        size = geo["thick"]
    elif cls == 4:  # SDH: thin crescent over a wide arc
        geo.update(
            theta=rng.uniform(-np.pi, np.pi),
            width=rng.uniform(0.5, 1.2),
            thick=loguniform(rng, 3.0, 14.0),
            half=rng.uniform(2.0, 5.0),
            hu=rng.uniform(55.0, 80.0),
        )
        size = geo["thick"]
    else:  # SAH: thin blood in the sulci and fissures of one region
        geo.update(
            theta=rng.uniform(-np.pi, np.pi),
            width=rng.uniform(0.3, 0.9),
            reach=rng.uniform(8.0, 25.0),
            half=rng.uniform(1.5, 3.5),
            hu=rng.uniform(60.0, 78.0),
        )
        size = geo["reach"]
    spec = {
        "lesion_id": f"l{index}",
        "name": name,
        "class": cls,
        "centre_slice": geo["kc"],
        "size_mm": None if np.isnan(size) else round(float(size), 2),
        "hu_blood": round(float(geo["hu"]), 2),
        "_geo": geo,
    }
    return spec


def render_head(grid: Grid, seed: int, patient: int, slice_index: int) -> Anatomy:
    """Rasterise one slice of a head patient (ground truth before acquisition)."""
    pat = sample_head_patient(seed, patient)
    t = head_level(pat, slice_index)
    rng = stream(seed, "head-ich", "slice", patient, slice_index)
    px = grid.pixel_mm
    x, y = grid.coords(pat.rotation, pat.shift)
    r = np.hypot(x, y)
    th = np.arctan2(y, x)

    scale = float(np.sqrt(max(0.35, 1.0 - ((t - 0.25) / 1.05) ** 2))) if t > 0.25 else 1.0
    a, b = pat.a0 * scale, pat.b0 * scale

    def radii(theta):
        outer = ellipse_radius(theta, b, a) * (1.0 + harmonics(theta, *pat.shape))
        # Frontal and occipital bone is thicker than temporal (cos 2θ is -1 front/back).
        thick = pat.thick_mm * (
            1.0 - 0.25 * np.cos(2 * theta) + harmonics(theta, *pat.thick_wobble, first=1)
        )
        return outer, outer - np.maximum(thick, 2.5)

    r_out, r_in = radii(th)
    depth = r_in - r  # mm inward from the inner table
    tissue = np.zeros(r.shape, np.uint8)
    native = np.full(r.shape, -1000.0)
    h = pat.hu

    scalp = r < r_out + pat.scalp_mm
    tissue[scalp] = SCALP
    native[scalp] = np.where(r_out + pat.scalp_mm - r < 1.8, h["skin"], h["fat"])[scalp]
    bone = r < r_out
    tissue[bone] = BONE
    mid = np.abs(r - (r_out + r_in) / 2) < (r_out - r_in) / 6  # diploë between the tables
    native[bone] = np.where(mid, h["diploe"], h["cortical"])[bone]
    inside = r < r_in
    brain = inside & (depth > pat.csf_mm)

    # Cortex ribbon, sulci (CSF lined with grey matter), Sylvian fissures at low levels.
    sulci = pat.sulci.copy()
    syl = bump(t, 0.12, 0.2)
    if syl > 0:
        sulci = np.vstack(
            [sulci, [[-0.35, 25.0 * syl, 0.05, 0.0], [-np.pi + 0.35, 25.0 * syl, 0.05, 1.0]]]
        )
    ang = sulci[:, 0, None, None] + sulci[:, 2, None, None] * np.sin(
        depth[None] / 4.0 + sulci[:, 3, None, None]
    )
    lateral = np.abs(wrap(th[None] - ang)) * r[None]
    sulcus_depth = pat.csf_mm + sulci[:, 1, None, None]
    width = np.full(len(sulci), max(pat.sulcus_mm, 0.0))
    if syl > 0:
        width[-2:] = pat.sulcus_mm + 1.5
    half_w = width[:, None, None] / 2
    in_sulcus = ((lateral < half_w) & (depth[None] < sulcus_depth)).any(0)
    sulcal_grey = (
        (lateral < half_w + pat.cortex_mm) & (depth[None] < sulcus_depth + pat.cortex_mm)
    ).any(0)

    s_v = pat.vent_scale
    deep = bump(t, 0.17, 0.16)
    grey = (depth < pat.csf_mm + pat.cortex_mm) | sulcal_grey
    if deep > 0:
        for sd in (-1.0, 1.0):
            grey |= ellipse(
                x, y, sd * 21.0 * scale, -2.0 * scale, 6.0 * deep, 13.0 * deep, sd * 15.0
            )
            grey |= ellipse(x, y, sd * (12.0 * s_v + 5.0), -16.0 * scale, 5.0 * deep, 7.0 * deep)
            grey |= ellipse(x, y, sd * 9.0, 8.0 * scale, 8.0 * deep, 11.0 * deep)
    tissue[inside] = CSF
    tissue[brain] = WHITE
    tissue[brain & grey] = GREY

    # Interhemispheric fissure with the falx; at ventricular levels the corpus callosum
    # interrupts it in the middle.
    vl = _ventricle_level(t)
    gap = a * 0.45 * max(vl, deep)
    fissure_zone = brain & ((y < -gap) | (y > gap * 0.9))
    fissure = fissure_zone & (np.abs(x) < 0.6 + pat.sulcus_mm / 2)
    csf_space = inside & ~brain | (brain & in_sulcus) | fissure
    tissue[csf_space] = CSF
    falx = fissure_zone & (np.abs(x) < max(0.5, 0.52 * px))
    tissue[falx] = FALX

    vent_side = {}
    if vl > 0:
        for sd in (-1, 1):
            v = ellipse(
                x,
                y,
                sd * (5.5 + 3.0 * s_v),
                -4.0 * scale,
                3.5 * s_v * vl + 1.0,
                26.0 * vl * scale,
                sd * 12.0,
            )
            front = bump(t, 0.22, 0.2)
            v |= ellipse(
                x, y, sd * 8.0 * s_v, -18.0 * scale, 4.5 * s_v * front, 9.0 * front, sd * -20.0
            )
            occ = bump(t, 0.2, 0.15)
            v |= ellipse(
                x, y, sd * 12.0 * s_v, 22.0 * scale, 5.0 * s_v * occ, 10.0 * occ, sd * 25.0
            )
            vent_side[sd] = v & brain & (sd * x > 0.8)  # the septum keeps the sides apart
            tissue[vent_side[sd]] = CSF
    ventricles = np.zeros(r.shape, bool)
    for v in vent_side.values():
        ventricles |= v
    if deep > 0.3:
        third = brain & (np.abs(x) < 1.2 + 0.8 * pat.atrophy) & (y > -12 * scale) & (y < 6 * scale)
        tissue[third] = CSF
        ventricles |= third
    # Where SAH may lie: sulci and the fissure inside the brain, each widened to at least
    # a pixel so that thin sulci, which fall between pixel centres at small sizes, still
    # hold their blood.
    wide = ((lateral < np.maximum(half_w, 0.53 * px)) & (depth[None] < sulcus_depth)).any(0)
    wide |= fissure_zone & (np.abs(x) < max(0.6 + pat.sulcus_mm / 2, 0.53 * px))
    sah_spaces = brain & wide & ~ventricles
    regions = {
        "intracranial": inside,
        "parenchyma": brain & ~ventricles & ~csf_space & ~sah_spaces,
        "ventricles": ventricles,
        "subarachnoid": (csf_space | sah_spaces) & ~ventricles,
    }

    # Tissue texture: fine grain plus a slow drift across the brain.
    fine = smooth_field(rng, r.shape, 1.5 / px)
    slow = smooth_field(rng, r.shape, 15.0 / px)
    blood_grain = smooth_field(rng, r.shape, 1.0 / px)
    lut = {GREY: h["grey"], WHITE: h["white"], CSF: h["csf"], FALX: h["falx"]}
    for label, value in lut.items():
        sel = tissue == label
        native[sel] = value
    native += np.where(tissue == GREY, 1.5 * fine + 0.8 * slow, 0.0)
    native += np.where(tissue == WHITE, 1.2 * fine + 0.8 * slow, 0.0)
    native += np.where(tissue == CSF, 1.0 * fine, 0.0)

    mask = np.zeros(r.shape, np.uint8)
    instance = np.zeros(r.shape, np.int16)
    # The label starts this far in from the inner table (see BONE_RIM_PX), cut along a
    # curve parallel to it, as the bleeds on the table are drawn.
    cut_mm = (BONE_RIM_PX + _RADIAL_SLACK_PX) * px
    for i, spec in enumerate(pat.lesions, start=1):
        geo = spec["_geo"]
        c = cross_section(slice_index - geo["kc"], geo["half"])
        if c <= 0:
            continue
        cls = spec["class"]
        labelled = None  # where the blood is labelled, if not all of it
        if cls == 1:
            if geo["deep"]:
                cx, cy = geo["side"] * geo["deep_xy"][0] * scale, geo["deep_xy"][1] * scale
            else:
                phi, frac = geo["lobar"]
                rin = float(radii(np.array(phi))[1])
                cx, cy = frac * rin * np.cos(phi), frac * rin * np.sin(phi)
            rc = geo["radius"] * c
            rho = ellipse_rho(x, y, cx, cy, rc, rc * geo["aspect"], geo["angle"])
            edge = 1.0 + harmonics(np.arctan2(y - cy, x - cx), *geo["wobble"])
            blood = brain & (rho < edge)
            halo = (
                brain
                & (rho < edge * (1.0 + geo["oedema"]))
                & np.isin(tissue, (GREY, WHITE))
                & ~blood
            )
            tissue[halo] = OEDEMA
            native[halo] = geo["oedema_hu"] + fine[halo]
        elif cls == 2:
            sides = [geo["side"]] if geo["side"] != 0 else [-1, 1]
            blood = np.zeros_like(brain)
            for sd in sides:
                v = vent_side.get(sd)
                if v is None or not v.any():
                    continue
                if geo["cast"]:
                    blood |= v
                else:  # supine patient: blood settles posteriorly (larger y)
                    cut = np.quantile(y[v], 1.0 - geo["fraction"] * c)
                    blood |= v & (y >= cut)
        else:
            u = wrap(th - geo["theta"])
            if cls == 3:
                wc = geo["width"] * (0.4 + 0.6 * c)
                prof = np.sqrt(np.clip(1.0 - (u / wc) ** 2, 0.0, None))
                reach = max(geo["thick"] * c, 1.05 * px) * prof
            elif cls == 4:
                wc = geo["width"] * (0.6 + 0.4 * c)
                prof = np.sqrt(np.clip(1.0 - (u / wc) ** 4, 0.0, None))
                reach = max(geo["thick"] * np.sqrt(c), 1.05 * px) * prof
            if cls in (3, 4):
                blood = inside & (depth < reach)
                # Labelled only where the bleed reaches a pixel past the rim: thinner,
                # it is lost in the skull's blur, and its label would be a dotted line.
                labelled = blood & (reach >= cut_mm + 1.05 * px)
            else:  # SAH: blood in the sulci and fissures of a sector, below the cortex surface
                sector = np.abs(u) < geo["width"] * (0.5 + 0.5 * c)
                blood = sah_spaces & sector & (depth < geo["reach"]) & (tissue != FALX)
        if not blood.any():
            continue
        tissue[blood] = BLOOD
        native[blood] = geo["hu"] + 2.0 * blood_grain[blood]
        labelled = blood if labelled is None else labelled
        mask[labelled] = cls
        instance[labelled] = i

    if mask.any():  # the label stops where the skull's partial volume takes over
        rim = (depth <= cut_mm) | (ndimage.distance_transform_edt(tissue != BONE) <= BONE_RIM_PX)
        mask[rim] = 0
        instance[rim] = 0

    public = [{k: v for k, v in spec.items() if k != "_geo"} for spec in pat.lesions]
    return Anatomy(
        native=native.astype(np.float32),
        enhancement=np.zeros(r.shape, np.float32),
        tissue=tissue,
        mask=mask,
        instance=instance,
        lesions=public,
        info={"level": round(t, 4), "atrophy": round(pat.atrophy, 3)},
        regions=regions,
    )
