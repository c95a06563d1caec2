"""Procedural contrast-enhanced abdominal CT through the liver, with liver tumours.

A patient is a body outline with its own subcutaneous fat and muscle, a vertebra with
paraspinal muscles, aorta and vena cava, liver (right and left lobe, portal/hepatic
vessels), spleen, kidneys, stomach, bowel and sometimes a gallbladder, plus 0-5
tumours. Slices are 5 mm apart from the liver dome (level 0) to its inferior tip
(level 1): the left lobe and spleen fade out going down while the kidneys appear.

Every HU value is split into an unenhanced part and the iodine enhancement, so a
protocol picks its contrast phase (the fraction of enhancement present) without
changing anatomy. Tumours are hypodense (40-80 HU in the portal venous phase against
a 90-120 HU liver); about a third have an enhancing rim. Diameters run from 5 mm up.
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
    ellipse_rho,
    fold,
    harmonics,
    loguniform,
    smooth_field,
    stream,
)

LIVER_FOV_MM = 380.0
LIVER_CLASSES = {1: "tumour"}
LIVER_TISSUES = {
    0: "air",
    1: "skin",
    2: "subcutaneous fat",
    3: "muscle",
    4: "visceral fat",
    5: "liver",
    6: "hepatic vessel",
    7: "tumour",
    8: "spleen",
    9: "kidney",
    10: "aorta",
    11: "vena cava",
    12: "bone",
    13: "spinal canal",
    14: "stomach",
    15: "bowel",
    16: "gas",
    17: "gallbladder",
}
(AIR, SKIN, SUBCUT, MUSCLE, VISCERAL, LIVER, VESSEL, TUMOUR, SPLEEN, KIDNEY, AORTA, CAVA, BONE,
 CANAL, STOMACH, BOWEL, GAS, GALLBLADDER) = range(18)  # fmt: skip

_DZ = SLICE_MM / 160.0  # a liver ~160 mm tall
# (unenhanced HU, enhancement HU at phase 1.0 = portal venous)
_HU = {
    SKIN: (40.0, 5.0),
    SUBCUT: (-100.0, 0.0),
    MUSCLE: (50.0, 8.0),
    VISCERAL: (-95.0, 0.0),
    SPLEEN: (48.0, 65.0),
    AORTA: (42.0, 120.0),
    CAVA: (40.0, 100.0),
    CANAL: (10.0, 0.0),
    STOMACH: (35.0, 40.0),
    BOWEL: (35.0, 30.0),
    GAS: (-1000.0, 0.0),
    GALLBLADDER: (8.0, 0.0),
}


@dataclass(frozen=True)
class LiverPatient:
    """One synthetic abdomen; everything that stays the same from slice to slice."""

    a: float  # body semi-axis, anterior-posterior (mm)
    b: float  # body semi-axis, left-right (mm)
    power: float  # superellipse exponent of the outline (2 = ellipse, larger = boxier)
    shape: tuple[np.ndarray, np.ndarray]
    shift: tuple[float, float]
    subcut_mm: float
    muscle_mm: float
    rv: float  # vertebral body radius
    aorta_r: float
    liver_hu: tuple[float, float]
    vessels: np.ndarray  # (K, 5): u, v (in right-lobe units), radius, drift u, drift v
    gallbladder: bool
    bowel: np.ndarray  # (L, 4): x, y in body units, radius (mm), gas fraction
    t_start: float
    tumours: tuple[dict[str, Any], ...]


def liver_level(pat: LiverPatient, slice_index: int) -> float:
    return fold(pat.t_start + slice_index * _DZ, 0.0, 1.0)


def sample_liver_patient(seed: int, patient: int) -> LiverPatient:
    """Draw a patient from its own stream: the same ``(seed, patient)`` gives the same person."""
    rng = stream(seed, "liver", "patient", patient)
    n_vessels = int(rng.integers(4, 9))
    vessels = np.column_stack(
        [
            rng.uniform(-0.6, 0.6, n_vessels),
            rng.uniform(-0.6, 0.6, n_vessels),
            rng.uniform(2.0, 5.5, n_vessels),
            rng.uniform(-0.03, 0.03, n_vessels),
            rng.uniform(-0.03, 0.03, n_vessels),
        ]
    )
    n_bowel = int(rng.integers(2, 6))
    bowel = np.column_stack(
        [
            rng.uniform(-0.1, 0.6, n_bowel),
            rng.uniform(-0.7, -0.1, n_bowel),
            rng.uniform(9.0, 17.0, n_bowel),
            rng.uniform(0.0, 0.6, n_bowel) * (rng.random(n_bowel) < 0.5),
        ]
    )
    proto = LiverPatient(
        a=rng.uniform(95.0, 125.0),
        b=rng.uniform(140.0, 170.0),
        power=rng.uniform(2.1, 2.5),
        shape=(rng.uniform(0.0, 0.02, 3), rng.uniform(0, 2 * np.pi, 3)),
        shift=(rng.uniform(-5.0, 5.0), rng.uniform(-5.0, 5.0)),
        subcut_mm=rng.uniform(8.0, 30.0),
        muscle_mm=rng.uniform(6.0, 12.0),
        rv=rng.uniform(16.0, 21.0),
        aorta_r=rng.uniform(9.0, 13.0),
        liver_hu=(rng.uniform(50.0, 60.0), rng.uniform(42.0, 56.0)),
        vessels=vessels,
        gallbladder=bool(rng.random() < 0.7),
        bowel=bowel,
        t_start=rng.uniform(0.0, 0.7),
        tumours=(),
    )
    n_tumours = int(rng.choice(6, p=[0.1, 0.3, 0.24, 0.16, 0.12, 0.08]))
    tumours = []
    for _ in range(n_tumours):
        diameter = loguniform(rng, 5.0, 60.0)
        kc = int(rng.integers(1, NOMINAL_SLICES - 1))
        # Put the centre where the liver is at the tumour's central slice (a fixed
        # reference grid, so the choice does not depend on the output size).
        ref = Grid(96, LIVER_FOV_MM)
        x, y = ref.coords(0.0, proto.shift)
        organ = _organs(proto, liver_level(proto, kc), x, y)["liver"]
        dist = ndimage.distance_transform_edt(organ) * ref.pixel_mm
        ok = np.flatnonzero(dist >= min(0.6 * diameter / 2, dist.max()))
        if ok.size == 0:
            continue
        pick = ok[int(rng.integers(0, ok.size))]
        tumours.append(
            {
                "lesion_id": f"l{len(tumours) + 1}",
                "name": "tumour",
                "class": 1,
                "centre_slice": kc,
                "size_mm": round(float(diameter), 2),
                "rim_enhancing": bool(rng.random() < 0.35),
                "_geo": {
                    "kc": kc,
                    "xy": (float(x.flat[pick]), float(y.flat[pick])),
                    "radius": diameter / 2,
                    "half": max(diameter / 2 / SLICE_MM, 0.5),
                    "aspect": rng.uniform(0.8, 1.0),
                    "angle": rng.uniform(0.0, 180.0),
                    "wobble": (rng.uniform(0.0, 0.08, 3), rng.uniform(0, 2 * np.pi, 3)),
                    "core": (rng.uniform(32.0, 45.0), rng.uniform(10.0, 28.0)),
                    "rim": (rng.uniform(42.0, 50.0), rng.uniform(62.0, 80.0)),
                },
            }
        )
    return replace(proto, tumours=tuple(tumours))


def _organs(pat: LiverPatient, t: float, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean region of every structure at level ``t`` (later entries win when painting)."""
    a, b = pat.a * (1.0 + 0.04 * (t - 0.5)), pat.b * (1.0 + 0.04 * (t - 0.5))
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    rho = (np.abs(x / b) ** pat.power + np.abs(y / a) ** pat.power) ** (1.0 / pat.power)
    rho = rho / (1.0 + harmonics(th, *pat.shape))
    depth = r * (1.0 / np.maximum(rho, 1e-6) - 1.0)  # mm inward from the skin surface
    body = rho < 1.0
    fat_mm = pat.subcut_mm * (1.0 + 0.3 * np.sin(th) ** 2)  # more fat at the flanks/back
    cavity = body & (depth > 2.0 + fat_mm + pat.muscle_mm)

    yv = 0.40 * a  # vertebral body centre: posterior midline
    rv = pat.rv
    spine = ellipse(x, y, 0.0, yv, rv, rv * 0.9)
    canal = ellipse(x, y, 0.0, yv + rv + 7.0, 7.5, 7.0)
    arch = ellipse(x, y, 0.0, yv + rv + 17.0, 15.0, 5.0) | ellipse(
        x, y, 0.0, yv + rv + 28.0, 4.0, 12.0
    )
    arch &= ~canal
    paraspinal = ellipse(x, y, -(rv + 15.0), yv + rv + 14.0, 20.0, 17.0)
    paraspinal |= ellipse(x, y, rv + 15.0, yv + rv + 14.0, 20.0, 17.0)
    psoas_level = bump(t, 1.0, 0.45)
    psoas = ellipse(x, y, -(rv + 12.0), yv - 2.0, 11.0 * psoas_level, 12.0 * psoas_level)
    psoas |= ellipse(x, y, rv + 12.0, yv - 2.0, 11.0 * psoas_level, 12.0 * psoas_level)
    aorta = ellipse(x, y, 0.45 * rv, yv - rv - pat.aorta_r - 3.0, pat.aorta_r, pat.aorta_r)
    cava = ellipse(x, y, -(rv + 6.0), yv - rv - 14.0, 12.0, 9.0)

    kid_r, kid_l = bump(t, 1.0, 0.55), bump(t, 0.95, 0.65)
    kidney_r = ellipse(x, y, -(rv + 45.0), yv - 4.0, 24.0 * kid_r, 32.0 * kid_r, -25.0)
    kidney_l = ellipse(x, y, rv + 44.0, yv - 8.0, 24.0 * kid_l, 32.0 * kid_l, 25.0)
    spleen_level = bump(t, 0.25, 0.6)
    spleen = cavity & ellipse(
        x, y, 0.64 * b, 0.1 * a, 0.16 * b * spleen_level, 0.42 * a * spleen_level, -35.0
    )
    stomach_level = bump(t, 0.15, 0.45)
    stomach = cavity & ellipse(
        x, y, 0.3 * b, -0.3 * a, 0.22 * b * stomach_level, 0.24 * a * stomach_level
    )
    gb_level = bump(t, 0.72, 0.2) if pat.gallbladder else 0.0
    gallbladder = ellipse(x, y, -0.2 * b, -0.3 * a, 12.0 * gb_level, 18.0 * gb_level, 20.0)

    # Right lobe shrinks towards the dome and the inferior tip; the left lobe is a
    # feature of the upper levels only.
    right = 1.0 - 0.4 * ((0.4 - t) / 0.4) ** 2 if t < 0.4 else 1.0 - 0.45 * ((t - 0.4) / 0.6) ** 2
    left = bump(t, 0.2, 0.55)
    liver = ellipse(x, y, -0.42 * b, -0.08 * a, 0.56 * b * right, 0.78 * a * right, -10.0)
    liver |= ellipse(x, y, 0.05 * b, -0.48 * a, 0.45 * b * left, 0.32 * a * left, 8.0)
    liver &= body & (depth > 3.0 + fat_mm + pat.muscle_mm)
    # A fat plane of at least ~8 mm keeps the liver off its neighbours (as the
    # hepatorenal and perisplenic fat does), so the organs stay separable by HU.
    keep_out = (
        ellipse(x, y, -(rv + 45.0), yv - 4.0, 24.0 * kid_r + 8.0, 32.0 * kid_r + 8.0, -25.0)
        | ellipse(x, y, 0.0, yv, rv + 6.0, rv * 0.9 + 6.0)
        | ellipse(x, y, -(rv + 15.0), yv + rv + 14.0, 26.0, 23.0)
        | ellipse(
            x, y, 0.45 * rv, yv - rv - pat.aorta_r - 3.0, pat.aorta_r + 6.0, pat.aorta_r + 6.0
        )
        | ellipse(
            x, y, 0.3 * b, -0.3 * a, 0.22 * b * stomach_level + 8.0, 0.24 * a * stomach_level + 8.0
        )
        | ellipse(
            x,
            y,
            0.64 * b,
            0.1 * a,
            0.16 * b * spleen_level + 8.0,
            0.42 * a * spleen_level + 8.0,
            -35.0,
        )
        | gallbladder
        | cava
    )
    liver &= ~keep_out

    bowel = np.zeros_like(body)
    gas = np.zeros_like(body)
    bowel_level = float(np.clip((t - 0.35) / 0.4, 0.0, 1.0))
    if bowel_level > 0:
        for bx, by, br, gas_frac in pat.bowel:
            cx, cy, rr = bx * b, by * a, br * bowel_level
            loop = cavity & ellipse(x, y, cx, cy, rr, rr * 0.8) & ~liver
            bowel |= loop
            if gas_frac > 0:  # gas rises anteriorly (smaller y) in a supine patient
                gas |= (
                    loop
                    & ellipse(x, y, cx, cy, rr - 2.5, rr * 0.8 - 2.5)
                    & (y < cy - rr * 0.8 * (1 - 2 * gas_frac))
                )
    stomach_gas = stomach & ellipse(
        x, y, 0.3 * b, -0.3 * a, 0.22 * b * stomach_level - 3.0, 0.24 * a * stomach_level - 3.0
    )
    stomach_gas &= y < -0.3 * a - 0.24 * a * stomach_level * 0.5
    return {
        "body": body,
        "subcut": body & (depth > 2.0),
        "muscle": body & (depth > 2.0 + fat_mm),
        "cavity": cavity,
        "paraspinal": paraspinal & body,
        "psoas": psoas & cavity,
        "bone": spine | (arch & body),
        "canal": canal,
        "aorta": aorta,
        "cava": cava,
        "kidney": (kidney_r | kidney_l) & cavity,
        "spleen": spleen,
        "stomach": stomach,
        "bowel": bowel,
        "gas": gas | stomach_gas,
        "gallbladder": gallbladder & cavity,
        "liver": liver,
        "kidney_medulla": (
            ellipse(x, y, -(rv + 45.0), yv - 4.0, 14.0 * kid_r, 20.0 * kid_r, -25.0)
            | ellipse(x, y, rv + 44.0, yv - 8.0, 14.0 * kid_l, 20.0 * kid_l, 25.0)
        ),
        "spine": spine,
    }


def render_liver(grid: Grid, seed: int, patient: int, slice_index: int) -> Anatomy:
    """Rasterise one slice of an abdomen patient (ground truth before acquisition)."""
    pat = sample_liver_patient(seed, patient)
    t = liver_level(pat, slice_index)
    rng = stream(seed, "liver", "slice", patient, slice_index)
    px = grid.pixel_mm
    x, y = grid.coords(0.0, pat.shift)
    org = _organs(pat, t, x, y)

    tissue = np.zeros(x.shape, np.uint8)
    for name, label in (
        ("body", SKIN),
        ("subcut", SUBCUT),
        ("muscle", MUSCLE),
        ("cavity", VISCERAL),
        ("paraspinal", MUSCLE),
        ("psoas", MUSCLE),
        ("bone", BONE),
        ("canal", CANAL),
        ("aorta", AORTA),
        ("cava", CAVA),
        ("kidney", KIDNEY),
        ("spleen", SPLEEN),
        ("stomach", STOMACH),
        ("bowel", BOWEL),
        ("gas", GAS),
        ("gallbladder", GALLBLADDER),
        ("liver", LIVER),
    ):
        tissue[org[name]] = label
    native = np.full(x.shape, -1000.0)
    enh = np.zeros(x.shape)
    for label, (n0, e0) in _HU.items():
        sel = tissue == label
        native[sel], enh[sel] = n0, e0
    liver = tissue == LIVER
    native[liver], enh[liver] = pat.liver_hu
    # Stomach and bowel lumen hold water-like fluid; only their wall enhances.
    for label, region in ((STOMACH, org["stomach"]), (BOWEL, org["bowel"])):
        lumen = ndimage.binary_erosion(region, iterations=max(1, int(round(3.0 / px))))
        sel = (tissue == label) & lumen
        native[sel], enh[sel] = 15.0, 0.0
    kid = tissue == KIDNEY
    med = kid & org["kidney_medulla"]
    native[kid], enh[kid] = 35.0, 140.0
    native[med], enh[med] = 35.0, 95.0
    bone = tissue == BONE
    cortex = bone & ~ndimage.binary_erosion(org["spine"], iterations=max(1, int(round(2.0 / px))))
    native[bone] = 220.0  # cancellous vertebral body
    native[cortex] = 850.0

    # Portal and hepatic vessels: tubes that drift slowly from slice to slice.
    right_c = (-0.42 * pat.b, -0.08 * pat.a)
    for u, v, rad, du, dv in pat.vessels:
        cx = right_c[0] + (u + du * slice_index) * 0.56 * pat.b * 0.7
        cy = right_c[1] + (v + dv * slice_index) * 0.78 * pat.a * 0.7
        sel = liver & ellipse(x, y, cx, cy, rad, rad * 1.3, rng.uniform(0.0, 180.0))
        tissue[sel] = VESSEL
        native[sel], enh[sel] = 42.0, 150.0

    fine = smooth_field(rng, x.shape, 2.0 / px)
    soft = np.isin(tissue, (LIVER, SPLEEN, MUSCLE, KIDNEY))
    native += np.where(soft, 2.0 * fine, 0.0)
    fat = np.isin(tissue, (SUBCUT, VISCERAL))
    native += np.where(fat, 6.0 * fine, 0.0)

    organ = org["liver"]  # tumours live in the liver as it was before vessels/tumours
    mask = np.zeros(x.shape, np.uint8)
    instance = np.zeros(x.shape, np.int16)
    for i, spec in enumerate(pat.tumours, start=1):
        geo = spec["_geo"]
        c = cross_section(slice_index - geo["kc"], geo["half"])
        if c <= 0:
            continue
        cx, cy = geo["xy"]
        rc = geo["radius"] * c
        rho = ellipse_rho(x, y, cx, cy, rc, rc * geo["aspect"], geo["angle"])
        edge = 1.0 + harmonics(np.arctan2(y - cy, x - cx), *geo["wobble"])
        lesion = organ & (rho < edge)
        if not lesion.any():
            continue
        tissue[lesion] = TUMOUR
        native[lesion], enh[lesion] = geo["core"]
        # The rim is a fifth of the radius and at least 1.5 mm. A section too small to
        # leave a core inside such a rim (near a tumour's top or bottom, or a tumour
        # of a few mm) shows none, so a tumour never turns into a bright blob.
        rim_frac = max(0.2, 1.5 / max(rc, 1e-6))
        rim = lesion & (rho > edge * (1.0 - rim_frac))
        if spec["rim_enhancing"] and rim_frac <= 0.5 and (lesion & ~rim).any():
            native[rim], enh[rim] = geo["rim"]
        native[lesion] += 2.0 * fine[lesion]
        mask[lesion] = 1
        instance[lesion] = i

    public = [{k: v for k, v in spec.items() if k != "_geo"} for spec in pat.tumours]
    return Anatomy(
        native=native.astype(np.float32),
        enhancement=enh.astype(np.float32),
        tissue=tissue,
        mask=mask,
        instance=instance,
        lesions=public,
        info={"level": round(t, 4)},
        regions={"body": org["body"], "liver": organ},
    )
