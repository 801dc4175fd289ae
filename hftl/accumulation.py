"""Gradient accumulation that is the larger batch with less memory: the same examples in each optimizer step
(``hftl.data.LengthGroupedBatches`` groups them), and the same gradient.

An optimizer step is ``train.grad_accum`` consecutive loader batches. Each micro-batch's mean loss is weighted by its
share of the step's loss terms (examples, or labelled tokens for masked-LM), counted over every process: the
accumulated gradient is then the one the whole batch gives in one pass, also when the last step of an epoch splits
unevenly or micro-batches hold different numbers of labelled tokens. (A plain mean per micro-batch, divided by the
accumulation steps, weighs a token of a sparsely masked micro-batch more than one of a dense one.)

Example:
    >>> for group in step_groups(loader, cfg.grad_accum):  # doctest: +SKIP
    ...     for batch, weight in zip(group, step_weights(group, accelerator)):
    ...         accelerator.backward(model(**batch).loss * weight)
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def loss_terms(batch: dict) -> torch.Tensor | None:
    """How many terms the model's loss averages over in ``batch`` (a device tensor), or None for a loss that sums.

    Read from the batch as the models reduce their own losses: a 2-D ``labels`` (masked-LM; -100 where no loss is
    taken) averages over the labelled tokens, SimMIM (``bool_masked_pos``) over the masked patches, wav2vec2's
    pretraining loss (``mask_time_indices``) sums over masked frames, and the rest (classification) averages over
    examples. ``fit`` weights the micro-batches of an optimizer step by these counts; a model whose loss reduces
    otherwise passes its own function (``fit(..., count_terms=...)``).
    """
    if "mask_time_indices" in batch:
        return None
    if "bool_masked_pos" in batch:
        return batch["bool_masked_pos"].sum()
    labels = batch.get("labels")
    if labels is not None and labels.ndim >= 2:
        return (labels != -100).sum()  # -100: the ignore index of transformers' losses
    first = labels if labels is not None else next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return torch.tensor(len(first), device=first.device)


def step_groups(loader, accum: int):
    """The loader's batches in groups of ``accum``, one optimizer step each (``LengthGroupedBatches`` makes each
    group one step's examples, and keeps a shorter step last, where the group is cut short too)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []
    if group:
        yield group


def step_weights(group: list[dict], accelerator, count_terms: Callable = loss_terms) -> list:
    """Per micro-batch, the factor on its mean loss that makes the step's gradient the whole batch's.

    The step's loss is the sum of every loss term of the step over their count on all processes: a micro-batch
    with ``c`` of the step's ``C`` terms weighs ``c / C``; times the process count (DDP and FSDP average gradients
    over processes) and accelerate's accumulation divisor (its ``backward`` divides by it). A summed loss
    (``count_terms`` gives None) adds up as it is. One all-reduce of the count per step when there are processes.
    """
    n, divisor = accelerator.num_processes, accelerator.gradient_accumulation_steps
    counts = [count_terms(batch) for batch in group]
    if any(c is None for c in counts):
        return [n * divisor] * len(group)
    counts = torch.stack([torch.as_tensor(c, device=accelerator.device).float() for c in counts])
    total = accelerator.reduce(counts.sum(), "sum") if n > 1 else counts.sum()
    return list(counts * (n * divisor) / total)  # c / c is exactly 1: one batch per step trains as before
