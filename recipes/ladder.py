"""The transfer ladder: zero-shot, the few-shot curve, full-data fine-tuning, on one task and one plot.

    hftl ladder --config recipes/configs/text/minilm-rt-ladder.yaml
    python recipes/ladder.py --config recipes/configs/text/minilm-rt-ladder.yaml "shots.methods=[prototype,probe]"
    hftl ladder --config recipes/configs/text/minilm-rt-ladder.yaml shots.full=false "shots.ks=[4,16]"

Frozen features of the train and evaluation splits are computed once (and cached) and reused by zero-shot, by
every k and seed of the frozen methods, and by a ``linear_probe`` full rung. The full rung is
``recipes/finetune.py`` with ``strategy.name`` (its run directory: ``output_dir/full``). Writes
``output_dir/config.yaml``, ``metrics.json`` (``zero_shot``, ``few_shot``, ``few_shot_transductive``, ``full``,
``majority``, ``cost``, ``seconds``), ``ladder.png`` and ``report.html``. The zero- and few-shot stages run on the main
process. ``output_dir`` follows the run-directory rules of hftl/rundir.py (``overwrite``, ``train.resume``; ``full``
too).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import hftl
from hftl.config import Config, ConfigError, save_config
from hftl.features import cache_dir
from hftl.metrics import check_metrics
from hftl.models import check_max_length, model_config
from hftl.rundir import RunDir, claim
from hftl.shots import (
    ShotContext,
    check_ladder_data,
    few_shot_curve,
    is_nli_model,
    text_encoder,
    zero_shot_embedding,
    zero_shot_nli,
)
from hftl.shots.prior import PRIOR_METHODS


def zero_shot(
    cfg: Config, model, tokenizer, labels: list[str], query_texts: list[str], query_features: torch.Tensor
) -> tuple[str, torch.Tensor]:
    """Zero-shot scores on the evaluation split: NLI entailment for NLI checkpoints, else prompt similarity."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kwargs = hftl.resolve(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    mode = cfg.shots.zero_shot
    if mode == "auto":
        mode = "nli" if is_nli_model(AutoConfig.from_pretrained(cfg.model.name, **kwargs)) else "embedding"
    templates, descriptions = cfg.shots.templates or None, cfg.shots.label_descriptions
    if mode == "nli":
        nli = AutoModelForSequenceClassification.from_pretrained(cfg.model.name, **kwargs).to(model.device)
        return mode, zero_shot_nli(
            nli,
            tokenizer,
            query_texts,
            labels,
            descriptions=descriptions,
            templates=templates,
            max_length=cfg.model.max_length,
        )
    encode = text_encoder(model, tokenizer, max_length=cfg.model.max_length)
    return mode, zero_shot_embedding(encode, query_features, labels, descriptions=descriptions, templates=templates)


def zero_shot_prior(cfg: Config, mode: str, model, tokenizer, labels: list[str], train_texts: list[str], feats: dict,
                    query_scores: torch.Tensor):
    """The zero-shot classifier as the prior of the zs_* few-shot methods (``hftl.shots.prior``): the same prompts and
    scores as the zero-shot rung. NLI scores only the train rows that the support sets draw."""
    from hftl.shots.prior import nli_prior, text_prior

    prompts = {"descriptions": cfg.shots.label_descriptions, "templates": cfg.shots.templates or None}
    train, query = feats["train"]["features"], feats[cfg.shots.split]["features"]
    if mode != "nli":
        encode = text_encoder(model, tokenizer, max_length=cfg.model.max_length)
        return text_prior(encode, tokenizer, labels, train, query, max_length=cfg.model.max_length, **prompts)
    from transformers import AutoModelForSequenceClassification

    from hftl.shots import support_indices

    kwargs = hftl.resolve(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    nli = AutoModelForSequenceClassification.from_pretrained(cfg.model.name, **kwargs).to(model.device)
    y = feats["train"]["labels"].numpy()
    rows = [i for s in cfg.shots.seeds for i in support_indices(y, max(cfg.shots.ks), s)]  # nested in k

    def score(texts: list[str]) -> torch.Tensor:
        return zero_shot_nli(nli, tokenizer, texts, labels, max_length=cfg.model.max_length, **prompts)

    return nli_prior(score, train_texts, rows, query_scores)


def frozen_features(cfg: Config, model, encoded, collate, accelerator, splits: tuple[str, ...]) -> tuple[dict, dict]:
    """Cached features of the splits, and what they cost: seconds, and whether the backbone ran (not the cache)."""
    before = set(cache_dir().glob("*.safetensors"))
    start = time.perf_counter()
    feats = {
        s: hftl.cached_features(model, encoded[s], collate, accelerator, cfg.train.eval_batch_size) for s in splits
    }
    seconds = time.perf_counter() - start
    computed = bool(set(cache_dir().glob("*.safetensors")) - before)
    return feats, {
        "backbone_pass_seconds": seconds,
        "backbone_ran": int(computed),
        "examples": sum(len(encoded[s]) for s in splits),
    }


def cost_line(cost: dict, few: dict, cfg: Config) -> str:
    """The price of the frozen rungs against one backbone pass: (pass + every k x seed fit) / pass."""
    frozen = sum(few["seconds"][m]["inductive"] for m in ("prototype", "probe") if m in few["seconds"])
    cost["frozen_methods_seconds"] = frozen
    cost["ratio_to_one_pass"] = (cost["backbone_pass_seconds"] + frozen) / max(cost["backbone_pass_seconds"], 1e-9)
    runs = len(cfg.shots.ks) * len(cfg.shots.seeds)
    note = "" if cost["backbone_ran"] else " (features came from the cache: the pass time is a load time)"
    return (
        f"cost: one backbone pass over {cost['examples']} examples {cost['backbone_pass_seconds']:.1f} s; "
        f"{runs} support sets x {[m for m in ('prototype', 'probe') if m in few['seconds']]} {frozen:.1f} s; "
        f"ladder / pass = {cost['ratio_to_one_pass']:.3f}{note}"
    )


def preflight(cfg: Config, labels: list[str], train_labels, processor) -> None:
    """Everything that would fail after the first rungs, refused before any: k above a class's count, unknown
    label descriptions, peft arguments, a max_length above the model's positions, NLI zero-shot on a model without
    an entailment label (the full rung's metrics are checked before the data loads)."""
    check_ladder_data(cfg.shots, labels, train_labels)
    config = model_config(cfg.model.name, hftl.resolve(cfg.model.name, cfg.model.revision,  # names trust_remote_code
                                                       cfg.model.trust_remote_code))
    check_max_length(cfg.model, processor, config)
    if cfg.shots.zero_shot == "nli" and not is_nli_model(config):
        raise ConfigError(f"shots.zero_shot=nli but {cfg.model.name} has no entailment label "
                          f"({dict(config.id2label or {})}): set shots.zero_shot=embedding (or auto), or use an NLI "
                          f"model")


def main(cfg: Config) -> dict:
    start = time.perf_counter()
    if cfg.shots.full:  # the full rung runs last: its metric names are checked now
        check_metrics(cfg.eval.metrics, cfg.train.metric_for_best, trust_remote_code=cfg.model.trust_remote_code)
    accelerator = hftl.make_accelerator(cfg.train)
    run = claim(cfg, accelerator)  # before any model or data: output_dir is this run's, and one run writes there
    try:
        return _main(cfg, accelerator, run, start)
    finally:
        run.release()


def _main(cfg: Config, accelerator, run: RunDir, start: float) -> dict:
    hftl.set_seed(cfg.train.seed)
    splits = hftl.load_splits(cfg.data)
    labels, split = hftl.label_names(splits), cfg.shots.split
    processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    preflight(cfg, labels, splits["train"]["label"], processor)
    encoded = hftl.encode_text(splits, processor, "text", cfg.model.max_length)
    model = hftl.load_classifier(
        cfg.model.name,
        len(labels),
        id2label=dict(enumerate(labels)),
        revision=cfg.model.revision,
        pooling=cfg.model.pooling,
        head_hidden=cfg.model.head_hidden,
        head_dropout=cfg.model.head_dropout,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=cfg.model.dtype,
    ).to(accelerator.device)
    collate = hftl.collator_for(processor)
    feats, cost = frozen_features(cfg, model, encoded, collate, accelerator, ("train", split))
    train_labels, query_labels = feats["train"]["labels"], feats[split]["labels"]
    majority = float((query_labels == train_labels.bincount().argmax()).float().mean())
    metrics: dict = {"majority": majority, "cost": cost, "seconds": {"features": cost["backbone_pass_seconds"]}}
    if accelerator.is_main_process:
        if cfg.shots.zero_shot != "none":
            t0 = time.perf_counter()
            mode, scores = zero_shot(cfg, model, processor, labels, splits[split]["text"], feats[split]["features"])
            accuracy = float((scores.argmax(-1) == query_labels).float().mean())
            metrics["zero_shot"] = {"accuracy": accuracy, "seconds": time.perf_counter() - t0}
            accelerator.print(f"zero-shot ({mode}) on {split}: accuracy {accuracy:.3f} (majority {majority:.3f})")
        ctx = ShotContext(
            feats["train"]["features"],
            train_labels,
            feats[split]["features"],
            query_labels,
            len(labels),
            model=model,
            train_inputs=encoded["train"],
            query_inputs=encoded[split],
            collate=collate,
            batch_size=cfg.train.eval_batch_size,
        )
        if set(cfg.shots.methods) & set(PRIOR_METHODS):  # zs_* methods: zero-shot ran (the config checks it)
            ctx.prior = zero_shot_prior(cfg, mode, model, processor, labels, splits["train"]["text"], feats, scores)
        few = few_shot_curve(ctx, cfg.shots, report=accelerator.print)
        metrics["few_shot"] = few["inductive"]
        if "transductive" in few:
            metrics["few_shot_transductive"] = few["transductive"]
        metrics["seconds"]["few_shot"] = few["seconds"]
        accelerator.print(cost_line(cost, few, cfg))
    accelerator.wait_for_everyone()
    if cfg.shots.full:
        from hftl.recipes import finetune

        t0 = time.perf_counter()
        full = finetune.main(dataclasses.replace(cfg, output_dir=f"{cfg.output_dir}/full"))  # a run of its own
        metrics["full"] = {k: full[k] for k in ("test", "validation", "train")}
        metrics["seconds"]["full"] = time.perf_counter() - t0
    metrics["seconds"]["total"] = time.perf_counter() - start
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        with run.final_save() as stage:  # moved into place whole, then marked complete
            save_config(cfg, stage / "config.yaml")
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
            title = f"{cfg.model.name.split('/')[-1]} on {Path(cfg.data.name).name} ({split})"
            from hftl.report import plot_ladder

            plot_ladder(metrics, stage / "ladder.png", title=title, full_label=f"all data, {cfg.strategy.name}")
            if cfg.eval.report:
                from hftl.reporting import write_report

                write_report(stage, home=cfg.output_dir)  # the ladder, the config, full/'s report
        accelerator.print(f"ladder written to {out}/metrics.json and ladder.png ({metrics['seconds']['total']:.0f} s)")
    return metrics


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
