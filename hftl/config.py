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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and what is allowed."""


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = _f("sentence-transformers/all-MiniLM-L6-v2", "Hub id or local path of the pretrained backbone.")
    revision: str = _f("main", "Hub revision (branch, tag or commit) of the backbone.")
    pooling: str = _f(
        "auto",
        "How backbone outputs become one vector: auto picks per model family.",
        ("auto", "mean", "cls", "pooler", "max"),
    )
    head_hidden: list = _f([], "Sizes of hidden layers added before the output layer (empty: a linear head).")
    head_dropout: float = _f(0.1, "Dropout before each head layer.")
    max_length: int = _f(128, "Longest token sequence kept (text); longer inputs are truncated.")
    trust_remote_code: bool = _f(False, "Run model code shipped in the repository (off: only transformers' code).")
    dtype: str = _f("float32", "Weights dtype when loading.", ("float32", "bfloat16", "float16"))


@dataclass
class DataConfig:
    name: str = _f("rotten_tomatoes", "Embedded set name, Hub dataset id, or a local .csv/.json/.jsonl/.parquet file.")
    text_column: str = _f("text", "Column holding the input text.")
    label_column: str = _f("label", "Column holding the class label.")
    splits: dict = _f({}, "Map of split name to file or Hub split, e.g. {train: a.csv, test: b.csv}.")
    validation_size: float = _f(0.1, "Fraction of the data for validation when the source has no such split.")
    test_size: float = _f(0.1, "Fraction of the data for test when the source has no such split.")
    split_seed: int = _f(0, "Seed of the stratified split; every recipe and benchmark shares it.")
    max_train_samples: int = _f(0, "Keep at most this many training examples, stratified (0: all).")
    input_column: str = _f(
        "", "Column holding image or audio (PIL/bytes/array or a file path); empty: text_column, else "
        "image/audio/path."
    )
    max_seconds: float = _f(10.0, "Speech: clips are cut to this many seconds (and padded per batch).")
    augment: bool = _f(True, "Images: random resized crop (+ flip where it keeps the class) for training; never "
                             "for cached features.")


@dataclass
class StrategyConfig:
    name: str = _f(
        "full",
        "Transfer strategy: linear_probe, head, full, freeze_n, or any peft method (lora, dora, ia3, loha, ...).",
    )
    freeze_layers: int = _f(0, "freeze_n: freeze the embeddings and this many first layers.")
    peft: dict = _f({}, "Arguments passed to the peft method's config (r, lora_alpha, target_modules, ...).")
    merge: bool = _f(False, "Also export the adapter merged into the backbone (run_dir/merged).")


@dataclass
class TrainConfig:
    epochs: float = _f(3.0, "Passes over the training data.")
    batch_size: int = _f(32, "Effective batch size (per step, all processes and accumulation together).")
    eval_batch_size: int = _f(128, "Batch size for evaluation and feature extraction.")
    grad_accum: int = _f(1, "Gradient accumulation steps (batch_size is split over them).")
    lr: float = _f(5e-5, "Peak learning rate of the backbone (and of adapters).")
    head_lr: float = _f(0.0, "Learning rate of the new head (0: same as lr).")
    layer_lr_decay: float = _f(1.0, "Layer-wise learning rates: the top block gets lr x this, each block below one "
                                    "factor more, the embeddings last (1: one rate for all).")
    unfreeze_every: float = _f(0.0, "Gradual unfreezing: the head trains alone, then one more block from the top "
                                    "joins every this many epochs, the embeddings last (0: off).")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = _f(0.06, "Fraction of steps of linear warmup.")
    scheduler: str = _f("linear", "Learning-rate schedule after warmup.", ("linear", "cosine", "constant"))
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: off).")
    early_stopping_patience: int = _f(0, "Stop after this many evaluations without improvement (0: off).")
    metric_for_best: str = _f("accuracy", "Validation metric that picks the best checkpoint.")
    mixed_precision: str = _f("auto", "auto: bf16 on GPUs that have it, fp32 on CPU.", ("auto", "no", "bf16", "fp16"))
    seed: int = _f(0, "Seed of initialisation, shuffling and dropout.")
    group_by_length: bool = _f(True, "Batch examples of similar length together (less padding).")
    num_workers: int = _f(-1, "DataLoader worker processes (-1: none on CPU, up to 8 beside a GPU).")
    resume: bool = _f(False, "Continue from the last complete checkpoint in output_dir/checkpoints.")
    checkpoint_every: int = _f(0, "Also checkpoint every this many optimizer steps (0: at each epoch end only).")
    keep_checkpoints: int = _f(2, "Complete checkpoints kept in output_dir/checkpoints (the oldest are deleted).")
    gradient_checkpointing: bool = _f(False, "Recompute the backbone's activations in backward (less memory, slower).")
    compile: str = _f("auto", "torch.compile the model before training (auto: text models on a GPU).",
                      ("auto", "true", "false"))
    report_to: str = _f("tensorboard", "Trackers the loop logs to through accelerate, comma-separated: tensorboard "
                                       "(in output_dir/tensorboard), wandb, mlflow, comet_ml, aim, trackio, clearml, "
                                       "dvclive, swanlab (installed ones), all, or none.")
    stop_below_baseline: int = _f(0, "Stop when validation metric_for_best has not beaten the best baseline "
                                     "(eval.baselines) for this many epochs in a row (0: off).")


@dataclass
class EvalConfig:
    metrics: list = _f(["accuracy", "f1"], "Metrics computed on validation and test (evaluate modules).")
    baselines: bool = _f(True, "Also score the majority class and a classical model (TF-IDF, pixels or spectral "
                               "features + logistic regression) on the same splits; warn when the run does not beat "
                               "them.")
    drift: bool = _f(True, "Record per epoch how far each backbone block moved from its pretrained weights (keeps a "
                           "CPU copy of the trainable backbone weights).")
    report: bool = _f(True, "Write output_dir/report.html (curves, confusion matrix, worst examples, drift, "
                            "parameters) and output_dir/predictions.jsonl for the test split.")


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the trained model, card and metrics to the Hub at the end.")
    repo_id: str = _f("", "Target repository, e.g. user/minilm-rt-lora.")
    private: bool = _f(False, "Create the repository as private.")
    revision: str = _f("", "Branch to push to (empty: main).")


@dataclass
class ShotsConfig:
    ks: list = _f([1, 2, 4, 8, 16, 32], "Few-shot rungs: labelled examples per class.")
    seeds: list = _f([0, 1, 2, 3, 4], "Seeds of the resampled support sets, one set per seed and k (at least 2).")
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
    probe_c: float = _f(1.0, "Inverse L2 strength of the logistic-regression head (probe and setfit).")
    setfit_steps: int = _f(10, "setfit: contrastive steps; each takes every pair of the batch.")
    setfit_lr: float = _f(1e-4, "setfit: learning rate of the encoder.")
    setfit_layers: int = _f(0, "setfit: top encoder blocks that train (0: all); those below run once per input.")
    lora_steps: int = _f(30, "lora: optimisation steps on the support set.")
    lora_lr: float = _f(5e-4, "lora: learning rate of the adapters and the head.")
    lora: dict = _f({"r": 8, "lora_alpha": 16, "lora_dropout": 0.1}, "lora: arguments of peft's LoraConfig.")
    batch_size: int = _f(64, "setfit and lora: support examples per step (all of them when fewer).")
    full: bool = _f(True, "Ladder: also fine-tune on all the training data with strategy.name.")

    def __post_init__(self) -> None:
        from hftl.shots import check_shots_config  # late: shots imports torch

        check_shots_config(self)


TEXT_SOURCES = ("train", "unlabeled")
TEXT_FILES = (".txt", ".csv", ".json", ".jsonl")


@dataclass
class PretrainConfig:
    then_finetune: bool = _f(
        False, "pretrain_masked: after the masked stage, fine-tune its model with strategy.name (one resumable run)."
    )
    epochs: float = _f(1.0, "Passes of the masked-modeling stage over its unlabelled data.")
    batch_size: int = _f(32, "Effective batch of the masked stage (blocks, images or clips per optimizer step).")
    lr: float = _f(1e-4, "Peak learning rate of the masked stage (its schedule and warmup are train.*'s).")
    mask_rate: float = _f(
        0.15, "Fraction masked: of tokens (text), of patch blocks (vision), of frames starting a span (speech)."
    )
    whole_word: bool = _f(False, "Text: mask every token of a chosen word together (whole-word masking).")
    pack: bool = _f(True, "Text: concatenate texts and cut blocks of model.max_length tokens (no padding at all).")
    text_sources: list = _f(
        ["train"],
        "Text of the stage: train (inputs of the whole train split, labels unused, data.max_train_samples ignored), "
        "unlabeled (the source's unlabelled rows: Rotten Tomatoes plot texts), or .txt/.csv/.json files.",
    )
    max_samples: int = _f(0, "Use at most this many unlabelled texts, images or clips (0: all).")
    mask_patch_size: int = _f(0, "Vision: side in pixels of the square masked blocks (0: the model's patch size).")
    mask_span: int = _f(10, "Speech: frames per masked span (wav2vec2's mask_time_length).")
    from_scratch: bool = _f(False, "Start from random weights of model.name's architecture instead of its weights.")
    strategy: str = _f("full", "full, or a peft method (lora, ...) whose adapters train and are merged on save.")
    peft: dict = _f({}, "Arguments of the stage's peft method (r, lora_alpha, target_modules, ...).")

    def __post_init__(self) -> None:
        if not 0 < self.mask_rate < 1:
            raise ConfigError(f"pretrain.mask_rate={self.mask_rate} must be between 0 and 1")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("pretrain.epochs, pretrain.lr and pretrain.batch_size must be positive")
        for source in self.text_sources:
            if source not in TEXT_SOURCES and Path(str(source)).suffix.lower() not in TEXT_FILES:
                raise ConfigError(
                    f"pretrain.text_sources has {source!r}: use {list(TEXT_SOURCES)} or a .txt/.csv/.json file"
                )
        if self.strategy in ("linear_probe", "head", "freeze_n"):
            raise ConfigError(
                f"pretrain.strategy={self.strategy!r}: the masked stage trains with full or a peft method"
            )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output_dir: str = field(default="runs/default", metadata={"help": "Run directory (config, metrics, model, card)."})

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choices(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(
                f"{prefix}{f.name}={value!r} is not allowed; choose one of {list(f.metadata['choices'])}"
            )


def validate(cfg: Config) -> None:
    """Check values that types alone cannot; raise ConfigError naming the key."""
    _check_choices(cfg, "")
    t = cfg.train
    for key, value in {
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.grad_accum": t.grad_accum,
        "model.max_length": cfg.model.max_length,
    }.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if not 0 < t.layer_lr_decay <= 1:
        raise ConfigError(f"train.layer_lr_decay={t.layer_lr_decay} must be in (0, 1] (1: one rate for all)")
    if t.unfreeze_every < 0:
        raise ConfigError(f"train.unfreeze_every={t.unfreeze_every} must be at least 0 (0: off)")
    if t.num_workers < -1:
        raise ConfigError(f"train.num_workers={t.num_workers} must be -1 (auto) or at least 0")
    if t.epochs <= 0 or t.lr <= 0:
        raise ConfigError(f"train.epochs ({t.epochs}) and train.lr ({t.lr}) must be positive")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    for key in ("validation_size", "test_size"):
        if not 0 < getattr(cfg.data, key) < 0.5:
            raise ConfigError(f"data.{key}={getattr(cfg.data, key)} must be between 0 and 0.5")
    from hftl.strategies import check_strategy_name  # late: strategies import torch

    check_strategy_name(cfg.strategy.name)
    if t.stop_below_baseline < 0 or t.stop_below_baseline and not cfg.eval.baselines:
        raise ConfigError(f"train.stop_below_baseline={t.stop_below_baseline} needs a count >= 0 and "
                          "eval.baselines=true (the baselines it compares with)")
    if cfg.hub.push and "/" not in cfg.hub.repo_id:
        raise ConfigError(f"hub.repo_id={cfg.hub.repo_id!r} must look like 'user/name' when hub.push=true")


def _scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    parsed = yaml.safe_load(value) if value else value
    return parsed if isinstance(parsed, (bool, list, dict)) or parsed is None else value


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = get_origin(typ) or typ
    if origin is str and isinstance(value, bool):  # a switch with more than two values: true/false/auto
        value = str(value).lower()
    if origin is bool and isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
    elif isinstance(value, str) and origin in (int, float):
        try:
            value = origin(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be of type {origin.__name__}") from None
    elif isinstance(value, str) and origin in (list, dict):
        value = yaml.safe_load(value) if value else origin()
    if origin is dict and isinstance(value, dict):  # overrides such as strategy.peft.r=16 arrive as text
        value = {k: _scalar(v) for k, v in value.items()}
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {getattr(origin, '__name__', origin)}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix + key!r}{hint}; valid keys: {sorted(names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{prefix}{key} must be a mapping of {sorted(f.name for f in dataclasses.fields(typ))}"
                )
            kwargs[key] = _build(typ, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, typ, f"{prefix}{key}")
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: str) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


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
        data = yaml.safe_load(path.read_text()) or {}
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
            lines.append(f"{prefix}{f.name} = {default!r}{choices}\n    {f.metadata.get('help', '')}")

    walk(Config, "")
    return "\n".join(lines)


USAGE = """usage: {prog} [--config FILE.yaml] [key.sub=value ...]

Keys (hftl config lists them all with their help):
  model.name, data.name, strategy.name, train.epochs, train.lr, output_dir, ...
"""


def parse_args(argv: list[str], prog: str = "hftl") -> Config:
    """``--config FILE`` and ``key.sub=value`` overrides, as recipes and the CLI take them."""
    path, overrides, argv = None, [], list(argv)
    while argv:
        arg = argv.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE.format(prog=prog) + "\n" + describe())
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
