"""Few-shot methods that start from the zero-shot classifier: it is their prior, and the support set decides how far
they move from it.

The label prompts already give a classifier (``hftl.shots.zero_shot``); a few labelled examples should correct it,
not replace it. Two frozen-feature methods, for every zero-shot mechanism (text embeddings, NLI, CLIP/SigLIP, CLAP):

* ``zs_probe``: a linear head whose logits are ``s * zero_shot(x) + x @ dW.T + b``, trained by cross-entropy with an
  L2 penalty ``lam * (|dW|^2 + |b|^2)`` on the change: the zero-shot classifier as initialisation *and* as the centre
  of the penalty. With class embeddings as zero-shot weights this is a linear probe initialised at the prompt
  embeddings and pulled back towards them, as in WiSE-FT's zero-shot head (Wortsman et al., "Robust fine-tuning of
  zero-shot models", CVPR 2022), LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP",
  CVPR 2024) and CLAP (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
  Models", CVPR 2024: a penalty towards the zero-shot prototypes). The scale ``s`` is learned, may shrink to 0 or
  turn negative: where the prompts point the wrong way the support wins.
* ``zs_prototype``: class prototypes interpolated between the prompt embeddings and the support means,
  ``(1 - a) * prompt_c + a * mean_c`` (both centred over classes), scored by dot product with the normalized input:
  the training-free ensemble of Tip-Adapter (Zhang et al., ECCV 2022) and prototype rectification with text
  (ProtoCLIP-style; Snell et al. 2017 for prototypes). Where the zero-shot classifier has no class embeddings (NLI),
  the same interpolation is made between its class probabilities and the prototypes' scores.

The prior's weight (``lam``; ``a``) is chosen on the support set only, by leave-one-out (stratified
``shots.prior_folds``-fold cross-validation above that many examples): the strongest prior whose held-out accuracy
is within one standard error of the best one's (paired, McNemar's statistic; the one-standard-error rule of Breiman
et al. 1984 and Hastie, Tibshirani and Friedman, *The Elements of Statistical Learning*, sec. 7.10). So with no
support, or when the support cannot tell the settings apart, the method *is* the zero-shot classifier; when the
support disagrees with it clearly (a zero-shot classifier worse than chance on the support rows is not protected at
all), the support wins. The candidates run from the zero-shot classifier itself to (almost) the support alone.

Example:
    >>> prior = prior_from_weights(class_weights, train_features, query_features)  # doctest: +SKIP
    >>> ctx = ShotContext(train_features, train_labels, query_features, query_labels, 2, prior=prior)  # doctest: +SKIP
    >>> few_shot_curve(ctx, ShotsConfig(methods=["zs_probe", "zs_prototype"]))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hftl.config import ShotsConfig
from hftl.shots.fewshot import Prediction, ShotContext, class_means, register_method
from hftl.shots.zero_shot import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    class_prompts,
    dual_features,
    dual_text_weights,
)

PRIOR_METHODS = ("zs_probe", "zs_prototype", "zs_setfit")
# Penalty strengths of zs_probe, strongest prior first (inf: the zero-shot classifier itself).
PROBE_LAMBDAS = (math.inf, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003)
# Support weights of zs_prototype, prior first (0: the zero-shot classifier; 1: the support means alone).
PROTOTYPE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class ZeroShotPrior:
    """The zero-shot classifier, as few-shot methods see it.

    ``train_scores`` (N_train, classes) and ``query_scores`` (N_query, classes) are its scores on every row (rows
    never drawn into a support set may be NaN: NLI scores cost a forward pass per row and class). ``weights``
    (classes, width) are its class embeddings in the space of the frozen features (unit rows; None for NLI).
    """

    train_scores: torch.Tensor
    query_scores: torch.Tensor
    weights: torch.Tensor | None = None
    prompt_inputs: list | None = None  # encoded prompts (rows the context's collate takes), for zs_setfit
    prompt_labels: torch.Tensor | None = None  # class of each prompt row


def prior_from_weights(
    weights: torch.Tensor, train_features: torch.Tensor, query_features: torch.Tensor
) -> ZeroShotPrior:
    """The prior of an embedding zero-shot classifier: cosines of the features to the class embeddings.

    ``weights`` (classes, width): ``zero_shot.prompt_weights`` (text encoders) or ``zero_shot.dual_text_weights``
    (CLIP/SigLIP/CLAP), in the space of ``train_features`` / ``query_features`` (N, width).
    """
    w = F.normalize(weights.float(), dim=-1)
    score = lambda x: F.normalize(x.float(), dim=-1) @ w.T  # noqa: E731
    return ZeroShotPrior(score(train_features), score(query_features), w)


def text_prior(
    encode,
    tokenizer,
    labels: list[str],
    train_features: torch.Tensor,
    query_features: torch.Tensor,
    *,
    descriptions: dict | None = None,
    templates: list[str] | None = None,
    max_length: int = 128,
) -> ZeroShotPrior:
    """The prior of ``zero_shot_embedding`` (the same prompts, the same class embeddings), with the prompts
    tokenized as rows for ``zs_setfit``.

    ``encode``: texts -> embeddings (``hftl.shots.text_encoder`` of the model whose features are given).

    Example:
        >>> encode = text_encoder(model, tokenizer)  # doctest: +SKIP
        >>> prior = text_prior(encode, tokenizer, ["rotten", "fresh"], train_feats, test_feats)  # doctest: +SKIP
    """
    prompts = class_prompts(labels, descriptions, templates or DEFAULT_TEMPLATES["embedding"])
    prior = prior_from_weights(class_embeddings(encode, prompts), train_features, query_features)
    flat = [p for group in prompts for p in group]
    tokens = tokenizer(flat, truncation=True, max_length=max_length)
    prior.prompt_inputs = [{k: tokens[k][i] for k in tokens.keys()} for i in range(len(flat))]
    prior.prompt_labels = torch.tensor([c for c, group in enumerate(prompts) for _ in group])
    return prior


def nli_prior(score_texts, train_texts: list[str], rows: np.ndarray, query_scores: torch.Tensor) -> ZeroShotPrior:
    """The prior of ``zero_shot_nli``: its scores on the query, and on the train ``rows`` that support sets can draw
    (NaN elsewhere: each row costs a forward pass per prompt). ``score_texts``: texts -> (n, classes) scores."""
    train = torch.full((len(train_texts), query_scores.shape[1]), math.nan)
    rows = np.asarray(sorted(set(int(r) for r in rows)))
    if len(rows):
        train[torch.as_tensor(rows)] = score_texts([train_texts[int(r)] for r in rows]).float()
    return ZeroShotPrior(train, query_scores.float())


def dual_prior(
    model, tokenizer, train_inputs: dict, query_inputs: dict, labels: list[str], *, modality: str, **prompts
) -> tuple[torch.Tensor, torch.Tensor, ZeroShotPrior]:
    """CLIP/SigLIP (``modality="image"``) or CLAP (``"audio"``): the image/audio tower's features of the train and
    query inputs, and the prior of ``zero_shot_dual`` in that space (``prompts``: descriptions, templates).

    Example:
        >>> xt, xq, prior = dual_prior(clip, tok, pixels, pixels_q, ["cat", "dog"], modality="image")  # doctest: +SKIP
        >>> ctx = ShotContext(xt, train_labels, xq, test_labels, 2, prior=prior)  # doctest: +SKIP
    """
    weights = dual_text_weights(model, tokenizer, labels, modality=modality, **prompts)
    train = dual_features(model, train_inputs, modality=modality)
    query = dual_features(model, query_inputs, modality=modality)
    return train, query, prior_from_weights(weights, train, query)


def _prior(ctx: ShotContext, method: str) -> ZeroShotPrior:
    prior = getattr(ctx, "prior", None)
    if prior is None:
        raise ValueError(
            f"{method} needs the zero-shot classifier: build the ShotContext with prior=ZeroShotPrior(...) "
            "(the ladder does it when shots.zero_shot is not none)"
        )
    return prior


def support_folds(labels: torch.Tensor, max_folds: int) -> torch.Tensor:
    """Fold id of every support row: leave-one-out up to ``max_folds`` rows, else stratified folds.

    Classes are dealt round-robin, continuing across classes, so each fold holds at most one row more of a class
    than another fold.

    Example:
        >>> support_folds(torch.tensor([0, 0, 1, 1]), 16).tolist()
        [0, 1, 2, 3]
    """
    n = len(labels)
    folds = min(n, max_folds)
    out, start = torch.empty(n, dtype=torch.long), 0
    for cls in labels.unique():
        rows = (labels == cls).nonzero().flatten()
        out[rows] = (torch.arange(len(rows)) + start) % folds
        start += len(rows)
    return out


def one_se_choice(correct: torch.Tensor, chance: float = 0.5) -> int:
    """Index of the candidate to keep: the first one (strongest prior) that the best held-out candidate does not beat
    by more than one standard error.

    ``correct`` (candidates, rows): 1 where a candidate classified a held-out row right; candidate 0 is the zero-shot
    classifier. The same rows were held out for every candidate, so the comparison is paired: on the rows where the
    two differ, the best one's wins ``w`` and losses ``l`` give McNemar's statistic with continuity correction,
    ``(w - l - 1) / sqrt(w + l)`` (Dietterich 1998), kept below 1 (the one-standard-error rule). Two rows out of two
    are not evidence. A zero-shot classifier that is clearly *worse than chance* on the support rows (two standard
    errors below ``chance``) is not protected: the best candidate is taken.

    Example:
        >>> one_se_choice(torch.tensor([[0, 0], [1, 1]]))  # two rows more out of two: not evidence
        0
        >>> one_se_choice(torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))  # (2 - 0 - 1) / sqrt(2) < 1
        0
        >>> one_se_choice(torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))  # (3 - 0 - 1) / sqrt(3) > 1
        1
    """
    correct = correct.float()
    best = int(correct.mean(1).argmax())
    n = correct.shape[1]
    if float(correct[0].mean()) + 2 * math.sqrt(chance * (1 - chance) / n) <= chance:
        return best
    for i in range(best):
        wins = float((correct[best] * (1 - correct[i])).sum())  # rows only the best got right
        losses = float((correct[i] * (1 - correct[best])).sum())
        if wins + losses == 0 or (wins - losses - 1) / math.sqrt(wins + losses) <= 1:
            return i
    return best


# ---------------------------------------------------------------- zs_probe


def fit_prior_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    lams: torch.Tensor,
    row_weights: torch.Tensor,
    num_labels: int,
    iters: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit B heads at once: logits = s * z + x @ dW.T + b, mean weighted cross-entropy + lam * (|dW|^2 + |b|^2).

    ``x`` (n, width) standardized features, ``z`` (n, classes) standardized zero-shot scores (``_standardize``),
    ``lams`` (B,) finite penalties,
    ``row_weights`` (B, n) (0 leaves a row out: one fold each). The B problems are independent and convex; one
    L-BFGS run minimizes their sum. Returns ``s`` (B,), ``dW`` (B, classes, width), ``b`` (B, classes).
    """
    batch = len(lams)
    d_w = torch.zeros(batch, num_labels, x.shape[1], requires_grad=True)
    bias = torch.zeros(batch, num_labels, requires_grad=True)
    scale = torch.ones(batch, requires_grad=True)
    onehot = F.one_hot(y.long(), num_labels).float()
    rows = row_weights / row_weights.sum(1, keepdim=True).clamp(min=1)
    optimizer = torch.optim.LBFGS(
        [d_w, bias, scale], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        logits = head_logits(scale, d_w, bias, x, z)
        loss = (-(logits.log_softmax(-1) * onehot).sum(-1) * rows).sum()
        loss = loss + (lams * (d_w.pow(2).sum((1, 2)) + bias.pow(2).sum(1))).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return scale.detach(), d_w.detach(), bias.detach()


def head_logits(scale, d_w, bias, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, n, classes) logits of B prior heads on the same rows."""
    return scale[:, None, None] * z[None] + torch.einsum("bcd,nd->bnc", d_w, x) + bias[:, None, :]


def _standardize(x: torch.Tensor, z: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Support-set statistics applied to the support and to ``others`` (query features, query scores):

    features normalized, centred on the support's mean and scaled to unit mean norm (one penalty grid fits every
    encoder, and the bias no longer rides on the common direction that sentence embeddings share); zero-shot scores
    centred per row and scaled to unit spread (logits of about unit size: the scale ``s`` starts at 1).
    """
    unit = F.normalize(x.float(), dim=-1)
    centre = unit.mean(0, keepdim=True)
    size = (unit - centre).norm(dim=-1).mean().clamp(min=1e-6)
    rel = z.float() - z.float().mean(1, keepdim=True)
    spread = rel.std().clamp(min=1e-6) if rel.numel() > len(rel) else torch.tensor(1.0)
    out = [(unit - centre) / size, rel / spread]
    for xq, zq in zip(others[::2], others[1::2], strict=True):
        zq = zq.float() - zq.float().mean(1, keepdim=True)
        out += [(F.normalize(xq.float(), dim=-1) - centre) / size, zq / spread]
    return out


def _cv_probe(x, y, z, num_labels: int, folds: int) -> int:
    """Index into PROBE_LAMBDAS chosen by cross-validation on the support rows (x, y, z) alone."""
    fold = support_folds(y, folds)
    n_folds = int(fold.max()) + 1
    lams = [lam for lam in PROBE_LAMBDAS if math.isfinite(lam)]
    held = torch.zeros(len(PROBE_LAMBDAS), len(y), dtype=torch.bool)
    held[0] = z.argmax(-1) == y  # inf: the zero-shot classifier, no fit
    keep = (fold[None, :] != torch.arange(n_folds)[:, None]).float()  # (folds, n)
    row_weights = keep.repeat(len(lams), 1)
    lam_batch = torch.tensor(lams).repeat_interleave(n_folds)
    scale, d_w, bias = fit_prior_heads(x, y, z, lam_batch, row_weights, num_labels)
    pred = head_logits(scale, d_w, bias, x, z).argmax(-1).view(len(lams), n_folds, len(y))
    own = pred.gather(1, fold.view(1, 1, -1).expand(len(lams), 1, -1)).squeeze(1)  # each row by its own fold
    held[1:] = own == y
    return one_se_choice(held, 1 / num_labels)


@register_method("zs_probe")
def zs_probe(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """A linear head that starts at the zero-shot classifier and is held near it by an L2 penalty chosen on the
    support set (leave-one-out, one-standard-error rule): see the module docstring."""
    prior = _prior(ctx, "zs_probe")
    y, z = ctx.train_labels[support], prior.train_scores[support]
    if not torch.isfinite(z).all():
        raise ValueError("zs_probe: the prior has no zero-shot scores for some support rows")
    x, z, xq, zq = _standardize(ctx.train_features[support], z, ctx.query_features, prior.query_scores)
    lam = PROBE_LAMBDAS[_cv_probe(x, y, z, ctx.num_labels, cfg.prior_folds)]
    if math.isinf(lam):
        logits, query = z, zq
    else:
        scale, d_w, bias = fit_prior_heads(x, y, z, torch.tensor([lam]), torch.ones(1, len(y)), ctx.num_labels)
        logits, query = head_logits(scale, d_w, bias, x, z)[0], head_logits(scale, d_w, bias, xq, zq)[0]
    ctx.cache.setdefault("zs_probe_choices", []).append(lam)
    # the head's logits are the embedding the transductive refinement sees: the prior lives there, not in the
    # span of the support means
    return Prediction(query.softmax(-1), logits, query)


# ---------------------------------------------------------------- zs_prototype


def _centred(m: torch.Tensor) -> torch.Tensor:
    """Class vectors less their mean over classes: only the differences between classes classify. Not rescaled:
    prompts that hardly differ (a prior that says little) give a zero-shot part that hardly weighs."""
    return m - m.mean(0, keepdim=True)


def _prompt_part(prior: ZeroShotPrior, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(n, classes) zero-shot part of the interpolated scores: cosines of x to the centred class embeddings, or
    (NLI, no embeddings) the zero-shot class probabilities less their mean: numbers of the same size."""
    if prior.weights is not None:
        return x @ _centred(prior.weights.float()).T
    probs = z.float().softmax(-1)
    return probs - probs.mean(1, keepdim=True)


def _means(x: torch.Tensor, y: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Class means; a class absent from the rows gets the mean of the present ones (no pull either way)."""
    means = class_means(x, y, num_labels)
    present = torch.bincount(y.long(), minlength=num_labels) > 0
    means[~present] = means[present].mean(0)
    return _centred(means)


def _interpolated(alpha: float, zero: torch.Tensor, x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return (1 - alpha) * zero + alpha * (x @ means.T)


def _cv_prototype(prior, x, y, z, num_labels: int, folds: int) -> int:
    fold = support_folds(y, folds)
    zero = _prompt_part(prior, x, z)
    held = torch.zeros(len(PROTOTYPE_WEIGHTS), len(y), dtype=torch.bool)
    for f in range(int(fold.max()) + 1):
        out, keep = fold == f, fold != f
        means = _means(x[keep], y[keep], num_labels)
        for i, alpha in enumerate(PROTOTYPE_WEIGHTS):
            held[i, out] = _interpolated(alpha, zero[out], x[out], means).argmax(-1) == y[out]
    return one_se_choice(held, 1 / num_labels)


@register_method("zs_prototype")
def zs_prototype(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """Prototypes between the prompt embeddings and the support means, the weight chosen on the support set
    (leave-one-out, one-standard-error rule): see the module docstring."""
    prior = _prior(ctx, "zs_prototype")
    x = F.normalize(ctx.train_features[support].float(), dim=-1)
    y, z = ctx.train_labels[support], prior.train_scores[support].float()
    xq, zq = F.normalize(ctx.query_features.float(), dim=-1), prior.query_scores.float()
    alpha = PROTOTYPE_WEIGHTS[_cv_prototype(prior, x, y, z, ctx.num_labels, cfg.prior_folds)]
    means = _means(x, y, ctx.num_labels)
    scores = _interpolated(alpha, _prompt_part(prior, xq, zq), xq, means)
    ctx.cache.setdefault("zs_prototype_choices", []).append(alpha)
    scale = scores.std().clamp(min=1e-6)
    support_scores = _interpolated(alpha, _prompt_part(prior, x, z), x, means)
    return Prediction((scores / scale).softmax(-1), support_scores / scale, scores / scale)
