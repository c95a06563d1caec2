"""Patient-paired inference in downstream.evaluation.stats: sign-flip test, hierarchical bootstrap,
Holm, and verdicts that cannot contradict their intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from downstream.evaluation.stats import (
    _hierarchical_replicates,
    compare_by_patient,
    decide,
    hierarchical_bootstrap_ci,
    holm,
    sign_flip_test,
)

N_BOOT = 2000


def as_metrics(table: np.ndarray) -> dict[str, dict[int, float]]:
    """patients x seeds array -> {patient: {seed: metric}}; NaN cells are left out."""
    return {
        f"p{i}": {s: float(v) for s, v in enumerate(row) if np.isfinite(v)}
        for i, row in enumerate(np.asarray(table, float))
    }


def arms(diff: np.ndarray, rng: np.random.Generator) -> tuple[dict, dict]:
    """A baseline around 0.7 and a strategy = baseline + diff, same layout."""
    base = rng.uniform(0.5, 0.9, size=np.shape(diff))
    return as_metrics(base + diff), as_metrics(base)


# --- sign_flip_test -------------------------------------------------------------------------


def test_sign_flip_hand_computed_exact_p():
    # 3 distinct positive differences: of the 2**3 = 8 sign vectors only (+,+,+) and
    # (-,-,-) reach |mean| >= 2, so two-sided p = 2/8 and one-sided p = 1/8.
    assert sign_flip_test([1.0, 2.0, 3.0]) == 0.25
    assert sign_flip_test([1.0, 2.0, 3.0], alternative="greater") == 0.125
    assert sign_flip_test([1.0, 2.0, 3.0], alternative="less") == 1.0
    # 8 patients all better: the smallest possible two-sided p, 2 / 2**8.
    assert sign_flip_test(np.arange(1, 9) / 10) == pytest.approx(2 / 256, abs=0)


@pytest.mark.parametrize(
    "d",
    [
        [1.0, 2.0, 3.0],
        [1.0, -1.0, 2.0, -2.0, 3.0],  # tied |values|: many sign vectors share a mean
        [0.5, 0.5, -0.5, 1.0, 0.0, 0.25],  # repeated values and a zero
        [0.02, -0.01, 0.05, 0.03, 0.03, -0.02, 0.04, 0.01, 0.0],
        [-0.3, -0.1, -0.2, 0.05],
    ],
)
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_matches_scipy_exact(d, alternative):
    # scipy: one sample with permutation_type="samples" flips the signs of observations;
    # n_resamples=inf enumerates all 2**n sign vectors.
    ref = stats.permutation_test(
        (np.asarray(d),), np.mean, permutation_type="samples", alternative=alternative,
        n_resamples=np.inf,
    ).pvalue
    assert sign_flip_test(d, alternative=alternative) == pytest.approx(ref, rel=1e-12)


def test_sign_flip_counts_ties_through_rounding():
    # 0.1 + 0.2 + 0.3 - 0.6 is 0 exactly but ~5.6e-17 in floats. Exactly: of the 16 sign
    # vectors, (+,+,+,-) and (-,-,-,+) sum to 0 and 7 sum to > 0, so P(mean >= 0) = 9/16.
    # (scipy's tolerance is relative to the observed mean, ~1e-31 here, and gives 8/16.)
    d = [0.1, 0.2, 0.3, -0.6]
    assert sign_flip_test(d, alternative="greater") == 9 / 16
    assert sign_flip_test(d, alternative="less") == 9 / 16
    assert sign_flip_test(d) == 1.0


def test_sign_flip_degenerate_inputs():
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_test([0.0] * 30) == 1.0
    assert math.isnan(sign_flip_test([]))
    with pytest.raises(ValueError, match="finite"):
        sign_flip_test([0.1, float("nan")])
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_test([0.1], alternative="two_sided")


def test_sign_flip_monte_carlo_above_16():
    # 30 positive differences: no random sign vector but all-plus or all-minus (odds
    # 2**-29 per draw) reaches |mean| >= observed, so p = (1 + 0) / (1 + n_resamples).
    assert sign_flip_test(np.arange(1.0, 31.0), n_resamples=5000) == 1 / 5001
    rng = np.random.default_rng(3)
    d = rng.normal(0.25, 1.0, size=40)
    p = sign_flip_test(d, seed=7)
    assert p == sign_flip_test(d, seed=7)  # deterministic for a seed
    ref = stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=100_000, rng=0
    ).pvalue
    assert 0.01 < ref < 0.5  # a case where Monte Carlo error is visible on p
    assert p == pytest.approx(ref, abs=4 * math.sqrt(ref * (1 - ref) / 20_000))


# --- hierarchical_bootstrap_ci ---------------------------------------------------------------


def test_hierarchical_ci_contains_truth_and_shrinks_with_patients():
    rng = np.random.default_rng(0)

    def table(n_patients: int) -> np.ndarray:
        effect = rng.normal(0.05, 0.04, size=(n_patients, 1))  # per-patient true effect
        return effect + rng.normal(0.0, 0.02, size=(n_patients, 3))  # 3 seeds

    lo8, hi8 = hierarchical_bootstrap_ci(table(8), n_boot=N_BOOT)
    lo128, hi128 = hierarchical_bootstrap_ci(table(128), n_boot=N_BOOT)
    assert lo8 < 0.05 < hi8
    assert lo128 < 0.05 < hi128
    assert hi128 - lo128 < 0.5 * (hi8 - lo8)  # ~ 1/sqrt(16) in theory


def test_hierarchical_replicates_carry_both_levels_of_variance():
    # A replicate is the mean of P iid draws X = (mean of k seeds resampled from a
    # uniformly chosen patient p), so Var = (Var_p(m_p) + mean_p(s_p**2 / k)) / P with
    # m_p, s_p**2 the patient's seed mean and ddof=0 variance. Seed noise is large here,
    # so a bootstrap of patient means alone (no s_p**2 / k term) would be visibly narrower.
    rng = np.random.default_rng(1)
    t = rng.normal(0.0, 0.05, size=(20, 1)) + rng.normal(0.0, 0.5, size=(20, 4))
    reps = _hierarchical_replicates(t, 40_000, 0)
    expected = math.sqrt((t.mean(axis=1).var() + (t.var(axis=1) / 4).mean()) / 20)
    assert reps.mean() == pytest.approx(t.mean(), abs=3 * expected / 200)
    assert reps.std() == pytest.approx(expected, rel=0.03)
    patients_only = math.sqrt(t.mean(axis=1).var() / 20)
    assert patients_only < 0.85 * expected


def test_hierarchical_ci_nan_handling():
    t = np.array([[0.1, 0.2, 0.3], [0.0, 0.4, -0.1], [0.2, 0.25, 0.15]])
    with_empty_patient = np.vstack([t[:1], np.full((1, 3), np.nan), t[1:]])
    ci = hierarchical_bootstrap_ci(t, n_boot=N_BOOT, seed=4)
    # A patient without any finite value is dropped (before any random draw).
    assert hierarchical_bootstrap_ci(with_empty_patient, n_boot=N_BOOT, seed=4) == ci
    # Missing seeds are ignored within the patient: one seed measured at 0.5 gives that
    # patient a mean of 0.5 in every replicate, as three seeds all equal to 0.5 would
    # (values exact in binary, so the two sums agree to the last bit).
    a = np.array([[0.5, np.nan, np.nan], [0.0, 0.75, -0.25]])
    b = np.array([[0.5, 0.5, 0.5], [0.0, 0.75, -0.25]])
    ci_a = hierarchical_bootstrap_ci(a, n_boot=N_BOOT)
    assert ci_a == hierarchical_bootstrap_ci(b, n_boot=N_BOOT)
    assert all(np.isfinite(ci_a))
    assert all(map(math.isnan, hierarchical_bootstrap_ci(np.full((2, 3), np.nan))))
    assert all(map(math.isnan, hierarchical_bootstrap_ci(np.empty((0, 3)))))


def test_hierarchical_ci_simple_properties():
    assert hierarchical_bootstrap_ci(np.full((5, 3), 0.2), n_boot=N_BOOT) == pytest.approx((0.2, 0.2))
    t = np.random.default_rng(2).normal(size=(6, 3))
    ci = hierarchical_bootstrap_ci(t, n_boot=N_BOOT, seed=1)
    assert ci == hierarchical_bootstrap_ci(t, n_boot=N_BOOT, seed=1)
    assert ci != hierarchical_bootstrap_ci(t, n_boot=N_BOOT, seed=2)
    lo99, hi99 = hierarchical_bootstrap_ci(t, level=0.99, n_boot=N_BOOT, seed=1)
    assert lo99 <= ci[0] < ci[1] <= hi99  # same replicates, wider quantiles
    # One patient: only its seeds are resampled, so the interval stays within them.
    lo, hi = hierarchical_bootstrap_ci([[0.1, 0.3, 0.2]], n_boot=N_BOOT)
    assert 0.1 <= lo < hi <= 0.3
    with pytest.raises(ValueError, match="level"):
        hierarchical_bootstrap_ci(t, level=95)
    with pytest.raises(ValueError, match="2-D"):
        hierarchical_bootstrap_ci([0.1, 0.2])


# --- holm -----------------------------------------------------------------------------------


def test_holm_hand_computed():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04,
    # raised to 0.06 to stay monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN passes through and does not count: m = 2, so 0.2 x 2 = 0.4 and 0.6 x 1 = 0.6
    out = holm([0.2, float("nan"), 0.6])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    # capped at 1: 0.5 x 2 = 1.0, then max(1.0, 0.9 x 1) = 1.0
    assert holm([0.9, 0.5]) == [1.0, 1.0]
    assert holm([0.03]) == [0.03]
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_holm_against_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, size=9)
    assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


# --- compare_by_patient ---------------------------------------------------------------------


def test_compare_by_patient_pairs_on_patient_and_seed():
    values = {
        "a": {0: 0.8, 1: 0.9, 2: 0.7},
        "b": {0: 0.5, 1: float("nan"), 2: 0.6},  # seed 1 missing in this arm
        "c": {0: 0.4},  # seed 0 missing in the baseline: no pair
        "d": {0: 0.3, 1: None},  # only in this arm
    }
    baseline = {
        "a": {0: 0.7, 1: 0.7, 2: 0.8},
        "b": {0: 0.6, 1: 0.6, 2: 0.4, 3: 0.5},
        "c": {1: 0.4},
    }
    r = compare_by_patient(values, baseline, n_boot=N_BOOT)
    assert r["n_patients"] == 2
    assert r["n_seeds"] == 3
    # a: (0.1 + 0.2 - 0.1) / 3; b: (-0.1 + 0.2) / 2
    assert r["per_patient"] == pytest.approx({"a": 0.2 / 3, "b": 0.05})
    assert r["mean_diff"] == pytest.approx((0.2 / 3 + 0.05) / 2)
    assert r["p_value"] == 0.5  # 2 patients, both better: 2 of 4 sign vectors
    assert r["test"] == "exact sign-flip permutation test over 2 patients"
    assert (r["n_better"], r["n_worse"], r["better"], r["consistent"]) == (2, 0, True, True)
    assert r["ci_level"] == 0.95 and r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
    lower = compare_by_patient(values, baseline, n_boot=N_BOOT, higher_is_better=False)
    assert (lower["n_better"], lower["n_worse"], lower["better"]) == (0, 2, False)

    empty = compare_by_patient({"a": {0: 0.1}}, {"b": {0: 0.2}}, n_boot=N_BOOT)
    assert empty["n_patients"] == 0 and math.isnan(empty["p_value"]) and math.isnan(empty["ci_low"])


def test_compare_by_patient_names_monte_carlo_test():
    rng = np.random.default_rng(0)
    values, baseline = arms(rng.normal(0.0, 0.1, size=(20, 2)), rng)
    r = compare_by_patient(values, baseline, n_boot=N_BOOT)
    assert r["test"].startswith("Monte Carlo sign-flip permutation test over 20 patients")


# --- decide ---------------------------------------------------------------------------------


def test_decide_large_effect_helps():
    rng = np.random.default_rng(0)
    values, baseline = arms(0.1 + rng.normal(0.0, 0.02, size=(8, 3)), rng)
    r = decide({"synth": values}, baseline, n_boot=N_BOOT)["synth"]
    assert r["verdict"] == "helps"
    assert r["p_value"] == 2 / 256 and r["p_holm"] == r["p_value"]
    assert r["ci_level"] == 0.95 and 0 < r["ci_low"] < 0.1 < r["ci_high"]
    assert r["significant"] and r["agreement"] and r["consistent"]
    assert (r["n_patients"], r["n_seeds"], r["n_better"]) == (8, 3, 8)
    # The same numbers as a distance (lower is better) hurt.
    hurt = decide({"synth": values}, baseline, n_boot=N_BOOT, higher_is_better=False)["synth"]
    assert hurt["verdict"] == "hurts" and hurt["n_worse"] == 8


def test_decide_noise_and_no_change():
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 0.05, size=(12, 3))
    noise -= noise.mean(axis=1, keepdims=True).mean()  # zero mean effect exactly
    values, baseline = arms(noise, rng)
    same = {p: dict(s) for p, s in baseline.items()}
    out = decide({"noise": values, "same": same}, baseline, n_boot=N_BOOT)
    assert out["noise"]["verdict"] == "no significant difference"
    assert not out["noise"]["significant"] and out["noise"]["p_value"] > 0.5
    assert out["noise"]["ci_low"] < 0 < out["noise"]["ci_high"]
    assert out["same"]["p_value"] == 1.0 and out["same"]["p_holm"] == 1.0
    assert out["same"]["verdict"] == "no significant difference"
    assert out["same"]["ci_low"] == out["same"]["ci_high"] == 0.0
    assert not out["same"]["consistent"] and out["same"]["n_better"] == 0


def test_decide_too_few_patients():
    # 5 patients all better: the smallest two-sided p is 2/32 = 0.0625, so the test cannot
    # reject, while the percentile bootstrap interval lies above 0.
    rng = np.random.default_rng(0)
    values, baseline = arms(0.1 + rng.normal(0.0, 0.01, size=(5, 3)), rng)
    one_values, one_baseline = arms(np.full((1, 3), 0.3), rng)
    out = decide({"five": values}, baseline, n_boot=N_BOOT)
    r = out["five"]
    assert r["p_value"] == 0.0625 and r["ci_low"] > 0
    assert not r["agreement"] and not r["significant"] and r["consistent"]
    assert r["verdict"] == "no significant difference"
    assert r["reason"] == "test and bootstrap CI disagree (few patients or noisy seeds)"
    one = decide({"one": one_values}, one_baseline, n_boot=N_BOOT)["one"]
    assert one["verdict"] == "not measurable" and math.isnan(one["p_holm"])


def test_decide_test_rejects_but_interval_covers_zero():
    # Every patient's seed mean is +0.05 (sign-flip p = 2/2**10), but each patient's two
    # seeds are +1.05 and -0.95: the interval, which also resamples seeds, covers 0.
    diff = np.tile([1.05, -0.95], (10, 1)) + np.linspace(0, 0.01, 10)[:, None]
    values, baseline = arms(diff, np.random.default_rng(0))
    r = decide({"noisy": values}, baseline, n_boot=N_BOOT)["noisy"]
    assert r["p_holm"] == pytest.approx(2 / 1024) and r["significant"]
    assert r["ci_low"] < 0 < r["ci_high"]
    assert not r["agreement"] and r["verdict"] == "no significant difference"
    assert r["reason"] == "test and bootstrap CI disagree (few patients or noisy seeds)"


def test_decide_holm_family_levels():
    rng = np.random.default_rng(1)
    shifts = {"strong": 0.1, "weak": 0.01, "none": 0.0, "single": 0.2}
    base = rng.uniform(0.5, 0.9, size=(10, 3))
    baseline = as_metrics(base)
    strategies = {
        name: as_metrics(base + shift + rng.normal(0.0, 0.03, size=base.shape))
        for name, shift in shifts.items()
    }
    strategies["single"] = {"p0": strategies["single"]["p0"]}  # 1 patient: outside the family
    out = decide(strategies, baseline, n_boot=N_BOOT)
    family = ["strong", "weak", "none"]
    raw = [out[n]["p_value"] for n in family]
    assert [out[n]["p_holm"] for n in family] == holm(raw)
    assert all(out[n]["n_family"] == 3 for n in out)
    # rank i of m = 3 is shown at level 1 - alpha / (m - i + 1)
    for rank, i in enumerate(np.argsort(raw, kind="stable")):
        assert out[family[i]]["ci_level"] == pytest.approx(1 - 0.05 / (3 - rank))
    assert out["strong"]["verdict"] == "helps" and out["strong"]["ci_level"] == pytest.approx(1 - 0.05 / 3)
    assert out["single"]["verdict"] == "not measurable" and out["single"]["ci_level"] == 0.95
    # The Holm-level interval of the first-ranked strategy is wider than its 95 % one.
    plain = compare_by_patient(strategies["strong"], baseline, n_boot=N_BOOT)
    assert out["strong"]["ci_low"] < plain["ci_low"] and out["strong"]["ci_high"] > plain["ci_high"]


def test_decide_verdict_never_contradicts_interval():
    rng = np.random.default_rng(2024)
    seen: set[str] = set()
    disagreements = 0
    for _ in range(200):
        n_pat, n_seed = int(rng.integers(2, 13)), int(rng.integers(1, 5))
        higher = bool(rng.integers(0, 2))
        strategies, base = {}, rng.uniform(0.5, 0.9, size=(n_pat, n_seed))
        for k in range(int(rng.integers(1, 4))):
            diff = rng.normal(rng.choice([0.0, 0.02, -0.05, 0.1]), 0.05, size=(n_pat, 1))
            diff = diff + rng.normal(0.0, 0.03, size=(n_pat, n_seed))
            missing = rng.random((n_pat, n_seed)) < 0.15
            strategies[f"s{k}"] = as_metrics(np.where(missing, np.nan, base + diff))
        out = decide(strategies, as_metrics(base), n_boot=500, seed=int(rng.integers(1000)),
                     higher_is_better=higher)
        for r in out.values():
            seen.add(r["verdict"])
            lo, hi, v = r["ci_low"], r["ci_high"], r["verdict"]
            better_side = lo > 0 if higher else hi < 0
            worse_side = hi < 0 if higher else lo > 0
            if v == "helps":
                assert better_side and r["significant"] and r["agreement"]
            if v == "hurts":
                assert worse_side and r["significant"] and r["agreement"]
            if v == "no significant difference" and r["agreement"]:
                assert not r["significant"] and lo <= 0 <= hi
            if r["significant"] and r["agreement"]:
                assert (lo > 0) if r["mean_diff"] > 0 else (hi < 0)
                assert v in ("helps", "hurts")
            if not r["agreement"]:
                disagreements += 1
                assert v == "no significant difference"
    # the loop must have exercised every branch, or it proves nothing
    assert {"helps", "hurts", "no significant difference", "not measurable"} <= seen
    assert disagreements > 0
