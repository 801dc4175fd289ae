"""Masked-LM throughput: the transformers ``run_mlm`` way (Trainer + DataCollatorForLanguageModeling) against
hftl's packed masked-LM (``pack_texts`` + ``MaskedLMCollator`` through ``hftl.fit``), side by side in one process.

    python bench/mlm_vs_run_mlm.py [--steps 20] [--batch 16] [--texts 2000] [--out bench/results/mlm_vs_run_mlm.json]

Same model (MiniLM with its new MLM head, the same initial weights), same texts (the first ``--texts`` snippets of
the seed-0 Rotten Tomatoes train split), same block/max length (64), batch, steps, learning rate, mask rate
(0.15) and precision (bf16 on a GPU, fp32 on a CPU). Arms:
  * ``Trainer line_by_line``: one snippet per row, truncated to 64, padded per batch by the collator
    (``run_mlm.py --line_by_line``);
  * ``Trainer group_texts``: ``run_mlm.py``'s default, texts concatenated and cut into 64-token blocks;
  * ``hftl packed``: hftl's packed blocks (random masks, as the peers) through hftl's training loop.
Timed: the training call only (no tokenization or model loading). Counted by a wrapper around each collator:
real tokens and padding positions of every batch. tokens/s = real tokens trained per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BLOCK = 64


class Counting:
    """Wraps a collator: real tokens and all positions of the batches it made."""

    def __init__(self, collate) -> None:
        self.collate, self.tokens, self.positions = collate, 0, 0

    def __call__(self, rows):
        batch = self.collate(rows)
        mask = batch.get("attention_mask")
        n = batch["input_ids"].numel()
        self.positions += n
        self.tokens += int(mask.sum()) if mask is not None else n
        return batch


def _model(name: str):
    import torch

    from hftl.pretraining import load_masked_model

    torch.manual_seed(0)
    return load_masked_model(name, "text")[0]


def _take(ds, n: int):
    """Exactly ``n`` rows: every arm trains ``steps`` steps within one pass over its data."""
    if len(ds) < n:
        raise SystemExit(f"{len(ds)} rows are fewer than steps x batch = {n}: use more --texts or fewer --steps")
    return ds.select(range(n))


def _texts(n: int) -> list[str]:
    from hftl.config import DataConfig
    from hftl.data import load_splits

    return list(load_splits(DataConfig(name="rotten_tomatoes"))["train"]["text"][:n])


def run_trainer(name: str, tokenizer, texts: list[str], grouped: bool, steps: int, batch: int) -> dict:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hftl.masking import pack_texts

    if grouped:
        ds = pack_texts(texts, tokenizer, BLOCK).remove_columns(["word_start", "length"])
    else:
        ds = pack_texts(texts, tokenizer, BLOCK, pack=False).remove_columns(["word_start", "length"])
    ds = _take(ds, steps * batch)
    collate = Counting(DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=1e-4, warmup_steps=int(0.06 * steps), weight_decay=0.01,
                                 save_strategy="no",
                                 report_to=[], logging_steps=steps, use_cpu=not gpu, bf16=gpu, seed=0,
                                 dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=_model(name), args=args, train_dataset=ds, data_collator=collate)
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": collate.tokens, "positions": collate.positions,
            "final_loss": out.training_loss}


def run_hftl(name: str, tokenizer, texts: list[str], steps: int, batch: int) -> dict:
    import hftl
    from hftl.config import TrainConfig
    from hftl.masking import MaskedLMCollator, pack_texts
    from hftl.pretraining import masked_scores

    blocks = pack_texts(texts, tokenizer, BLOCK)
    train, val = _take(blocks, steps * batch), blocks.select(range(batch))
    cfg = TrainConfig(epochs=1, batch_size=batch, eval_batch_size=batch, lr=1e-4, warmup_ratio=0.06,
                      metric_for_best="loss", mixed_precision="auto", seed=0, compile=False)
    accelerator = hftl.make_accelerator(cfg)
    collate = Counting(MaskedLMCollator(tokenizer, 0.15))
    loader = hftl.make_loader(train, batch, collate, shuffle=True, num_workers=0)
    val_loader = hftl.make_loader(val, batch, MaskedLMCollator(tokenizer, 0.15, seed=0), shuffle=False,
                                  num_workers=0)
    model = _model(name)
    start = time.perf_counter()
    _, state = hftl.fit(model, loader, val_loader, accelerator, cfg, [], evaluate_fn=masked_scores)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": collate.tokens, "positions": collate.positions,
            "final_loss": state.history[-1]["train_loss"], "note": "includes one validation batch"}


def main(steps: int, batch: int, n_texts: int, name: str, out: Path | None) -> dict:
    import torch

    from hftl.models import load_processor

    if torch.cuda.is_available():  # CUDA context and kernels loaded before the first timed arm
        (torch.randn(1024, 1024, device="cuda") @ torch.randn(1024, 1024, device="cuda")).sum().item()
    tokenizer = load_processor(name)
    texts = _texts(n_texts)
    arms = {
        "Trainer line_by_line": lambda: run_trainer(name, tokenizer, texts, False, steps, batch),
        "Trainer group_texts": lambda: run_trainer(name, tokenizer, texts, True, steps, batch),
        "hftl packed": lambda: run_hftl(name, tokenizer, texts, steps, batch),
    }
    results = {}
    for arm, fn in arms.items():
        r = fn()
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["padding_fraction"] = 1 - r["tokens"] / r["positions"]
        results[arm] = r
        print(f"{arm:<22} {r['tokens_per_s']:10.0f} tokens/s  padding {r['padding_fraction']:.3f}  "
              f"{r['seconds']:.1f} s  loss {r['final_loss']:.3f}", flush=True)
    base = results["Trainer line_by_line"]["tokens_per_s"]
    for r in results.values():
        r["speed_vs_line_by_line"] = r["tokens_per_s"] / base
    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)")
    report = {"machine": machine, "torch": torch.__version__, "model": name, "steps": steps, "batch": batch,
              "block": BLOCK, "texts": len(texts), "arms": results}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--out", type=Path, default=Path("bench/results/mlm_vs_run_mlm.json"))
    args = parser.parse_args()
    main(args.steps, args.batch, args.texts, args.model, args.out)
