"""Which weights train, and how far each backbone block moves from its pretrained weights.

The blocks are the ones ``freeze_n`` and layer-wise rates use (``hftl.strategies.find_layers``): the embeddings,
``block_01`` ... ``block_NN`` from the input up, ``top`` (the backbone's final norm, pooler), and the new ``head``.
Drift is the relative change of a block's weights, ``||W - W0|| / ||W0||`` over all of the block's tensors
together (frozen ones count with no change), so a ``full`` and a ``lora`` run compare on one scale: for peft
adapters the change is the adapter's effective weight update (``get_delta_weight``: ``B @ A x scale`` for LoRA),
the weight a merge would add.

Example:
    >>> tracker = DriftTracker(adapted.model)  # before training: keeps W0 of the trainable tensors on the CPU
    >>> tracker.measure()  # doctest: +SKIP
    {'embeddings': 0.0012, 'block_01': 0.0031, ...}
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import torch
from torch import nn

log = logging.getLogger(__name__)
HEAD, TOP, EMBEDDINGS = "head", "top", "embeddings"


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def block_names(model: nn.Module) -> tuple[dict[int, str], list[str]]:
    """``{id(parameter): block}`` for every parameter, and the blocks from the input up (``head`` last).

    Adapters inside a block belong to it; parameters outside the backbone and the head are ``other``.
    """
    from hftl.strategies import find_embeddings, find_layers

    base = _base(model)
    backbone, blocks, order = getattr(base, "backbone", None), {}, []
    if backbone is not None:
        for _, module in find_embeddings(backbone):
            blocks.update((id(p), EMBEDDINGS) for p in module.parameters())
        order += [EMBEDDINGS] if EMBEDDINGS in blocks.values() else []
        for i, layer in enumerate(find_layers(backbone)[1]):
            order.append(f"block_{i + 1:02d}")
            blocks.update((id(p), order[-1]) for p in layer.parameters())
        for p in backbone.parameters():
            if blocks.setdefault(id(p), TOP) == TOP and TOP not in order:
                order.append(TOP)
    head = getattr(base, HEAD, None)
    if head is not None:
        blocks.update((id(p), HEAD) for p in head.parameters() if id(p) not in blocks)
        order.append(HEAD)
    for p in model.parameters():
        if blocks.setdefault(id(p), "other") == "other" and "other" not in order:
            order.append("other")
    return blocks, order


def parameter_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts per block, from the input up: ``{block: {"trainable", "frozen"}}``.

    Example:
        >>> parameter_table(adapted.model)["head"]  # doctest: +SKIP
        {'trainable': 770, 'frozen': 0}
    """
    blocks, order = block_names(model)
    table = {name: {"trainable": 0, "frozen": 0} for name in order}
    for p in model.parameters():
        table[blocks[id(p)]]["trainable" if p.requires_grad else "frozen"] += p.numel()
    return table


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    """peft adapter layers (LoRA, DoRA, LoHa, LoKr...) whose weight update peft can compute; none without peft."""
    if not hasattr(model, "peft_config"):
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    missing = [type(m).__name__ for m in layers if not hasattr(m, "get_delta_weight")]
    if missing:  # e.g. (IA)3 scales activations: it has no weight update to measure
        log.info("drift: %d adapter layers (%s) have no weight update; they count as unmoved", len(missing),
                 sorted(set(missing)))
    return [m for m in layers if hasattr(m, "get_delta_weight")]


class DriftTracker:
    """Relative drift ``||W - W0|| / ||W0||`` of each backbone block since construction (before training).

    Keeps a CPU copy of the trainable backbone tensors (the head is new: it has no pretrained weights to drift
    from) and the norm of every block; adapters need no copy, their update is computed from them. Measuring costs
    one pass over the trainable weights. ``active`` is False when nothing in the backbone trains (linear probe).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module) -> None:
        blocks, order = block_names(model)
        tuners = _tuner_layers(model)
        adapter_ids = {id(p) for m in tuners for p in m.parameters()} - {
            id(p) for m in tuners for p in m.get_base_layer().parameters()}
        self.initial: list[tuple[str, nn.Parameter, torch.Tensor]] = []
        self.norm_sq: dict[str, float] = defaultdict(float)
        for p in model.parameters():
            block = blocks[id(p)]
            if block in (HEAD, "other") or id(p) in adapter_ids:
                continue
            w = p.detach().float()
            self.norm_sq[block] += float(w.norm()) ** 2
            if p.requires_grad:
                self.initial.append((block, p, w.cpu().clone()))
        self.tuners = []
        for m in tuners:
            base = next(m.get_base_layer().parameters(), None)
            if base is not None and blocks.get(id(base)) not in (None, HEAD, "other"):
                self.tuners.append((blocks[id(base)], m))
        self.order = [b for b in order if b in self.norm_sq]

    @property
    def active(self) -> bool:
        return bool(self.initial or self.tuners)

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """``{block: relative drift}`` from the input up (0 for a block that did not move)."""
        moved: dict[str, float] = defaultdict(float)
        for block, p, w0 in self.initial:
            moved[block] += float((p.detach().float().cpu() - w0).norm()) ** 2
        for block, layer in self.tuners:
            for name in layer.active_adapters:
                try:
                    delta = layer.get_delta_weight(name)
                except KeyError:  # the layer holds no adapter of that name
                    continue
                moved[block] += float(delta.float().norm()) ** 2
        return {b: math.sqrt(moved[b]) / math.sqrt(self.norm_sq[b]) if self.norm_sq[b] else 0.0 for b in self.order}
