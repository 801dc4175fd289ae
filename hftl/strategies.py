"""Transfer strategies: one config value each, one mechanism (which parameters train, and how).

A strategy takes the model with its new head and returns an ``Adapted`` plan: the model to train (maybe
peft-wrapped) and whether the backbone is frozen so that its features can be computed once and cached. The
head always trains: every strategy leaves ``head`` trainable, and peft methods list it in ``modules_to_save``
so it is saved and pushed with the adapter.

Example:
    >>> adapted = apply_strategy(model, StrategyConfig(name="lora", peft={"r": 8}))  # doctest: +SKIP
    >>> adapted.trainable, adapted.total  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from hftl.config import ConfigError, StrategyConfig

log = logging.getLogger(__name__)
STRATEGIES: dict[str, Callable] = {}
HEAD = "head"
# Default peft target modules where peft has none for the family (transformers 5 names).
TARGET_MODULES = {
    "vit": ["q_proj", "v_proj"],
    "deit": ["q_proj", "v_proj"],
    "dinov2": ["q_proj", "v_proj"],
    "wav2vec2": ["q_proj", "v_proj"],
    "hubert": ["q_proj", "v_proj"],
    "wavlm": ["q_proj", "v_proj"],
    "clip_vision_model": ["q_proj", "v_proj"],
    "siglip_vision_model": ["q_proj", "v_proj"],
    "whisper": ["q_proj", "v_proj"],
    "audio-spectrogram-transformer": ["q_proj", "v_proj"],
}
_EMBEDDING_NAMES = ("embeddings", "embed_tokens", "feature_extractor", "feature_projection", "embedder", "conv1")
# The new head of transformers' own task models (class name ending -> attribute); hftl's models call theirs ``head``.
# A model without one (a sequence-to-sequence model, whose pretrained decoder writes the output) has no head.
TASK_HEADS = {"ForCTC": "lm_head"}


def backbone_of(model: nn.Module) -> nn.Module:
    """The pretrained body strategies freeze: hftl's ``backbone``; else the task model's base model (``wav2vec2``
    of a CTC model, ``model`` of Whisper)."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model.base_model


def head_name(model: nn.Module) -> str | None:
    """The attribute of the model's new head (``head``, a CTC model's ``lm_head``), None when it has none."""
    if isinstance(getattr(model, HEAD, None), nn.Module):
        return HEAD
    return next((v for k, v in TASK_HEADS.items() if type(model).__name__.endswith(k)), None)


@dataclass
class Adapted:
    """What a strategy made: the model to train and facts for the logs and the model card."""

    model: nn.Module
    strategy: str
    frozen_backbone: bool = False
    frozen: list[str] = field(default_factory=list)
    peft_config: dict | None = None

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def register(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        STRATEGIES[name] = fn
        return fn

    return wrap


def _peft_methods() -> list[str]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return sorted({str(getattr(k, "value", k)).lower() for k in PEFT_TYPE_TO_CONFIG_MAPPING} | {"dora"})


def check_strategy_name(name: str) -> None:
    if name in STRATEGIES or name in _peft_methods():
        return
    raise ConfigError(
        f"strategy.name={name!r} is unknown; choose one of {sorted(STRATEGIES)} or a peft method: {_peft_methods()}"
    )


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def find_layers(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's stack of blocks: its ModuleList with the most parameters."""
    best, best_size = ("", nn.ModuleList()), -1
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    return best


def find_embeddings(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Input modules before the first block (token/patch embeddings, speech feature encoder)."""
    return [(n, m) for n, m in backbone.named_children() if n in _EMBEDDING_NAMES]


def freeze_norm_statistics(module: nn.Module) -> None:
    """Batch-norm running statistics of a frozen backbone stay as pretrained (momentum 0).

    They are buffers, not parameters: training would drift them even with every weight frozen, and an adapter
    save (which keeps only adapters and the head) would lose the drift, so the reloaded model would differ.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0


def _frozen_backbone(model: nn.Module, name: str, cached: bool) -> Adapted:
    head = head_name(model)
    if head is None:
        raise ConfigError(f"strategy.name={name} trains only a new head, and this {type(model).__name__} has none: "
                          f"use full, freeze_n or a peft method such as lora")
    freeze_norm_statistics(backbone_of(model))
    set_trainable(model, False)
    set_trainable(getattr(model, head), True)
    return Adapted(model, name, frozen_backbone=cached, frozen=["backbone"])


@register("linear_probe")
def linear_probe(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Frozen backbone; the head trains on features computed once and cached."""
    return _frozen_backbone(model, "linear_probe", cached=True)


@register("head")
def head(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Frozen backbone run every step (e.g. with augmentations); only the new head trains."""
    return _frozen_backbone(model, "head", cached=False)


@register("full")
def full(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Everything trains: backbone and the new head."""
    set_trainable(model, True)
    return Adapted(model, "full")


@register("lp_ft")
def lp_ft(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """LP-FT (Kumar et al. 2022): the recipe has probed the head on cached features (``hftl.lpft.probe_head``); from
    that head, ``strategy.after_probe`` (full, freeze_n or a peft method) trains as it would alone."""
    import dataclasses

    then = apply_strategy(model, dataclasses.replace(cfg, name=cfg.after_probe))
    then.strategy = "lp_ft"
    return then


@register("freeze_n")
def freeze_n(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Freeze the embeddings and the first ``strategy.freeze_layers`` blocks; the rest and the head train."""
    set_trainable(model, True)
    if getattr(model.config, "is_encoder_decoder", False):
        return _freeze_encoder(model, cfg)
    layers_name, layers = find_layers(backbone_of(model))
    if cfg.freeze_layers > len(layers):
        raise ConfigError(f"strategy.freeze_layers={cfg.freeze_layers} but the backbone has {len(layers)} layers")
    frozen = []
    for name, module in find_embeddings(backbone_of(model)):
        set_trainable(module, False)
        frozen.append(f"backbone.{name}")
    for i in range(cfg.freeze_layers):
        set_trainable(layers[i], False)
        frozen.append(f"backbone.{layers_name}.{i}")
    return Adapted(model, "freeze_n", frozen=frozen)


def _freeze_encoder(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """freeze_n on an encoder-decoder (Whisper): the encoder's input layers and its first ``freeze_layers`` blocks;
    all of its blocks freeze the whole encoder (its last norm too), so only the decoder trains."""
    encoder = model.get_encoder()
    layers = encoder.layers
    if cfg.freeze_layers > len(layers):
        raise ConfigError(f"strategy.freeze_layers={cfg.freeze_layers} but the encoder has {len(layers)} layers: "
                          f"set strategy.freeze_layers={len(layers)} to freeze the whole encoder")
    set_trainable(encoder, False)
    for layer in layers[cfg.freeze_layers:]:
        set_trainable(layer, True)
    rest = [n for n, _ in encoder.named_children() if n != "layers"]
    if cfg.freeze_layers < len(layers):  # the encoder's last norm trains while any of its blocks does
        for name in rest:
            module = getattr(encoder, name)
            if isinstance(module, nn.LayerNorm):
                set_trainable(module, True)
    frozen = ["encoder"] if cfg.freeze_layers == len(layers) else [f"encoder.{n}" for n in rest] + [
        f"encoder.layers.{i}" for i in range(cfg.freeze_layers)]
    return Adapted(model, "freeze_n", frozen=frozen)


def _peft_table(method: str, kind: str) -> dict:
    from peft.utils import constants

    return getattr(constants, f"TRANSFORMERS_MODELS_TO_{method.upper().replace('_', '')}_{kind}_MAPPING", None) or {}


def default_target_modules(model: nn.Module, method: str) -> list[str]:
    """peft's own defaults for the backbone family, then hftl's table, then every linear (else conv) layer."""
    model_type = backbone_of(model).config.model_type
    for table in (_peft_table(method, "TARGET_MODULES"), _peft_table("lora", "TARGET_MODULES"), TARGET_MODULES):
        if model_type in table:
            return list(table[model_type])
    for kind in (nn.Linear, nn.Conv2d):  # every linear layer; convolutional nets (ResNet) have none: their convs
        kinds: dict[str, set[bool]] = {}
        for n, m in backbone_of(model).named_modules():
            kinds.setdefault(n.rsplit(".", 1)[-1], set()).add(isinstance(m, kind))
        names = sorted(k for k, v in kinds.items() if v == {True})  # a name that also names another module: out
        if names:
            return names
    raise ConfigError(f"no layer for an adapter found in a {model_type} backbone: set strategy.peft.target_modules")


def peft_config_args(cfg: StrategyConfig, default_targets: Callable[[str], list]) -> tuple[type, str, dict]:
    """peft's config class for ``strategy.name`` (``dora`` is LoRA with ``use_dora``), the peft method's name, and
    its arguments: ``strategy.peft``, with ``default_targets(method)`` as the target modules when none are given.
    Shared by every peft strategy (classifiers, detectors, multitask backbones)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    method = "lora" if cfg.name == "dora" else cfg.name
    config_cls = {str(getattr(k, "value", k)).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}[method]
    args = dict(cfg.peft)
    if cfg.name == "dora":
        args.setdefault("use_dora", True)
    if "target_modules" in _peft_fields(config_cls) and not args.get("target_modules"):
        args["target_modules"] = default_targets(method)
    return config_cls, method, args


def _peft_fields(config_cls: type) -> dict:
    return getattr(config_cls, "__dataclass_fields__", {})


def make_peft_config(config_cls: type, args: dict):
    """``config_cls(**args)``; ConfigError naming the keys of ``strategy.peft`` it does not take, and the valid."""
    fields = _peft_fields(config_cls)
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ConfigError(
            f"strategy.peft has keys that {config_cls.__name__} does not take: {unknown}; "
            f"valid: {sorted(k for k in fields if not k.startswith('_'))}"
        )
    return config_cls(**args)


def peft_strategy(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Any peft method by name (``dora`` is LoRA with ``use_dora``); its arguments pass through."""
    from peft import get_peft_model

    config_cls, method, args = peft_config_args(cfg, lambda method: default_target_modules(model, method))
    fields = _peft_fields(config_cls)
    if "feedforward_modules" in fields and "feedforward_modules" not in args:  # (IA)3: scale inputs of these
        default = _peft_table(method, "FEEDFORWARD_MODULES").get(backbone_of(model).config.model_type, [])
        args["feedforward_modules"] = [m for m in default if m in args["target_modules"]]
    head = head_name(model)
    args["modules_to_save"] = sorted(set(args.get("modules_to_save") or []) | ({head} if head else set()))
    peft_config = make_peft_config(config_cls, args)
    freeze_norm_statistics(backbone_of(model))
    peft_model = get_peft_model(model, peft_config)
    return Adapted(peft_model, cfg.name, frozen=["backbone (except adapters)"], peft_config=peft_config.to_dict())


@contextmanager
def adapters_merged(model: nn.Module, sharded: bool = False) -> Iterator[bool]:
    """Evaluate with the adapters merged into their base weights; yields whether they were.

    An unmerged LoRA layer runs three matmuls, a dropout and an add where the merged one runs one. On leaving,
    peft unmerges (its bookkeeping, DoRA's caches) and the saved base weights are copied back, so training goes on
    from the same bits: ``W + BA - BA`` in floating point is not ``W``. The copy is kept in host memory, so a
    model that only fits the accelerator with adapters still evaluates merged. Nothing happens for
    models without a mergeable peft tuner (prompt learning, no adapters) or with sharded weights (FSDP,
    DeepSpeed), and a method that cannot merge is evaluated unmerged.

    Example:
        >>> with adapters_merged(peft_model):  # doctest: +SKIP
        ...     logits = peft_model(**batch).logits
    """
    if sharded or not hasattr(model, "peft_config"):  # not a peft model: peft is not even imported
        yield False
        return
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

    tuner = getattr(model, "base_model", None)
    layers = [m for m in tuner.model.modules() if isinstance(m, BaseTunerLayer) and not m.merged] \
        if isinstance(tuner, BaseTuner) else []
    base = [p for m in layers for p in m.get_base_layer().parameters(recurse=False)]
    saved = [(p, p.detach().to("cpu", copy=True)) for p in base]

    def restore() -> None:
        with warnings.catch_warnings():  # e.g. "Unmerge result can be inaccurate": the copy below makes it exact
            warnings.simplefilter("ignore")
            for m in layers:
                if m.merged:
                    m.unmerge()
        with torch.no_grad():
            for p, original in saved:
                p.copy_(original)

    merged = False
    if layers:
        try:
            tuner.merge_adapter()
            merged = True
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as e:  # e.g. a method without merge
            restore()
            log.info("evaluating with adapters unmerged: %s", e)
    try:
        yield merged
    finally:
        if merged:
            restore()


def apply_strategy(model: nn.Module, cfg: StrategyConfig) -> Adapted:
    """Make ``model`` (an HftlForClassification) ready for the strategy ``cfg.name``."""
    check_strategy_name(cfg.name)
    if cfg.name in STRATEGIES:
        return STRATEGIES[cfg.name](model, cfg)
    return peft_strategy(model, cfg)


def transfer_facts(adapted: Adapted, model: nn.Module, labels: list[str], splits, modality: str) -> dict:
    """What the model card and the logs say about the transfer."""
    head = getattr(model, head_name(model) or "", None)
    return {
        "name": f"{model.config.backbone_name}-{adapted.strategy}".split("/")[-1],
        "modality": modality,
        "labels": labels,
        "splits": {k: len(v) for k, v in splits.items()},
        "trainable_params": adapted.trainable,
        "total_params": adapted.total,
        "frozen": adapted.frozen,
        "peft_config": adapted.peft_config,
        "pooling": getattr(model.config, "pooling", ""),
        "head": " -> ".join(
            f"Linear({m.in_features}, {m.out_features})"
            for m in getattr(head, "original_module", head).modules()
            if isinstance(m, nn.Linear)
        ) if head is not None else "none (the pretrained decoder writes the output)",
    }
