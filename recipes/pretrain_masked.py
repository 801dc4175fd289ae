"""Masked modeling as continued pretraining (text, vision, speech: the modality from the model), optionally chained
into fine-tuning on the labelled part: one config, one resumable run.

    hftl pretrain --config recipes/configs/text/minilm-rt-pretrain.yaml
    hftl pretrain --config recipes/configs/text/minilm-rt-pretrain-then-lora.yaml data.max_train_samples=256
    accelerate launch recipes/pretrain_masked.py --config recipes/configs/vision/vit-tiny-fashion-mim-then-full.yaml
    hftl pretrain --config ... train.resume=true     # a finished masked stage is skipped, the rest resumes

Stage 1 trains the model's masked-modeling objective (``hftl.pretraining``: masked-LM with random or whole-word
masks on packed blocks, SimMIM, wav2vec2's masked frames) on unlabelled inputs (``pretrain.text_sources``; the whole
train split, its labels unused) with the same ``fit`` loop, checkpoints and resume as fine-tuning, and saves the
model in Hub format to ``output_dir/pretrained`` with a plot of its history. With ``pretrain.then_finetune=true``
the fine-tune recipe then starts from that directory with ``strategy.name`` on the labelled data
(``data.max_train_samples`` labels) and writes its run directory to ``output_dir``; ``metrics.json`` holds both
stages (``pretrain`` and the fine-tuning splits).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from accelerate.utils import DistributedType

import hftl
from hftl.config import Config, save_config
from hftl.data import modality_of
from hftl.metrics import check_metrics
from hftl.models import check_max_length
from hftl.pretraining import (
    finished_stage,
    load_masked_model,
    masked_datasets,
    masked_scores,
    save_stage,
    stage_strategy,
)
from hftl.rundir import RunDir, claim
from hftl.tracking import RunMonitor, start_trackers, tracker_kwargs
from hftl.train import eval_batch, train_batch


def pretrain(cfg: Config, stage_dir: Path, run: RunDir) -> dict:
    """The masked-modeling stage: train, save the model to ``stage_dir`` (Hub format), return its metrics."""
    p = cfg.pretrain
    stage_train = dataclasses.replace(cfg.train, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, head_lr=0.0,
                                      metric_for_best="loss", early_stopping_patience=0)
    accelerator = hftl.make_accelerator(stage_train, **tracker_kwargs(cfg))  # trackers: train.report_to
    if p.strategy != "full" and accelerator.distributed_type == DistributedType.FSDP:
        # peft's trainable copy of the head (modules_to_save) keeps the original decoder tied to the input embedding
        # in another FSDP unit, which FSDP2 refuses; full fine-tuning of the stage shards (tested)
        raise ValueError(f"pretrain.strategy={p.strategy} does not run under FSDP; use pretrain.strategy=full there, "
                         "or DDP (recipes/accelerate/multi-gpu-ddp.yaml) for an adapter stage")
    hftl.set_seed(cfg.train.seed)
    processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    check_max_length(cfg.model, processor)  # text blocks longer than the positions would crash
    modality = modality_of(processor)
    model, new = load_masked_model(cfg.model.name, modality, revision=cfg.model.revision,
                                   trust_remote_code=cfg.model.trust_remote_code, from_scratch=p.from_scratch)
    train, val, collate, val_collate = masked_datasets(cfg, processor, modality, model)
    model = stage_strategy(model, p, new)
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    accelerator.print(f"{modality} masked stage ({p.strategy}): {len(train):,} unlabelled inputs, {len(new)} new "
                      f"head tensors, {trainable:,} parameters train")
    start = time.perf_counter()
    loader = hftl.make_loader(train, train_batch(stage_train, accelerator), collate, shuffle=True,
                              seed=cfg.train.seed, group=stage_train.group_by_length,
                              num_workers=stage_train.num_workers)
    val_loader = hftl.make_loader(val, eval_batch(stage_train, accelerator), val_collate, shuffle=False)
    run.logs("tensorboard")  # the tracker's folder: overwrite removes its event files
    start_trackers(accelerator, cfg, "pretrain")
    trained, state = hftl.fit(model, loader, val_loader, accelerator, stage_train, [],
                              checkpoint_dir=run.checkpoints("checkpoints-pretrain"), resume=cfg.train.resume,
                              evaluate_fn=masked_scores, monitor=RunMonitor(accelerator, cfg))
    if state.best_epoch < 1:  # a validation loss that never improved on -inf: NaN
        raise FloatingPointError(f"the masked stage's validation loss is not finite: {state.history[-1]}")
    metrics = {"validation": state.history[state.best_epoch - 1]["validation"],
               "train": {"seconds": time.perf_counter() - start, "epochs": state.epoch, "steps": state.step,
                         "examples": len(train), "new_head_tensors": len(new), "trainable_params": trainable,
                         "from_scratch": int(p.from_scratch)},
               "history": state.history}
    if modality == "text":
        metrics["train"]["tokens"] = int(sum(train["length"]))
    state_dict = accelerator.get_state_dict(trained)
    if accelerator.is_main_process:
        save_stage(stage_dir, accelerator.unwrap_model(trained), processor, cfg.model.name, metrics,
                   state_dict=state_dict, title=f"{cfg.model.name}: {modality} masked stage")
        accelerator.print(f"masked stage saved to {stage_dir} (Hub format): {metrics['validation']}")
    accelerator.wait_for_everyone()
    return metrics


def main(cfg: Config) -> dict:
    if cfg.pretrain.then_finetune:  # the fine-tuning's metrics, before the masked stage spends its compute
        check_metrics(cfg.eval.metrics, cfg.train.metric_for_best, trust_remote_code=cfg.model.trust_remote_code)
    run = claim(cfg, hftl.make_accelerator(cfg.train))  # before any model or data; one run writes output_dir
    try:
        return _main(cfg, run)
    finally:
        run.release()


def _main(cfg: Config, run: RunDir) -> dict:
    out, writer = Path(cfg.output_dir), run.writer  # only the main process writes
    stage_dir = out / "pretrained"
    metrics = finished_stage(stage_dir) if cfg.train.resume else None
    if metrics is not None:
        print(f"train.resume: the masked stage is finished ({stage_dir}), skipping it")
    else:
        metrics = pretrain(cfg, stage_dir, run)
    if not cfg.pretrain.then_finetune:
        if not writer:
            return {"pretrain": metrics}
        with run.final_save() as stage:  # moved into place, then marked complete
            save_config(cfg, stage / "config.yaml")
            (stage / "metrics.json").write_text(json.dumps({"pretrain": metrics}, indent=2, allow_nan=False))
            _report(cfg, stage, out)
        return {"pretrain": metrics}
    from hftl.recipes.finetune import main as finetune

    tuned = finetune(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(stage_dir))))
    result = {"pretrain": metrics, **tuned}
    if writer:  # the fine-tuning run directory, with the first stage added
        with run.final_save() as stage:
            save_config(cfg, stage / "config.yaml")
            (stage / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False))
            _report(cfg, stage, out)
    return result


def _report(cfg: Config, stage: Path, out: Path) -> None:
    """The run report of both stages (the masked stage's curves and the fine-tuning's report, once metrics.json
    holds both), written into the final save's ``stage`` with the fine-tuning's predictions beside it."""
    if cfg.eval.report:
        from hftl.reporting import write_report

        if (out / "predictions.jsonl").is_file():
            shutil.copy2(out / "predictions.jsonl", stage / "predictions.jsonl")
        write_report(stage, home=out)


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
