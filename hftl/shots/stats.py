"""Summaries of repeated few-shot runs: mean, standard deviation and a t-based 95% confidence interval.

Example:
    >>> s = summarize([0.5, 0.6, 0.7])
    >>> round(s["mean"], 3), round(s["std"], 3), [round(v, 3) for v in s["ci95"]]
    (0.6, 0.1, [0.352, 0.848])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t distribution (scipy, which scikit-learn brings)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def summarize(values: Sequence[float]) -> dict:
    """``mean``, sample ``std`` (ddof=1), ``ci95`` = mean -/+ t(0.975, n-1) * std / sqrt(n), the ``runs`` themselves.

    Needs at least two runs: one run says nothing about the spread.
    """
    runs = np.asarray(values, dtype=np.float64)
    if runs.size < 2:
        raise ValueError(f"a confidence interval needs at least 2 runs, got {runs.size}")
    mean, std = float(runs.mean()), float(runs.std(ddof=1))
    half = t_quantile(0.975, runs.size - 1) * std / math.sqrt(runs.size)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "runs": runs.tolist()}
