"""The embedded CT phantoms: anatomy, lesions, acquisition, domains, determinism, CLI.

Most checks run on one module-scope set of 240 head slices (30 patients x 8 slices)
and 96 liver slices at 64 px, rendered once (~10 s on one core). HU of the acquired
image are checked on a few 128 px slices, where tissue regions survive an erosion
that keeps partial-volume pixels at their borders out of the statistics.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import pdist

from augment.errors import ConfigError
from augment.folder import load_sample, read_dataset
from augment.phantoms.ct_sim import Protocol, acquire
from augment.phantoms.geometry import NOMINAL_SLICES
from augment.phantoms.head import (
    BLOOD,
    BONE,
    BONE_RIM_PX,
    CSF,
    FALX,
    GREY,
    OEDEMA,
    WHITE,
    sample_head_patient,
)
from augment.phantoms.liver import AORTA, KIDNEY, LIVER, MUSCLE, SPLEEN, SUBCUT, VISCERAL
from augment.phantoms.liver import BONE as VERTEBRA
from augment.phantoms.render import (
    CLASSES,
    DOMAINS,
    TISSUES,
    phantom_samples,
    render_anatomy,
    render_slice,
    spacing,
    write_phantom,
)
from augment.sample import boxes_from_mask
from augment.splits import split_by_patient
from downstream.cli import main

IPH, IVH, EDH, SDH, SAH = 1, 2, 3, 4, 5
EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as boxes_from_mask uses
HEAD_PATIENTS, LIVER_PATIENTS = 30, 12


def _render(kind: str, patients: int, size: int, domain: str = "A"):
    return [
        render_slice(kind, p, k, size=size, domain=domain)
        for p in range(patients)
        for k in range(NOMINAL_SLICES)
    ]


@pytest.fixture(scope="module")
def head():
    return _render("head-ich", HEAD_PATIENTS, 64)


@pytest.fixture(scope="module")
def liver():
    return _render("liver", LIVER_PATIENTS, 64)


def _components(mask: np.ndarray, cls: int):
    labels, n = ndimage.label(mask == cls, structure=EIGHT)
    return [labels == j for j in range(1, n + 1)]


def _half_thickness_mm(region: np.ndarray, pixel_mm: float) -> float:
    """Largest distance (mm) from a pixel of ``region`` to the nearest pixel outside it."""
    return float(ndimage.distance_transform_edt(np.pad(region, 1)).max() * pixel_mm)


def _eroded(tissue: np.ndarray, label: int, bone: int | None = None) -> np.ndarray:
    # One pixel in from every border: at 128 px that drops the pixels whose FBP value
    # is a mixture with the neighbouring tissue (the hann kernel's blur is ~1 px).
    # Next to 1000-1600 HU bone even 1 % of its step is 10-16 HU, so soft tissue is
    # also kept 4 px away from bone (measured: a thin SDH on the inner table reads
    # up to 57 HU high 1-2 px from the bone, a few HU at 4 px).
    sel = ndimage.binary_erosion(tissue == label, structure=EIGHT)
    if bone is not None and label != bone:
        sel &= ~ndimage.binary_dilation(tissue == bone, structure=EIGHT, iterations=4)
    return sel


# ----------------------------------------------------------------------------- head


def test_head_ground_truth_hu_per_tissue(head):
    for sample, anatomy in head:
        truth, tissue = anatomy.hu(1.0), anatomy.tissue
        # The issue's ranges: grey 35-40, white 25-30, CSF 0-15 HU; bone >= 700 HU.
        assert 35.0 <= np.median(truth[tissue == GREY]) <= 40.0, sample.id
        assert 25.0 <= np.median(truth[tissue == WHITE]) <= 30.0, sample.id
        assert 0.0 <= np.median(truth[tissue == CSF]) <= 15.0, sample.id
        assert truth[tissue == BONE].min() >= 700.0, sample.id
        if (tissue == FALX).any():  # the dural falx is denser than grey matter
            assert np.median(truth[tissue == FALX]) > np.median(truth[tissue == GREY])
        for i, rec in enumerate(anatomy.lesions, start=1):
            sel = anatomy.instance == i
            if sel.any():  # acute blood, 50-90 HU (issue)
                assert 50.0 <= np.median(truth[sel]) <= 90.0, (sample.id, rec["name"])
        if (tissue == OEDEMA).any():  # low-density rim: darker than white matter
            assert np.median(truth[tissue == OEDEMA]) < np.median(truth[tissue == WHITE])
    falx_slices = sum((a.tissue == FALX).any() for _, a in head)
    assert falx_slices >= 0.9 * len(head)  # the falx is in every supratentorial slice


def test_brain_has_texture_and_sulci(head):
    for sample, anatomy in head:
        truth, tissue = anatomy.hu(1.0), anatomy.tissue
        # A flat tissue value would have std 0; the texture fields give ~1.4 HU.
        assert truth[tissue == WHITE].std() > 0.5, sample.id
        assert truth[tissue == GREY].std() > 0.5, sample.id
        # Sulci: CSF spaces reaching into the brain, cut off from the CSF rim under the
        # skull by dropping the outer 3 px. The interhemispheric fissure alone would
        # leave 1-2 pieces; 22-28 sulci per patient leave 10-22 (seed 0).
        deep = anatomy.regions["subarachnoid"] & ndimage.binary_erosion(
            anatomy.regions["intracranial"], iterations=3
        )
        assert ndimage.label(deep, structure=EIGHT)[1] >= 6, sample.id
    assert sum(a.regions["ventricles"].any() for _, a in head) >= 0.3 * len(head)


def test_skull_thickness_varies_around_the_head():
    px = spacing("head-ich", 128)[0]
    for patient in range(4):
        anatomy = render_anatomy("head-ich", patient, 2, size=128)
        cy, cx = ndimage.center_of_mass(anatomy.regions["intracranial"])
        rows, cols = np.nonzero(anatomy.tissue == BONE)
        angle, radius = np.arctan2(rows - cy, cols - cx), np.hypot(rows - cy, cols - cx)
        sector = ((angle + np.pi) / (2 * np.pi) * 12).astype(int) % 12
        # Mean thickness of a 30-degree sector = its bone area / its arc length.
        thickness = (
            np.array(
                [(sector == k).sum() / (np.pi / 6 * radius[sector == k].mean()) for k in range(12)]
            )
            * px
        )
        assert thickness.min() >= 2.5  # a closed skull, >= 2.5 mm everywhere (phantom_head)
        # Frontal/occipital bone is 1.25x and temporal 0.75x the patient's thickness in
        # phantom_head (ratio 1.67): measured 1.4-2.0, and <= 1.09 for a constant one.
        assert thickness.max() / thickness.min() > 1.3, patient


def test_all_five_subtypes_and_lesion_free_slices(head):
    per_class = {c: 0 for c in CLASSES["head-ich"]}
    for sample, _ in head:
        for c in np.unique(sample.mask[sample.mask > 0]):
            per_class[int(c)] += 1
    # 240 slices hold 28-61 slices of each subtype with seed 0; 5 is a floor far below.
    assert all(n >= 5 for n in per_class.values()), per_class
    assert set(np.unique(np.concatenate([s.mask.ravel() for s, _ in head]))) == {0, 1, 2, 3, 4, 5}
    free = sum(not s.has_lesion for s, _ in head)
    assert 0.1 * len(head) <= free <= 0.7 * len(head)  # both kinds are common


@pytest.mark.parametrize("kind", ["head-ich", "liver"])
def test_lesion_counts_records_and_boxes(kind, head, liver):
    data = head if kind == "head-ich" else liver
    most = 3 if kind == "head-ich" else 5  # issue: 0-3 bleeds; liver draws 0-5 tumours
    counts = []
    for sample, anatomy in data:
        lesions = sample.meta["lesions"]
        instances = set(np.unique(anatomy.instance)) - {0}
        assert len(lesions) == sample.meta["n_lesions"] == len(instances) <= most
        assert {r["class"] for r in lesions} == set(np.unique(sample.mask)) - {0}
        assert np.array_equal(anatomy.instance > 0, sample.mask > 0)
        boxes, labels = boxes_from_mask(sample.mask)
        assert np.array_equal(sample.boxes, boxes) and np.array_equal(sample.labels, labels)
        px = sample.meta["spacing"]
        for i, rec in enumerate(anatomy.lesions, start=1):
            area = int((anatomy.instance == i).sum())
            match = [r for r in lesions if r["lesion_id"] == rec["lesion_id"]]
            assert len(match) == (area > 0)
            if area:
                assert match[0]["area_mm2"] == pytest.approx(area * px[0] * px[1], abs=0.01)
        counts.append(len(lesions))
    assert 0 in counts and max(counts) >= 2


def test_small_lesions_exist(head, liver):
    for data in (head, liver):
        areas = [r["area_mm2"] for s, _ in data for r in s.meta["lesions"]]
        pixel_mm2 = np.prod(data[0][0].meta["spacing"])
        # "down to a few mm": a 5 mm disc is 19.6 mm2. One 64 px pixel is 10.8 mm2 in the
        # head (210 mm FOV) but 35.3 mm2 in the abdomen (380 mm), so there the floor is
        # two pixels; the liver's < 1 cm tumours are checked on their drawn diameters.
        assert min(areas) <= max(20.0, 2 * pixel_mm2)
        assert max(areas) >= 200.0  # and large ones too


def test_ivh_lies_inside_the_ventricles(head):
    n = 0
    for sample, anatomy in head:
        ivh = sample.mask == IVH
        n += int(ivh.any())
        assert not (ivh & ~anatomy.regions["ventricles"]).any(), sample.id
    assert n >= 5


def test_iph_is_parenchymal_with_an_oedema_rim(head):
    inside = total = with_rim = big = 0
    for sample, anatomy in head:
        iph = sample.mask == IPH
        inside += int((iph & anatomy.regions["parenchyma"]).sum())
        total += int(iph.sum())
        for comp in _components(sample.mask, IPH):
            if comp.sum() >= 8:  # the rim is 15-60% of the radius: resolved on larger clots
                big += 1
                ring = ndimage.binary_dilation(comp, structure=EIGHT) & ~comp
                with_rim += int((anatomy.tissue[ring] == OEDEMA).any())
    assert total > 0 and inside / total >= 0.8  # clots may break into a ventricle or sulcus
    assert big >= 3 and with_rim / big >= 0.8


def test_edh_and_sdh_lie_on_the_inner_table_with_their_shapes(head):
    ratios = {EDH: [], SDH: []}
    for sample, anatomy in head:
        px = sample.meta["spacing"][0]
        from_bone_px = ndimage.distance_transform_edt(anatomy.tissue != BONE)
        from_bone = from_bone_px * px
        painted, _ = ndimage.label(anatomy.tissue == BLOOD, structure=EIGHT)
        for cls in (EDH, SDH):
            for comp in _components(sample.mask, cls):
                # The label stops BONE_RIM_PX short of the skull; the blood it was cut
                # from lies on the inner table, and the label starts right past the rim
                # (its cut follows the table, so its nearest pixel is 2.2-3.2 px away).
                assert from_bone_px[comp].min() <= BONE_RIM_PX + 1.5, (sample.id, cls)
                blood = np.isin(painted, np.unique(painted[comp]))
                ring = ndimage.binary_dilation(blood, structure=EIGHT) & ~blood
                assert (anatomy.tissue[ring] == BONE).any(), (sample.id, cls)
                if comp.sum() >= 4:
                    length = pdist(np.argwhere(comp) * px).max()
                    ratios[cls].append(length / from_bone[comp].max())
    assert len(ratios[EDH]) >= 5 and len(ratios[SDH]) >= 5
    # A crescent is long and thin, a lens short and thick: length/thickness medians are
    # 9.4 (SDH) and 2.5 (EDH) with seed 0; swapping the shapes would invert them.
    assert np.median(ratios[SDH]) > 2.0 * np.median(ratios[EDH])


def test_sah_is_thin_and_in_the_subarachnoid_spaces(head):
    thickest = {SAH: 0.0, SDH: 0.0}
    n = 0
    for sample, anatomy in head:
        sah = sample.mask == SAH
        n += int(sah.any())
        assert not (sah & ~anatomy.regions["subarachnoid"]).any(), sample.id
        px = sample.meta["spacing"][0]
        for cls in thickest:
            for comp in _components(sample.mask, cls):
                thickest[cls] = max(thickest[cls], _half_thickness_mm(comp, px))
    assert n >= 5
    # Sulci are <= 3.2 mm wide, widened to one pixel (3.3 mm at 64 px): SAH is one
    # pixel thick, while SDH reaches 3-14 mm.
    assert thickest[SAH] <= 3.5 < thickest[SDH]


@pytest.mark.parametrize("kind", ["head-ich", "liver"])
def test_anatomy_inside_the_scanner_field_of_view(kind, head, liver):
    data = head if kind == "head-ich" else liver
    size = data[0][0].image.shape[0]
    c = np.arange(size) - size // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    for sample, anatomy in data:
        # The body keeps a pixel clear of skimage's reconstruction circle (radius
        # size // 2), outside which the scanner sees nothing and writes air.
        assert (anatomy.tissue[r2 > (size // 2 - 1) ** 2] == 0).all(), sample.id
        assert (sample.image[r2 > (size // 2) ** 2] == -1000.0).all()


def test_head_acquired_hu_per_tissue():
    diffs = {CSF: [], GREY: [], WHITE: [], BLOOD: []}
    noise = []
    for patient, k in [(p, k) for p in (0, 2, 4, 6) for k in (1, 3, 5)]:
        sample, anatomy = render_slice("head-ich", patient, k, size=128)
        truth = anatomy.hu(1.0)
        for label in diffs:
            sel = _eroded(anatomy.tissue, label, BONE)
            if sel.sum() >= 10:
                diffs[label].append(np.median(sample.image[sel]) - np.median(truth[sel]))
        bone = _eroded(anatomy.tissue, BONE)
        assert np.median(sample.image[bone]) >= 700.0  # bone stays bone after FBP
        white = _eroded(anatomy.tissue, WHITE)
        noise.append((sample.image - truth)[white].std())
    for label, d in diffs.items():
        assert d, label
        # Domain A has no offset; away from borders FBP keeps medians within a few HU of
        # the truth (worst measured: +5.2 HU in the blood of a thin bleed).
        assert np.abs(d).max() <= 6.0, (TISSUES["head-ich"][label], d)
    # Domain A is tuned for 4-5 HU white-matter noise (FULL_DOSE_PHOTONS comment).
    assert 2.0 <= np.median(noise) <= 8.0


# --------------------------------------------------------------- lesion labels vs HU

ACUTE_BLOOD_HU = (50.0, 90.0)  # issue: the median HU inside each subtype's masks
SIZES_DOMAINS = ((64, "A"), (64, "B"), (128, "A"), (128, "B"))
# Where the median misses 50 HU for a reason other than the label: at 64 px (3.3 mm
# pixels) IVH layers and sulcal SAH are 1-2 px thick, and domain A's hann kernel
# (~2 px wide point-spread) averages them with the CSF and brain around them. Measured
# on the 240 slices: IVH 48.4, SAH 48.5 HU (truth medians 66 and 70 HU); the same
# slices in domain B read 62.9 and 61.9, and at 128 px domain A reads 64 and 53. Raising
# the blood's HU would not honestly close it: SAH drawn at 70-88 HU still reads 48-52.
PARTIAL_VOLUME_SHORT = {(64, "A", IVH): 48.4, (64, "A", SAH): 48.5}


def _around_lesion_centres(per_class: int = 3) -> list[tuple[int, int]]:
    """Seed-0 ``(patient, slice)`` pairs: the centre slice of each of the first
    ``per_class`` lesions of every subtype and its two neighbours (37 slices)."""
    seen = dict.fromkeys(CLASSES["head-ich"], 0)
    picks: set[tuple[int, int]] = set()
    for patient in range(200):
        for spec in sample_head_patient(0, patient).lesions:
            if seen[spec["class"]] < per_class:
                seen[spec["class"]] += 1
                kc = spec["centre_slice"]
                picks |= {(patient, k) for k in (kc - 1, kc, kc + 1) if 0 <= k < NOMINAL_SLICES}
        if min(seen.values()) >= per_class:
            return sorted(picks)
    raise AssertionError(f"too few lesions of some subtype: {seen}")


@pytest.fixture(scope="module")
def labelled(head):
    """Head slices by ``(size, domain)``: the module's 240 slices at 64 px in domain A,
    the slices around lesion centres for the others (~12 s for all three)."""
    picks = _around_lesion_centres()
    data = {(64, "A"): head}
    for size, domain in SIZES_DOMAINS[1:]:
        data[size, domain] = [
            render_slice("head-ich", p, k, size=size, domain=domain) for p, k in picks
        ]
    return data


def test_lesion_masks_stop_short_of_the_skull(labelled):
    # Issue: EDH/SDH masks read 155-222 HU. No mask pixel was bone, but the outer ring
    # of a bleed on the inner table is where FBP smears 1,250-1,600 HU bone into the
    # image (+380..460 HU one pixel away in domain A, +50..62 HU two pixels away).
    rimmed = 0
    for (size, _), data in labelled.items():
        for sample, anatomy in data:
            from_bone = ndimage.distance_transform_edt(anatomy.tissue != BONE)
            label, blood = sample.mask > 0, anatomy.tissue == BLOOD
            assert not (label & ~blood).any(), (size, sample.id)  # never bone, only blood
            # Before the rim every bleed on the table had label pixels 1 px from bone.
            assert (from_bone[label] > BONE_RIM_PX).all(), (size, sample.id)
            # All the blood well past the rim is labelled (measured: what is left out
            # lies within 4 px of bone, a sliver thinner than the rim plus a pixel).
            assert label[blood & (from_bone > BONE_RIM_PX + 2.5)].all(), (size, sample.id)
            rimmed += int((blood & ~label).any())
            # The cut follows the table, so a bleed on it stays one piece, not dots.
            pieces, _ = ndimage.label(label, structure=EIGHT)
            for i, rec in enumerate(anatomy.lesions, start=1):
                if rec["class"] in (EDH, SDH) and (anatomy.instance == i).any():
                    assert len(np.unique(pieces[anatomy.instance == i])) == 1, (size, sample.id)
    assert rimmed >= 20  # bleeds on the inner table are common: the rim is not vacuous


def _subtype_cases():
    for size, domain in SIZES_DOMAINS:
        for cls, name in CLASSES["head-ich"].items():
            short = PARTIAL_VOLUME_SHORT.get((size, domain, cls))
            marks = ()
            if short is not None:
                reason = f"partial volume of 1-2 px bleeds at 64 px in domain A: {short} HU"
                marks = pytest.mark.xfail(strict=True, reason=reason)
            yield pytest.param(size, domain, cls, marks=marks, id=f"{size}px-{domain}-{name}")


@pytest.mark.parametrize("size, domain, cls", _subtype_cases())
def test_median_hu_inside_each_subtypes_masks(labelled, size, domain, cls):
    values = np.concatenate([s.image[s.mask == cls] for s, _ in labelled[size, domain]])
    assert values.size >= 50
    # No acute blood reads 150 HU; a label pixel that does holds skull. Before the rim
    # that was 39 % / 54 % of EDH / SDH mask pixels at 64 px (A), 29 % / 27 % at 128 px
    # (A), 24 % / 19 % at 128 px (B); now 0 in A and at most 0.5 % (B's noise).
    assert (values > 150.0).mean() <= 0.02
    # Before the rim, 64 px domain A: EDH 109, SDH 198 HU (IQR [71, 332], [78, 402]);
    # 64 px B: EDH 123, SDH 100 HU. Now 53-79 HU except `PARTIAL_VOLUME_SHORT`.
    lo, hi = ACUTE_BLOOD_HU
    assert lo <= np.median(values) <= hi, (size, domain, CLASSES["head-ich"][cls])


def test_thin_bleeds_at_64px_lose_hu_only_to_partial_volume(labelled):
    # The known shortfall stays what was measured: the blood drawn is acute, and the
    # acquired median is pinned to +-4 HU, so a regression fails here, not as an xfail.
    for (size, domain, cls), measured in PARTIAL_VOLUME_SHORT.items():
        data = labelled[size, domain]
        truth = np.concatenate([a.hu(1.0)[s.mask == cls] for s, a in data])
        values = np.concatenate([s.image[s.mask == cls] for s, _ in data])
        assert ACUTE_BLOOD_HU[0] <= np.median(truth) <= ACUTE_BLOOD_HU[1]
        assert np.median(values) == pytest.approx(measured, abs=4.0)


# ---------------------------------------------------------------------------- liver


def test_liver_ground_truth_hu_and_organs(liver):
    seen = set()
    for sample, anatomy in liver:
        truth, tissue = anatomy.hu(DOMAINS["A"]["contrast_phase"]), anatomy.tissue
        seen |= set(np.unique(tissue).tolist())
        # Issue: fat about -100 HU, liver 90-120 HU in the portal venous phase.
        assert -110.0 <= np.median(truth[tissue == SUBCUT]) <= -90.0
        assert 90.0 <= np.median(truth[tissue == LIVER]) <= 120.0, sample.id
        assert 40.0 <= np.median(truth[tissue == MUSCLE]) <= 70.0  # muscle 40-60 + enhancement
        assert (tissue == VERTEBRA).any() and (tissue == AORTA).any()
    assert {SUBCUT, VISCERAL, MUSCLE, LIVER, SPLEEN, KIDNEY, AORTA, VERTEBRA} <= seen


def test_liver_tumours_hypodense_some_rim_enhancing_in_the_liver(liver):
    sizes, rim_gain, plain_gain = [], [], []
    for sample, anatomy in liver:
        truth = anatomy.hu(1.0)
        liver_hu = np.median(truth[anatomy.tissue == LIVER])
        for i, rec in enumerate(anatomy.lesions, start=1):
            sel = anatomy.instance == i
            if not sel.any():
                continue
            sizes.append(rec["size_mm"])
            assert not (sel & ~anatomy.regions["liver"]).any()
            # The darkest quarter is core: 40-80 HU in the issue, +-6 HU of texture.
            core = np.percentile(truth[sel], 25, method="lower")
            assert 34.0 <= core <= 86.0, (sample.id, rec)
            assert core < liver_hu - 15.0  # hypodense
            edge = sel & ~ndimage.binary_erosion(sel, structure=EIGHT)
            if sel.sum() >= 5:
                (rim_gain if rec["rim_enhancing"] else plain_gain).append(
                    truth[edge].mean()
                    - np.median(truth[sel & ~edge] if (sel & ~edge).any() else core)
                )
    assert min(sizes) < 10.0 and max(sizes) > 30.0  # "sizes from < 1 cm upward"
    # An enhancing rim is 104-130 HU against a 42-73 HU core.
    assert max(rim_gain) > 20.0
    assert max(plain_gain) < 10.0  # without a rim the border is only texture


def test_liver_acquired_hu_per_tissue():
    diffs = {SUBCUT: [], MUSCLE: [], LIVER: [], SPLEEN: []}
    for patient, k in [(p, k) for p in (0, 3, 5) for k in (1, 4, 6)]:
        sample, anatomy = render_slice("liver", patient, k, size=128)
        truth = anatomy.hu(1.0)
        for label in diffs:
            sel = _eroded(anatomy.tissue, label, VERTEBRA)
            if sel.sum() >= 10:
                diffs[label].append(np.median(sample.image[sel]) - np.median(truth[sel]))
    for label, d in diffs.items():
        assert d, label
        # Measured worst case: muscle -7.0 HU (a thin wall between fat layers).
        assert np.abs(d).max() <= 8.0, (TISSUES["liver"][label], d)


# -------------------------------------------------------------------- acquisition


def test_acquisition_noise_follows_dose_and_kernel():
    size, pixel_mm = 64, 3.0
    c = np.arange(size) - size / 2 + 0.5
    water = np.where(c[:, None] ** 2 + c[None, :] ** 2 < 24**2, 0.0, -1000.0)
    inner = c[:, None] ** 2 + c[None, :] ** 2 < 16**2

    def scan(i0: float, kernel: str) -> np.ndarray:
        protocol = Protocol("test", 1.0, kernel, 1.5, 0.0, 1.0)
        out = acquire(
            water, pixel_mm=pixel_mm, i0=i0, protocol=protocol, rng=np.random.default_rng(0)
        )
        return out[inner]

    low, high = scan(1e5, "hann"), scan(4e5, "hann")
    assert abs(np.median(high)) <= 5.0  # water reconstructs at 0 HU
    # Quantum noise: std ~ 1/sqrt(I0), so 4x the photons halve it.
    assert 1.6 <= low.std() / high.std() <= 2.5
    assert scan(4e5, "ramp").std() > 1.3 * high.std()  # the sharp kernel passes more noise


def test_domains_same_anatomy_different_images():
    pairs = [(p, k) for p in (1, 4) for k in (2, 4, 6)]
    for kind in ("head-ich", "liver"):
        a = [render_slice(kind, p, k, size=64, domain="A") for p, k in pairs]
        b = [render_slice(kind, p, k, size=64, domain="B") for p, k in pairs]
        offsets = []
        for (sa, an_a), (sb, an_b) in zip(a, b, strict=True):
            assert sa.id == sb.id and sa.patient_id == sb.patient_id
            assert np.array_equal(sa.mask, sb.mask)
            assert np.array_equal(sa.boxes, sb.boxes) and np.array_equal(sa.labels, sb.labels)
            assert [r["lesion_id"] for r in sa.meta["lesions"]] == [
                r["lesion_id"] for r in sb.meta["lesions"]
            ]
            assert np.array_equal(an_a.tissue, an_b.tissue)
            body = an_a.tissue > 0
            assert np.abs(sa.image - sb.image)[body].mean() > 3.0
            assert sa.meta["domain"] == "A" and sb.meta["domain"] == "B"
            if kind == "head-ich":
                white = _eroded(an_a.tissue, WHITE)
                truth = an_a.hu(1.0)
                offsets.append(np.median(sb.image[white]) - np.median(sa.image[white]))
                # Half dose and the ramp kernel: B is the noisier scanner.
                assert (sb.image - truth)[white].std() > 1.5 * (sa.image - truth)[white].std()
        if kind == "head-ich":  # B's +6 HU calibration offset (DOMAINS["B"]["hu_offset"])
            assert np.median(offsets) == pytest.approx(DOMAINS["B"]["hu_offset"], abs=3.0)


# ------------------------------------------------------------------------ patients


def test_slices_of_a_patient_share_anatomy(head):
    by_patient: dict[str, list] = {}
    for sample, anatomy in head:
        by_patient.setdefault(sample.patient_id, []).append((sample, anatomy))
    assert len(by_patient) == HEAD_PATIENTS
    assert all(len(v) == NOMINAL_SLICES for v in by_patient.values())
    for slices in by_patient.values():
        specs = [
            {k: v for k, v in r.items() if k in ("class", "size_mm", "centre_slice")}
            for r in slices[0][1].lesions
        ]
        for _, anatomy in slices:
            # Every slice carries the patient's lesion list; what changes is the section.
            assert [
                {k: v for k, v in r.items() if k in ("class", "size_mm", "centre_slice")}
                for r in anatomy.lesions
            ] == specs
        for (_, a0), (_, a1) in zip(slices[:-1], slices[1:], strict=True):
            skull0, skull1 = a0.regions["intracranial"], a1.regions["intracranial"]
            iou = (skull0 & skull1).sum() / (skull0 | skull1).sum()
            assert iou > 0.75  # 5 mm apart: the same head, a little narrower or wider
    ids = [s.patient_id for s, _ in head]
    splits = split_by_patient(ids, seed=0)
    owners = {name: {ids[i] for i in idx} for name, idx in splits.items()}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    assert sum(len(v) for v in splits.values()) == len(head)


def test_slice_is_reproducible_on_its_own():
    alone, _ = render_slice("head-ich", 3, 5, size=48, seed=7)
    stream = list(phantom_samples("head-ich", 3 * NOMINAL_SLICES + 6, size=48, seed=7))
    assert stream[-1].id == alone.id
    assert np.array_equal(stream[-1].image, alone.image)
    other, _ = render_slice("head-ich", 3, 5, size=48, seed=8)
    assert not np.array_equal(other.image, alone.image)


# ----------------------------------------------------------------- files and CLI


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_write_phantom_same_seed_same_bytes(tmp_path):
    a = write_phantom(tmp_path / "a", "liver", 10, size=48, domain="B", seed=3)
    b = write_phantom(tmp_path / "b", "liver", 10, size=48, domain="B", seed=3)
    c = write_phantom(tmp_path / "c", "liver", 10, size=48, domain="B", seed=4)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert len(ha) == 2 * 10 + 2  # image + mask per slice, manifest, dataset.json
    assert ha == hb
    assert ha["manifest.jsonl"] != hc["manifest.jsonl"]


def test_write_phantom_in_worker_processes_same_bytes(tmp_path):
    # Rendering in 2 forked workers (what large phantoms get by default) writes the same
    # files as one process: each slice depends only on its own arguments, order is kept.
    import torch

    torch.ones(64, 64) @ torch.ones(64, 64)  # the parent has used torch's thread pool, as in `compare`
    one = write_phantom(tmp_path / "one", "head-ich", 8, size=48, seed=5, workers=1)
    two = write_phantom(tmp_path / "two", "head-ich", 8, size=48, seed=5, workers=2)
    assert _hashes(one) == _hashes(two)


def test_cli_writes_a_valid_dataset(tmp_path):
    out = tmp_path / "ph"
    argv = [
        "data",
        "phantom",
        "--kind",
        "head-ich",
        "--n",
        "10",
        "--size",
        "48",
        "--domain",
        "B",
        "--seed",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    info, records = read_dataset(out)
    assert info["provenance"] == "phantom" and info["anatomy"] == "head-ich" and "kind" not in info
    assert info["classes"] == {str(k): v for k, v in CLASSES["head-ich"].items()}
    assert info["spacing"] == spacing("head-ich", 48)
    assert len(records) == 10 and info["n_patients"] == 2  # 8 slices per patient
    for rec in records:
        sample = load_sample(out, rec, verify=True)
        assert sample.image.shape == (48, 48) and rec["domain"] == "B"
        boxes, labels = boxes_from_mask(sample.mask)
        assert np.allclose(np.asarray(rec["boxes"]).reshape(-1, 4), boxes)
        assert rec["labels"] == labels.tolist()


@pytest.mark.parametrize(
    "args, word",
    [
        (["--size", "16"], "size"),
        (["--domain", "C"], "domain"),
        (["--n", "0"], "number of slices"),
    ],
)
def test_cli_bad_arguments_exit_2_without_a_folder(tmp_path, capsys, args, word):
    out = tmp_path / "ph"
    assert main(["data", "phantom", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err and err.startswith("lesionforge: error:")
    assert not out.exists() and not any(tmp_path.iterdir())


def test_cli_unknown_kind_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "ph"
    with pytest.raises(SystemExit) as exc:  # argparse's choices check
        main(["data", "phantom", "--kind", "lung", "--out", str(out)])
    assert exc.value.code == 2
    assert "--kind" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_library_errors():
    with pytest.raises(ConfigError, match="unknown kind"):
        render_anatomy("lung", 0, 0)
    with pytest.raises(ConfigError, match=">= 0"):
        render_slice("liver", -1, 0)
    with pytest.raises(ConfigError, match="size"):
        spacing("liver", 8)
    with pytest.raises(ConfigError, match="unknown domain"):
        phantom_samples("liver", 3, domain="C")  # at the call, before any slice is asked for


def test_lesion_regions_find_ventricles_and_the_inner_table():
    from scipy import ndimage

    from augment.anatomy import SUBTYPE_REGION, allowed_region, class_anchor, lesion_regions

    sample, anatomy = render_slice("head-ich", 3, 1, size=128, domain="A")
    regions = lesion_regions(sample.image, "head-ich", spacing=sample.meta["spacing"])
    brain = regions["brain"]
    np.testing.assert_array_equal(brain, allowed_region(sample.image, "head-ich", spacing=sample.meta["spacing"]))
    true_vent = anatomy.regions["ventricles"]
    found = regions["ventricles"]
    assert true_vent.sum() > 50 and found.sum() > 20
    # Found from HU alone; partial volume adds a rim, so at least half must be true ventricle.
    assert (found & true_vent).sum() / found.sum() > 0.5
    # The periphery hugs the skull: every pixel within ~6 mm (+1 px) of the brain's outline.
    depth_mm = ndimage.distance_transform_edt(brain, sampling=sample.meta["spacing"])
    assert depth_mm[regions["periphery"]].max() <= 6.0 + max(sample.meta["spacing"])
    assert not (regions["parenchyma"] & (regions["periphery"] | found)).any()
    assert class_anchor("IVH", regions) is found and class_anchor("sdh", regions) is regions["periphery"]
    assert class_anchor("unknown", regions) is brain
    assert set(SUBTYPE_REGION) == {"IPH", "IVH", "EDH", "SDH", "SAH"}
    liver, _ = render_slice("liver", 0, 3, size=64)
    assert set(lesion_regions(liver.image, "liver")) == {"liver"}
