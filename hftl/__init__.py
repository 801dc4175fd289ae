"""hftl: transfer learning for Hugging Face models, every strategy one config value away.

The public functions, composed by the recipes (``recipes/``) and by your own scripts:

    cfg = hftl.load_config("recipes/configs/text/minilm-rt-lora.yaml", ["train.epochs=1"])
    splits = hftl.load_splits(cfg.data)
    model = hftl.load_classifier(cfg.model.name, num_labels=2)
    adapted = hftl.apply_strategy(model, cfg.strategy)
    ...
"""

from __future__ import annotations

import importlib

from hftl.modeling import register_auto_classes

__version__ = "0.1.0"

_EXPORTS = {
    "hftl.config": ["Config", "ConfigError", "RunDirError", "load_config", "parse_args", "save_config"],
    "hftl.data": [
        "DataError", "load_splits", "label_names", "encode", "encode_text", "collator_for", "modality_of",
        "stratified_subset",
    ],
    "hftl.models": [
        "ModelNotFoundError",
        "load_classifier",
        "load_backbone",
        "load_processor",
        "load_masked_lm",
        "resolve",
    ],
    "hftl.modeling": ["HftlConfig", "HftlForClassification"],
    "hftl.strategies": ["apply_strategy", "adapters_merged", "Adapted", "STRATEGIES", "transfer_facts"],
    "hftl.features": ["cached_features", "as_feature_datasets", "stack_collate"],
    "hftl.train": [
        "make_accelerator", "make_loader", "per_device_batch", "train_batch", "eval_batch", "fit", "evaluate",
        "predict", "enable_gradient_checkpointing", "save_checkpoint", "last_checkpoint",
    ],
    "hftl.run": ["save_run"],
    "hftl.masking": ["pack_texts", "MaskedLMCollator", "PatchMaskGenerator", "MaskedImageCollator",
                     "MaskedSpeechCollator"],
    "hftl.pretraining": ["load_masked_model", "masked_datasets", "masked_scores", "save_stage"],
    "hftl.hub": ["load", "push", "check_push_access", "HubAccessError", "PushError"],
    "hftl.assets": ["lay_into_hub_cache"],
    "accelerate.utils": ["set_seed"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")


register_auto_classes()
