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
import importlib.abc
import importlib.util
import sys
import warnings

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
    "hftl.lpft": ["probe_head"],
    "hftl.train": [
        "make_accelerator", "make_loader", "per_device_batch", "train_batch", "eval_batch", "fit", "evaluate",
        "enable_gradient_checkpointing", "save_checkpoint", "last_checkpoint",
    ],  # hftl.train.predict (logits over a loader) stays there: hftl.predict is the user's, below
    "hftl.inference": ["predict", "evaluate_file", "load_predictor", "Predictor"],
    "hftl.run": ["save_run"],
    "hftl.masking": ["pack_texts", "MaskedLMCollator", "PatchMaskGenerator", "MaskedImageCollator",
                     "MaskedSpeechCollator"],
    "hftl.pretraining": ["load_masked_model", "masked_datasets", "masked_scores", "save_stage"],
    "hftl.hub": ["load", "push", "check_push_access", "HubAccessError", "PushError"],
    "hftl.assets": ["lay_into_hub_cache"],
    "hftl.tasks.detection": ["detect", "load_detector"],
    "hftl.data.detection": ["load_detection"],
    "hftl.data.placed": ["placed_objects"],
    "accelerate.utils": ["set_seed"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")


_AUTO_MODULE = "transformers.models.auto.modeling_auto"  # defines AutoModelForSequenceClassification & co


def _register_auto_classes() -> None:
    """Let transformers' Auto classes load hftl run directories: ``hftl.modeling`` registers them when imported."""
    if "hftl.modeling" in sys.modules:  # being imported, or done: it registers at its end
        return
    try:
        importlib.import_module("hftl.modeling")
    except Exception as err:  # never break the user's own transformers import
        warnings.warn(f"hftl could not register its model class with transformers' Auto classes: {err}",
                      stacklevel=2)


class _AfterAutoImport(importlib.abc.MetaPathFinder):
    """Registers hftl's classes once transformers' Auto model classes are imported, and only then.

    ``import hftl`` must stay light (no torch, no transformers: the command line answers in well under a second),
    yet ``import hftl`` then ``AutoModelForSequenceClassification.from_pretrained("<run>/model")`` must work. The
    registration needs transformers' model classes (seconds), so it runs right after their module has run, which
    every use of an ``AutoModelFor...`` class goes through.
    """

    def __init__(self) -> None:
        self.busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _AUTO_MODULE or self.busy:
            return None
        self.busy = True  # the real spec, found by the finders after this one
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # once
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_module  # on this loader instance only
        return spec


if _AUTO_MODULE in sys.modules:  # transformers' Auto classes already loaded: register now (cheap then)
    _register_auto_classes()
elif not any(isinstance(f, _AfterAutoImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterAutoImport())
