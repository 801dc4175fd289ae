"""Whisper fine-tuning through transformers' ``Seq2SeqTrainer`` (the plain way) against hftl, in one process.

    python scripts/clinical_speech.py data/clinical      # the clips, if data/clinical is missing (espeak-ng)
    OMP_NUM_THREADS=1 nice -n 5 python bench/whisper_vs_seq2seq_trainer.py    # ~12 min on one CPU thread

Same model (Whisper tiny.en, every weight trains), same data (the 48 train clips of the synthetic clinical
dictation set), same batch (8), same optimizer steps (6 = one epoch), same learning rate, schedule, weight decay and
clipping, no evaluation during training, fp32 on the CPU. The peer is what the Hugging Face blog "Fine-Tune Whisper
For Multilingual ASR with Transformers" and ``examples/pytorch/speech-recognition/run_speech_recognition_seq2seq.py``
write: ``WhisperProcessor`` log-mel features and token ids computed up front with ``Dataset.map``, a
``DataCollatorSpeechSeq2SeqWithPadding`` that pads the labels with -100 and drops a leading decoder-start token,
``WhisperForConditionalGeneration`` and ``Seq2SeqTrainer`` (``eval_strategy="no"``, ``save_strategy="no"``). hftl is
the recipe's functions: ``load_splits``, the ``seq2seq_asr`` task's processor (its checks), model and collator
(features per batch), ``apply_strategy`` (``full``), ``make_loader`` and ``hftl.fit`` with a validation function that
does nothing (``fit`` always calls one at an epoch's end).

Timed: ``trainer.train()`` against ``hftl.fit(...)`` (train samples/s = steps x batch / seconds); the preparation
before it (reading and resampling the clips; the peer's features and token ids, hftl's checks) is timed apart, and
samples/s over both is printed too. The machine is shared and drifts, so the arms run in the order hftl, peer,
peer, hftl (each twice, a linear drift cancels in the means), after one untimed warm-up step; every run is in the
JSON with the load average around it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "openai/whisper-tiny.en"
CONFIG = ROOT / "recipes/configs/speech/whisper-clinical-full.yaml"


def read_clip(path: str, rate: int = 16000) -> np.ndarray:
    """What a user writes without torchcodec: soundfile, mono, resampled to 16 kHz (espeak-ng writes 22,050 Hz)."""
    from math import gcd

    import soundfile as sf
    from scipy.signal import resample_poly

    wave, source = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    g = gcd(source, rate)
    return resample_poly(wave, rate // g, source // g).astype(np.float32) if source != rate else wave


@dataclasses.dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The blog's collator: features padded by the feature extractor, labels by the tokenizer then masked with -100;
    the decoder-start token cut when every row starts with it (the model prepends it when shifting labels right)."""

    processor: object
    decoder_start_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        input_features = [{"input_features": f["input_features"]} for f in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": f["labels"]} for f in features]
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def peer_run(args, csv: Path, workdir: str) -> dict:
    """Seq2SeqTrainer, as the blog and run_speech_recognition_seq2seq.py do it."""
    import csv as csvlib

    from datasets import Dataset
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    torch.manual_seed(args.seed)
    model = WhisperForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32)
    model.generation_config.forced_decoder_ids = None
    start = time.perf_counter()
    processor = WhisperProcessor.from_pretrained(MODEL)
    if processor.tokenizer.pad_token is None:  # the Hub's tokenizer says <|endoftext|>; the converted one has none
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    rows = list(csvlib.DictReader(open(csv)))
    ds = Dataset.from_dict({"audio": [str(csv.parent / r["audio"]) for r in rows], "text": [r["text"] for r in rows]})

    def prepare_dataset(batch):
        audio = read_clip(batch["audio"])
        batch["input_features"] = processor.feature_extractor(audio, sampling_rate=16000).input_features[0]
        batch["labels"] = processor.tokenizer(batch["text"]).input_ids
        return batch

    ds = ds.map(prepare_dataset, remove_columns=ds.column_names)
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id)
    training_args = Seq2SeqTrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        max_steps=args.steps,
        gradient_checkpointing=False,  # the blog turns it on to save GPU memory; hftl's default is off: both off
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=args.seed,
    )
    trainer = Seq2SeqTrainer(args=training_args, model=model, train_dataset=ds, data_collator=collator,
                             processing_class=processor.feature_extractor)
    prep = time.perf_counter() - start
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    result = {"seconds": seconds, "prep_seconds": prep, "steps": steps, "train_loss": out.training_loss,
              "optim": str(training_args.optim)}
    del trainer, model
    return result


def hftl_run(args, workdir: str) -> dict:
    """The recipe's functions: the seq2seq_asr task's processor, model and collator, apply_strategy, hftl.fit."""
    import hftl
    from hftl.config import load_config
    from hftl.tasks import get_task
    from hftl.train import train_batch

    torch.manual_seed(args.seed)
    cfg = load_config(str(CONFIG), [f"train.batch_size={args.batch}", f"train.lr={args.lr}",
                                    f"train.epochs={args.steps * args.batch / 48}",  # 48 train clips
                                    f"train.warmup_ratio={args.warmup_steps / args.steps}",
                                    "train.weight_decay=0.01", "train.max_grad_norm=1.0", "train.scheduler=linear",
                                    "train.metric_for_best=loss", f"train.seed={args.seed}", "train.num_workers=0",
                                    "strategy.name=full", f"output_dir={workdir}"])
    task = get_task(cfg.task.name)
    hftl.set_seed(cfg.train.seed)
    model = task.build_model(cfg, [], None)
    start = time.perf_counter()
    splits = hftl.load_splits(cfg.data, task)
    processor = task.processor(cfg.model.name, cfg.model.revision, splits=splits, cfg=cfg)
    adapted = hftl.apply_strategy(model, cfg.strategy)
    encoded, _ = hftl.encode(splits, processor, cfg.data)
    accelerator = hftl.make_accelerator(cfg.train)
    collate = task.collator(processor)
    loader = hftl.make_loader(encoded["train"], train_batch(cfg.train, accelerator), collate, shuffle=True,
                              seed=cfg.train.seed, group=cfg.train.group_by_length, num_workers=0)
    val_loader = hftl.make_loader(encoded["validation"], cfg.train.eval_batch_size, collate, shuffle=False,
                                  num_workers=0)
    prep = time.perf_counter() - start
    start = time.perf_counter()
    _, state = hftl.fit(adapted.model, loader, val_loader, accelerator, cfg.train, cfg.eval.metrics,
                        evaluate_fn=lambda *_: {"loss": 0.0})  # no evaluation during training, as the peer
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "prep_seconds": prep, "steps": state.step,
              "train_loss": state.history[-1]["train_loss"], "loop_seconds": state.history[-1]["train_seconds"]}
    accelerator.free_memory()
    del adapted, model, accelerator
    return result


def warm_up(batch: int) -> float:
    """One untimed training step of a throwaway model (the first in a process pays for allocator growth and kernel
    selection, which would otherwise fall on whichever arm runs first); its seconds."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32)
    start = time.perf_counter()
    labels = torch.randint(0, 50000, (batch, 16))
    model(input_features=torch.randn(batch, 80, 3000), labels=labels).loss.backward()
    del model
    gc.collect()
    return time.perf_counter() - start


def load() -> float:
    return round(os.getloadavg()[0], 2)


def versions() -> dict:
    import accelerate
    import datasets
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__,
            "hftl_commit": commit.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (6 = one epoch of the 48 clips)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="hftl,peer,peer,hftl")
    parser.add_argument("--machine", default="2-core shared x86_64 CPU, OMP_NUM_THREADS=1")
    parser.add_argument("--out", default=str(ROOT / "bench/results/whisper_vs_seq2seq_trainer.json"))
    args = parser.parse_args()
    csv = ROOT / "data/clinical/train.csv"
    if not csv.exists():
        sys.exit("data/clinical is missing: python scripts/clinical_speech.py data/clinical")
    if (args.steps * args.batch) % 48:
        sys.exit("--steps x --batch must be a whole number of epochs of the 48 train clips (hftl counts epochs)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = {"command": "OMP_NUM_THREADS=1 nice -n 5 python " + " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": args.machine, "threads": torch.get_num_threads(),
              "versions": versions(), "args": vars(args), "load_start": os.getloadavg(), "runs": []}
    wall = time.perf_counter()
    result["warm_up_seconds"] = warm_up(args.batch)
    for side in args.order.split(","):
        before = load()
        with tempfile.TemporaryDirectory() as work:
            run = peer_run(args, csv, work) if side == "peer" else hftl_run(args, work + "/hftl")
        gc.collect()
        run.update(side=side, load_before=before, load_after=load(),
                   samples_per_s=run["steps"] * args.batch / run["seconds"],
                   samples_per_s_with_prep=run["steps"] * args.batch / (run["seconds"] + run["prep_seconds"]))
        result["runs"].append(run)
        print(f"{side:>5}: {run['steps']} steps in {run['seconds']:.1f} s = {run['samples_per_s']:.3f} samples/s "
              f"(prep {run['prep_seconds']:.1f} s; loss {run['train_loss']:.3f}; load {before} -> "
              f"{run['load_after']})", flush=True)
    result["load_end"] = os.getloadavg()
    result["wall_seconds"] = time.perf_counter() - wall
    summary = {}
    for side in ("peer", "hftl"):
        runs = [r for r in result["runs"] if r["side"] == side]
        summary[side] = {key: {"mean": float(np.mean([r[key] for r in runs])),
                               "best": float(max(r[key] for r in runs))}
                         for key in ("samples_per_s", "samples_per_s_with_prep")}
    summary["ratio_hftl_over_seq2seq_trainer"] = {
        f"{key}_{how}": summary["hftl"][key][how] / summary["peer"][key][how]
        for key in ("samples_per_s", "samples_per_s_with_prep") for how in ("mean", "best")}
    result["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ratio = summary["ratio_hftl_over_seq2seq_trainer"]
    print(f"train samples/s: Seq2SeqTrainer {summary['peer']['samples_per_s']['mean']:.3f}, hftl "
          f"{summary['hftl']['samples_per_s']['mean']:.3f} (means of 2); hftl / Seq2SeqTrainer x"
          f"{ratio['samples_per_s_mean']:.3f} (best runs x{ratio['samples_per_s_best']:.3f}); with preparation x"
          f"{ratio['samples_per_s_with_prep_mean']:.3f}; wall {result['wall_seconds']:.0f} s; load "
          f"{result['load_start'][0]:.2f} -> {result['load_end'][0]:.2f}")


if __name__ == "__main__":
    main()
