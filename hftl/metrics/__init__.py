"""Metrics as ``evaluate`` modules that load offline: the modules here by name, else ``evaluate.load(name)``.

Example:
    >>> compute_metrics(["accuracy", "f1"], predictions=[0, 1, 1], references=[0, 1, 0])  # doctest: +SKIP
    {'accuracy': 0.666..., 'f1': 0.666...}
"""

from __future__ import annotations

import functools
from pathlib import Path

HERE = Path(__file__).parent


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


@functools.cache
def load_metric(name: str):
    """An evaluate module: hftl's own by name (offline), else evaluate.load (a path or the Hub)."""
    import evaluate

    local = HERE / f"{name}.py"
    return evaluate.load(str(local) if local.is_file() else name)


def compute_metrics(names: list[str], predictions, references) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        out.update(load_metric(name).compute(predictions=predictions, references=references))
    return {k: float(v) for k, v in out.items()}
