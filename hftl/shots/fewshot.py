"""Few-shot methods (a registry) and the curve: k examples per class, resampled support sets, mean and 95% CI.

Every method takes a ``ShotContext`` (frozen features computed once, the inputs, the frozen model), the row
indices of one support set and the ``ShotsConfig``, and returns a ``Prediction`` on the query split. Frozen
methods (``prototype``, ``probe``) only index the cached features: a whole ladder costs one backbone pass.

Example:
    >>> ctx = ShotContext(train_features, train_labels, query_features, query_labels, num_labels=2)  # doctest: +SKIP
    >>> curve = few_shot_curve(ctx, ShotsConfig(ks=[1, 4, 16], methods=["prototype", "probe"]))  # doctest: +SKIP
    >>> curve["inductive"]["probe"]["16"]["ci95"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hftl.config import ConfigError, ShotsConfig
from hftl.shots.stats import summarize
from hftl.shots.support import support_indices

log = logging.getLogger(__name__)
METHODS: dict[str, Callable] = {}
TEMPERATURE = 0.1  # of cosine-to-prototype softmaxes (probabilities only; argmax does not depend on it)


def register_method(name: str) -> Callable:
    """Add a few-shot method to ``METHODS`` under ``name`` (used as ``shots.methods: [name]``)."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = fn
        return fn

    return wrap


def check_methods(names: list[str]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"shots.methods has unknown methods {unknown}; choose from {sorted(METHODS)}")


@dataclass
class ShotContext:
    """What methods adapt on. Features are the frozen backbone's, rows in dataset order.

    ``model`` (an ``HftlForClassification``), ``train_inputs``/``query_inputs`` (encoded datasets) and ``collate``
    are needed only by methods that train the encoder (setfit, lora); they copy the model, never change it.
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    query_features: torch.Tensor
    query_labels: torch.Tensor
    num_labels: int
    model: torch.nn.Module | None = None
    train_inputs: object = None
    query_inputs: object = None
    collate: Callable | None = None
    batch_size: int = 128
    cache: dict = field(default_factory=dict, repr=False)  # per-context work shared by runs
    prior: object = None  # hftl.shots.prior.ZeroShotPrior: the zero-shot classifier, for zs_probe and zs_prototype


@dataclass
class Prediction:
    """Class probabilities on the query, and the embeddings they came from (for transductive refinement)."""

    probs: torch.Tensor
    support_embeddings: torch.Tensor
    query_embeddings: torch.Tensor


def class_means(x: torch.Tensor, y: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(classes, width) mean of the rows of each class."""
    onehot = F.one_hot(y.long(), num_labels).to(x.dtype)
    return (onehot.T @ x) / onehot.sum(0).clamp(min=1).unsqueeze(1)


def prototype_probs(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Softmax over cosines to the normalized class means of normalized support embeddings."""
    protos = F.normalize(class_means(F.normalize(xs, dim=-1), ys, num_labels), dim=-1)
    return (F.normalize(xq, dim=-1) @ protos.T / TEMPERATURE).softmax(-1)


def logistic_probs(
    xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, num_labels: int, c: float, seed: int = 0
) -> torch.Tensor:
    """A logistic-regression head (scikit-learn, L2) on normalized embeddings; probabilities for every class."""
    from sklearn.linear_model import LogisticRegression

    xs, xq = F.normalize(xs.float(), dim=-1).numpy(), F.normalize(xq.float(), dim=-1).numpy()
    head = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(xs, ys.numpy())
    probs = np.zeros((len(xq), num_labels))
    probs[:, head.classes_] = head.predict_proba(xq)
    return torch.as_tensor(probs, dtype=torch.float32)


@register_method("prototype")
def prototype(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """Nearest class mean of normalized frozen features (prototypical networks without meta-training)."""
    xs, ys = ctx.train_features[support], ctx.train_labels[support]
    return Prediction(prototype_probs(xs, ys, ctx.query_features, ctx.num_labels), xs, ctx.query_features)


@register_method("probe")
def probe(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """Logistic regression on the normalized frozen features of the support set."""
    xs, ys = ctx.train_features[support], ctx.train_labels[support]
    probs = logistic_probs(xs, ys, ctx.query_features, ctx.num_labels, cfg.probe_c, seed)
    return Prediction(probs, xs, ctx.query_features)


def soft_kmeans(
    xs: torch.Tensor,
    ys: torch.Tensor,
    xq: torch.Tensor,
    init: torch.Tensor,
    num_labels: int,
    steps: int = 10,
    variance: float = 0.5,
) -> torch.Tensor:
    """Transductive refinement: class centres re-estimated from the support plus the softly assigned query.

    Runs in the span of the class-mean differences (``classes - 1`` dimensions), centred on the query's mean and
    scaled by its spread: in the full embedding space the unlabelled query clusters by whatever varies most
    (topic, length), not by class, and soft k-means there collapses to one class. ``init`` (the method's own
    query probabilities) gives the first assignment; returns the refined query probabilities.

    Example:
        >>> probs = soft_kmeans(xs, ys, xq, prediction.probs, num_labels=2)  # doctest: +SKIP
    """
    xs, xq = F.normalize(xs.float(), dim=-1), F.normalize(xq.float(), dim=-1)
    centre = xq.mean(0, keepdim=True)
    xs, xq = xs - centre, xq - centre
    means = class_means(xs, ys, num_labels)
    basis = torch.linalg.qr((means - means.mean(0)).T)[0][:, : num_labels - 1]
    zs, zq = xs @ basis, xq @ basis
    scale = zq.std(0).clamp(min=1e-8)
    zs, zq = zs / scale, zq / scale
    onehot, probs = F.one_hot(ys.long(), num_labels).float(), init.float()
    for _ in range(steps):
        centres = (onehot.T @ zs + probs.T @ zq) / (onehot.sum(0) + probs.sum(0)).clamp(min=1e-6).unsqueeze(1)
        probs = (-(torch.cdist(zq, centres) ** 2) / (2 * variance)).softmax(-1)
    return probs


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels.long()).float().mean())


def _one_k(ctx: ShotContext, cfg: ShotsConfig, method: str, k: int, timer: dict) -> tuple[list, list]:
    inductive, transductive = [], []
    for seed in cfg.seeds:
        support = support_indices(ctx.train_labels.numpy(), k, seed)
        start = time.perf_counter()
        pred = METHODS[method](ctx, support, cfg, seed)
        inductive.append(accuracy(pred.probs, ctx.query_labels))
        timer["inductive"] += time.perf_counter() - start
        if cfg.transductive:
            start = time.perf_counter()
            refined = soft_kmeans(
                pred.support_embeddings, ctx.train_labels[support], pred.query_embeddings, pred.probs, ctx.num_labels
            )
            transductive.append(accuracy(refined, ctx.query_labels))
            timer["transductive"] += time.perf_counter() - start
    return inductive, transductive


def few_shot_curve(ctx: ShotContext, cfg: ShotsConfig, report: Callable[[str], None] = log.info) -> dict:
    """Accuracy of every method at every k over ``cfg.seeds`` support sets: ``{"inductive": {method: {k: summary}},
    "transductive": {...}, "seconds": {method: {"inductive": s, "transductive": s}}}``.

    A summary is ``{"mean", "std", "ci95": [lo, hi], "runs"}`` (``hftl.shots.summarize``). Transductive figures
    (``cfg.transductive``) use the unlabelled query inputs and are kept apart from the inductive ones.
    """
    check_methods(cfg.methods)
    out: dict = {"inductive": {}, "transductive": {}, "seconds": {}}
    for method in cfg.methods:
        timer = {"inductive": 0.0, "transductive": 0.0}
        for k in cfg.ks:
            inductive, transductive = _one_k(ctx, cfg, method, k, timer)
            out["inductive"].setdefault(method, {})[str(k)] = summarize(inductive)
            line = f"{method:>9} k={k:<3} {_fmt(out['inductive'][method][str(k)])}"
            if transductive:
                out["transductive"].setdefault(method, {})[str(k)] = summarize(transductive)
                line += f"   transductive {_fmt(out['transductive'][method][str(k)])}"
            report(line)
        out["seconds"][method] = timer
    if not cfg.transductive:
        del out["transductive"]
    return out


def _fmt(summary: dict) -> str:
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} (95% CI {lo:.3f}-{hi:.3f})"
