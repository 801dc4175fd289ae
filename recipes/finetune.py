"""Fine-tune a pretrained model on a labelled task with any transfer strategy.

    accelerate launch recipes/finetune.py --config recipes/configs/text/minilm-rt-lora.yaml output_dir=runs/lora
    python recipes/finetune.py --config recipes/configs/text/minilm-rt-linear_probe.yaml train.epochs=5
    hftl finetune --config recipes/configs/text/minilm-rt-full.yaml
    accelerate launch --config_file recipes/accelerate/cpu-ddp-2.yaml recipes/finetune.py train.resume=true

Launcher settings (CPU, DDP, FSDP, DeepSpeed) are in recipes/accelerate/; train.batch_size is the effective batch
whatever the number of processes. The strategy (``strategy.name``) is a config value: linear_probe, head, full,
freeze_n, lp_ft (a linear probe on cached features, then strategy.after_probe from the probed head), or any peft
method.
Writes the run directory (config.yaml, metrics.json, model/, README.md, predictions.jsonl, report.html with
report/, tensorboard/) to ``output_dir``: a new or empty folder, or an earlier run there with ``overwrite=true``
(replaced) or ``train.resume=true`` (continued); see hftl/rundir.py.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import hftl
from hftl.baselines import report_guard, run_baselines
from hftl.config import Config, ConfigError
from hftl.data import encode, modality_of
from hftl.drift import parameter_table
from hftl.models import check_max_length
from hftl.reporting import evaluate_with_predictions, write_predictions, write_report
from hftl.rundir import RunDir, claim
from hftl.tasks import get_task
from hftl.tracking import RunMonitor, quiet_unless_terminal, start_trackers, tracker_kwargs
from hftl.train import eval_batch, train_batch
from hftl.train import predict as predict_logits  # over a loader; hftl.predict is the user's (hftl.inference)


def main(cfg: Config) -> dict:
    quiet_unless_terminal()
    if cfg.task.name == "detection":  # boxes: its own data, evaluation and outputs (recipes/detect.py)
        from hftl.recipes.detect import main as detect

        return detect(cfg)
    if cfg.multitask.tasks:  # several tasks on one backbone (recipes/multitask.py)
        from hftl.recipes.multitask import main as multitask

        return multitask(cfg)
    # the task (task.name), its metrics and metric_for_best, before any compute (else they fail at the first
    # evaluation)
    task = get_task(cfg.task.name)
    task.check(cfg)
    if cfg.strategy.name == "lp_ft" and not task.caches_features:  # its probe is linear_probe on pooled features
        raise ConfigError(f"strategy.name=lp_ft probes the new head on cached pooled features, which "
                          f"task.name={cfg.task.name} does not have (its outputs are per token, frame or box): use "
                          f"strategy.name=head for the head alone, then full, freeze_n or a peft method")
    accelerator = hftl.make_accelerator(cfg.train, **tracker_kwargs(cfg))  # trackers: train.report_to
    if cfg.hub.push and accelerator.is_main_process:  # fail before any training time is spent
        hftl.check_push_access(cfg.hub.repo_id)
    run = claim(cfg, accelerator)  # before any model or data: output_dir is this run's, and one run writes there
    try:
        return _main(cfg, accelerator, run, task)
    finally:
        run.release()


def _main(cfg: Config, accelerator, run: RunDir, task) -> dict:
    hftl.set_seed(cfg.train.seed)
    splits = hftl.load_splits(cfg.data, task)
    labels = task.label_names(splits, cfg.data)
    # auto resolved once train is read (macro-F1 on imbalanced classes); the saved config keeps what the user set
    train_cfg = dataclasses.replace(cfg.train, metric_for_best=task.best_metric(cfg, splits, accelerator.print))
    resolved = dataclasses.replace(cfg, train=train_cfg)  # what the baselines, the monitor and the guard compare by
    baselines = run_baselines(splits, resolved, accelerator, task)  # majority class and a classical model, same splits
    if hasattr(task, "processor"):  # e.g. CTC's character tokenizer over train's transcripts, checked against data
        processor = task.processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, splits=splits,
                                   cfg=cfg)
    else:
        processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    check_max_length(cfg.model, processor)  # a text longer than the positions would crash mid-epoch
    model = task.build_model(cfg, labels, splits)  # the backbone with the task's new head
    collate, probe, plain = task.collator(processor), None, None
    if cfg.strategy.name == "lp_ft":  # the head learns first, as linear_probe trains it (its loop, its feature cache)
        plain = _encoded(splits, processor, cfg, task, augment=False)
        probe = hftl.probe_head(model, plain[0], collate, resolved, accelerator)
    adapted = hftl.apply_strategy(model, cfg.strategy)
    accelerator.print(f"strategy {adapted.strategy}: {adapted.trainable:,} of {adapted.total:,} parameters train")
    # the modality comes from the processor; train images are augmented unless features are cached
    augment = cfg.data.augment and not adapted.frozen_backbone and modality_of(processor) == "vision"
    encoded, skipped = plain if plain and not augment else _encoded(splits, processor, cfg, task, augment=augment)
    start = time.perf_counter()
    eval_size = eval_batch(cfg.train, accelerator)
    if adapted.frozen_backbone and task.caches_features:  # linear probe: one backbone pass, then the head trains
        # on cached features
        model.to(accelerator.device)
        encoded = hftl.as_feature_datasets(model, encoded, collate, accelerator, eval_size)
        collate = hftl.stack_collate
    feature_seconds = time.perf_counter() - start
    batch = train_batch(cfg.train, accelerator)  # one accumulation step of all processes; accelerate splits it
    loader = hftl.make_loader(encoded["train"], batch, collate, shuffle=True, seed=cfg.train.seed,
                              group=cfg.train.group_by_length, num_workers=cfg.train.num_workers)
    val_loader, test_loader = (
        hftl.make_loader(encoded[s], eval_size, collate, shuffle=False, num_workers=cfg.train.num_workers)
        for s in ("validation", "test"))
    monitor = RunMonitor(accelerator, resolved, adapted.model, baselines=baselines)  # keeps W0 for the drift: first
    run.logs("tensorboard")  # the tracker's folder (train.report_to): overwrite removes its event files
    start_trackers(accelerator, cfg)
    trained, state = hftl.fit(adapted.model, loader, val_loader, accelerator, train_cfg, cfg.eval.metrics,
                              checkpoint_dir=run.checkpoints("checkpoints"), resume=cfg.train.resume,
                              monitor=monitor, **_count_terms(task))
    train_seconds = time.perf_counter() - start
    # settings the task chooses on validation once trained (multi_label's threshold), saved in the model's config
    val_loader, test_loader = accelerator.prepare(val_loader, test_loader)
    tuned = task.tune(accelerator.unwrap_model(trained).config, *predict_logits(trained, val_loader, accelerator),
                      cfg) if task.tunes else {}
    test_scores, predictions = evaluate_with_predictions(trained, test_loader, accelerator, cfg.eval.metrics)
    metrics = {
        "test": test_scores,
        "validation": state.history[state.best_epoch - 1]["validation"],
        "train": {"seconds": train_seconds, "feature_seconds": feature_seconds, "epochs": state.epoch,
                  "steps": state.step, "best_epoch": state.best_epoch, "examples": len(encoded["train"]),
                  "trainable_params": adapted.trainable, "total_params": adapted.total},
        "history": state.history,
        "data": {"skipped": skipped},
        "baselines": baselines,
        "parameters": parameter_table(adapted.model),
        **({"tuned": tuned} if tuned else {}),
    }
    if probe is not None:
        metrics["probe"] = probe
    accelerator.print(f"test: {metrics['test']}")
    report_guard(metrics, resolved, accelerator)
    state_dict = accelerator.get_state_dict(trained)  # all processes: gathers FSDP / ZeRO-3 shards on the main one
    if accelerator.is_main_process:
        facts = hftl.transfer_facts(adapted, model, labels, splits, modality=modality_of(processor))
        facts.update(task=cfg.task.name, pipeline_tag=task.pipeline_tag(facts["modality"]),
                     metric_for_best=train_cfg.metric_for_best)  # what auto resolved to: the card says it

        def extra(stage) -> None:  # in the staging folder: moved into place with the rest, then marked complete
            write_predictions(stage, predictions, splits["test"])
            if cfg.eval.report:
                write_report(stage, splits=splits, home=cfg.output_dir, metric_for_best=train_cfg.metric_for_best)

        hftl.save_run(cfg.output_dir, cfg, accelerator.unwrap_model(trained), processor, metrics, facts,
                      state_dict=state_dict, extra=extra)
        if cfg.eval.report:
            accelerator.print(f"report: {cfg.output_dir}/report.html")
        accelerator.print(f"run saved to {cfg.output_dir}")
        if cfg.hub.push:
            url = hftl.push(cfg.output_dir, cfg.hub.repo_id, private=cfg.hub.private,
                            revision=cfg.hub.revision or None)
            accelerator.print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the process group: gloo can abort at exit when it is left open
    return metrics


def _count_terms(task) -> dict:
    """``fit``'s ``count_terms`` where the task's loss averages over something else than labelled tokens or inputs
    (CTC: examples, whatever their transcripts' lengths), so that steps split over processes weigh right."""
    return {"count_terms": task.loss_terms} if hasattr(task, "loss_terms") else {}


def _encoded(splits, processor, cfg: Config, task, *, augment: bool) -> tuple:
    """The splits as the model reads them (the modality from the processor; train images augmented when asked),
    labels in the task's form, and the skipped counts."""
    encoded, skipped = encode(splits, processor, cfg.data, max_length=cfg.model.max_length, augment=augment,
                              seed=cfg.train.seed)
    return task.encode_labels(encoded, cfg), skipped


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
