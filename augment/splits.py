"""Patient-level splits and label budgets: no patient in two parts, budgets nested."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from augment.errors import DataError


def split_by_patient(
    patient_ids: Sequence[str],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[int]]:
    """Indices per split, with every slice of a patient in exactly one split.

    Patients are shuffled with ``seed`` and cut by ``fractions`` (normalised); each
    split with a non-zero fraction gets at least one patient when there are enough.
    """
    if len(fractions) != len(names):
        raise ValueError("fractions and names differ in length")
    patients = sorted(set(patient_ids))
    if len(patients) < sum(f > 0 for f in fractions):
        raise DataError(
            f"{len(patients)} patients cannot be split into {len(names)} non-empty parts"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    total = float(sum(fractions))
    counts = [int(round(f / total * len(patients))) for f in fractions]
    for i, f in enumerate(fractions):  # every wanted split gets a patient
        if f > 0 and counts[i] == 0:
            counts[i] = 1
    while sum(counts) > len(patients):
        counts[int(np.argmax(counts))] -= 1
    counts[0] += len(patients) - sum(counts)
    assignment: dict[str, str] = {}
    start = 0
    for name, c in zip(names, counts, strict=True):
        for p in shuffled[start : start + c]:
            assignment[p] = name
        start += c
    out: dict[str, list[int]] = {name: [] for name in names}
    for i, p in enumerate(patient_ids):
        out[assignment[p]].append(i)
    return out


def budget_patients(patient_ids: Sequence[str], k: int, *, seed: int = 0) -> list[str]:
    """``k`` patients drawn with ``seed`` (a label budget: "k labelled patients").

    Nested: the patients of budget k are a subset of those of budget k' > k for the
    same seed, so curves over budgets compare like with like.
    """
    patients = sorted(set(patient_ids))
    if k > len(patients):
        raise DataError(f"label budget {k} exceeds the {len(patients)} training patients")
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order[:k]]
