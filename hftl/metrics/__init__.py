"""Metrics as ``evaluate`` modules: hftl's own by name (they load offline), an installed module by its dotted name
(``package.module``, holding an ``evaluate.Metric`` subclass), and, only with ``model.trust_remote_code=true``,
a ``.py`` file, a folder or a Hub metric id (``evaluate.load`` runs their code, downloading it for a Hub id).

``check_metrics`` runs before any compute: it refuses code the config did not allow, loads every metric, computes it
once on a two-example dummy to learn the keys evaluation will report, and checks ``train.metric_for_best`` among them.

Example:
    >>> compute_metrics(["accuracy", "f1"], predictions=[0, 1, 1], references=[0, 1, 0])  # doctest: +SKIP
    {'accuracy': 0.666..., 'f1': 0.666...}
    >>> check_metrics(["accuracy", "f1"], "f1")  # doctest: +SKIP
    ['accuracy', 'f1', 'loss']
"""

from __future__ import annotations

import difflib
import functools
import importlib
from pathlib import Path

from hftl.config import ConfigError

HERE = Path(__file__).parent
ALWAYS = ("loss",)  # train.evaluate adds the cross-entropy to every metric's keys
_DUMMY = {"predictions": [0, 1], "references": [0, 1]}  # class ids, as evaluation passes them


def available() -> list[str]:
    """Names of hftl's own metric modules (``hftl/metrics/*.py``)."""
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def metric_source(name: str) -> str:
    """Where a metric name's code comes from: ``hftl`` (its own modules), ``installed`` (a dotted module name that
    is not a path) or ``code`` (a .py file, a folder or a Hub id: code from outside the installed packages)."""
    if name in available():
        return "hftl"
    if "." in name and "/" not in name and not name.endswith(".py") and not Path(name).exists():
        return "installed"
    return "code"


def _installed_metric(name: str):
    """The ``evaluate.Metric`` subclass defined in an installed module, instantiated."""
    import evaluate

    module = importlib.import_module(name)
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, evaluate.Metric)
             and v.__module__ == module.__name__]
    if len(found) != 1:
        raise ImportError(f"module {name} defines {len(found)} evaluate.Metric subclasses (one is needed)")
    return found[0]()


@functools.cache
def load_metric(name: str):
    """An evaluate module: hftl's own by name (offline), an installed module's Metric, else ``evaluate.load(name)``
    (a .py file or folder, or a Hub id: their code runs). Library callers choose what runs; the recipes call
    ``check_metrics`` first, which refuses code that ``model.trust_remote_code`` did not allow."""
    source = metric_source(name)
    if source == "installed":
        return _installed_metric(name)
    import evaluate

    return evaluate.load(str(HERE / f"{name}.py") if source == "hftl" else name)


def compute_metrics(names: list[str], predictions, references) -> dict[str, float]:
    """Every metric on the same predictions; one flat dict of floats (keys from each metric)."""
    out: dict[str, float] = {}
    for name in names:
        out.update(load_metric(name).compute(predictions=predictions, references=references))
    return {k: float(v) for k, v in out.items()}


def _valid(key: str) -> str:
    return (f"hftl's own {available()}, an installed module (package.module), or with model.trust_remote_code=true "
            f"a .py file, a folder or a Hub metric id; {key} is set in eval.metrics")


def _refuse_code(name: str, key: str) -> None:
    kind = "a metric file or folder" if Path(name).exists() or name.endswith(".py") else "a Hub metric id"
    close = difflib.get_close_matches(name, available(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"{key} has {name!r}{hint}: not one of hftl's metrics {available()}, and as {kind} its code would run "
        f"when loaded; set model.trust_remote_code=true to allow that, or use one of hftl's metrics"
    )


def _metric_keys(name: str, key: str) -> list[str]:
    """Load one metric and compute it on the dummy: the keys it reports. ConfigError names what failed."""
    try:
        metric = load_metric(name)
    except Exception as err:  # noqa: BLE001 - evaluate raises many kinds (FileNotFoundError offline, ImportError...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key} has {name!r}, which does not load ({reason}); valid: {_valid(key)}") from err
    try:
        scores = metric.compute(**_DUMMY)
        return sorted({k: float(v) for k, v in (scores or {}).items()})
    except Exception as err:  # noqa: BLE001 - the user's metric code: any failure would recur at evaluation
        raise ConfigError(f"{key} has {name!r}, which fails on predicted and true class ids "
                          f"(predictions=[0, 1], references=[0, 1], one number per key expected): {err}") from err


def check_metrics(names: list[str], metric_for_best: str, *, trust_remote_code: bool = False,
                  key: str = "eval.metrics") -> list[str]:
    """Check the metrics of a run before compute; return the keys evaluation reports (``loss`` included).

    Each metric is loaded and computed once on two dummy class ids (cheap), which also proves it runs.
    Raises ConfigError for: an empty list; a .py file, folder or Hub id without ``trust_remote_code`` (their code
    would run, checked before anything loads); a metric that does not load or compute; a ``metric_for_best`` that
    none of them reports.

    Example:
        >>> check_metrics(["accuracy"], "f1")  # doctest: +SKIP
        ConfigError: train.metric_for_best='f1' is not computed: ...
    """
    names = list(names)
    if not names:
        raise ConfigError(f"{key} is empty: list at least one metric, e.g. [accuracy, f1] (hftl's own: "
                          f"{available()})")
    if not trust_remote_code:
        for name in names:
            if metric_source(name) == "code":
                _refuse_code(name, key)
    keys = sorted({k for name in names for k in _metric_keys(name, key)} | set(ALWAYS))
    if metric_for_best not in keys and metric_for_best != "auto":  # auto picks among the keys (hftl.tasks)
        raise ConfigError(
            f"train.metric_for_best={metric_for_best!r} is not computed: evaluation reports {keys} (from "
            f"{key}={names} and the loss); set train.metric_for_best to one of them, or add its metric to {key}"
        )
    return keys
