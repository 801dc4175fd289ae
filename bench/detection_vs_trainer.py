"""Detection training speed: the transformers object-detection example's way (``Trainer`` + ``TrainingArguments``,
examples/pytorch/object-detection/run_object_detection.py) against hftl's (``hftl.fit`` with the functions
recipes/detect.py composes), in one process, one after the other.

    OMP_NUM_THREADS=1 nice -n 5 python bench/detection_vs_trainer.py [--steps 500] [--batch 8] [--repeats 2]

Same model (the tiny Conditional DETR on transformers' own ResNet backbone config that bench/detection_transfer.py
trains: width 64, 2 layers, 10 queries; the same initial weights), same data (placed-digit canvases of digits 0-4,
hftl.data.placed, ``steps x batch`` of them: every arm trains ``--steps`` steps within one pass), same batch, steps,
learning rate (1e-3), warmup (6 %), weight decay (0.01), clipping (1.0), fp32, no evaluation while training, no
loader workers. The peer is the example's pipeline: a ``datasets.Dataset`` with an ``objects`` column,
``with_transform`` running the image processor on each batch, a collator that stacks, ``Trainer(...).train()``.
Without augmentation on both sides (the example's is albumentations, not in hftl's environment; hftl's
``data.augment`` is off). Timed: the ``train()`` call; hftl's ``fit`` call less its one validation pass (8 images)
at the epoch end.
The arms alternate (Trainer first, then hftl first, ...). First a check that both do the same work: without dropout
and in the data's order, both give the same mean loss over ``--check-steps`` steps (recorded in the JSON).
Writes bench/results/detection_vs_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

LR, WARMUP, DECAY, CLASSES = 1e-3, 0.06, 0.01, [str(d) for d in range(5)]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def trainer_run(model_dir: str, data: dict, steps: int, batch: int, ordered: bool = False) -> dict:
    """The example's way: a Dataset with ``objects``, ``with_transform`` + image processor, a stacking collator,
    Trainer. ``trainer_runtime``: the Trainer's own figure (its training loop alone, without its setup)."""
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection, Trainer, TrainingArguments

    coco = json.loads(Path(data["train"]).read_text())
    objects = {im["id"]: {"bbox": [], "category": [], "area": []} for im in coco["images"]}
    for a in coco["annotations"]:
        for key, value in (("bbox", a["bbox"]), ("category", a["category_id"]), ("area", a["area"])):
            objects[a["image_id"]][key].append(value)
    folder = Path(data["train"]).parent
    images = coco["images"][: steps * batch]
    ds = Dataset.from_dict({"image_id": [im["id"] for im in images],
                            "image": [str(folder / im["file_name"]) for im in images],
                            "objects": [objects[im["id"]] for im in images]})
    processor = AutoImageProcessor.from_pretrained(model_dir)

    def transform(examples):  # the example's augment_and_transform_batch, with no augmentation
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in examples["image"]]
        annotations = [{"image_id": i, "annotations": [
            {"image_id": i, "category_id": c, "iscrowd": 0, "area": a, "bbox": list(b)}
            for c, a, b in zip(o["category"], o["area"], o["bbox"], strict=True)]}
            for i, o in zip(examples["image_id"], examples["objects"], strict=True)]
        out = processor(images=images, annotations=annotations, return_tensors="pt")
        out.pop("pixel_mask", None)  # the example's default (return_pixel_mask=False)
        return out

    def collate(rows):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "labels": [r["labels"] for r in rows]}

    config = AutoConfig.from_pretrained(model_dir, id2label=dict(enumerate(CLASSES)),
                                        label2id={c: i for i, c in enumerate(CLASSES)})
    torch.manual_seed(0)
    model = AutoModelForObjectDetection.from_pretrained(model_dir, config=config, ignore_mismatched_sizes=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR,
                                 weight_decay=DECAY, warmup_steps=int(WARMUP * steps), lr_scheduler_type="linear",
                                 max_grad_norm=1.0, eval_strategy="no", save_strategy="no", logging_strategy="no",
                                 report_to=[], disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
                                 remove_unused_columns=False)
        cls = Trainer
        if ordered:  # the check: the dataset's order, as hftl's unshuffled loader

            class cls(Trainer):  # noqa: N801
                def _get_train_sampler(self, *args, **kwargs):
                    return torch.utils.data.SequentialSampler(self.train_dataset)

        trainer = cls(model=model, args=args, train_dataset=ds.with_transform(transform), data_collator=collate,
                      processing_class=processor)
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "final_loss": out.training_loss, "optim": str(args.optim),
            "trainer_runtime": out.metrics["train_runtime"]}


def hftl_run(model_dir: str, data: dict, steps: int, batch: int, ordered: bool = False) -> dict:
    """hftl's way: recipes/detect.py's functions (load_detection, DetectionDataset, the task's collator and
    detector, make_loader) through hftl.fit."""
    import torch

    import hftl
    from hftl.config import DataConfig, StrategyConfig, TrainConfig
    from hftl.data.detection import DetectionDataset, load_detection
    from hftl.tasks import get_task
    from hftl.tasks.detection import apply_strategy, load_detector

    task = get_task("detection")
    rows = load_detection(DataConfig(name=data["train"], splits=data, augment=False))
    processor = hftl.load_processor(model_dir)
    cfg = TrainConfig(epochs=1, batch_size=batch, eval_batch_size=batch, lr=LR, warmup_ratio=WARMUP,
                      weight_decay=DECAY, max_grad_norm=1.0, metric_for_best="map", mixed_precision="no", seed=0,
                      num_workers=0, report_to="none")
    accelerator = hftl.make_accelerator(cfg)
    hftl.set_seed(0)
    torch.manual_seed(0)
    model = apply_strategy(load_detector(model_dir, rows.names, log_fn=lambda *a: None), StrategyConfig(name="full"))
    model = model.model
    collate = task.collator(processor)
    train = rows.splits["train"][: steps * batch]  # one epoch of ``steps`` steps
    loader = hftl.make_loader(DetectionDataset(train, processor), batch, collate, shuffle=not ordered,
                              group=False, num_workers=0)
    val = hftl.make_loader(DetectionDataset(rows.splits["validation"], processor), batch, collate, shuffle=False,
                           group=False, num_workers=0)
    start = time.perf_counter()
    _, state = hftl.fit(model, loader, val, accelerator, cfg, [], count_terms=lambda b: len(b["labels"]),
                        evaluate_fn=lambda m, lo, acc: task.evaluate(m, lo, acc, "validation"))
    wall = time.perf_counter() - start
    epoch = state.history[-1]
    return {"seconds": wall - (epoch["seconds"] - epoch["train_seconds"]), "fit_wall": wall,
            "final_loss": epoch["train_loss"], "steps": state.step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--check-steps", type=int, default=30)
    p.add_argument("--out", default="bench/results/detection_vs_trainer.json")
    args = p.parse_args()
    import accelerate
    import torch
    import transformers

    import hftl
    from hftl.data.placed import placed_objects
    from hftl.testing import tiny_detector

    load_start = _uptime()
    work = Path(tempfile.mkdtemp(prefix="det-vs-trainer-"))
    n = args.steps * args.batch
    data = placed_objects(work / "data", classes=CLASSES, counts={"train": n, "validation": args.batch, "test": 1},
                          seed=0)
    model_dir = tiny_detector(work / "tiny-cdetr", kind="conditional_detr", labels=CLASSES, width=64, layers=2,
                              queries=10)
    arms = {"trainer": trainer_run, "hftl": hftl_run}
    # the same work: without dropout and in the data's order, both ways give the same mean loss over --check-steps
    still = tiny_detector(work / "tiny-cdetr-still", kind="conditional_detr", labels=CLASSES, width=64, layers=2,
                          queries=10, dropout=0.0)
    check = {a: fn(still, data, args.check_steps, args.batch, ordered=True)["final_loss"] for a, fn in arms.items()}
    print(f"check, {args.check_steps} steps in order without dropout: mean loss {check}", flush=True)
    runs = []
    for r in range(args.repeats):
        for arm in (["trainer", "hftl"] if r % 2 == 0 else ["hftl", "trainer"]):
            out = arms[arm](model_dir, data, args.steps, args.batch)
            out.update(arm=arm, repeat=r, samples_per_s=n / out["seconds"])
            runs.append(out)
            print(f"{arm:>7} (repeat {r}): {out['samples_per_s']:.2f} samples/s, {out['seconds']:.1f} s, "
                  f"final loss {out['final_loss']:.3f}", flush=True)
    mean = {a: sum(x["samples_per_s"] for x in runs if x["arm"] == a) / args.repeats for a in arms}
    result = {
        "command": "OMP_NUM_THREADS=1 nice -n 5 python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": "2-core shared x86_64 CPU, OMP_NUM_THREADS=1",
        "torch_threads": torch.get_num_threads(),
        "load_start": load_start, "load_end": _uptime(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "hftl": getattr(hftl, "__version__", "?")},
        "model": "tiny Conditional DETR (ResNet backbone config, width 64, 2 layers, 10 queries), random init",
        "data": f"{n} placed-digit canvases (64 x 64, digits 0-4, 1-3 per canvas), no augmentation",
        "steps": args.steps, "batch": args.batch, "lr": LR, "repeats": args.repeats, "runs": runs,
        "samples_per_s": mean, "ratio_hftl_over_trainer": mean["hftl"] / mean["trainer"],
        "check_same_loss": {"steps": args.check_steps, "ordered": True, "dropout": 0.0, "mean_loss": check},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Trainer {mean['trainer']:.2f} samples/s, hftl {mean['hftl']:.2f} samples/s: hftl/Trainer "
          f"x{result['ratio_hftl_over_trainer']:.2f}; load {result['load_start']} -> {result['load_end']}")


if __name__ == "__main__":
    main()
