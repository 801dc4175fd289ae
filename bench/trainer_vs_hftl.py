"""hftl against the plain Hugging Face way (transformers.Trainer), side by side in one run.

    python bench/trainer_vs_hftl.py                      # defaults below, about 15 min on 2 CPU cores
    python bench/trainer_vs_hftl.py --train-samples 0 --epochs 2 --strategies full,lora   # the whole train split

Same model (MiniLM), same data (the shared Rotten Tomatoes split), same batch, epochs, learning rate and
max length; both evaluate on validation every epoch and on test at the end. The peer is what a user writes:
``AutoModelForSequenceClassification`` + ``Trainer`` with dynamic padding (``DataCollatorWithPadding``) and,
for LoRA, ``peft.get_peft_model``. For the frozen backbone the peer freezes everything but the classifier
and trains it for ``--head-epochs`` epochs; hftl's ``linear_probe`` does the same epochs on cached features.
Prints accuracy, seconds, samples/s and the ratio hftl / Trainer; writes a JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hftl.recipes.finetune import main as finetune  # noqa: E402

import hftl  # noqa: E402
from hftl.config import DataConfig, load_config  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LR = {"full": 5e-5, "lora": 5e-4, "linear_probe": 1e-2}


def trainer_run(strategy: str, splits, epochs: float, batch: int, max_length: int, workdir: str) -> dict:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    kwargs = hftl.resolve(MODEL)
    tok = AutoTokenizer.from_pretrained(MODEL, **kwargs)
    labels = hftl.label_names(splits)
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        **kwargs,
    )
    if strategy == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=8,
                lora_alpha=16,
                lora_dropout=0.1,
                target_modules=["query", "key", "value", "dense"],
            ),
        )
    elif strategy == "linear_probe":  # the Trainer way: freeze the backbone, train the classifier
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier")
    enc = splits.map(
        lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    )
    args = TrainingArguments(
        output_dir=workdir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=128,
        learning_rate=LR[strategy],
        weight_decay=0.01,
        warmup_steps=0 if strategy == "linear_probe" else int(0.06 * epochs * -(-len(splits["train"]) // batch)),
        lr_scheduler_type="cosine" if strategy == "linear_probe" else "linear",
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        logging_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=enc["train"],
        eval_dataset=enc["validation"],
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=lambda p: {"accuracy": float(np.mean(p.predictions.argmax(-1) == p.label_ids))},
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    test = trainer.evaluate(enc["test"], metric_key_prefix="test")
    return {"accuracy": test["test_accuracy"], "seconds": seconds}


def hftl_run(strategy: str, train_samples: int, epochs: float, batch: int, max_length: int, workdir: str) -> dict:
    overrides = [
        f"model.name={MODEL}",
        f"model.max_length={max_length}",
        f"strategy.name={strategy}",
        f"data.max_train_samples={train_samples}",
        f"train.epochs={epochs}",
        f"train.batch_size={batch}",
        f"train.lr={LR[strategy]}",
        f"output_dir={workdir}",
    ]
    if strategy == "lora":
        overrides += [
            "strategy.peft={r: 8, lora_alpha: 16, lora_dropout: 0.1, target_modules: [query, key, value, dense]}"
        ]
    if strategy == "linear_probe":
        overrides += [
            "model.head_dropout=0.0",
            "train.scheduler=cosine",
            "train.warmup_ratio=0.0",
            "train.weight_decay=0.0",
            "train.batch_size=64",
        ]
    metrics = finetune(load_config(None, overrides))
    return {
        "accuracy": metrics["test"]["accuracy"],
        "seconds": metrics["train"]["seconds"],
        "feature_seconds": metrics["train"]["feature_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="linear_probe,full,lora")
    parser.add_argument("--train-samples", type=int, default=2000, help="stratified subset of train (0: all)")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs for full and lora")
    parser.add_argument("--head-epochs", type=float, default=10.0, help="epochs for the frozen-backbone head")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default="bench/results/trainer_vs_hftl.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = hftl.load_splits(DataConfig(name="rotten_tomatoes", max_train_samples=args.train_samples))
    n = len(splits["train"])
    rows = []
    for strategy in args.strategies.split(","):
        epochs = args.head_epochs if strategy == "linear_probe" else args.epochs
        batch = 64 if strategy == "linear_probe" else args.batch
        with tempfile.TemporaryDirectory() as work:
            peer = trainer_run(strategy, splits, epochs, batch, args.max_length, work)
            ours = hftl_run(strategy, args.train_samples, epochs, batch, args.max_length, work + "/hftl")
        row = {
            "strategy": strategy,
            "train_examples": n,
            "epochs": epochs,
            "batch": batch,
            "trainer": peer,
            "hftl": ours,
            "speedup": peer["seconds"] / ours["seconds"],
        }
        for side in ("trainer", "hftl"):
            row[side]["samples_per_s"] = n * epochs / row[side]["seconds"]
        rows.append(row)
        print(
            f"{strategy:>13}: Trainer acc {peer['accuracy']:.4f} {peer['seconds']:7.1f} s | hftl acc "
            f"{ours['accuracy']:.4f} {ours['seconds']:7.1f} s | hftl/Trainer speed x{row['speedup']:.2f}",
            flush=True,
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
        "torch": torch.__version__,
        "args": vars(args),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        "\n| strategy | examples x epochs | Trainer acc | Trainer s | hftl acc | hftl s | speed ratio |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        print(
            f"| {r['strategy']} | {r['train_examples']} x {r['epochs']:g} | {r['trainer']['accuracy']:.3f} | "
            f"{r['trainer']['seconds']:.0f} | {r['hftl']['accuracy']:.3f} | {r['hftl']['seconds']:.0f} | "
            f"x{r['speedup']:.2f} |"
        )


if __name__ == "__main__":
    main()
