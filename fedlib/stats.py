"""Paired comparisons across seeds: mean difference, 95 % t-interval and a verdict.

A claim "A > B" is judged on the per-seed differences d_s = metric(A, s) - metric(B, s):
holds when the 95 % t-interval of mean(d) lies above 0, does not hold when it lies below 0,
cannot tell otherwise (or with fewer than two seeds). "A ≈ B" holds when the interval lies inside
±EQUIV, does not hold when it excludes that band entirely.
"""
from __future__ import annotations

import numpy as np

SPREAD_TOL = 1e-12  # an interval narrower than this is a zero spread that float rounding left non-zero
EQUIV = 0.01       # "FedAvg ≈ FedSAM": the 95 % interval of the difference inside ±1 accuracy point


def interval(d: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences (nan interval for fewer than two)."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return float(d.mean()) if len(d) else float("nan"), float("nan"), float("nan")
    from scipy import stats     # here, not at the top: 0.7 s of import that most stages' kernels do not need

    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def verdict(lo: float, hi: float, n: int, equivalence: bool = False, margin: float = EQUIV) -> str:
    """Equivalence ("A ≈ B") within ±margin: the 95 % interval inside the band (two one-sided tests at 2.5 %)."""
    if n < 2 or np.isnan(lo):
        return f"cannot tell (n = {n})"
    if hi - lo <= SPREAD_TOL and not equivalence:   # no spread: equal differences (integer round counts; accuracy
        return f"cannot tell (no spread; n = {n})"    # gaps of whole test samples, equal up to float rounding)
    if equivalence:
        return "holds" if -margin <= lo and hi <= margin else ("does not hold" if lo > margin or hi < -margin
                                                               else f"cannot tell (n = {n})")
    return "holds" if lo > 0 else ("does not hold" if hi < 0 else f"cannot tell (n = {n})")


def interval_text(q: dict, unit: str = ".4f") -> str:
    """'mean [lo, hi]' of a paired difference; the mean alone at n = 1, a dash at n = 0."""
    if q["n"] == 0:
        return "—"
    return f"{q['mean']:+{unit}}" + (f" [{q['lo']:+{unit}}, {q['hi']:+{unit}}]" if q["n"] > 1 else "")


def paired(runs: dict, a: str, b: str, key) -> dict:
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    d = [key(runs[a][s][0]) - key(runs[b][s][0]) for s in seeds]
    mean, lo, hi = interval(d)
    return {"n": len(seeds), "mean": mean, "lo": lo, "hi": hi}
