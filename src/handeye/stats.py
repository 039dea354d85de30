"""Small statistics shared by the claims bands (handeye.claims) and the RL seed table (handeye.rl.table)."""

from __future__ import annotations

import math


def mean_sd(values: list[float]) -> tuple[float, float]:
    """-> (mean, sample standard deviation); values: at least 2."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile(p: float, dof: int) -> float:
    """The p quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy import stats  # scipy's import is slow; only the bands need it

    return float(stats.t.ppf(p, dof))
