"""One typed schema for every run: nested dataclasses, YAML files, ``key.sub=value`` overrides.

Each field is documented once, in its ``help`` metadata; the CLI and the errors read it from there.

Example:
    >>> cfg = load_config(None, ["strategy.name=lora", "train.epochs=1"])
    >>> cfg.strategy.name, cfg.train.epochs
    ('lora', 1)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from hftl.fields import (  # noqa: F401  (ConfigError, RunDirError, SEEDS: re-exported, imported from here)
    SEEDS,
    ConfigError,
    RunDirError,
    _build,
    _coerce,
    _f,
    _scalar,
    _yaml_value,
    check_fields,
    in_range,
)

BUILTIN_STRATEGIES = ("linear_probe", "head", "full", "freeze_n", "lp_ft")  # registered by hftl.strategies
SHOT_METHODS = ("prototype", "probe", "setfit", "lora", "zs_probe", "zs_prototype", "zs_setfit")  # hftl.shots
# registered by hftl.tasks
BUILTIN_TASKS = ("classification", "multi_label", "regression", "token_classification", "ctc", "seq2seq_asr",
                 "detection")


@lru_cache(maxsize=1)
def peft_methods() -> tuple[str, ...]:
    """peft's method names, found without importing peft (seconds): each folder of ``peft/tuners`` with a
    ``config.py``, and ``dora`` (a LoRA variant). The same set as peft's own registry; empty without peft."""
    spec = importlib.util.find_spec("peft")  # finds the package without running it
    names: set[str] = set()
    for root in (spec.submodule_search_locations or []) if spec else []:
        tuners = Path(root) / "tuners"
        if tuners.is_dir():
            names |= {d.name for d in tuners.iterdir() if (d / "config.py").is_file()}
    return tuple(sorted(names | {"dora"})) if names else ()


def check_strategy_name(name: str) -> None:
    """``strategy.name`` is hftl's own strategy, one registered in ``hftl.strategies`` (when loaded), or a peft
    method; else ConfigError listing them, before any model or data is loaded."""
    registry = getattr(sys.modules.get("hftl.strategies"), "STRATEGIES", {})  # read, never imported here
    own = sorted({*BUILTIN_STRATEGIES, *registry})
    if name in own or name in peft_methods():
        return
    close = difflib.get_close_matches(str(name), [*own, *peft_methods()], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
        f"strategy.name={name!r} is unknown{hint}; choose one of {own} or a peft method: {list(peft_methods())}"
    )


def check_shots(cfg: Any) -> None:
    """What ranges cannot say about the ``shots`` section: the method names (hftl's, and those registered in
    ``hftl.shots`` when loaded), at least one rung, two distinct seeds, templates with ``{}``."""
    known = sorted({*SHOT_METHODS, *getattr(sys.modules.get("hftl.shots.fewshot"), "METHODS", {})})
    unknown = [n for n in cfg.methods if n not in known]
    if unknown:
        raise ConfigError(f"shots.methods has unknown methods {unknown}; choose from {known}")
    if not cfg.ks:
        raise ConfigError("shots.ks=[] must list at least one rung (labelled examples per class), e.g. [1, 4, 16]")
    if len(set(cfg.seeds)) < 2:
        raise ConfigError(f"shots.seeds={cfg.seeds!r} must list at least 2 distinct integer seeds (for the spread)")
    bad = [t for t in cfg.templates if not isinstance(t, str) or "{}" not in t]
    if bad:
        raise ConfigError(f"shots.templates must each hold {{}} for the label description; these do not: {bad}")
    wanted = [m for m in cfg.methods if m in SHOT_METHODS[4:]]  # the zs_* methods start from the zero-shot classifier
    if wanted and cfg.zero_shot == "none":
        raise ConfigError(
            f"shots.methods {wanted} start from the zero-shot classifier, but shots.zero_shot=none: set "
            "shots.zero_shot=auto (or embedding/nli), or drop those methods"
        )


@dataclass
class ModelConfig:
    name: str = _f("sentence-transformers/all-MiniLM-L6-v2", "Hub id or local path of the pretrained backbone.")
    revision: str = _f("main", "Hub revision (branch, tag or commit) of the backbone.")
    pooling: str = _f(
        "auto",
        "How backbone outputs become one vector: auto picks per model family.",
        ("auto", "mean", "cls", "pooler", "max"),
    )
    head_hidden: list = _f([], "Sizes of hidden layers added before the output layer (empty: a linear head).",
                            range=">= 1", item=int)
    head_dropout: float = _f(0.1, "Dropout before each head layer.", range="[0, 1)")
    max_length: int = _f(128, "Longest token sequence kept (text); longer inputs are truncated.", range=">= 1")
    trust_remote_code: bool = _f(False, "Run model code shipped in the repository (off: only transformers' code).")
    dtype: str = _f("float32", "Weights dtype when loading.", ("float32", "bfloat16", "float16"))

    def __post_init__(self) -> None:
        check_fields(self, "model.")


@dataclass
class DataConfig:
    name: str = _f("rotten_tomatoes", "Embedded set name, Hub dataset id, or a local .csv/.json/.jsonl/.parquet file.")
    text_column: str = _f("text", "Column holding the input text.")
    label_column: str = _f("label", "Column holding the class label.")
    splits: dict = _f({}, "Map of split name to file or Hub split, e.g. {train: a.csv, test: b.csv}.")
    validation_size: float = _f(0.1, "Fraction of the data for validation when the source has no such split.",
                              range="(0, 0.5)")
    test_size: float = _f(0.1, "Fraction of the data for test when the source has no such split.", range="(0, 0.5)")
    split_seed: int = _f(0, "Seed of the stratified split; every recipe and benchmark shares it.", range=SEEDS)
    max_train_samples: int = _f(0, "Keep at most this many training examples, stratified (0: all).",
                                range=">= 0 (0: all)")
    input_column: str = _f(
        "", "Column holding image or audio (PIL/bytes/array or a file path); empty: text_column, else "
        "image/audio/path."
    )
    max_seconds: float = _f(10.0, "Speech: clips are cut to this many seconds (and padded per batch).", range="> 0")
    augment: bool = _f(True, "Images: random resized crop (+ flip where it keeps the class) for training; never "
                             "for cached features.")
    missing_labels: str = _f(
        "error",
        "Rows whose label is empty, None or NaN: error (name them and stop) or drop (drop them, logging the count).",
        ("error", "drop"),
    )
    encoding: str = _f("utf-8", "Text encoding of CSV/TSV/JSON data files (e.g. latin-1, cp1252, utf-16).")
    label_columns: list = _f([], "multi_label: several 0/1 columns, one per label; regression: one column per "
                                 "target (empty: data.label_column).", item=str)
    text_pair_column: str = _f("", "Column holding the second text of a pair (entailment, duplicates), encoded as the "
                                   "tokenizer pairs two texts (empty: one text per input).")
    image_dir: str = _f("", "detection: folder of the COCO file's images (empty: the folder of the JSON file).")
    box_format: str = _f("xywh", "detection: how data boxes are given: xywh (COCO), xyxy (corners), cxcywh (centre); "
                                 "with _norm: in fractions of the image size.",
                         ("xywh", "xyxy", "cxcywh", "xywh_norm", "xyxy_norm", "cxcywh_norm"))

    def __post_init__(self) -> None:
        check_fields(self, "data.")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f"data.encoding={self.encoding!r} is not a known text encoding; use e.g. utf-8, latin-1 or cp1252"
            ) from None


@dataclass
class TaskConfig:
    name: str = _f("classification", "What is predicted (hftl.tasks): classification (one label per input), "
                                     "multi_label (any number of labels), regression (one or more numbers), "
                                     "token_classification (one tag per word), ctc (speech to characters by a "
                                     "CTC head), seq2seq_asr (speech to text by an encoder-decoder such as "
                                     "Whisper), detection (boxes and their classes).")
    threshold: float = _f(0.0, "multi_label: the decision threshold on each label's probability (0: tuned on "
                               "validation after training, saved in the model's config).", range="[0, 1) (0: tuned)")
    standardize: bool = _f(True, "regression: train on standardised targets (train mean and std, saved in the "
                                 "model's config and undone at predict).")

    def __post_init__(self) -> None:
        check_fields(self, "task.")


def check_task_name(name: str) -> None:
    """``task.name`` is a built-in task or one registered in ``hftl.tasks`` (when loaded); else ConfigError."""
    registry = getattr(sys.modules.get("hftl.tasks"), "TASKS", {})  # read, never imported here
    known = sorted({*BUILTIN_TASKS, *registry})
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task.name={name!r} is unknown{hint}; choose one of {known}")


@dataclass
class StrategyConfig:
    name: str = _f(
        "full",
        "Transfer strategy: linear_probe, head, full, freeze_n, or any peft method (lora, dora, ia3, loha, ...).",
    )
    freeze_layers: int = _f(0, "freeze_n: freeze the embeddings and this many first layers.", range=">= 0")
    peft: dict = _f({}, "Arguments passed to the peft method's config (r, lora_alpha, target_modules, ...).")
    merge: bool = _f(False, "Also export the adapter merged into the backbone (run_dir/merged).")
    after_probe: str = _f("full", "lp_ft: what trains after the linear probe, starting from the probed head: full, "
                                  "freeze_n, or a peft method (lora, ...; its arguments are strategy.peft).")
    probe_epochs: float = _f(20.0, "lp_ft: epochs of the linear probe on cached features (best on validation kept).",
                             range="> 0")
    probe_lr: float = _f(1e-2, "lp_ft: learning rate of the linear probe (AdamW on the head alone).", range="> 0")

    def __post_init__(self) -> None:
        check_fields(self, "strategy.")
        if self.name == "lp_ft" and (self.after_probe in ("linear_probe", "head", "lp_ft") or (
                peft_methods() and self.after_probe not in ("full", "freeze_n", *peft_methods()))):
            raise ConfigError(f"strategy.after_probe={self.after_probe!r}: lp_ft fine-tunes after the probe with "
                              f"full, freeze_n or a peft method ({', '.join(peft_methods())}); set one of them")


@dataclass
class TrainConfig:
    epochs: float = _f(3.0, "Passes over the training data.", range="> 0")
    batch_size: int = _f(32, "Effective batch size (per step, all processes and accumulation together).",
                         range=">= 1")
    eval_batch_size: int = _f(128, "Batch size for evaluation and feature extraction.", range=">= 1")
    grad_accum: int = _f(1, "Gradient accumulation steps (batch_size is split over them).", range=">= 1")
    lr: float = _f(5e-5, "Peak learning rate of the backbone (and of adapters).", range="> 0")
    head_lr: float = _f(0.0, "Learning rate of the new head (0: same as lr).", range=">= 0 (0: same as lr)")
    layer_lr_decay: float = _f(1.0, "Layer-wise learning rates: the top block gets lr x this, each block below one "
                                    "factor more, the embeddings last (1: one rate for all).",
                              range="(0, 1] (1: one rate for all)")
    unfreeze_every: float = _f(0.0, "Gradual unfreezing: the head trains alone, then one more block from the top "
                                    "joins every this many epochs, the embeddings last (0: off).",
                              range=">= 0 (0: off)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).", range=">= 0")
    warmup_ratio: float = _f(0.06, "Fraction of steps of linear warmup.", range="[0, 1)")
    scheduler: str = _f("linear", "Learning-rate schedule after warmup.", ("linear", "cosine", "constant"))
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: off).", range=">= 0 (0: off)")
    early_stopping_patience: int = _f(0, "Stop after this many evaluations without improvement (0: off).",
                                      range=">= 0 (0: off)")
    metric_for_best: str = _f("auto", "Validation metric that picks the best checkpoint (auto: the task's; for "
                                      "classification accuracy, or macro-F1 (f1) when train's classes are imbalanced, "
                                      "the largest 3x the smallest or more).")
    class_weights: object = _f("none", "classification: weights of the classes in the loss: none, balanced "
                                       "(n / (classes x count), from train), or a list, one per class in label order.")
    balanced_sampler: bool = _f(False, "classification: oversample train's smaller classes (seeded, once) so that "
                                       "every class is seen as often as the largest.")
    mixed_precision: str = _f("auto", "auto: bf16 on GPUs that have it, fp32 on CPU.", ("auto", "no", "bf16", "fp16"))
    seed: int = _f(0, "Seed of initialisation, shuffling and dropout.", range=SEEDS)
    group_by_length: bool = _f(True, "Batch examples of similar length together (less padding).")
    num_workers: int = _f(-1, "DataLoader worker processes (-1: none on CPU, up to 8 beside a GPU).",
                          range=">= -1 (-1: auto)")
    resume: bool = _f(False, "Continue from the last complete checkpoint in output_dir/checkpoints.")
    checkpoint_every: int = _f(0, "Also checkpoint every this many optimizer steps (0: at each epoch end only).",
                               range=">= 0 (0: at each epoch end only)")
    keep_checkpoints: int = _f(2, "Complete checkpoints kept in output_dir/checkpoints (the oldest are deleted).",
                               range=">= 1")
    gradient_checkpointing: bool = _f(False, "Recompute the backbone's activations in backward (less memory, slower).")
    compile: str = _f("auto", "torch.compile the model before training (auto: text models on a GPU).",
                      ("auto", "true", "false"))
    report_to: str = _f("tensorboard", "Trackers the loop logs to through accelerate, comma-separated: tensorboard "
                                       "(in output_dir/tensorboard), wandb, mlflow, comet_ml, aim, trackio, clearml, "
                                       "dvclive, swanlab (installed ones), all, or none.")
    stop_below_baseline: int = _f(0, "Stop when validation metric_for_best has not beaten the best baseline "
                                     "(eval.baselines) for this many epochs in a row (0: off).", range=">= 0 (0: off)")

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        check_class_weights(self)


def check_class_weights(cfg: Any) -> None:
    """``train.class_weights``: none, balanced, or a list of positive numbers (a text ``[1, 5]`` is read as YAML)."""
    value = cfg.class_weights
    if isinstance(value, str) and value.strip().startswith("["):
        value = cfg.class_weights = _yaml_value(value, "train.class_weights")
    if value in ("none", "balanced"):
        return
    if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 for v in value):
        raise ConfigError(f"train.class_weights={value!r} must be none, balanced, or a list of positive numbers, one "
                          f"per class in label order, e.g. [1, 5]")
    cfg.class_weights = [float(v) for v in value]


@dataclass
class EvalConfig:
    metrics: list = _f(["accuracy", "f1"], "Metrics computed on validation and test: hftl's own (accuracy, f1), an "
                                           "installed module (package.module), or with model.trust_remote_code=true "
                                           "a .py file, a folder or a Hub metric id (their code runs).")
    baselines: bool = _f(True, "Also score the majority class and a classical model (TF-IDF, pixels or spectral "
                               "features + logistic regression) on the same splits; warn when the run does not beat "
                               "them.")
    drift: bool = _f(True, "Record per epoch how far each backbone block moved from its pretrained weights (keeps a "
                           "CPU copy of the trainable backbone weights).")
    report: bool = _f(True, "Write output_dir/report.html (curves, confusion matrix, worst examples, drift, "
                            "parameters) and output_dir/predictions.jsonl for the test split.")

    def __post_init__(self) -> None:  # names are checked where the metrics are (hftl.metrics.check_metrics)
        check_fields(self, "eval.")
        if not self.metrics:
            raise ConfigError("eval.metrics is empty: list at least one metric, e.g. [accuracy, f1]")


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the trained model, card and metrics to the Hub at the end.")
    repo_id: str = _f("", "Target repository, e.g. user/minilm-rt-lora.")
    private: bool = _f(False, "Create the repository as private.")
    revision: str = _f("", "Branch to push to (empty: main).")

    def __post_init__(self) -> None:
        check_fields(self, "hub.")


@dataclass
class ShotsConfig:
    ks: list = _f([1, 2, 4, 8, 16, 32], "Few-shot rungs: labelled examples per class.", range=">= 1", item=int)
    seeds: list = _f([0, 1, 2, 3, 4], "Seeds of the resampled support sets, one set per seed and k (at least 2).",
                      range=SEEDS, item=int)
    methods: list = _f(
        ["prototype", "probe"], "Few-shot methods (hftl.shots.METHODS): prototype, probe, setfit, lora."
    )
    split: str = _f("test", "Split that zero- and few-shot accuracy is measured on.", ("validation", "test"))
    zero_shot: str = _f(
        "auto",
        "Zero-shot method: embedding (cosine to label prompts), nli (entailment), auto (nli for NLI models).",
        ("auto", "embedding", "nli", "none"),
    )
    templates: list = _f([], "Prompt templates with {} for the label description, ensembled (empty: defaults).")
    label_descriptions: dict = _f({}, "Label name -> description or list of them, ensembled (missing: the name).")
    transductive: bool = _f(True, "Also report prototypes refined by soft k-means over the unlabelled eval inputs.")
    probe_c: float = _f(1.0, "Inverse L2 strength of the logistic-regression head (probe and setfit).", range="> 0")
    setfit_steps: int = _f(10, "setfit: contrastive steps; each takes every pair of the batch.", range=">= 1")
    setfit_lr: float = _f(1e-4, "setfit: learning rate of the encoder.", range="> 0")
    setfit_layers: int = _f(0, "setfit: top encoder blocks that train (0: all); those below run once per input.",
                            range=">= 0 (0: all)")
    lora_steps: int = _f(30, "lora: optimisation steps on the support set.", range=">= 1")
    lora_lr: float = _f(5e-4, "lora: learning rate of the adapters and the head.", range="> 0")
    lora: dict = _f({"r": 8, "lora_alpha": 16, "lora_dropout": 0.1}, "lora: arguments of peft's LoraConfig.")
    batch_size: int = _f(64, "setfit and lora: support examples per step (all of them when fewer).", range=">= 1")
    full: bool = _f(True, "Ladder: also fine-tune on all the training data with strategy.name.")
    prior_folds: int = _f(
        16,
        "zs_probe, zs_prototype, zs_setfit: folds of the cross-validation on the support set that weighs the "
        "zero-shot prior (leave-one-out up to this many examples).",
        range=">= 2",
    )

    def __post_init__(self) -> None:
        check_fields(self, "shots.")
        check_shots(self)


@dataclass
class SelectConfig:
    candidates: list = _f([], "hftl select: Hub ids or local paths of the backbones to rank on data (any modality).",
                          item=str)
    knn_k: int = _f(5, "hftl select: neighbours of the leave-one-out cosine kNN accuracy.", range=">= 1")
    leep: bool = _f(True, "hftl select: also score LEEP where a candidate has a source classification head (one "
                          "more forward pass with that head).")
    finetune: str = _f("", "hftl select: then fine-tune every candidate with this strategy (linear_probe, lora, "
                           "full, ...) and rank-correlate each score with its test train.metric_for_best ('': no).")

    def __post_init__(self) -> None:
        check_fields(self, "select.")
        if self.finetune:
            try:
                check_strategy_name(self.finetune)
            except ConfigError as err:
                raise ConfigError(str(err).replace("strategy.name=", "select.finetune=", 1)) from None
        twice = sorted({c for c in self.candidates if self.candidates.count(c) > 1})
        if twice:
            raise ConfigError(f"select.candidates lists {twice} twice: list each candidate once")


@dataclass
class DisentangleConfig:
    factor_column: str = _f("speaker", "disentangle: the column of the second factor (the first is "
                                       "data.label_column), e.g. speaker beside the spoken word.")
    dim: int = _f(32, "disentangle: width of each part of the split representation (z_a, z_b).", range=">= 1")
    adversary: str = _f("confusion", "disentangle: how each part's adversary pushes it: confusion (towards a "
                                     "uniform answer on the other factor) or reverse (gradient reversal of its "
                                     "cross-entropy).",
                        ("confusion", "reverse"))
    adversary_weight: float = _f(1.0, "disentangle: weight of the adversaries' term in the projections' loss.",
                                 range=">= 0")
    adversary_steps: int = _f(5, "disentangle: adversary updates per step of the projections.", range=">= 1")
    adversary_lr: float = _f(1e-2, "disentangle: learning rate of the adversaries (AdamW).", range="> 0")
    epochs: int = _f(100, "disentangle: passes over the cached train features.", range=">= 1")
    lr: float = _f(1e-3, "disentangle: learning rate of the projections and heads (AdamW).", range="> 0")
    batch_size: int = _f(64, "disentangle: examples per step.", range=">= 2")
    probe_c: float = _f(1.0, "disentangle: inverse L2 strength of the fresh logistic-regression probes that measure "
                             "each part.", range="> 0")

    def __post_init__(self) -> None:
        check_fields(self, "disentangle.")


TEXT_SOURCES = ("train", "unlabeled")
TEXT_FILES = (".txt", ".csv", ".json", ".jsonl")


@dataclass
class PretrainConfig:
    then_finetune: bool = _f(
        False, "pretrain_masked: after the masked stage, fine-tune its model with strategy.name (one resumable run)."
    )
    epochs: float = _f(1.0, "Passes of the masked-modeling stage over its unlabelled data.", range="> 0")
    batch_size: int = _f(32, "Effective batch of the masked stage (blocks, images or clips per optimizer step).",
                         range=">= 1")
    lr: float = _f(1e-4, "Peak learning rate of the masked stage (its schedule and warmup are train.*'s).",
                    range="> 0")
    mask_rate: float = _f(
        0.15, "Fraction masked: of tokens (text), of patch blocks (vision), of frames starting a span (speech).",
        range="(0, 1)",
    )
    whole_word: bool = _f(False, "Text: mask every token of a chosen word together (whole-word masking).")
    pack: bool = _f(True, "Text: concatenate texts and cut blocks of model.max_length tokens (no padding at all).")
    text_sources: list = _f(
        ["train"],
        "Text of the stage: train (inputs of the whole train split, labels unused, data.max_train_samples ignored), "
        "unlabeled (the source's unlabelled rows: Rotten Tomatoes plot texts), or .txt/.csv/.json files.",
    )
    max_samples: int = _f(0, "Use at most this many unlabelled texts, images or clips (0: all).",
                          range=">= 0 (0: all)")
    mask_patch_size: int = _f(0, "Vision: side in pixels of the square masked blocks (0: the model's patch size).",
                              range=">= 0 (0: the model's patch size)")
    mask_span: int = _f(10, "Speech: frames per masked span (wav2vec2's mask_time_length).", range=">= 1")
    from_scratch: bool = _f(False, "Start from random weights of model.name's architecture instead of its weights.")
    strategy: str = _f("full", "full, or a peft method (lora, ...) whose adapters train and are merged on save.")
    peft: dict = _f({}, "Arguments of the stage's peft method (r, lora_alpha, target_modules, ...).")

    def __post_init__(self) -> None:
        check_fields(self, "pretrain.")
        for source in self.text_sources:
            if source not in TEXT_SOURCES and Path(str(source)).suffix.lower() not in TEXT_FILES:
                raise ConfigError(
                    f"pretrain.text_sources has {source!r}: use {list(TEXT_SOURCES)} or a .txt/.csv/.json file"
                )
        if self.strategy in ("linear_probe", "head", "freeze_n") or (
                peft_methods() and self.strategy not in ("full", *peft_methods())):
            raise ConfigError(
                f"pretrain.strategy={self.strategy!r}: the masked stage trains with full or a peft method "
                f"({', '.join(peft_methods())})"
            )


MULTITASK_TASKS = ("classification", "multi_label", "regression")  # one pooled output per input: heads on one backbone
_MULTITASK_KEYS = ("name", "weight", "task", "data", "eval", "model")


@dataclass
class MultitaskConfig:
    tasks: list = _f([], "Tasks sharing one backbone (model, strategy, train), each {name, weight (its loss's factor, "
                         "default 1), task: {...}, data: {...}, eval: {...}} with the keys of those sections (empty: "
                         "one task, as task and data say). hftl.multitask; recipes/multitask.py.")
    sampling: str = _f("proportional", "How each train batch's task is drawn: proportional (every task's batches "
                                       "once per epoch, shuffled together), temperature (p_i ~ n_i^(1/T), as mT5), "
                                       "round_robin (tasks in turn).", ("proportional", "temperature", "round_robin"))
    temperature: float = _f(2.0, "sampling=temperature: T (1: proportional to sizes; large: uniform over tasks).",
                            range="> 0")
    adapter_per_task: bool = _f(False, "peft strategies: one adapter per task on the shared backbone (peft's "
                                       "multiple adapters, switched per batch) instead of one shared adapter.")


def multitask_entries(cfg: Any) -> list[dict]:
    """The tasks of ``multitask.tasks``, each ``{name, weight, task: TaskConfig, data: DataConfig, eval: EvalConfig}``;
    ConfigError naming ``multitask.tasks[i]...`` and the fix for a malformed entry, duplicate names, a model that is
    not the shared one, a task whose output is not one per input, or fewer than two tasks."""
    entries, names = [], set()
    for i, raw in enumerate(cfg.multitask.tasks):
        key = f"multitask.tasks[{i}]"
        if not isinstance(raw, dict) or set(raw) - set(_MULTITASK_KEYS) or not str(raw.get("name") or "").strip():
            raise ConfigError(f"{key} must be a mapping with a name and only the keys {list(_MULTITASK_KEYS)}, got "
                              f"{raw!r}: e.g. {{name: sentiment, weight: 1.0, task: {{name: classification}}, "
                              f"data: {{name: rotten_tomatoes}}}}")
        name = str(raw["name"])
        if name in names or "/" in name:
            raise ConfigError(f"{key}.name={name!r} is {'used twice' if name in names else 'not a folder name'}: "
                              f"give each task a distinct name without '/'")
        names.add(name)
        model = raw.get("model") or {}
        if not isinstance(model, dict) or set(model) - {"name"} or model.get("name", cfg.model.name) != \
                cfg.model.name:
            raise ConfigError(f"{key}.model={model!r} disagrees with model.name={cfg.model.name!r}: the tasks share "
                              f"one backbone; remove {key}.model, or set model.name for all of them")
        weight = _coerce(raw.get("weight", 1.0), float, f"{key}.weight")
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"{key}.weight={weight} must be a finite number > 0 (the factor of its loss)")
        sections = {s: _build(c, raw.get(s) or {}, f"{key}.{s}.") if isinstance(raw.get(s) or {}, dict) else None
                    for s, c in (("task", TaskConfig), ("data", DataConfig), ("eval", EvalConfig))}
        if None in sections.values():
            raise ConfigError(f"{key}.task, .data and .eval must be mappings of those sections' keys")
        if sections["task"].name not in MULTITASK_TASKS:
            raise ConfigError(f"{key}.task.name={sections['task'].name!r} has no head on a pooled backbone output: "
                              f"multitask takes {list(MULTITASK_TASKS)}; train it alone with hftl finetune")
        entries.append({"name": name, "weight": weight, **sections})
    if len(entries) == 1:
        raise ConfigError("multitask.tasks lists one task: add a second, or train it alone (task and data sections)")
    if entries and cfg.strategy.name == "lp_ft":
        raise ConfigError("strategy.name=lp_ft is not available with multitask.tasks: use linear_probe, head, full, "
                          "freeze_n or a peft method")
    return entries


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    output_dir: str = field(default="runs/default", metadata={"help": "Run directory (config, metrics, model, card)."})
    overwrite: bool = _f(False, "Replace the hftl run in output_dir: only the files hftl wrote there are removed "
                                "(a folder hftl did not make is never written into).")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate(cfg: Config) -> None:
    """Check every section against its fields' ranges and choices (again: a field may have been set since), then
    what spans keys: batch vs accumulation, the strategy name, the Hub target, the run directory. Raises ConfigError
    naming the key. Needs no model, data or registry import: it runs before any compute, in well under a second."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            check_fields(section, f"{f.name}.")
    check_fields(cfg, "")
    if not cfg.output_dir.strip():
        raise ConfigError(f"output_dir={cfg.output_dir!r} is empty (an unset shell variable?): set output_dir to a "
                          "new folder, e.g. output_dir=runs/my-run")
    if cfg.overwrite and cfg.train.resume:
        raise ConfigError("overwrite=true and train.resume=true contradict each other: overwrite starts over, resume "
                          "continues; set one")
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    check_strategy_name(cfg.strategy.name)
    if t.stop_below_baseline < 0 or t.stop_below_baseline and not cfg.eval.baselines:
        raise ConfigError(f"train.stop_below_baseline={t.stop_below_baseline} needs a count >= 0 and "
                          "eval.baselines=true (the baselines it compares with)")
    check_task_name(cfg.task.name)
    if cfg.disentangle.factor_column == cfg.data.label_column:
        raise ConfigError(f"disentangle.factor_column={cfg.disentangle.factor_column!r} is data.label_column too: set "
                          "it to the column of the second factor (e.g. speaker), different from the first")
    multitask_entries(cfg)  # each task's sections, names and model: at parse time
    if cfg.hub.push and "/" not in cfg.hub.repo_id:
        raise ConfigError(f"hub.repo_id={cfg.hub.repo_id!r} must look like 'user/name' when hub.push=true")


def _set_path(tree: dict, dotted: str, value: str) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; ConfigError naming the file, line and column of a syntax error."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        opened = f" ({context} at line {start.line + 1}, column {start.column + 1})" if context and start else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}{opened}; fix the syntax there "
                          f"(indentation, brackets, quotes)") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults), apply ``key.sub=value`` overrides, validate.

    Example:
        >>> load_config("recipes/configs/text/minilm-rt-lora.yaml", ["train.lr=1e-4"])  # doctest: +SKIP
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at its top level")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set_path(data, key.strip(), value)
    return _build(Config, data, "")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """Every key with its default and help text, for ``hftl config``."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            typ = get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f" {list(f.metadata['choices'])}" if f.metadata.get("choices") else ""
            spec = f.metadata.get("range")
            allowed = f"  ({'each ' if f.metadata.get('item') else ''}{spec})" if spec else ""
            lines.append(f"{prefix}{f.name} = {default!r}{choices}{allowed}\n    {f.metadata.get('help', '')}")

    walk(Config, "")
    return "\n".join(lines)


USAGE = """usage: {prog} [--config FILE.yaml] [key.sub=value ...]

Keys (hftl config lists them all with their help):
  model.name, data.name, strategy.name, train.epochs, train.lr, output_dir, ...
"""


def parse_args(argv: list[str], prog: str = "hftl", about: str = "") -> Config:
    """``--config FILE`` and ``key.sub=value`` overrides, as recipes and the CLI take them; ``--help`` prints the
    usage, ``about`` (what the command does and writes, an example) and every key."""
    path, overrides, argv = None, [], list(argv)
    while argv:
        arg = argv.pop(0)
        if arg in ("-h", "--help"):
            usage, keys = USAGE.format(prog=prog).split("\n", 1)
            print(f"{usage}\n\n{about.strip()}\n{keys}\n{describe()}" if about else f"{usage}\n{keys}\n{describe()}")
            raise SystemExit(0)
        if arg == "--config" and argv:
            path = argv.pop(0)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg:
            overrides.append(arg.removeprefix("--"))
        else:
            raise ConfigError(f"unexpected argument {arg!r}; use --config FILE and key.sub=value overrides")
    return load_config(path, overrides)
