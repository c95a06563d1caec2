"""Paired statistics for "did this strategy beat the baseline?": one procedure, used by
the report for every verdict.

Patient-paired inference (`compare_by_patient`, `decide`)
---------------------------------------------------------
A segmentation metric is measured per *test patient*, and every strategy is scored on the
same test patients as the baseline, so the natural unit of replication is the patient:
the question is whether the strategy helps on patients like these. Training seeds are a
second, nested level: for each patient we have one strategy-minus-baseline difference per
seed that both arms trained.

* **Per-patient difference.** Pair on (patient, seed) present and finite in both arms,
  average the paired differences over that patient's seeds. Patients, not seed-patient
  cells, are the independent units; averaging first keeps a patient seen with more seeds
  from counting more.
* **Test.** `sign_flip_test`: under "no effect" each patient's difference is as likely
  to be +d as -d, so the null distribution of the mean is obtained by flipping signs. It
  is exact (all 2**n sign vectors) up to 16 patients and assumes no distribution shape.
  Note that with n patients the smallest two-sided p is 2 / 2**n: 5 patients can never
  reach p < 0.05.
* **Interval.** `hierarchical_bootstrap_ci` resamples patients, then each resampled
  patient's seeds, so the interval carries both between-patient and between-seed spread.
* **Family.** Several strategies against one baseline are one family of tests: `decide`
  adjusts their p-values with Holm's step-down method (`holm`) and shows, for the strategy
  whose raw p ranks i-th of m, the bootstrap interval at level 1 - alpha / (m - i + 1),
  the Holm threshold it is tested at, so the interval matches the adjusted test.
* **Agreement.** A verdict ("helps" / "hurts") needs both the adjusted test to reject
  and the interval to lie strictly on that side of 0; the shown interval can therefore
  never contradict the verdict. When the two disagree (typically a percentile bootstrap
  that is too narrow over few patients) the verdict is "no significant difference",
  `agreement` is False and `reason` says so.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value), NaNs dropped."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


PatientSeedMetrics = Mapping[Hashable, Mapping[Hashable, float | None]]
Alternative = Literal["two-sided", "greater", "less"]
_EXACT_MAX_N = 16  # 2**16 sign vectors x 16 patients: a few MB, milliseconds
_TIE_RTOL = 1e-12  # null means equal to the observed one up to rounding count as ties
_MAX_BATCH_ELEMENTS = 1 << 21  # bound on resampled values held at once (~16 MB of float64)

def sign_flip_test(
    diffs: Sequence[float] | np.ndarray,
    *,
    alternative: Alternative = "two-sided",
    n_resamples: int = 20_000,
    seed: int = 0,
) -> float:
    """Paired permutation (sign-flip) test of mean(diffs) == 0.

    Under the null each difference is symmetric about 0, so every sign vector is equally
    likely. Up to 16 differences all 2**n sign vectors are enumerated (exact p); above
    that `n_resamples` random sign vectors are drawn and p = (1 + #extreme) /
    (1 + n_resamples). Matches `scipy.stats.permutation_test((diffs,), np.mean,
    permutation_type="samples", alternative=alternative)`.

    Args:
        diffs: paired differences, one per unit (patient); must be finite.
        alternative: "two-sided" counts sign vectors with |mean| >= |observed mean|;
            "greater" / "less" count mean >= / <= the observed mean.
        n_resamples: Monte Carlo sign vectors when there are more than 16 differences.
        seed: seed of the Monte Carlo draw.

    Returns:
        The p-value; 1.0 when every difference is 0, NaN for no differences.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    d = np.asarray(diffs, float).ravel()
    if not np.all(np.isfinite(d)):
        raise ValueError("sign_flip_test needs finite differences; drop missing pairs first")
    n = len(d)
    if n == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    observed = float(d.mean())
    # Rounding in a sum of +-d scales with sum|d|, not with the (possibly tiny) observed mean.
    gamma = _TIE_RTOL * float(np.abs(d).mean())

    def n_extreme(signs: np.ndarray) -> int:
        null = signs @ d / n
        if alternative == "two-sided":
            hits = np.abs(null) >= abs(observed) - gamma
        elif alternative == "greater":
            hits = null >= observed - gamma
        else:
            hits = null <= observed + gamma
        return int(np.count_nonzero(hits))

    if n <= _EXACT_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        return n_extreme(1.0 - 2.0 * bits) / 2**n
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    batch = max(1, _MAX_BATCH_ELEMENTS // n)
    count = 0
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        count += n_extreme(1.0 - 2.0 * rng.integers(0, 2, size=(size, n)))
    return (1 + count) / (1 + n_resamples)


def _describe_test(n: int, n_resamples: int = 20_000) -> str:
    if n == 0:
        return "no paired values"
    if n <= _EXACT_MAX_N:
        return f"exact sign-flip permutation test over {n} patients"
    return f"Monte Carlo sign-flip permutation test over {n} patients ({n_resamples} resamples)"


def _hierarchical_replicates(table: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean over patients of the mean over seeds (see
    `hierarchical_bootstrap_ci`); empty when no patient has a finite value."""
    t = np.asarray(table, float)
    if t.ndim != 2:
        raise ValueError(f"table must be 2-D (patients x seeds), got shape {t.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    finite = np.isfinite(t)
    keep = finite.any(axis=1)
    t, finite = t[keep], finite[keep]
    n_pat, n_seed = t.shape
    if n_pat == 0:
        return np.empty(0)
    # Move each patient's finite values to the front of its row: values[p, :k[p]].
    order = np.argsort(~finite, axis=1, kind="stable")
    values = np.take_along_axis(t, order, axis=1)
    flat = values.ravel()
    k = finite.sum(axis=1)
    complete = bool(np.all(k == n_seed))
    rng = np.random.default_rng(seed)
    batch = max(1, _MAX_BATCH_ELEMENTS // (n_pat * n_seed))
    out = np.empty(n_boot)
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        patients = rng.integers(0, n_pat, size=(b, n_pat))
        kp = k[patients][..., None]  # (b, n_pat, 1)
        # floor(u * k) draws a seed slot uniformly from 0..k-1 from the same stream of
        # random numbers whatever k is; the minimum only guards against rounding up to k.
        u = rng.random((b, n_pat, n_seed), dtype=np.float32)
        slots = np.minimum((u * kp.astype(np.float32)).astype(np.intp), kp - 1)
        draws = flat[patients[..., None] * n_seed + slots]
        if not complete:
            draws[np.arange(n_seed) >= kp] = 0.0  # a patient with k seeds gets k draws
        out[start : start + b] = (draws.sum(axis=2) / kp[..., 0]).mean(axis=1)
    return out


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    if len(replicates) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(
    table: np.ndarray | Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-level percentile bootstrap CI of the mean paired difference.

    Each replicate resamples patients with replacement, then, within every resampled
    patient, that patient's seeds with replacement; it averages over seeds, then over
    patients. The interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of the
    replicates.

    Args:
        table: patients x seeds paired differences (strategy - baseline, same patient and
            seed). NaN marks a missing value: it is ignored within its patient, and a
            patient without any finite value is dropped.
        level: coverage, e.g. 0.95.
        n_boot: bootstrap replicates.
        seed: seed of the resampling; the result is deterministic for a given seed.

    Returns:
        (low, high); (NaN, NaN) when no patient has a finite value.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return _percentile_interval(_hierarchical_replicates(np.asarray(table, float), n_boot, seed), level)


def holm(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted
    value of p_(i) is max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where the
    adjusted p < alpha controls the family-wise error rate at alpha. NaN entries stay NaN
    and do not count in m.
    """
    p = np.asarray(pvalues, float).ravel()
    present = np.flatnonzero(~np.isnan(p))
    if np.any((p[present] < 0) | (p[present] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    out = np.full(p.shape, np.nan)
    m = len(present)
    order = present[np.argsort(p[present], kind="stable")]
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out.tolist()


def _holm_levels(pvalues: Sequence[float], alpha: float) -> list[float]:
    """Interval level matching each p-value's Holm threshold: 1 - alpha / (m - i + 1) for
    rank i of m. Tied p-values get the stricter level of the first of them, as their Holm
    adjusted p-values are equal too."""
    p = np.asarray(pvalues, float)
    first = np.searchsorted(np.sort(p), p, side="left")  # 0-based rank of the first tie
    return (1 - alpha / (len(p) - first)).tolist()


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _paired_table(
    values: PatientSeedMetrics, baseline: PatientSeedMetrics
) -> tuple[dict[Hashable, float], np.ndarray]:
    """Per-patient mean paired difference and the NaN-padded patients x seeds table of
    paired differences, in the patient order of `values`."""
    rows: dict[Hashable, list[float]] = {}
    for patient, by_seed in values.items():
        base = baseline.get(patient, {})
        d = [float(v) - float(base[s]) for s, v in by_seed.items() if _finite(v) and _finite(base.get(s))]
        if d:
            rows[patient] = d
    width = max((len(d) for d in rows.values()), default=0)
    table = np.full((len(rows), width), np.nan)
    for i, d in enumerate(rows.values()):
        table[i, : len(d)] = d
    return {p: float(np.mean(d)) for p, d in rows.items()}, table


def _summary(per_patient: dict[Hashable, float], table: np.ndarray, *, seed: int,
             higher_is_better: bool) -> dict[str, Any]:
    """The compare_by_patient keys that do not depend on the interval."""
    d = np.asarray(list(per_patient.values()), float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    sign = 1 if higher_is_better else -1
    return {
        "n_patients": n,
        "n_seeds": int(table.shape[1]),
        "mean_diff": mean,
        "per_patient": dict(per_patient),
        "p_value": sign_flip_test(d, seed=seed),
        "test": _describe_test(n),
        "better": bool(sign * mean > 0),
        "n_better": int(np.count_nonzero(sign * d > 0)),
        "n_worse": int(np.count_nonzero(sign * d < 0)),
        # Every patient moved the same way (and not all by zero): worth saying even when
        # too few patients make the test non-significant.
        "consistent": bool(n > 1 and (np.all(d > 0) or np.all(d < 0))),
    }


def compare_by_patient(
    values: PatientSeedMetrics,
    baseline: PatientSeedMetrics,
    *,
    alpha: float = 0.05,
    n_boot: int = 10_000,
    seed: int = 0,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """One strategy against the baseline, paired by test patient (and seed within patient).

    Pairs on (patient, seed) present and finite in both; a patient's difference is the
    mean over its paired seeds. No verdict: use `decide`, which also corrects for
    comparing several strategies.

    Args:
        values: the strategy's `{patient_id: {seed: metric}}`.
        baseline: the baseline's, same layout.
        alpha: the interval is at level 1 - alpha.
        n_boot: bootstrap replicates.
        seed: seed of the bootstrap (and of a Monte Carlo sign-flip test).
        higher_is_better: direction of the metric (False for HD95, error rates...).

    Returns:
        n_patients; n_seeds (most paired seeds of any patient); mean_diff (mean over
        patients of the per-patient mean, strategy - baseline); per_patient
        {patient: mean diff}; p_value (two-sided `sign_flip_test` over patients); test
        (its description); ci_low, ci_high, ci_level (`hierarchical_bootstrap_ci` at
        1 - alpha); better (mean_diff on the better side of 0); n_better / n_worse
        (patients on each side); consistent (every patient moved the same way).
    """
    per_patient, table = _paired_table(values, baseline)
    out = _summary(per_patient, table, seed=seed, higher_is_better=higher_is_better)
    lo, hi = hierarchical_bootstrap_ci(table, level=1 - alpha, n_boot=n_boot, seed=seed)
    return {**out, "ci_low": lo, "ci_high": hi, "ci_level": 1 - alpha}


def _verdict(r: dict[str, Any], alpha: float, higher_is_better: bool) -> dict[str, Any]:
    """verdict / significant / agreement / reason from p_holm and the shown interval."""
    rejects = bool(np.isfinite(r["p_holm"]) and r["p_holm"] < alpha)
    lo, hi = r["ci_low"], r["ci_high"]
    ci_side = 1 if lo > 0 else -1 if hi < 0 else 0  # side of 0 the interval lies on
    mean_side = int(np.sign(r["mean_diff"]))
    agreement = rejects == (ci_side != 0) and (ci_side == 0 or ci_side == mean_side)
    pct = f"{100 * r['ci_level']:.4g} % CI"
    if not agreement:
        verdict, reason = "no significant difference", "test and bootstrap CI disagree (few patients or noisy seeds)"
    elif not rejects:
        verdict = "no significant difference"
        reason = f"Holm-adjusted p = {r['p_holm']:.3g} >= {alpha:g} and the {pct} contains 0"
    else:
        verdict = "helps" if (ci_side > 0) == higher_is_better else "hurts"
        reason = f"Holm-adjusted p = {r['p_holm']:.3g} < {alpha:g} and the {pct} excludes 0"
    return {"verdict": verdict, "significant": rejects, "agreement": agreement, "reason": reason}


def decide(
    strategies: Mapping[str, PatientSeedMetrics],
    baseline: PatientSeedMetrics,
    *,
    alpha: float = 0.05,
    n_boot: int = 10_000,
    seed: int = 0,
    higher_is_better: bool = True,
) -> dict[str, dict[str, Any]]:
    """Verdicts for a family of strategies, each compared with the same baseline.

    Every strategy is compared as in `compare_by_patient`. The raw p-values of those with
    at least 2 patients form the family (m of them) and are Holm-adjusted. The strategy
    whose raw p ranks i-th (ascending) is shown with its hierarchical bootstrap interval
    at level 1 - alpha / (m - i + 1), its Holm threshold (m = 1: the ordinary 1 - alpha
    interval). The verdict is "helps" / "hurts" only when the adjusted p < alpha and the
    interval lies strictly on the better / worse side of 0; if only one of the two says
    "different", the verdict is "no significant difference" with agreement False. So the
    shown interval never contradicts the verdict.

    Args:
        strategies: `{name: {patient_id: {seed: metric}}}`.
        baseline: `{patient_id: {seed: metric}}`.
        alpha: family-wise error rate.
        n_boot: bootstrap replicates per strategy.
        seed: seed of the bootstraps (the same for every strategy).
        higher_is_better: direction of the metric.

    Returns:
        `{name: result}`; each result has the `compare_by_patient` keys (ci_low, ci_high,
        ci_level being the Holm-level interval) plus p_holm (NaN outside the family),
        n_family (m), verdict ("helps", "hurts", "no significant difference" or
        "not measurable" below 2 patients), significant (adjusted p < alpha), agreement
        (test and interval say the same) and reason.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tables: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, values in strategies.items():
        per_patient, tables[name] = _paired_table(values, baseline)
        results[name] = _summary(per_patient, tables[name], seed=seed, higher_is_better=higher_is_better)
    family = [n for n, r in results.items() if r["n_patients"] >= 2 and np.isfinite(r["p_value"])]
    raw = [results[n]["p_value"] for n in family]
    adjusted = dict(zip(family, holm(raw), strict=True))
    levels = dict(zip(family, _holm_levels(raw, alpha), strict=True))
    for name, r in results.items():
        level = levels.get(name, 1 - alpha)
        lo, hi = hierarchical_bootstrap_ci(tables[name], level=level, n_boot=n_boot, seed=seed)
        r.update(ci_low=lo, ci_high=hi, ci_level=level, p_holm=adjusted.get(name, float("nan")),
                 n_family=len(family))
        if name in adjusted:
            r.update(_verdict(r, alpha, higher_is_better))
        else:
            r.update(verdict="not measurable", significant=False, agreement=True,
                     reason=f"{r['n_patients']} patient(s) with paired values; need at least 2")
    return results
