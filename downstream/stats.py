"""Paired statistics for "did this strategy beat the baseline?".

Runs are paired by (budget, seed): the same labelled patients and the same network
initialisation, with and without the strategy's extra data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value), NaNs dropped."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def bootstrap_ci(
    diffs: Sequence[float], *, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean paired difference."""
    d = np.asarray(diffs, float)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test for n >= 6 pairs, a paired t-test below that (the
    Wilcoxon test cannot reach p < 0.05 with fewer than 6 pairs). All-equal pairs give
    p = 1."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    d = x - y
    n = len(d)
    if n < 2:
        return {"test": "none (fewer than 2 pairs)", "statistic": float("nan"), "p_value": float("nan"), "n": n}
    if np.allclose(d, 0):
        return {"test": "all differences zero", "statistic": 0.0, "p_value": 1.0, "n": n}
    if n >= 6:
        r = stats.wilcoxon(x, y)
        return {"test": "Wilcoxon signed-rank", "statistic": float(r.statistic), "p_value": float(r.pvalue), "n": n}
    r = stats.ttest_rel(x, y)
    return {"test": "paired t-test", "statistic": float(r.statistic), "p_value": float(r.pvalue), "n": n}


def summarise_paired(
    values: Sequence[float], baseline: Sequence[float], *, alpha: float = 0.05, seed: int = 0,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Mean difference to the baseline with its bootstrap CI, paired test and a verdict."""
    pairs = [(v, b) for v, b in zip(values, baseline, strict=True) if np.isfinite(v) and np.isfinite(b)]
    if not pairs:
        return {"n": 0, "mean_diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "p_value": float("nan"), "test": "no paired values", "verdict": "not measurable"}
    v, b = map(np.asarray, zip(*pairs, strict=True))
    d = v - b
    lo, hi = bootstrap_ci(d, alpha=alpha, seed=seed)
    test = paired_test(v, b)
    p = test["p_value"]
    significant = bool(np.isfinite(p) and p < alpha)
    better = d.mean() > 0 if higher_is_better else d.mean() < 0
    if not significant:
        verdict = "no significant difference"
    else:
        verdict = "helps" if better else "hurts"
    # Every pair moved the same way (and not all by zero): worth saying even when too few
    # pairs make the test non-significant.
    consistent = bool(len(d) > 1 and not np.allclose(d, 0) and (np.all(d > 0) or np.all(d < 0)))
    return {"n": len(d), "mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": p,
            "test": test["test"], "significant": significant, "verdict": verdict, "consistent": consistent,
            "better": bool(better)}
