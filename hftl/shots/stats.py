"""Summaries of repeated runs over seeds: mean, standard deviation, a t-based 95% confidence interval, and the
paired difference of two arms run on the same seeds.

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


def mean_sd(values: Sequence[float]) -> dict:
    """``mean`` and sample ``sd`` (0 for a single run) of the runs of one arm.

    Example:
        >>> mean_sd([0.5, 0.7])["sd"] > 0
        True
    """
    runs = np.asarray(values, dtype=np.float64)
    return {"mean": float(runs.mean()), "sd": float(runs.std(ddof=1)) if runs.size > 1 else 0.0}


def paired_difference(treated: Sequence[float], control: Sequence[float]) -> dict:
    """Per-seed differences of two arms run on the same seeds (in the same order): their mean and sd, and on how many
    seeds the treated arm was better.

    Example:
        >>> paired_difference([0.6, 0.7], [0.5, 0.8])["wins"]
        1
    """
    if len(treated) != len(control):
        raise ValueError(f"paired runs need the same seeds: {len(treated)} against {len(control)} runs")
    diffs = [float(a) - float(b) for a, b in zip(treated, control, strict=True)]
    return {"per_seed": diffs, **mean_sd(diffs), "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}
