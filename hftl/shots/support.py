"""Support sets: exactly k labelled examples per class, drawn by seed, nested across k.

For one seed each class's examples are shuffled once and the first k are kept, so the k=4 set of seed 0 lies
inside its k=8 set: the curve's steps differ by the added examples only, not by a new draw.

Example:
    >>> support_indices([0, 0, 0, 1, 1, 1], k=2, seed=0).tolist()  # doctest: +SKIP
    [0, 2, 3, 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def support_indices(labels: Sequence[int] | np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted row indices with exactly ``k`` rows of every class present in ``labels``."""
    labels = np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        if len(rows) < k:
            raise ValueError(f"class {cls} has {len(rows)} examples in the pool, fewer than k={k}")
        chosen.append(rng.permutation(rows)[:k])
    return np.sort(np.concatenate(chosen))
