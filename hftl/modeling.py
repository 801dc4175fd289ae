"""One classification model for every modality: a pretrained backbone, a pooling, a new head.

``HftlForClassification`` wraps any ``AutoModel`` backbone (BERT, ViT, Wav2Vec2, ...). It is a real
``PreTrainedModel``: it saves as safetensors, loads with ``from_pretrained`` (and through
``AutoModelForSequenceClassification`` once ``hftl`` is imported), and peft wraps it like any model. The head
is always the module ``head``; ``features()`` gives its input, which frozen strategies cache.

Example:
    >>> model = HftlForClassification.from_backbone(backbone, num_labels=2)  # doctest: +SKIP
    >>> model(input_ids=ids, attention_mask=mask).logits.shape  # doctest: +SKIP
    torch.Size([8, 2])
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

# How backbone outputs become one vector, per model family (checked before the modality default).
POOLING_BY_MODEL_TYPE = {
    "vit": "cls",
    "deit": "cls",
    "dinov2": "cls",
    "beit": "pooler",
    "data2vec-vision": "pooler",
    "convnext": "pooler",
    "convnextv2": "pooler",
    "resnet": "pooler",
    "swin": "pooler",
    "swinv2": "pooler",
    "efficientnet": "pooler",
    "regnet": "pooler",
    "mobilenet_v2": "pooler",
    "clip_vision_model": "pooler",
    "siglip_vision_model": "pooler",
    "audio-spectrogram-transformer": "pooler",
}
_OUTPUT_FLAGS = ("return_dict", "output_attentions", "output_hidden_states")
# Config attributes that give the width of the pooled features, tried in order.
_WIDTH_ATTRS = ("hidden_size", "hidden_dim", "d_model", "hidden_sizes", "num_features")


class HftlConfig(PretrainedConfig):
    """Backbone config + pooling + head shape; ``id2label``/``label2id`` as in any transformers config."""

    model_type = "hftl"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        pooling: str = "mean",
        head_hidden: list[int] | None = None,
        head_dropout: float = 0.1,
        backbone_name: str | None = None,
        backbone_revision: str | None = None,
        task: str = "classification",
        threshold: float = 0.5,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        class_weights: list[float] | None = None,
        **kwargs,
    ) -> None:
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        self.backbone_config = backbone_config
        self.pooling = pooling
        self.head_hidden = list(head_hidden or [])
        self.head_dropout = head_dropout
        self.backbone_name = backbone_name
        self.backbone_revision = backbone_revision
        self.task = task  # the hftl.tasks entry that reads its outputs; problem_type (transformers') picks the loss
        self.threshold = threshold  # multi_label: decision threshold on each label's probability
        self.target_mean, self.target_std = target_mean, target_std  # regression: the standardisation undone
        self.class_weights = class_weights  # classification: the loss weight of each class (train.class_weights)
        # PretrainedConfig.__init__ sets the attention implementation on sub-configs too (None unless asked): a
        # backbone whose config then says None attends to padding. Keep the one it was loaded with.
        attn = getattr(backbone_config, "_attn_implementation_internal", None)
        super().__init__(**kwargs)
        if attn is not None and backbone_config._attn_implementation is None:
            backbone_config._attn_implementation_internal = attn


def feature_width(config: PretrainedConfig) -> int:
    """Width of the pooled backbone output, read from the backbone config."""
    for attr in _WIDTH_ATTRS:
        value = getattr(config, attr, None)
        if value:
            return value[-1] if isinstance(value, (list, tuple)) else int(value)
    raise ValueError(f"cannot tell the feature width of a {config.model_type} backbone: none of {_WIDTH_ATTRS}")


def encoder_of(model: PreTrainedModel) -> PreTrainedModel:
    """The encoder of an encoder-decoder model (e.g. Whisper): what a classifier is built on."""
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def default_pooling(config: PretrainedConfig, sentence_pooling: str | None = None) -> str:
    """The pooling users of this family expect: the model's own sentence pooling, the table, else mean."""
    return sentence_pooling or POOLING_BY_MODEL_TYPE.get(config.model_type, "mean")


def pool(
    hidden: torch.Tensor, mask: torch.Tensor | None, pooler_output: torch.Tensor | None, how: str
) -> torch.Tensor:
    """Reduce (batch, length, width) hidden states to (batch, width)."""
    if how == "pooler":
        if pooler_output is None:
            raise ValueError("pooling='pooler' but this backbone returns no pooler_output; use mean or cls")
        return pooler_output.flatten(1)
    if hidden.dim() == 2:
        return hidden
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        mask = hidden.new_ones(hidden.shape[:2])
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def build_head(width: int, num_labels: int, hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.GELU()]
        width = size
    layers += [nn.Dropout(dropout), nn.Linear(width, num_labels)]
    return nn.Sequential(*layers)


class HftlForClassification(PreTrainedModel):
    config_class = HftlConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: HftlConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if backbone is None:
            backbone = encoder_of(AutoModel.from_config(config.backbone_config))
        self.backbone = backbone
        if config.pooling != "pooler" and getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # unused parameters would stall DDP and waste memory
        self.main_input_name = getattr(self.backbone, "main_input_name", "input_ids")
        width = feature_width(config.backbone_config)
        self.head = build_head(width, config.num_labels, config.head_hidden, config.head_dropout)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is m for m in self.head.modules()):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_backbone(
        cls,
        backbone: PreTrainedModel,
        num_labels: int,
        *,
        pooling: str = "mean",
        head_hidden=(),
        head_dropout: float = 0.1,
        id2label: dict | None = None,
        name: str | None = None,
        revision: str | None = None,
        **task_config,
    ) -> HftlForClassification:
        """Put a new head on a loaded backbone (head replacement, written once for every family).

        ``task_config``: what the task records in the config (``task``, ``problem_type``, ``threshold``,
        ``target_mean``/``target_std``): the loss and how outputs are read follow it."""
        id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        config = HftlConfig(
            backbone_config=backbone.config,
            pooling=pooling,
            head_hidden=list(head_hidden),
            head_dropout=head_dropout,
            backbone_name=name,
            backbone_revision=revision,
            num_labels=num_labels,
            id2label=dict(id2label),
            label2id={v: k for k, v in id2label.items()},
            **task_config,
        )
        model = cls(config, backbone=backbone)
        model.head.apply(model._init_weights)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved model; an adapter's folder or repo (no weights of the whole model) is rebuilt from its
        backbone.

        An hftl adapter folder holds ``config.json`` (this class's config, which names ``backbone_name``),
        ``adapter_config.json`` and the adapter + head weights. Its base is the backbone named there with a new head,
        and the adapter is loaded onto it (transformers' ``load_adapter``): so transformers' Auto classes,
        ``pipeline`` and peft's ``AutoPeftModelFor*`` load hftl adapters like full models, without hftl (this file
        travels with every saved model as ``modeling_hftl.py``; pass ``trust_remote_code=True``).
        Raises OSError when the folder holds neither weights nor a backbone name.
        """
        path = pretrained_model_name_or_path
        if any(_repo_file(path, name, kwargs) for name in FULL_WEIGHTS):
            return super().from_pretrained(path, *args, **kwargs)
        return cls._rebuilt(path, kwargs)

    @classmethod
    def _rebuilt(cls, path, kwargs: dict) -> HftlForClassification:
        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if kwargs.get(k)}
        adapter = dict(kwargs.get("adapter_kwargs") or {}).get("_adapter_model_path")
        if adapter is None and _repo_file(path, "adapter_config.json", kwargs):
            adapter = path
        config = kwargs.get("config")
        if not isinstance(config, PretrainedConfig):
            config = cls.config_class.from_pretrained(path, **hub)
        if not config.backbone_name:
            raise OSError(f"{path} holds no model weights ({FULL_WEIGHTS[0]}) and its config names no backbone_name "
                          f"to rebuild the model from: give the folder of a saved model or adapter")
        extra = {k: kwargs[k] for k in ("token", "cache_dir", "local_files_only", "dtype") if kwargs.get(k)}
        backbone = AutoModel.from_pretrained(config.backbone_name, revision=config.backbone_revision or None, **extra)
        model = cls(config, backbone=encoder_of(backbone))
        model.head.apply(model._init_weights)
        if adapter is not None:  # the adapter's own head (modules_to_save) replaces the new one
            model.load_adapter(str(adapter), local_files_only=bool(hub.get("local_files_only")),
                               adapter_kwargs={k: v for k, v in hub.items() if k != "local_files_only"})
        return model.eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def _feature_mask(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None or hidden.dim() != 3 or mask.shape[1] == hidden.shape[1]:
            return mask
        reduce = getattr(self.backbone, "_get_feature_vector_attention_mask", None)  # speech: samples -> frames
        return reduce(hidden.shape[1], mask) if reduce else None

    def features(self, **inputs) -> torch.Tensor:
        """Pooled backbone output: the head's input (what frozen strategies cache)."""
        mask = inputs.get("attention_mask")
        out = self.backbone(**inputs, return_dict=True)
        hidden = out.last_hidden_state
        return pool(hidden, self._feature_mask(hidden, mask), getattr(out, "pooler_output", None), self.config.pooling)

    def forward(self, labels: torch.Tensor | None = None, features: torch.Tensor | None = None, **inputs):
        # peft's PeftModelForSequenceClassification (AutoPeftModel*) passes every argument a text classifier takes,
        # None included, and output flags: the backbone gets only the inputs given (and always returns a dict)
        inputs = {k: v for k, v in inputs.items() if v is not None and k not in _OUTPUT_FLAGS}
        if features is None:
            features = self.features(**inputs)
        logits = self.head(features)
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """By ``config.problem_type`` (transformers' names): cross-entropy on class ids; binary cross-entropy per
        label on 0/1 floats (multi-label); mean squared error on standardised targets (regression: logits are the
        standardised prediction, ``config.target_mean``/``target_std`` undo it)."""
        logits = logits.float()
        kind = self.config.problem_type
        if kind == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        if kind == "regression":
            target = labels.float().view_as(logits)
            if self.config.target_mean is not None:
                mean = torch.tensor(self.config.target_mean, device=logits.device)
                target = (target - mean) / torch.tensor(self.config.target_std, device=logits.device)
            return nn.functional.mse_loss(logits, target)
        weight = self.config.class_weights
        weight = torch.tensor(weight, device=logits.device) if weight else None
        return nn.functional.cross_entropy(logits, labels, weight=weight)


class HftlForTokenClassification(HftlForClassification):
    """One label per token: the same backbone and ``head`` (built once in ``HftlForClassification``), applied to every
    position instead of a pooled vector; cross-entropy over positions whose label is not -100 (padding, special
    tokens, and every sub-token but a word's first). ``features()`` gives (batch, length, width) hidden states."""

    def features(self, **inputs) -> torch.Tensor:
        return self.backbone(**inputs, return_dict=True).last_hidden_state

    def forward(self, labels: torch.Tensor | None = None, features: torch.Tensor | None = None, **inputs):
        if features is None:
            features = self.features(**inputs)
        logits = self.head(features)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
REMOTE_CODE = "modeling_hftl.py"  # this file, copied beside every saved model: loads without hftl installed
AUTO_MAP = {"AutoConfig": "modeling_hftl.HftlConfig"} | {
    f"AutoModelFor{kind}Classification": "modeling_hftl.HftlForClassification"
    for kind in ("Sequence", "Image", "Audio")} | {
    "AutoModelForTokenClassification": "modeling_hftl.HftlForTokenClassification"}


def _repo_file(path, name: str, kwargs: dict) -> str | None:
    """The local path of ``name`` in a folder or Hub repo (downloaded if needed), or None when it has none."""
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder") if kwargs.get(k)}
    try:
        return cached_file(str(path), name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub)
    except OSError:
        return None


def add_remote_code(directory) -> None:
    """Make a saved hftl model folder loadable without hftl: copy this file in as ``modeling_hftl.py`` and name its
    classes in ``config.json``'s ``auto_map`` (transformers then loads it with ``trust_remote_code=True``).

    A folder whose ``config.json`` is not an hftl model's is left as it is.
    """
    import json
    import shutil
    from pathlib import Path

    directory = Path(directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("model_type") != HftlConfig.model_type:
        return
    shutil.copyfile(__file__, directory / REMOTE_CODE)
    config_file.write_text(json.dumps({**config, "auto_map": AUTO_MAP}, indent=2, sort_keys=True) + "\n")


def register_auto_classes() -> None:
    """Let the Auto classes load hftl run directories: done when this module is imported, which ``import hftl``
    arranges as soon as transformers' Auto model classes are imported."""
    from transformers import (
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    AutoConfig.register("hftl", HftlConfig, exist_ok=True)
    for auto in (AutoModelForSequenceClassification, AutoModelForImageClassification, AutoModelForAudioClassification):
        auto.register(HftlConfig, HftlForClassification, exist_ok=True)
    AutoModelForTokenClassification.register(HftlConfig, HftlForTokenClassification, exist_ok=True)


register_auto_classes()
