"""Zero-shot and few-shot evaluation: the rungs of the transfer ladder below full fine-tuning.

* zero-shot (``zero_shot``): text by embedding similarity to label prompts or by NLI entailment; images
  (CLIP/SigLIP) and audio (CLAP) through their text tower; prompt templates x label descriptions, ensembled.
* few-shot (``fewshot``, ``tuned``): k labelled examples per class, resampled support sets, mean, std and a t-based
  95% interval per k, for every method of ``METHODS`` (prototype, probe, setfit, lora); optional transductive
  refinement over the unlabelled evaluation inputs, reported apart.
* few-shot from the zero-shot classifier (``prior``, ``prior_tuned``): zs_probe, zs_prototype, zs_setfit start at
  the zero-shot classifier and move from it as far as the support set shows it should (chosen on the support set).

Example:
    >>> from hftl.shots import METHODS, summarize
    >>> sorted(METHODS)
    ['lora', 'probe', 'prototype', 'setfit', 'zs_probe', 'zs_prototype', 'zs_setfit']
"""

from __future__ import annotations

from hftl.config import ConfigError, ShotsConfig, check_fields, check_shots
from hftl.shots import prior, prior_tuned, tuned  # noqa: F401 - register zs_probe/zs_prototype/zs_setfit, setfit/lora
from hftl.shots.fewshot import (
    METHODS,
    Prediction,
    ShotContext,
    check_methods,
    few_shot_curve,
    logistic_probs,
    prototype_probs,
    register_method,
    soft_kmeans,
)
from hftl.shots.stats import summarize
from hftl.shots.support import support_indices
from hftl.shots.tuned import embed, pair_cosine_loss
from hftl.shots.zero_shot import (
    DEFAULT_TEMPLATES,
    class_prompts,
    entailment_index,
    is_nli_model,
    text_encoder,
    zero_shot_dual,
    zero_shot_embedding,
    zero_shot_nli,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "METHODS",
    "Prediction",
    "ShotContext",
    "check_ladder_data",
    "check_methods",
    "check_shots_config",
    "class_prompts",
    "embed",
    "entailment_index",
    "few_shot_curve",
    "is_nli_model",
    "logistic_probs",
    "pair_cosine_loss",
    "prototype_probs",
    "register_method",
    "soft_kmeans",
    "summarize",
    "support_indices",
    "text_encoder",
    "zero_shot_dual",
    "zero_shot_embedding",
    "zero_shot_nli",
]


def check_ladder_data(cfg: ShotsConfig, labels: list[str], train_labels) -> None:
    """Checks of the ``shots`` section against the data, before any rung runs (a late failure loses every rung).

    ``labels``: class names by id; ``train_labels``: the train split's label ids (the support pool).
    Raises ConfigError: a k in ``shots.ks`` above the smallest class of the train split (naming it and its count),
    ``shots.label_descriptions`` naming a class that does not exist, ``shots.lora`` arguments peft refuses.
    """
    import numpy as np

    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(labels))
    smallest = int(counts.argmin())
    fewest = int(counts[smallest])
    too_big = sorted(k for k in cfg.ks if k > fewest)
    if too_big:
        raise ConfigError(
            f"shots.ks has k={too_big} but class {labels[smallest]!r} has only {fewest} examples in the train split "
            f"(k examples per class are drawn from it): lower shots.ks to at most {fewest} "
            f"(data.max_train_samples, when set, caps the train split)"
        )
    unknown = sorted(set(map(str, cfg.label_descriptions)) - set(labels))  # YAML reads `0:` as an int; names are text
    if unknown:
        raise ConfigError(f"shots.label_descriptions names classes that do not exist: {unknown}; the classes are "
                          f"{list(labels)}")
    if "lora" in cfg.methods:
        from peft import LoraConfig

        try:
            LoraConfig(**cfg.lora)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"shots.lora={cfg.lora!r} is refused by peft's LoraConfig: {err}") from err


def check_shots_config(cfg: ShotsConfig) -> None:
    """Values of the ``shots`` section that types alone cannot check; ConfigError names the key.

    The config checks these when it is parsed (``hftl.config``: ranges, rungs, seeds, templates); here the method
    names are checked again against ``METHODS``, which may hold methods registered since.
    """
    check_methods(list(cfg.methods))
    check_fields(cfg, "shots.")
    check_shots(cfg)
