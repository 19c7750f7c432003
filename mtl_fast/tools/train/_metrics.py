"""Δm, the multi-task performance relative to single-task baselines."""

from __future__ import annotations

from collections.abc import Sequence

SIGN_CONVENTION = (
    "Δm = (1/T) Σ_t (−1)^{l_t} (M_t − B_t)/B_t · 100 with l_t = 1 when higher is better: "
    "lower is better, negative means better than the single-task baselines "
    "(Elich et al.'s convention; Jeong & Yoon report the opposite sign)"
)


def delta_m(
    metrics: Sequence[float], baselines: Sequence[float], higher_is_better: Sequence[bool]
) -> float:
    """Δm in percent: (1/T) Σ_t (−1)^{l_t} (M_t − B_t) / B_t · 100, lower is better.

    Args:
        metrics: M_t of the multi-task model.
        baselines: B_t of the single-task models (non-zero).
        higher_is_better: l_t = 1 for metrics where higher is better.

    Example:
        >>> delta_m([0.5, 1.0], [1.0, 1.0], [True, False])   # 50 % worse on task 0
        25.0
    """
    if not (len(metrics) == len(baselines) == len(higher_is_better)) or not metrics:
        raise ValueError("metrics, baselines and higher_is_better must have the same length ≥ 1")
    total = 0.0
    for m, b, hib in zip(metrics, baselines, higher_is_better):
        if b == 0:
            raise ValueError("a baseline metric is 0: Δm is undefined")
        rel = (m - b) / b
        total += -rel if hib else rel
    return 100.0 * total / len(metrics)
