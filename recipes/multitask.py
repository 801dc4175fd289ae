"""Train several tasks on one shared backbone, each with its own head (and optionally its own adapter).

    hftl finetune --config recipes/configs/text/minilm-rt-fortunes-multitask-lora.yaml
    accelerate launch --config_file recipes/accelerate/cpu-ddp-2.yaml recipes/multitask.py --config FILE.yaml
    python recipes/multitask.py --config FILE.yaml multitask.sampling=temperature multitask.temperature=2

``multitask.tasks`` lists the tasks (name, loss weight, and each its own task, data and eval sections); model,
strategy and train are shared (hftl.multitask). Every check of every task's data runs before the model loads.
Writes the run directory: config.yaml, metrics.json (per task, nested by task: validation each epoch in
``history``, the best epoch's validation and the test scores; the best epoch is the one with the highest mean of
each task's own metric_for_best), model/ (the whole multitask model: multitask.safetensors, multitask.json and the
processor), README.md (what is shared), and tasks/<name>/, one normal hftl run directory per task (the backbone,
with that task's adapter merged, and its head) that hftl.load, hftl predict and hftl push take.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import hftl
from hftl.config import Config, MultitaskConfig, multitask_entries, save_config
from hftl.data import modality_of
from hftl.data.sources import DataError
from hftl.models import check_max_length
from hftl.multitask import (
    MEAN,
    TaskCollate,
    apply_multitask_strategy,
    build_multitask,
    evaluate_tasks,
    flat_scores,
    nested,
    task_model,
    train_loader,
)
from hftl.rundir import RunDir, claim
from hftl.tasks import get_task
from hftl.train import eval_batch, train_batch

SPLITS = ("train", "validation", "test")


def task_configs(cfg: Config) -> dict:
    """Each task's own Config (its task, data and eval sections on the shared model, strategy and train), its task
    and weight, checked before compute: ``{name: (Config, task, weight)}``."""
    out = {}
    for e in multitask_entries(cfg):
        one = dataclasses.replace(cfg, task=e["task"], data=e["data"], eval=e["eval"], multitask=MultitaskConfig())
        task = get_task(e["task"].name)
        task.check(one)
        out[e["name"]] = (one, task, e["weight"])
    return out


def main(cfg: Config) -> dict:
    from accelerate.utils import DistributedDataParallelKwargs

    tasks = task_configs(cfg)
    # a batch runs one task's head (and adapter): DDP must not wait for the others' gradients
    accelerator = hftl.make_accelerator(cfg.train, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)])
    if cfg.hub.push and accelerator.is_main_process:
        hftl.check_push_access(cfg.hub.repo_id)
    run = claim(cfg, accelerator)
    try:
        return _main(cfg, accelerator, run, tasks)
    finally:
        run.release()


def load_task_splits(tasks: dict, batch_size: int) -> dict:
    """Every task's splits, read and checked before any model loads; DataError naming the task, the split and the
    fix for data that does not load, an empty split, or a train split smaller than one batch."""
    splits = {}
    for name, (one, task, _) in tasks.items():
        try:
            splits[name] = hftl.load_splits(one.data, task)
        except DataError as err:
            raise DataError(f"multitask task {name!r}: {err}") from None
        for split in SPLITS:
            n = len(splits[name][split]) if split in splits[name] else 0
            if n == 0:
                raise DataError(f"multitask task {name!r} has an empty {split} split (0 rows of {one.data.name}): "
                                f"give it rows, or set its data.splits / data.validation_size / data.test_size")
        if len(splits[name]["train"]) < batch_size:
            raise DataError(f"multitask task {name!r} has {len(splits[name]['train'])} train rows, fewer than "
                            f"train.batch_size={batch_size}: lower train.batch_size or give it more rows")
    return splits


def _loaders(cfg: Config, accelerator, tasks: dict, splits: dict, processor) -> tuple:
    """Each task's encoded splits, the train loader over all tasks (``multitask.sampling``), and each task's
    prepared validation and test loaders: ``{split: {task: loader}}``."""
    from hftl.recipes.finetune import _encoded

    encoded = {n: _encoded(splits[n], processor, one, t, augment=False)[0] for n, (one, t, _) in tasks.items()}
    collates = [t.collator(processor) for _, t, _ in tasks.values()]
    loader = train_loader([encoded[n]["train"] for n in tasks], collates, train_batch(cfg.train, accelerator),
                          cfg.multitask.sampling, cfg.multitask.temperature, cfg.train.seed)
    size = eval_batch(cfg.train, accelerator)
    evals = {s: {n: accelerator.prepare(hftl.make_loader(encoded[n][s], size, TaskCollate(collates, i),
                                                         shuffle=False))
                 for i, n in enumerate(tasks)} for s in ("validation", "test")}
    return encoded, loader, evals


def _main(cfg: Config, accelerator, run: RunDir, tasks: dict) -> dict:
    hftl.set_seed(cfg.train.seed)
    splits = load_task_splits(tasks, cfg.train.batch_size)
    labels = {n: t.label_names(splits[n], one.data) for n, (one, t, _) in tasks.items()}
    best = {n: t.best_metric(one, splits[n], accelerator.print) for n, (one, t, _) in tasks.items()}
    processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    check_max_length(cfg.model, processor)
    hftl.set_seed(cfg.train.seed)  # the heads' initial weights: the same whatever the data reading drew
    models = {n: t.build_model(one, labels[n], splits[n]) for n, (one, t, _) in tasks.items()}
    model = build_multitask(models, {n: w for n, (_, _, w) in tasks.items()})
    del models
    adapted = apply_multitask_strategy(model, cfg.strategy, cfg.multitask.adapter_per_task)
    accelerator.print(f"multitask {list(tasks)}, strategy {adapted.strategy}: {adapted.trainable:,} of "
                      f"{adapted.total:,} parameters train")
    encoded, loader, evals = _loaders(cfg, accelerator, tasks, splits, processor)
    metrics_of = {n: one.eval.metrics for n, (one, _, _) in tasks.items()}
    found = {n: t for n, (_, t, _) in tasks.items()}

    def evaluate_fn(m, _loader, acc) -> dict:  # every task on its own validation split
        return flat_scores(evaluate_tasks(m, evals["validation"], acc, found, metrics_of), best)

    train_cfg = dataclasses.replace(cfg.train, metric_for_best=MEAN)
    start = time.perf_counter()
    trained, state = hftl.fit(adapted.model, loader, None, accelerator, train_cfg, [], evaluate_fn=evaluate_fn,
                              checkpoint_dir=run.checkpoints("checkpoints"), resume=cfg.train.resume)
    seconds = time.perf_counter() - start
    val_logits: dict = {}
    if any(t.tunes for t in found.values()):  # the best weights' validation logits, for the tasks that tune
        evaluate_tasks(trained, evals["validation"], accelerator, found, metrics_of, val_logits)
    unwrapped = accelerator.unwrap_model(trained)
    tuned = {n: t.tune(unwrapped.task_configs[n], *val_logits[n], one) for n, (one, t, _) in tasks.items()
             if t.tunes}  # e.g. multi_label's threshold, chosen on validation and saved in that task's config
    test = evaluate_tasks(trained, evals["test"], accelerator, found, metrics_of)
    history = [{**h, "validation": nested(h["validation"])} for h in state.history]
    metrics = {
        "test": test,
        "validation": history[state.best_epoch - 1]["validation"],
        "train": {"seconds": seconds, "epochs": state.epoch, "steps": state.step, "best_epoch": state.best_epoch,
                  "examples": {n: len(encoded[n]["train"]) for n in tasks},
                  "trainable_params": adapted.trainable, "total_params": adapted.total},
        "history": history,
        "tasks": {n: {"weight": w, "classes": len(labels[n])} for n, (_, _, w) in tasks.items()},
        **({"tuned": {n: {k: v for k, v in t.items() if isinstance(v, (int, float))} for n, t in tuned.items()}}
           if tuned else {}),
    }
    accelerator.print(f"test: {json.dumps(test)}")
    accelerator.print(f"best epoch {state.best_epoch} by {MEAN}: the mean of each task's metric_for_best {best}")
    if accelerator.is_main_process:
        save_multitask(cfg, run, unwrapped, processor, metrics, tasks, splits, labels, adapted, best)
        accelerator.print(f"run saved to {cfg.output_dir}")
        if cfg.hub.push:  # the whole run: each task's folder is pushable alone with hftl push tasks/<name>
            accelerator.print(f"pushed to {hftl.push(cfg.output_dir, cfg.hub.repo_id, private=cfg.hub.private)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def save_multitask(cfg, run, model, processor, metrics, tasks, splits, labels, adapted, best) -> None:
    """The run directory, atomically: the whole model under model/, and each task alone under tasks/<name>/."""
    from pathlib import Path

    from safetensors.torch import save_file

    from hftl.multitask import model_card
    from hftl.run import _write_run, finish_model_dir
    from hftl.strategies import transfer_facts

    with run.final_save() as stage:
        save_config(cfg, stage / "config.yaml")
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        (stage / "model").mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, stage / "model" / "multitask.safetensors")
        about = {"backbone": cfg.model.name, "tasks": model.names, "adapters": model.adapters,
                 "weights": model.weights, "peft_config": adapted.peft_config,
                 "configs": {n: c.to_dict() for n, c in model.task_configs.items()}}
        (stage / "model" / "multitask.json").write_text(json.dumps(about, indent=2, default=_plain))
        processor.save_pretrained(stage / "model")
        (stage / "README.md").write_text(model_card(cfg, metrics, about, adapted))
        for name, (one, task, _) in tasks.items():
            alone = task_model(model, name)
            task_metrics = {"test": metrics["test"][name], "validation": metrics["validation"][name],
                            "train": metrics["train"], "history": [{**h, "validation": h["validation"][name]}
                                                                   for h in metrics["history"]]}
            plain = type(adapted)(alone, adapted.strategy, frozen=adapted.frozen, peft_config=adapted.peft_config)
            facts = transfer_facts(plain, alone, labels[name], splits[name], modality=modality_of(processor))
            facts.update(task=one.task.name, pipeline_tag=task.pipeline_tag(facts["modality"]),
                         metric_for_best=best[name], trainable_params=adapted.trainable, total_params=adapted.total)
            folder = stage / "tasks" / name
            folder.mkdir(parents=True)
            _write_run(folder, dataclasses.replace(one, output_dir=str(Path(cfg.output_dir) / "tasks" / name)),
                       alone, processor, task_metrics, facts, None)
            finish_model_dir(folder / "model", Path(cfg.output_dir).resolve() / "tasks" / name / "model")
            (folder / "hftl_run.json").write_text(json.dumps({"complete": True, "multitask": cfg.output_dir}))


def _plain(value):
    """JSON for what a peft config holds besides JSON's types (target modules as a set)."""
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
