"""Masked modeling as continued pretraining: the model with its masked-modeling head, its unlabelled data,
its scores, and the Hub-format model that fine-tuning starts from.

One objective per modality, picked from the processor like everything else in hftl: masked-LM (text,
``AutoModelForMaskedLM``), SimMIM masked image modeling (vision, ``AutoModelForMaskedImageModeling``: ViT, DeiT,
Swin), and wav2vec2's contrastive masked-frame objective (speech, ``AutoModelForPreTraining``). A checkpoint
without that head (MiniLM has none) gets a new one, and the log says which tensors start new.

Example:
    >>> model, new = load_masked_model("sentence-transformers/all-MiniLM-L6-v2", "text")  # doctest: +SKIP
    >>> train, val, collate, val_collate = masked_datasets(cfg, processor, "text", model)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from hftl.config import Config, DataConfig, PretrainConfig
from hftl.data import DataError, encode, load_splits
from hftl.masking import (
    IGNORE,
    MaskedImageCollator,
    MaskedLMCollator,
    MaskedSpeechCollator,
    PatchMaskGenerator,
    pack_texts,
)
from hftl.storage import names_disk_full
from hftl.strategies import adapters_merged
from hftl.train import sharded

log = logging.getLogger(__name__)
AUTO_CLASS = {"text": "AutoModelForMaskedLM", "vision": "AutoModelForMaskedImageModeling",
              "speech": "AutoModelForPreTraining"}
OBJECTIVE = {"text": "masked-LM", "vision": "masked image modeling (SimMIM)",
             "speech": "wav2vec2 masked-frame contrastive"}
VAL_SEED = 1234  # validation masks: the same every epoch


def load_masked_model(name: str, modality: str, *, revision: str = "main", trust_remote_code: bool = False,
                      from_scratch: bool = False) -> tuple[torch.nn.Module, list[str]]:
    """The model with its masked-modeling head, and the names of the tensors that start new (not in the checkpoint).

    Vision: the SimMIM decoder upsamples by the patch size (``encoder_stride``). ``from_scratch``: random weights of
    the checkpoint's architecture (every tensor is then new).

    Example:
        >>> model, new = load_masked_model("sentence-transformers/all-MiniLM-L6-v2", "text")  # doctest: +SKIP
        >>> sorted(new)[:1]  # doctest: +SKIP
        ['cls.predictions.bias']
    """
    import transformers

    from hftl.models import model_config, resolve

    kwargs = resolve(name, revision, trust_remote_code)
    config = model_config(name, kwargs)  # custom code: names model.trust_remote_code
    if modality == "vision" and hasattr(config, "encoder_stride") and hasattr(config, "patch_size"):
        config.encoder_stride = config.patch_size
    auto = getattr(transformers, AUTO_CLASS[modality])
    try:
        if from_scratch:
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
            new = [n for n, _ in model.named_parameters()]
            log.warning("masked modeling from scratch: every weight of %s (%s) starts random", name,
                        type(model).__name__)
            return model, new
        model, info = auto.from_pretrained(name, config=config, output_loading_info=True, dtype=torch.float32,
                                           **kwargs)  # float32 master weights: a half checkpoint loads as half
    except ValueError as err:  # the Auto class has no entry for this family
        raise DataError(f"{OBJECTIVE[modality]} needs a {AUTO_CLASS[modality]} model; {name!r} "
                        f"({config.model_type}) has none: {str(err).splitlines()[0]}") from err
    new = sorted(info["missing_keys"])
    init_new(model, new)
    if new:
        log.warning("%s head of %s starts new (not in the checkpoint): %d tensors: %s", OBJECTIVE[modality], name,
                    len(new), ", ".join(new))
    return model, new


@torch.no_grad()
def init_new(model: torch.nn.Module, names: list[str]) -> None:
    """Initialise the new head's tensors explicitly (BERT's scheme: normal weights, zero biases, unit norms): some
    transformers releases leave a tied new bias (MLM ``cls.predictions.bias``) as uninitialised memory."""
    params = dict(model.named_parameters())
    std = getattr(model.config, "initializer_range", 0.02)
    for name in names:
        p = params.get(name)
        if p is None:
            continue
        if name.endswith("bias") or name.endswith("mask_token"):
            p.zero_()
        elif p.ndim == 1:  # norm weights
            p.fill_(1.0)
        else:
            p.normal_(0.0, std)


def unlabeled_texts(data: DataConfig, sources: list[str], column: str = "text") -> list[str]:
    """The stage's text: ``train`` (every train-split input, labels unused), ``unlabeled`` (the source's unlabelled
    rows, Rotten Tomatoes' plot texts), or files (.txt: a text per line; .csv/.json: ``data.text_column``).

    Validation and test inputs are never included: what fine-tuning is scored on stays unseen.
    """
    texts: list[str] = []
    for source in sources:
        if source == "train":
            texts += load_splits(dataclasses.replace(data, max_train_samples=0))["train"][column]
        elif source == "unlabeled":
            if data.name != "rotten_tomatoes":
                raise DataError(f"pretrain.text_sources=unlabeled: only rotten_tomatoes has unlabelled rows "
                                f"(not {data.name!r}); list a .txt/.csv/.json file instead")
            import pandas as pd

            from hftl import assets

            df = pd.read_csv(assets.data_file("rotten_tomatoes"))
            texts += df.loc[df["category"] == "plot", "text"].dropna().astype(str).tolist()
        elif source.endswith(".txt"):
            texts += [line for line in Path(source).read_text(encoding=data.encoding).splitlines() if line.strip()]
        else:
            from hftl.data.sources import load_source

            raw, col, _ = load_source(DataConfig(name=source, text_column=data.text_column, encoding=data.encoding))
            texts += [str(t) for t in raw["train"][col]]
    return texts


def _limit(ds: Dataset, n: int, seed: int) -> Dataset:
    return ds.shuffle(seed=seed).select(range(n)) if 0 < n < len(ds) else ds


def text_block(model_cfg, tokenizer, model) -> int:
    """``model.max_length``: the block length, refused (ConfigError) above what the model's positions and the
    tokenizer take (``hftl.models.max_positions``) rather than silently shortened."""
    from hftl.models import check_max_length

    check_max_length(model_cfg, tokenizer, model.config)
    return model_cfg.max_length


def masked_datasets(cfg: Config, processor, modality: str, model) -> tuple[Dataset, Dataset, object, object]:
    """Unlabelled train and validation inputs of the stage, with their train and (fixed-mask) validation collators.

    Text: packed token blocks of ``model.max_length``; vision: every train image (augmented unless
    ``data.augment=false``), labels unused;
    speech: every train clip. Validation: the validation split's inputs.
    """
    p, seed = cfg.pretrain, cfg.train.seed
    if modality == "text":
        texts = unlabeled_texts(cfg.data, p.text_sources)
        if 0 < p.max_samples < len(texts):
            texts = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[: p.max_samples]]
        val_texts = load_splits(cfg.data)["validation"]["text"]
        block = text_block(cfg.model, processor, model)
        train, val = (pack_texts(t, processor, block, pack=p.pack) for t in (texts, val_texts))
        return (train, val, MaskedLMCollator(processor, p.mask_rate, p.whole_word),
                MaskedLMCollator(processor, p.mask_rate, p.whole_word, seed=VAL_SEED))
    splits = load_splits(dataclasses.replace(cfg.data, max_train_samples=0))
    splits = DatasetDict(train=_limit(splits["train"], p.max_samples, seed), validation=splits["validation"])
    encoded, _ = encode(splits, processor, cfg.data, augment=modality == "vision" and cfg.data.augment, seed=seed)
    if modality == "vision":
        c = model.config
        size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
        patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
        masks = PatchMaskGenerator(size, patch, p.mask_patch_size, p.mask_rate)
        return (encoded["train"], encoded["validation"], MaskedImageCollator(masks),
                MaskedImageCollator(masks, seed=VAL_SEED))
    return (encoded["train"], encoded["validation"], MaskedSpeechCollator(processor, model, p.mask_rate, p.mask_span),
            MaskedSpeechCollator(processor, model, p.mask_rate, p.mask_span, seed=VAL_SEED))


@torch.no_grad()
def masked_scores(model, loader, accelerator) -> dict:
    """Validation of the masked stage: ``loss`` (reconstruction for images, per batch; for speech wav2vec2's
    contrastive + diversity loss per masked frame, which its model sums over the batch: chance is about
    ln(1 + num_negatives) + the diversity term), and for text the loss per masked token, ``perplexity`` and
    ``masked_accuracy`` (the original token ranked first).

    Example:
        >>> model, state = fit(..., evaluate_fn=masked_scores)  # doctest: +SKIP
    """
    model.eval()
    device = accelerator.device
    loss, count, correct = (torch.zeros((), device=device, dtype=torch.float64) for _ in range(3))
    text = False
    with adapters_merged(accelerator.unwrap_model(model), sharded(accelerator)):  # LoRA stages
        for batch in loader:
            out = model(**batch)
            if "labels" in batch:  # masked-LM: weight by masked tokens
                text = True
                masked = batch["labels"] != IGNORE
                n = masked.sum()
                loss += out.loss.double() * n
                count += n
                correct += ((out.logits.argmax(-1) == batch["labels"]) & masked).sum()
            elif "mask_time_indices" in batch:  # wav2vec2: the loss sums over masked frames; per masked frame
                loss += out.loss.double()
                count += batch["mask_time_indices"].sum()
            else:
                loss += out.loss.double()
                count += 1
    loss, count, correct = (accelerator.reduce(t, "sum") for t in (loss, count, correct))
    mean = float(loss / count.clamp(min=1))
    if not text:
        return {"loss": mean}
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "masked_accuracy": float(correct / count)}


def stage_strategy(model, cfg: PretrainConfig, new: list[str]):
    """``full`` trains everything; a peft method trains its adapters and the new head (merged on save)."""
    if cfg.strategy == "full":
        return model
    from peft import get_peft_model
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from hftl.strategies import TARGET_MODULES, _peft_table

    method = "lora" if cfg.strategy == "dora" else cfg.strategy
    config_cls = {str(getattr(k, "value", k)).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}[method]
    args = {"use_dora": True} if cfg.strategy == "dora" else {}
    args.update(cfg.peft)
    model_type = model.config.model_type
    if not args.get("target_modules"):
        args["target_modules"] = (_peft_table(method, "TARGET_MODULES").get(model_type)
                                  or _peft_table("lora", "TARGET_MODULES").get(model_type)
                                  or TARGET_MODULES.get(model_type) or "all-linear")
    heads = sorted({n.split(".")[0] for n in new if not n.startswith(model.base_model_prefix)})
    args["modules_to_save"] = sorted(set(args.get("modules_to_save") or []) | set(heads))
    return get_peft_model(model, config_cls(**args))


@names_disk_full("free space on that disk and rerun with train.resume=true (the last checkpoint holds the trained "
                 "weights: no training is repeated), or set output_dir to another disk")
def save_stage(path: str | Path, model, processor, source: str, metrics: dict, *,
               state_dict: dict | None = None, title: str | None = None) -> Path:
    """The stage's model in Hub format (adapters merged), its processor, the source's sentence-transformers pooling
    (``1_Pooling``: fine-tuning pools as the source model did), ``history.png`` when ``title`` is given (plotted
    from ``metrics["history"]``), and ``pretrain_metrics.json``: the mark of a finished stage that a resumed run
    skips. The folder appears whole (``hftl.rundir.whole_folder``): staged in the run directory this process holds,
    else ``path`` must be new or empty (RunDirError). ``state_dict``: gathered weights of a sharded model.
    """
    from hftl.rundir import whole_folder

    with whole_folder(path) as tmp:
        if hasattr(model, "merge_and_unload"):
            model, state_dict = model.merge_and_unload(), None
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        processor.save_pretrained(tmp)
        pooling = _source_dir(source) / "1_Pooling"
        if pooling.is_dir():
            shutil.copytree(pooling, tmp / "1_Pooling")
        if title is not None:
            plot_history(metrics["history"], tmp / "history.png", title)
        (tmp / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return Path(path)


def _source_dir(name: str) -> Path:
    if Path(name).exists():
        return Path(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["1_Pooling/*"], local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a sentence-transformers repo: no pooling to carry
        return Path("/nonexistent")


def finished_stage(path: str | Path) -> dict | None:
    """The metrics of a finished stage saved at ``path``, or None. A stage folder appears whole (``save_stage``), so
    one that is there has finished; whether its settings are this run's is checked when the run is claimed."""
    marker = Path(path) / "pretrain_metrics.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and validation loss per epoch, and masked-token accuracy when there is one (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["validation"]["loss"] for h in history], "s-", label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("masked-modeling loss")
    axes[0].legend()
    if "masked_accuracy" in history[0]["validation"]:
        axes[1].plot(epochs, [h["validation"]["masked_accuracy"] for h in history], "o-", color="C2")
        axes[1].set_ylabel("masked-token accuracy (validation)")
    else:
        axes[1].set_axis_off()
    axes[1].set_xlabel("epoch")
    fig.suptitle(title or "masked-modeling stage", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_stage_against_scratch(history: list[dict], arms: dict[str, list[float]], path: str | Path, *,
                               loss_label: str, accuracy_label: str, stage_label: str = "masked-stage epoch",
                               train_curve: bool = True) -> Path:
    """Left: the masked stage's loss per epoch; right: test accuracy of each arm (``{label: one accuracy per
    seed}``, from scratch first), mean ± sd bars with one dot per seed. For the benchmarks that put a masked stage
    against the same fine-tuning from scratch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["validation"]["loss"] for h in history], "o-", label="validation")
    if train_curve:
        left.plot(epochs, [h["train_loss"] for h in history], "s--", label="train")
    left.set_xlabel(stage_label)
    left.set_ylabel(loss_label)
    left.legend(fontsize=8)
    from hftl.shots.stats import mean_sd

    for i, accs in enumerate(arms.values()):
        s = mean_sd(accs)
        right.barh(i, s["mean"], xerr=s["sd"], color="#2a7" if i else "#999")
        right.plot(accs, [i] * len(accs), "k.")
    right.set_yticks(range(len(arms)), list(arms))
    right.set_xlabel(accuracy_label)
    right.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
