"""``zs_setfit``: SetFit-style contrastive tuning of the encoder in which the label prompts are labelled examples too,
then the zero-shot classifier of the tuned encoder, interpolated with its support prototypes.

SetFit (Tunstall et al., "Efficient Few-Shot Learning Without Prompts", 2022) tunes a sentence encoder on pairs of
support examples and fits a new head: it throws the label names away and starts every class from nothing, so with
few examples it falls below the zero-shot classifier of the same encoder. Here the prompts (templates x label
descriptions, the zero-shot classifier's own inputs) join the support set as examples of their class in the pair
loss, as class names join the training texts in FLYP (Goyal et al., "Finetune like you pretrain", CVPR 2023) and in
label-name anchored contrastive tuning (e.g. PET's verbalizers, Schick and Schuetze, EACL 2021). The tuned encoder
then re-embeds the prompts: its zero-shot classifier is the head, no new weights, so one step of no tuning is exactly
the zero-shot classifier.

The prior's weight ``a`` (prompts against support means, as in ``zs_prototype``) is chosen before any tuning, by
leave-one-out on the frozen features of the support set (``hftl.shots.prior``), where no held-out row has been
trained on; where it says the prompts carry nothing (``a = 1``), the prompts stay out of the pair loss too and the
method is SetFit with a prototype head. A prompt whose text two classes share stays out of the pair loss. Text
encoders only (the prompts and the inputs share the encoder).

Example:
    >>> few_shot_curve(ctx, ShotsConfig(ks=[8, 16], methods=["zs_setfit"]))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hftl.config import ShotsConfig
from hftl.shots.fewshot import Prediction, ShotContext, class_means, register_method
from hftl.shots.prior import PROTOTYPE_WEIGHTS, _centred, _cv_prototype, _interpolated, _means, _prior
from hftl.shots.tuned import (
    _blocks,
    _embed_upper,
    _fresh_copy,
    _inputs,
    _mask,
    _optimizer,
    _query_lower,
    _step,
    embed,
    lower_states,
    pair_cosine_loss,
    top_cut,
    upper_features,
)


def distinct_prompts(prior) -> list[int]:
    """Indices of the prompt rows whose tokens no other class's prompt shares: the same text labelled with two
    classes (e.g. label names the tokenizer reads as unknown) would ask the pair loss for the impossible."""
    owners: dict[tuple, set] = {}
    for row, label in zip(prior.prompt_inputs, prior.prompt_labels.tolist(), strict=True):
        owners.setdefault(tuple(row["input_ids"]), set()).add(label)
    return [i for i, row in enumerate(prior.prompt_inputs) if len(owners[tuple(row["input_ids"])]) == 1]


def _rows(ctx: ShotContext, support: np.ndarray, prompts: list[int]) -> tuple[list[dict], torch.Tensor]:
    """Encoded rows (support, then the prompt rows ``prompts``) and their labels."""
    rows = [ctx.train_inputs[int(i)] for i in support] + [ctx.prior.prompt_inputs[i] for i in prompts]
    labels = torch.cat([ctx.train_labels[support].long(), ctx.prior.prompt_labels[prompts].long()])
    return [{k: v for k, v in r.items() if k not in ("label", "labels", "length")} for r in rows], labels


def _tuned_embeddings(ctx: ShotContext, rows: list[dict], labels: torch.Tensor, cfg: ShotsConfig, seed: int):
    """Tune a copy of the encoder on all pairs of ``rows``; return the tuned embeddings of ``rows`` and the query."""
    cut = top_cut(ctx, cfg.setfit_layers)
    query = _query_lower(ctx, cut) if cut else None
    model, device = _fresh_copy(ctx, np.arange(len(rows)), seed)
    model.requires_grad_(False)
    params = [p for b in _blocks(model)[cut:] for p in b.parameters()] if cut else list(model.backbone.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer, schedule = _optimizer(params, cfg.setfit_lr, cfg.setfit_steps)
    batch = _inputs(ctx.collate(rows), device)
    ys = labels.to(device)
    if cut:  # the frozen part once; each step runs the top blocks only
        hidden, mask = lower_states(model, batch, cut), _mask(batch)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.setfit_steps):
        pick = torch.as_tensor(rng.choice(len(rows), min(cfg.batch_size, len(rows)), replace=False))
        if cut:
            emb = upper_features(model, hidden[pick], mask[pick], cut)
        else:
            emb = model.features(**_inputs(ctx.collate([rows[int(i)] for i in pick]), device))
        _step(pair_cosine_loss(emb, ys[pick]), optimizer, schedule, params)
    if cut:
        return _embed_upper(model, [(torch.arange(len(rows)), hidden, mask)], cut), _embed_upper(model, query, cut)
    model.eval()
    with torch.no_grad():
        mine = model.features(**_inputs(ctx.collate(rows), device)).float().cpu()
    return mine, embed(model, ctx.query_inputs, ctx.collate, ctx.batch_size)


@register_method("zs_setfit")
def zs_setfit(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """Contrastive tuning on the support set and the label prompts, then the tuned zero-shot classifier interpolated
    with the tuned support means (weight chosen on the frozen support features): see the module docstring.

    Uses ``shots.setfit_steps``, ``setfit_lr``, ``setfit_layers`` and ``batch_size``; needs ``ctx.prior`` with
    ``prompt_inputs`` (``hftl.shots.prior.text_prior``) and the context's model, inputs and collate.
    """
    prior = _prior(ctx, "zs_setfit")
    if prior.prompt_inputs is None:
        raise ValueError(
            "zs_setfit tunes a text encoder on the label prompts: its prior needs prompt_inputs (hftl.shots.prior."
            "text_prior, shots.zero_shot=embedding); for NLI or CLIP/CLAP priors use zs_probe or zs_prototype"
        )
    x = F.normalize(ctx.train_features[support].float(), dim=-1)
    y, z = ctx.train_labels[support], prior.train_scores[support].float()
    alpha = PROTOTYPE_WEIGHTS[_cv_prototype(prior, x, y, z, ctx.num_labels, cfg.prior_folds)]
    prompts = distinct_prompts(prior) if alpha < 1 else []
    rows, labels = _rows(ctx, support, prompts)
    tuned, xq = _tuned_embeddings(ctx, rows, labels, cfg, seed)
    tuned, xq = F.normalize(tuned, dim=-1), F.normalize(xq, dim=-1)
    xs = tuned[: len(support)]
    means = _means(xs, y, ctx.num_labels)
    if prompts:  # the tuned encoder's own zero-shot classifier: its embeddings of the prompts
        weights = F.normalize(class_means(tuned[len(support) :], labels[len(support) :], ctx.num_labels), dim=-1)
        zero_q, zero_s = xq @ _centred(weights).T, xs @ _centred(weights).T
    else:
        zero_q, zero_s = torch.zeros(len(xq), ctx.num_labels), torch.zeros(len(xs), ctx.num_labels)
    scores, support_scores = _interpolated(alpha, zero_q, xq, means), _interpolated(alpha, zero_s, xs, means)
    ctx.cache.setdefault("zs_setfit_choices", []).append(alpha)
    scale = scores.std().clamp(min=1e-6)
    return Prediction((scores / scale).softmax(-1), support_scores / scale, scores / scale)
