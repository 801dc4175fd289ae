"""Few-shot methods that train the encoder on the support set: ``setfit`` (contrastive) and ``lora`` (peft).

``setfit`` is SetFit's recipe (cosine-similarity loss on pairs of support examples, then a logistic-regression
head on the tuned embeddings), made cheaper: each step encodes the support batch once and takes the loss over
*every* pair in it (positives and negatives weighted equally, as SetFit's oversampling does) instead of encoding
two sentences per pair, so 10 steps see every pair 10 times. Optionally (``shots.setfit_layers`` > 0) only the top
blocks train and the blocks below run once per input: once for the whole query split, shared by every k and seed.
The cut is checked against the whole model on a sample batch; where it does not reproduce it, every block trains.
(MiniLM on Rotten Tomatoes, validation, 5 seeds: all blocks 0.612 / 0.661 at k = 8 / 16; top 4 of 6 blocks 0.610 /
0.648 in 0.6x the time.)
``lora`` trains LoRA adapters and a prototype-initialised head on the support set.

Example:
    >>> curve = few_shot_curve(ctx, ShotsConfig(ks=[8, 16], methods=["setfit"]))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hftl.config import ShotsConfig, StrategyConfig
from hftl.data import LengthGroupedBatches
from hftl.shots.fewshot import Prediction, ShotContext, class_means, logistic_probs, register_method


def _inputs(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items() if k not in ("labels", "length")}


@torch.no_grad()
def embed(model, ds, collate, batch_size: int = 128) -> torch.Tensor:
    """``model.features`` of every row of an encoded dataset, in dataset order (batches sorted by length)."""
    device = next(model.parameters()).device
    model.eval()
    lengths = ds["length"] if "length" in ds.column_names else [0] * len(ds)
    batches = LengthGroupedBatches(lengths, batch_size, shuffle=False, group="length" in ds.column_names)
    feats = [
        model.features(**_inputs(b, device)).float().cpu()
        for b in DataLoader(ds, batch_sampler=batches, collate_fn=collate)
    ]
    order = torch.as_tensor([i for batch in batches for i in batch])
    return torch.cat(feats)[order.argsort()]


def pair_cosine_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over every pair of a batch: MSE of cos(u, v) to 1 (same class) or 0.

    Positive and negative pairs count half each, as SetFit's oversampling balances them.

    Example:
        >>> pair_cosine_loss(torch.eye(2), torch.tensor([0, 1]))
        tensor(0.)
    """
    z = F.normalize(embeddings.float(), dim=-1)
    sim = z @ z.T
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    losses = []
    for mask, target in ((same & upper, 1.0), (~same & upper, 0.0)):
        if mask.any():
            losses.append(((sim[mask] - target) ** 2).mean())
    return torch.stack(losses).mean()


def _support_batches(ctx: ShotContext, support: np.ndarray, batch_size: int, steps: int, seed: int):
    """``steps`` collated batches of the support set: all of it when it fits, else random subsets."""
    rows = [ctx.train_inputs[int(i)] for i in support]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = range(len(rows)) if len(rows) <= batch_size else rng.choice(len(rows), batch_size, replace=False)
        yield ctx.collate([rows[i] for i in pick])


def _optimizer(params, lr: float, steps: int) -> tuple:
    """AdamW with SetFit's schedule: 10% linear warmup, then linear decay to zero."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    warmup = max(1, math.ceil(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    return optimizer, schedule


def _step(loss: torch.Tensor, optimizer, schedule, params) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(method: str, lr: float, seed: int, *tensors: torch.Tensor) -> None:
    """Support-set training that blew up leaves NaN embeddings, and an argmax over NaN picks class 0: a wrong
    accuracy that looks plausible. Stop with TrainingDiverged instead (checked once per run, not per step)."""
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        from hftl.train import TrainingDiverged

        raise TrainingDiverged(f"shots.methods {method}: training on the support set (seed {seed}) diverged to "
                               f"non-finite outputs; lower shots.{method}_lr (now {lr:g})")


def _fresh_copy(ctx: ShotContext, support: np.ndarray, seed: int):
    if ctx.model is None or ctx.train_inputs is None or ctx.collate is None:
        raise ValueError("this method trains the encoder: the ShotContext needs model, train_inputs and collate")
    torch.manual_seed(seed * 1_000_003 + len(support))
    model = copy.deepcopy(ctx.model)
    model.train()
    return model, next(model.parameters()).device


def _blocks(model) -> torch.nn.ModuleList:
    from hftl.strategies import find_layers

    return find_layers(model.backbone)[1]


def _run_blocks(model, hidden: torch.Tensor, attention_mask: torch.Tensor, blocks) -> torch.Tensor:
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=model.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for block in blocks:
        out = block(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _mask(batch: dict) -> torch.Tensor:
    """The batch's attention mask; the collator leaves out one that masks nothing."""
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"]) if mask is None else mask


@torch.no_grad()
def lower_states(model, batch: dict, cut: int) -> torch.Tensor:
    """Hidden states after the embeddings and the first ``cut`` blocks (the frozen part)."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids") if k in batch}
    return _run_blocks(model, model.backbone.embeddings(**inputs), _mask(batch), _blocks(model)[:cut])


def upper_features(model, hidden: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
    """The blocks from ``cut`` on, then the model's pooling: equals ``model.features`` on the same inputs."""
    from hftl.modeling import pool

    hidden = _run_blocks(model, hidden, attention_mask, _blocks(model)[cut:])
    return pool(hidden, attention_mask, None, model.config.pooling)


def top_cut(ctx: ShotContext, layers: int) -> int:
    """Index of the first trained block, when cutting there reproduces ``model.features``; 0 (all train) if not."""
    key = ("cut", layers)
    if key not in ctx.cache:
        ctx.cache[key] = 0
        model, n = ctx.model, len(_blocks(ctx.model))
        if 0 < layers < n and model.config.pooling != "pooler" and hasattr(model.backbone, "embeddings"):
            batch = _inputs(
                ctx.collate([ctx.query_inputs[i] for i in range(min(4, len(ctx.query_inputs)))]),
                next(model.parameters()).device,
            )
            try:
                model.eval()
                with torch.no_grad():
                    split = upper_features(
                        model, lower_states(model, batch, n - layers), _mask(batch), n - layers
                    )
                    ctx.cache[key] = n - layers if torch.allclose(split, model.features(**batch), atol=1e-4) else 0
            except (TypeError, ValueError, AttributeError, RuntimeError):  # a family whose blocks take other inputs
                pass
    return ctx.cache[key]


def _lower_batches(model, ds, collate, cut: int, batch_size: int) -> list[tuple]:
    """(rows, lower hidden states, attention mask) per length-sorted batch of a dataset."""
    device = next(model.parameters()).device
    lengths = ds["length"] if "length" in ds.column_names else [0] * len(ds)
    batches = LengthGroupedBatches(lengths, batch_size, shuffle=False, group="length" in ds.column_names)
    out = []
    for rows, batch in zip(batches, DataLoader(ds, batch_sampler=batches, collate_fn=collate), strict=True):
        batch = _inputs(batch, device)
        out.append((torch.as_tensor(rows), lower_states(model, batch, cut), _mask(batch)))
    return out


@torch.no_grad()
def _embed_upper(model, parts: list[tuple], cut: int) -> torch.Tensor:
    model.eval()
    feats = torch.cat([upper_features(model, hidden, mask, cut).float().cpu() for _, hidden, mask in parts])
    rows = torch.cat([r for r, _, _ in parts])
    return feats[rows.argsort()]


def _query_lower(ctx: ShotContext, cut: int) -> list[tuple]:
    """The query split's lower hidden states: computed once, shared by every k, seed and method run."""
    if ("query_lower", cut) not in ctx.cache:
        ctx.cache[("query_lower", cut)] = _lower_batches(ctx.model, ctx.query_inputs, ctx.collate, cut, ctx.batch_size)
    return ctx.cache[("query_lower", cut)]


@register_method("setfit")
def setfit(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """Contrastive fine-tuning of the encoder on support pairs, then logistic regression on its embeddings."""
    cut = top_cut(ctx, cfg.setfit_layers)
    query = _query_lower(ctx, cut) if cut else None
    model, device = _fresh_copy(ctx, support, seed)
    model.requires_grad_(False)
    params = (
        [p for block in _blocks(model)[cut:] for p in block.parameters()] if cut else list(model.backbone.parameters())
    )
    for p in params:
        p.requires_grad_(True)
    optimizer, schedule = _optimizer(params, cfg.setfit_lr, cfg.setfit_steps)
    ys = ctx.train_labels[support].to(device)
    if cut:  # the support's frozen part, once; each step runs the top blocks only
        sup = _inputs(ctx.collate([ctx.train_inputs[int(i)] for i in support]), device)
        hidden, mask = lower_states(model, sup, cut), _mask(sup)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.setfit_steps):
        pick = torch.as_tensor(rng.choice(len(support), min(cfg.batch_size, len(support)), replace=False))
        if cut:
            emb = upper_features(model, hidden[pick], mask[pick], cut)
        else:
            emb = model.features(**_inputs(ctx.collate([ctx.train_inputs[int(support[i])] for i in pick]), device))
        _step(pair_cosine_loss(emb, ys[pick]), optimizer, schedule, params)
    if cut:
        xs = _embed_upper(model, [(torch.arange(len(support)), hidden, mask)], cut)
        xq = _embed_upper(model, query, cut)
    else:
        xs = embed(model, ctx.train_inputs.select(support), ctx.collate, ctx.batch_size)
        xq = embed(model, ctx.query_inputs, ctx.collate, ctx.batch_size)
    _check_finite("setfit", cfg.setfit_lr, seed, xs, xq)
    probs = logistic_probs(xs, ctx.train_labels[support], xq, ctx.num_labels, cfg.probe_c, seed)
    return Prediction(probs, xs, xq)


def _prototype_head(model, xs: torch.Tensor, ys: torch.Tensor, num_labels: int) -> None:
    """Start the linear head at the class means (cosine-like logits): few labels then move it the right way."""
    linear = model.head[-1]
    if linear.in_features != xs.shape[1]:  # a head with hidden layers keeps its random start
        return
    scale = 10.0 / xs.norm(dim=-1).mean()
    with torch.no_grad():
        linear.weight.copy_(F.normalize(class_means(xs, ys, num_labels), dim=-1) * scale)
        linear.bias.zero_()


@register_method("lora")
def lora(ctx: ShotContext, support: np.ndarray, cfg: ShotsConfig, seed: int) -> Prediction:
    """LoRA adapters (``shots.lora``: peft arguments) and the head trained on the support set by cross-entropy."""
    from hftl.strategies import apply_strategy

    model, device = _fresh_copy(ctx, support, seed)
    _prototype_head(model, ctx.train_features[support], ctx.train_labels[support], ctx.num_labels)
    adapted = apply_strategy(model, StrategyConfig(name="lora", peft=dict(cfg.lora)))
    params = [p for p in adapted.model.parameters() if p.requires_grad]
    optimizer, schedule = _optimizer(params, cfg.lora_lr, cfg.lora_steps)
    adapted.model.train()
    for batch in _support_batches(ctx, support, cfg.batch_size, cfg.lora_steps, seed):
        logits = model.head(model.features(**_inputs(batch, device)))
        _step(F.cross_entropy(logits.float(), batch["labels"].to(device)), optimizer, schedule, params)
    xs = embed(model, ctx.train_inputs.select(support), ctx.collate, ctx.batch_size)
    xq = embed(model, ctx.query_inputs, ctx.collate, ctx.batch_size)
    with torch.no_grad():
        model.head.eval()
        probs = model.head(xq.to(device)).float().softmax(-1).cpu()
    _check_finite("lora", cfg.lora_lr, seed, xs, xq, probs)
    return Prediction(probs, xs, xq)
