"""Fine-tune a detector (DETR, Conditional DETR, YOLOS...) on new classes with any transfer strategy.

    accelerate launch recipes/detect.py --config recipes/configs/detection/digits-target-lora.yaml strategy.name=head
    hftl finetune --config recipes/configs/detection/digits-source-full.yaml  # task.name=detection: this recipe
    python recipes/detect.py --config recipes/configs/detection/digits-target-lora.yaml train.seed=1 output_dir=runs/s1

Data: a COCO JSON file (or one per split in data.splits) with its images, or a dataset with an ``objects`` column
(hftl.data.detection). Every check of the data runs before the model loads. Writes the run directory as
recipes/finetune.py does (config.yaml, metrics.json with COCO mAP per epoch on validation and on test, model/,
README.md), with predictions.jsonl (boxes per test image) and predictions.png (predicted boxes on test images).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import hftl
from hftl.config import Config
from hftl.data.detection import DetectionDataset, load_detection
from hftl.rundir import RunDir, claim
from hftl.tasks import get_task
from hftl.tasks.detection import prediction_picture, run_detector
from hftl.train import eval_batch, train_batch


def main(cfg: Config) -> dict:
    task = get_task("detection")
    task.check(cfg)  # metric_for_best, strategy: before any compute
    accelerator = hftl.make_accelerator(cfg.train)
    if cfg.hub.push and accelerator.is_main_process:
        hftl.check_push_access(cfg.hub.repo_id)
    run = claim(cfg, accelerator)
    try:
        return _main(cfg, accelerator, run, task)
    finally:
        run.release()


def _loaders(data, processor, cfg: Config, accelerator):
    """Train (augmented unless data.augment=false), validation and test loaders, and the train dataset."""
    train = DetectionDataset(data.splits["train"], processor, augment=cfg.data.augment, seed=cfg.train.seed,
                             epochs=math.ceil(cfg.train.epochs))
    accelerator.register_for_checkpointing(train)  # its counts of boxes the augmentation dropped: resume goes on
    collate = get_task("detection").collator(processor)
    loader = hftl.make_loader(train, train_batch(cfg.train, accelerator), collate, shuffle=True, seed=cfg.train.seed,
                              group=False, num_workers=cfg.train.num_workers)
    evals = [hftl.make_loader(DetectionDataset(data.splits[s], processor), eval_batch(cfg.train, accelerator),
                              collate, shuffle=False, group=False, num_workers=cfg.train.num_workers)
             for s in ("validation", "test")]
    return train, loader, *evals


def _main(cfg: Config, accelerator, run: RunDir, task) -> dict:
    hftl.set_seed(cfg.train.seed)
    data = load_detection(cfg.data)  # DataError before compute; fixes and skips counted
    for note in data.notes:
        accelerator.print(note)
    accelerator.print(f"data: {({k: len(v) for k, v in data.splits.items()})} images; fixed or skipped: "
                      f"{data.skipped}")
    processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    model = task.build_model(cfg, data.names, log_fn=accelerator.print)
    adapted = task.apply_strategy(model, cfg.strategy)
    accelerator.print(f"strategy {adapted.strategy}: {adapted.trainable:,} of {adapted.total:,} parameters train")
    train_cfg = dataclasses.replace(cfg.train, metric_for_best=task.best_metric(cfg))
    train_set, loader, val_loader, test_loader = _loaders(data, processor, cfg, accelerator)
    start = time.perf_counter()
    trained, state = hftl.fit(adapted.model, loader, val_loader, accelerator, train_cfg, [],
                              checkpoint_dir=run.checkpoints("checkpoints"), resume=cfg.train.resume,
                              evaluate_fn=lambda m, lo, acc: task.evaluate(m, lo, acc, "validation"),
                              count_terms=lambda batch: len(batch["labels"]))
    train_seconds = time.perf_counter() - start
    test_loader = accelerator.prepare(test_loader)
    truth, preds, loss = run_detector(trained, test_loader, accelerator, "test")
    from hftl.metrics._detection import coco_map

    test = {**coco_map(truth, preds, data.names), "loss": loss}
    dropped = train_set.total_dropped()  # over every process
    skipped = {k: {**v, **({"augment_dropped_boxes": dropped} if k == "train" else {})}
               for k, v in data.skipped.items()}
    metrics = {
        "test": test,
        "validation": state.history[state.best_epoch - 1]["validation"],
        "train": {"seconds": train_seconds, "epochs": state.epoch, "steps": state.step,
                  "best_epoch": state.best_epoch, "examples": len(train_set),
                  "trainable_params": adapted.trainable, "total_params": adapted.total},
        "history": state.history,
        "data": {"skipped": skipped},
    }
    accelerator.print(f"test: {test}")
    state_dict = accelerator.get_state_dict(trained)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(trained)
        facts = {"name": f"{cfg.model.name.rstrip('/').split('/')[-1]}-{adapted.strategy}", "modality": "vision",
                 "labels": data.names, "splits": {k: len(v) for k, v in data.splits.items()},
                 "trainable_params": adapted.trainable, "total_params": adapted.total, "frozen": adapted.frozen,
                 "peft_config": adapted.peft_config, "task": "detection", "pipeline_tag": task.pipeline_tag(),
                 "metric_for_best": train_cfg.metric_for_best,
                 "head": "class_labels_classifier (new), bbox_predictor (kept)"}
        rows = task.prediction_rows(truth, preds, unwrapped.config)

        def extra(stage) -> None:  # the picture and the boxes of each test image, saved with the rest
            import json

            (stage / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            prediction_picture(stage / "predictions.png", data.splits["test"], rows)

        hftl.save_run(cfg.output_dir, cfg, unwrapped, processor, metrics, facts, state_dict=state_dict, extra=extra)
        accelerator.print(f"run saved to {cfg.output_dir}")
        if cfg.hub.push:
            accelerator.print(f"pushed to {hftl.push(cfg.output_dir, cfg.hub.repo_id, private=cfg.hub.private)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
