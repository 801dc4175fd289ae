"""Tasks answer "what is predicted": one small object per file, registered by name, read by the recipe and the loop.

Strategies answer "what trains"; a task says everything that differs between kinds of prediction, so the loop,
strategies, checkpoints, resume, the run directory, ``hftl.load`` and push never ask which task they run:

- ``prepare_labels(raw, label, data_cfg, files) -> (splits, column)``: the raw label column(s) checked (a DataError
  naming the split, row and column) and encoded; ``stratify``: whether splits keep class proportions;
- ``label_names(splits, data_cfg)``: the model's ``id2label`` (classes, labels, or target names);
- ``build_model(cfg, labels, splits)`` and ``model_class()``: the model with its new head on the backbone (what
  ``hftl.load`` rebuilds); ``collator(processor)``: how a batch is padded; ``caches_features``: whether frozen
  strategies may train the head on cached pooled features;
- ``model_config(splits, cfg)``: what the task records in the model's config (``task``, transformers'
  ``problem_type``, which picks the model's own loss; a threshold; a target scaling). The head is the model's
  ``head`` module, which every strategy trains and saves (``hftl.strategies``);
- ``encode_labels(encoded, cfg)``: the label column as the collator batches it (class ids, 0/1 floats, numbers);
- ``check(cfg)`` before compute; ``best_metric(cfg, splits, log)``: ``train.metric_for_best`` with ``auto``
  resolved once the data is read; ``check_best(metrics, metric_for_best)`` and ``auto_best(metrics)`` in ``fit``;
- ``scores(logits, labels, metrics, config)``: validation/test metrics (flat floats, ``loss`` included);
- ``tune(config, logits, labels)``: settings chosen on validation after training (e.g. a threshold), saved;
- ``outputs(logits, config)``: the task's reading of outputs per input; ``prediction_rows(logits, labels, config)``:
  the rows of ``predictions.jsonl`` (label, predicted, ...); ``pipeline_tag(modality)``: the card's tag;
- ``targets(values, config, items, where)``: raw labels of a labelled file (names, lists, numbers, tags,
  transcripts; ``None`` when predicting: placeholders) as the ``label`` each row gives the task's collator, a
  DataError naming a label the model does not know; ``predict_rows(model, batch, config, items, threshold)``: what
  ``hftl predict`` prints per input (``hftl.inference``), read from a collated batch as ``outputs`` reads;
- ``baselines``: whether ``hftl.baselines`` (majority class, a classical model) can score the task.

Optional hooks (speech recognition has them; the others use the defaults):
- ``processor(name, revision, trust_remote_code, splits=None, cfg=None)``: the processor the task needs (default
  ``hftl.load_processor``); with ``splits`` it may be built from the data (CTC's vocabulary) and check it;
- ``eval_outputs(model, batch) -> Tensor[batch, ...]``: what ``predict`` gathers per batch in place of the
  model's logits (default ``model(**inputs).logits``), e.g. ids decoded by ``generate`` and each clip's loss;
- ``loss_terms(batch)``: what the model's loss averages over when it is not labelled tokens or inputs (CTC: clips),
  ``fit``'s ``count_terms`` (steps split over processes or accumulated weigh by it);
- ``refused_strategies``: strategy name -> why it means nothing for the task (ConfigError in ``check``);
- ``reads_words``: inputs are word lists (a text is split on whitespace, as training's words); ``input_rows(items,
  processor)``: the rows of the task's collator built from raw inputs in place of the modality's (detection);
  ``evaluate_labelled(model, processor, path, batch_size)``: ``hftl evaluate`` on a file of the task's own format
  (detection: a COCO file).

Later tasks (sequence-to-sequence speech recognition, detection, token classification, multitask made of tasks)
are each one more file here with their own model builder. ``task.name`` in the config picks one.

Example:
    >>> task = get_task("regression")  # doctest: +SKIP
    >>> task.outputs(logits, model.config)  # doctest: +SKIP
    [[3.2], [4.9]]
"""

from __future__ import annotations

import difflib
import importlib

from hftl.config import ConfigError

TASKS: dict[str, object] = {}
# imported on first use, each registers itself
_MODULES = ("classification", "multi_label", "regression", "token_classification", "ctc", "seq2seq_asr",
            "detection")
DEFAULT = "classification"


def register(name: str):
    """Class decorator: ``@register("regression")`` puts one instance of the class in ``TASKS``."""

    def wrap(cls):
        TASKS[name] = cls()
        cls.name = name
        return cls

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"hftl.tasks.{module}")


def get_task(name: str):
    """The registered task called ``name``; ConfigError listing the valid names otherwise."""
    _load_all()
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task.name={name!r} is unknown{hint}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def task_of(model):
    """The task a model was built for, from its config (``task``); a model saved without one (not trained by hftl)
    by its class (``...ForCTC``, a speech ``...ForConditionalGeneration``, ``...ForObjectDetection``,
    ``...ForTokenClassification``) or its ``problem_type``; else a classifier."""
    config = getattr(model, "config", None)
    unwrap = getattr(model, "module", None)  # DDP wraps the model
    if config is None and unwrap is not None:
        config = getattr(unwrap, "config", None)
    return get_task(getattr(config, "task", None) or _by_class(unwrap or model, config) or DEFAULT)


PROBLEM_TYPES = {"multi_label_classification": "multi_label", "regression": "regression"}


def _by_class(model, config) -> str | None:
    """The task of a model without ``task`` in its config: by its class name, then transformers' ``problem_type``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    name = type(base).__name__
    if name.endswith("ForCTC"):
        return "ctc"
    if name.endswith("ForConditionalGeneration") and getattr(base, "main_input_name", "") == "input_features":
        return "seq2seq_asr"
    if name.endswith("ForObjectDetection"):
        return "detection"
    if name.endswith("ForTokenClassification"):
        return "token_classification"
    return PROBLEM_TYPES.get(getattr(config, "problem_type", None))


def logits_of(model, batch: dict):
    """The model's logits for a collated batch (its ``labels`` and ``length`` left out): what ``predict_rows`` of the
    tasks with logits read."""
    return model(**{k: v for k, v in batch.items() if k not in ("labels", "length")}).logits.float()


def class_ids(values: list, names: list[str], where: str, what: str = "labels") -> list[int]:
    """Class ids of raw labels: by name, or by index when every label is an integer that is not a name.
    DataError naming the labels the model does not know (``where``: the file)."""
    from hftl.data.sources import DataError

    text = [str(v).strip() for v in values]
    index = {n: i for i, n in enumerate(names)}
    numeric = bool(text) and all(t.lstrip("-").isdigit() and t not in index for t in text)
    unknown = sorted({t for t in text if (int(t) not in range(len(names)) if numeric else t not in index)})
    if unknown:
        raise DataError(f"{where} has {what} the model does not know: {unknown[:10]}; its labels are {names[:30]}: "
                        f"fix those rows, or evaluate a model trained with them")
    return [int(t) if numeric else index[t] for t in text]


def only_classification(cfg) -> None:
    """ConfigError when a classification-only setting (class weights, the balanced sampler) is set for another task."""
    if cfg.train.class_weights != "none" or cfg.train.balanced_sampler:
        raise ConfigError(f"train.class_weights / train.balanced_sampler apply to task.name=classification, not "
                          f"{cfg.task.name}: set train.class_weights=none and train.balanced_sampler=false")


def resolve_best(cfg, keys: list[str], default: str) -> str:
    """``train.metric_for_best`` for a task reporting ``keys``: the user's choice when reported, ``default`` for
    auto; anything else is a ConfigError before compute."""
    best = cfg.train.metric_for_best
    if best in keys:
        return best
    if best == "auto":
        return default
    raise ConfigError(f"train.metric_for_best={best!r} is not reported by task.name={cfg.task.name}: it reports "
                      f"{sorted(keys)}; set train.metric_for_best to one of them")


def build_classifier(cfg, labels: list[str], task_config: dict):
    """A backbone with a new ``head`` of ``len(labels)`` outputs (``hftl.models.load_classifier``), the task's
    settings recorded in its config: what the classification, multi-label and regression tasks build."""
    from hftl.models import load_classifier

    m = cfg.model
    return load_classifier(m.name, len(labels), id2label=dict(enumerate(labels)), revision=m.revision,
                           pooling=m.pooling, head_hidden=m.head_hidden, head_dropout=m.head_dropout,
                           trust_remote_code=m.trust_remote_code, dtype=m.dtype, **task_config)


def pooled_model_class():
    """The model of the tasks with one pooled output per input (classification, multi-label, regression)."""
    from hftl.modeling import HftlForClassification

    return HftlForClassification


def build_pooled(task, cfg, labels: list[str], splits):
    """``build_model`` of the pooled tasks: ``build_classifier`` with the task's ``model_config``."""
    return build_classifier(cfg, labels, task.model_config(splits, cfg))


def modality_collator(processor):
    """``collator`` of the pooled tasks: the modality's own (``hftl.data.collator_for``)."""
    from hftl.data import collator_for

    return collator_for(processor)
