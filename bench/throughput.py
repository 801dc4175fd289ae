"""Training throughput: hftl against the plain Hugging Face way, same model, data, batch and steps, one process.

    python bench/throughput.py                      # a GPU: BERT-base, ViT-base, Wav2Vec2-base, ~6 min on an H200
    OMP_NUM_THREADS=1 python bench/throughput.py --models minilm --steps 10 --frozen-steps 20   # CPU, ~2 min
    python bench/throughput.py --tiny --steps 3     # every arm on tiny configs (a smoke test)

Models are random-initialised at their real sizes (no weights install here; throughput does not depend on them):
BERT-base at 128 tokens (batch 128), ViT-base at 224 px (batch 128), Wav2Vec2-base on 1 s of 16 kHz audio
(batch 32); for the CPU, MiniLM-L6 (all-MiniLM-L6-v2's shape) at 64 tokens (batch 32). Each example is the same
for both sides; hftl gets it through its own collators and loaders.

Arms, each a fresh model:
- ``trainer``: ``AutoModelFor*Classification`` + ``transformers.Trainer`` (bf16, its default fused AdamW), timed
  over ``--steps`` optimizer steps after ``--warmup``.
- ``hftl``: ``hftl.fit`` (``strategy.name=full``, defaults: bf16, fused AdamW, ``train.compile=auto``), two epochs of
  ``--steps`` steps each; the second is timed (the first pays any compilation).
- ``hftl compile=on|off``: the other compile setting, which is how ``auto`` was chosen.
- ``lora``: r=16 on every linear layer, Trainer + ``peft.get_peft_model`` against ``strategy.name=lora``.
- ``lora`` evaluation: hftl's ``predict`` on the LoRA model with its adapters merged (the default) and unmerged.
- frozen backbone: the Trainer trains the classifier on a frozen backbone for 10 epochs (paying the backbone
  forward every epoch), hftl's ``linear_probe`` computes features once and trains the head 10 epochs on them;
  both against one plain bf16 forward pass over the same examples (``backbone pass``).

Prints samples/s (and tokens/s for text), peak GPU memory, achieved TFLOP/s (matmul, convolution and attention
FLOPs of one training step, counted by ``torch.utils.flop_counter``) with its share of ``--peak-tflops``, and each
ratio hftl / Trainer. Writes every figure to ``--out`` (JSON) as it goes. On a CPU (a shared machine whose speed
drifts by up to a quarter within minutes) the training arms but the Trainer's frozen one run ``--repeats`` times,
alternating, and the fastest run of each is kept (all are in the JSON); the LoRA-evaluation arm alternates merged
and unmerged ``--repeats`` + 1 times inside one run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hftl  # noqa: E402
from hftl.config import StrategyConfig, TrainConfig  # noqa: E402
from hftl.modeling import HftlForClassification  # noqa: E402
from hftl.train import predict, should_compile  # noqa: E402

CUDA = torch.cuda.is_available()
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
HEAD_EPOCHS = 10


class Pool(torch.utils.data.Dataset):
    """``n`` examples cycling over a few distinct rows (the data's content does not change the speed)."""

    def __init__(self, rows: list[dict], n: int) -> None:
        self.rows, self.n = rows, n
        self.column_names = list(rows[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.rows[i % len(self.rows)]


class Rows:
    """set_transform of ``as_dataset``: an ``idx`` column becomes the pool's rows, decoded on access."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __call__(self, batch: dict) -> dict:
        picked = [self.rows[i % len(self.rows)] for i in batch["idx"]]
        return {k: [r[k] for r in picked] for k in self.rows[0]}


def as_dataset(rows: list[dict], n: int):
    """The same examples as ``Pool``, as a datasets.Dataset decoded lazily (as hftl's image and audio sets are)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"idx": list(range(n)), "label": [rows[i % len(rows)]["label"] for i in range(n)]})
    ds.set_transform(Rows(rows))
    return ds


def tokenizer():
    """A tokenizer for padding only (the rows hold token ids already)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def specs(tiny: bool) -> dict:
    """Per model: config, batch, rows for hftl and for the Trainer, hftl's processor and pooling."""
    from transformers import BertConfig, ViTConfig, ViTImageProcessor, Wav2Vec2Config, Wav2Vec2FeatureExtractor

    rng = np.random.default_rng(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else {}
    seq, size, seconds = (16, 32, 0.25) if tiny else (128, 224, 1.0)
    text_rows = [{"input_ids": rng.integers(2, 30522, seq).tolist(), "token_type_ids": [0] * seq,
                  "attention_mask": [1] * seq, "label": int(i % 2)} for i in range(64)]
    image_rows = [{"pixel_values": rng.standard_normal((3, size, size), dtype=np.float32), "label": int(i % 10)}
                  for i in range(256)]
    waves = [rng.standard_normal(int(16000 * seconds), dtype=np.float32) for _ in range(128)]
    extractor = Wav2Vec2FeatureExtractor()
    speech_rows = [{"waveform": w, "label": int(i % 10)} for i, w in enumerate(waves)]
    speech_peer = [{"input_values": extractor(w, sampling_rate=16000)["input_values"][0], "label": int(i % 10)}
                   for i, w in enumerate(waves)]
    w2v_small = dict(small, conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), num_feat_extract_layers=2,
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2) if tiny else {}
    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    short = [dict(r, input_ids=r["input_ids"][:64], token_type_ids=r["token_type_ids"][:64],
                  attention_mask=r["attention_mask"][:64]) for r in text_rows]
    return {
        "minilm": dict(config=minilm, batch=32, seq=len(short[0]["input_ids"]), labels=2, rows=short,
                       peer_rows=short, processor=tokenizer(), pooling="pooler"),
        "bert-base": dict(config=BertConfig(**small), batch=8 if tiny else 128, seq=seq, labels=2, rows=text_rows,
                          peer_rows=text_rows, processor=tokenizer(), pooling="pooler"),
        "vit-base": dict(config=ViTConfig(image_size=size, **small), batch=8 if tiny else 128, seq=None, labels=10,
                         rows=image_rows, peer_rows=image_rows, processor=ViTImageProcessor(size=size),
                         pooling="cls"),
        "wav2vec2-base": dict(config=Wav2Vec2Config(**w2v_small), batch=4 if tiny else 32, seq=None, labels=10,
                              rows=speech_rows, peer_rows=speech_peer, processor=extractor, pooling="mean"),
    }


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_memory() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")


def peer_model(spec: dict, lora: bool = False, frozen: bool = False):
    from transformers import (
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    config = spec["config"].__class__.from_dict({**spec["config"].to_dict(), "num_labels": spec["labels"]})
    auto = {"bert": AutoModelForSequenceClassification, "vit": AutoModelForImageClassification,
            "wav2vec2": AutoModelForAudioClassification}[config.model_type]
    torch.manual_seed(0)
    model = auto.from_config(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        heads = [n for n in ("classifier", "projector") if hasattr(model, n)]
        model = get_peft_model(model, LoraConfig(**LORA, modules_to_save=heads))
    if frozen:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("classifier", "projector"))
    return model


def hftl_model(spec: dict, strategy: str):
    from transformers import AutoModel

    torch.manual_seed(0)
    backbone = AutoModel.from_config(spec["config"])
    model = HftlForClassification.from_backbone(backbone, spec["labels"], pooling=spec["pooling"])
    adapted = hftl.apply_strategy(model, StrategyConfig(name=strategy, peft=dict(LORA) if strategy == "lora" else {}))
    return adapted


def step_flops(model, batch: dict) -> float:
    """Matmul, convolution and attention FLOPs of one forward + backward on ``batch`` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else contextlib.nullcontext()
    with counter, ctx:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class StepTimer:
    """Trainer callback: wall time of the steps after ``warmup``, with the GPU synchronised at both ends."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == warmup:
                    sync()
                    reset_memory()
                    timer.start = time.perf_counter()
                elif state.global_step == state.max_steps:
                    sync()
                    timer.seconds = time.perf_counter() - timer.start

        self.callback, self.start, self.seconds = Callback(), 0.0, float("nan")


def trainer_arm(spec: dict, steps: int, warmup: int, work: str, *, lora=False, frozen_epochs=0, compile_=False):
    """The Trainer: timed steady-state steps (or, for a frozen backbone, whole epochs)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    model = peer_model(spec, lora=lora, frozen=frozen_epochs > 0)
    batch = spec["batch"]
    n = batch * (steps if frozen_epochs else steps + warmup)
    collate = DataCollatorWithPadding(spec["processor"]) if spec["seq"] else default_data_collator
    timer = StepTimer(warmup)
    args = TrainingArguments(
        output_dir=work, per_device_train_batch_size=batch, learning_rate=1e-4 if not frozen_epochs else 1e-3,
        num_train_epochs=frozen_epochs or 1, bf16=CUDA, use_cpu=not CUDA, torch_compile=compile_,
        save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True, seed=0,
        dataloader_pin_memory=CUDA,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Pool(spec["peer_rows"], n), data_collator=collate,
                      callbacks=[] if frozen_epochs else [timer.callback])
    reset_memory()
    start = time.perf_counter()
    trainer.train()
    sync()
    seconds = time.perf_counter() - start if frozen_epochs else timer.seconds
    examples = n * frozen_epochs if frozen_epochs else batch * steps
    return {"seconds": seconds, "samples_per_s": examples / seconds, "peak_gib": peak_gib()}


def hftl_arm(spec: dict, steps: int, strategy: str = "full", compile_: str = "auto", head_epochs: int = 0):
    """hftl's loop: epoch 1 warms up (and compiles), epoch 2 is timed; a linear probe is timed whole."""
    from hftl.features import _MEMORY

    _MEMORY.clear()
    batch = spec["batch"]
    probe = strategy == "linear_probe"
    cfg = TrainConfig(epochs=head_epochs or 2, batch_size=batch, eval_batch_size=batch, lr=1e-4 if not probe else 1e-3,
                      compile=compile_, warmup_ratio=0.0)
    accelerator = hftl.make_accelerator(cfg)
    adapted = hftl_model(spec, strategy)
    collate = hftl.collator_for(spec["processor"])
    train, val = as_dataset(spec["rows"], batch * steps), as_dataset(spec["rows"], batch)
    reset_memory()
    start = time.perf_counter()
    if probe:  # what recipes/finetune.py does for a frozen backbone
        adapted.model.to(accelerator.device)
        with patch_disk_cache():
            feats = hftl.as_feature_datasets(adapted.model, {"train": train, "validation": val}, collate,
                                             accelerator, batch)
        sync()
        feature_seconds = time.perf_counter() - start
        train, val, collate = feats["train"], feats["validation"], hftl.stack_collate
    loader = hftl.make_loader(train, batch, collate, shuffle=True, num_workers=0 if probe else -1)
    val_loader = hftl.make_loader(val, batch, collate, shuffle=False, num_workers=0)
    model, state = hftl.fit(adapted.model, loader, val_loader, accelerator, cfg, ["accuracy"])
    sync()
    total = time.perf_counter() - start
    out = {"peak_gib": peak_gib(), "trainable_params": adapted.trainable,
           "compiled": should_compile(adapted.model, compile_) if not probe else False}
    if probe:
        out.update(seconds=total, feature_seconds=feature_seconds, samples_per_s=len(train) * head_epochs / total)
    else:
        seconds = state.history[1]["train_seconds"]  # the Trainer arm does not evaluate either
        out.update(seconds=seconds, samples_per_s=batch * steps / seconds,
                   epoch_seconds_with_validation=state.history[1]["seconds"])
    del model, adapted
    accelerator.free_memory()
    return out


def lora_eval_arm(spec: dict, steps: int, reps: int = 3) -> dict:
    """Evaluation of the LoRA model with its adapters merged (hftl's default) and unmerged, best of ``reps``."""
    cfg = TrainConfig(batch_size=spec["batch"], eval_batch_size=spec["batch"])
    accelerator = hftl.make_accelerator(cfg)
    model = accelerator.prepare(hftl_model(spec, "lora").model)
    loader = accelerator.prepare(hftl.make_loader(as_dataset(spec["rows"], spec["batch"] * steps), spec["batch"],
                                                  hftl.collator_for(spec["processor"]), shuffle=False, num_workers=0))
    best = {}
    for merge in (True, False) * (reps + 1):  # the first of each warms up; bf16 autocast as accelerate prepared
        sync()
        start = time.perf_counter()
        predict(model, loader, accelerator, merge_adapters=merge)
        sync()
        best[merge] = min(best.get(merge, float("inf")), time.perf_counter() - start)
    n = spec["batch"] * steps
    out = {"samples_per_s": n / best[True], "unmerged_samples_per_s": n / best[False]}
    del model
    accelerator.free_memory()
    return out


@contextlib.contextmanager
def patch_disk_cache():
    """Features of a benchmark are not worth keeping on disk: compute them in memory only (still cached there)."""
    import hftl.features as features

    real = features.cached_features
    features.cached_features = lambda *a, **k: real(*a, **{**k, "disk": False})
    try:
        yield
    finally:
        features.cached_features = real


@torch.no_grad()
def backbone_pass(spec: dict, steps: int) -> dict:
    """One plain bf16 forward pass of the backbone over the training examples: the floor of a frozen backbone."""
    from transformers import AutoModel, DataCollatorWithPadding, default_data_collator

    torch.manual_seed(0)
    device = "cuda" if CUDA else "cpu"
    backbone = AutoModel.from_config(spec["config"]).to(device).eval()
    collate = DataCollatorWithPadding(spec["processor"]) if spec["seq"] else default_data_collator
    rows = spec["peer_rows"]
    loader = torch.utils.data.DataLoader(Pool(rows, spec["batch"] * steps), batch_size=spec["batch"],
                                         collate_fn=collate, pin_memory=CUDA)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else contextlib.nullcontext()
    for i, b in enumerate(loader):  # warm up on two batches
        with ctx:
            backbone(**{k: v.to(device) for k, v in b.items() if k not in ("labels", "label")})
        if i == 1:
            break
    sync()
    start = time.perf_counter()
    for b in loader:
        with ctx:
            backbone(**{k: v.to(device, non_blocking=True) for k, v in b.items() if k not in ("labels", "label")})
    sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples_per_s": spec["batch"] * steps / seconds}


def flops_per_sample(spec: dict) -> float:
    model = peer_model(spec).to("cuda" if CUDA else "cpu")
    collate = hftl.collator_for(spec["processor"])
    batch = dict(collate([spec["rows"][i % len(spec["rows"])] for i in range(spec["batch"])]))
    flops = step_flops(model, batch) / spec["batch"]
    del model
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert-base,vit-base,wav2vec2-base")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per arm")
    parser.add_argument("--warmup", type=int, default=5, help="Trainer steps before timing")
    parser.add_argument("--frozen-steps", type=int, default=50, help="batches of the frozen-backbone comparison")
    parser.add_argument("--arms", default="trainer,hftl,frozen,lora,compile",
                        help="trainer,hftl: full fine-tuning; frozen; lora; compile: hftl with the other setting")
    parser.add_argument("--repeats", type=int, default=1 if CUDA else 2,
                        help="runs of each arm (but trainer_frozen), alternating; the fastest of each is kept")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a smoke test on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="the GPU's measured bf16 matmul peak (790 on this project's H200)")
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    arms = set(args.arms.split(","))
    all_specs = specs(args.tiny)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        + (torch.cuda.get_device_name() if CUDA else "no GPU"),
        "versions": versions(),
        "args": vars(args),
        "models": {},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)

    def run(name: str, row: dict, key: str, fn, *a, **k) -> None:
        try:
            got = fn(*a, **k)
        except Exception as e:  # one arm failing must not lose the others
            traceback.print_exc()
            got = {"error": f"{type(e).__name__}: {e}"}
        seen = row.get(key, {}).get("repeats", []) + [got.get("samples_per_s")]
        if got.get("samples_per_s", 0) >= row.get(key, {}).get("samples_per_s", 0):  # the fastest repeat
            row[key] = got
        row[key]["repeats"] = seen
        print(f"{name:>14} {key:>22}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row[key].items()), flush=True)
        save()

    for name in args.models.split(","):
        spec = all_specs[name]
        row = result["models"].setdefault(name, {"batch": spec["batch"], "seq": spec["seq"]})
        row["flops_per_sample"] = flops_per_sample(spec)
        with tempfile.TemporaryDirectory() as work:
            for _ in range(args.repeats):  # alternating, the fastest of each kept: a slow spell hits both sides
                if "trainer" in arms:
                    run(name, row, "trainer", trainer_arm, spec, args.steps, args.warmup, work)
                if "hftl" in arms:
                    run(name, row, "hftl", hftl_arm, spec, args.steps)
                if "lora" in arms:
                    run(name, row, "trainer_lora", trainer_arm, spec, args.steps, args.warmup, work, lora=True)
                    run(name, row, "hftl_lora", hftl_arm, spec, args.steps, "lora")
                if "frozen" in arms:
                    run(name, row, "backbone_pass", backbone_pass, spec, args.frozen_steps)
                    run(name, row, "hftl_linear_probe", hftl_arm, spec, args.frozen_steps, "linear_probe",
                        head_epochs=HEAD_EPOCHS)
            if "lora" in arms:  # once: merged and unmerged alternate inside, each its fastest of several
                run(name, row, "hftl_lora_eval", lora_eval_arm, spec, args.steps, reps=args.repeats + 1)
            if "frozen" in arms:  # once: 10 epochs of the backbone, the slowest arm by far
                run(name, row, "trainer_frozen", trainer_arm, spec, args.frozen_steps, 0, work,
                    frozen_epochs=HEAD_EPOCHS)
        report(name, row, args.peak_tflops)
    if "compile" in arms:  # last: the other compile setting, which is how train.compile=auto was chosen
        for name in args.models.split(","):
            row = result["models"][name]
            other = "false" if row.get("hftl", {}).get("compiled") else "true"
            run(name, row, f"hftl_compile_{other}", hftl_arm, all_specs[name], args.steps, "full", other)
    for name, row in result["models"].items():
        report(name, row, args.peak_tflops)
    save()


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {m.__name__: m.__version__ for m in (torch, transformers, peft, accelerate)}


def report(name: str, row: dict, peak: float) -> None:
    """The model's lines: throughput, memory, TFLOP/s and MFU, ratios hftl / Trainer."""
    fl = row["flops_per_sample"]
    seq = row.get("seq")
    lines = []
    for key in [k for k in row if isinstance(row[k], dict) and k != "ratios"]:
        r = row[key]
        if "samples_per_s" not in r or "peak_gib" not in r:
            unmerged = r.get("unmerged_samples_per_s")
            unmerged = f" (adapters unmerged: {unmerged:,.0f})" if unmerged else ""
            lines.append(f"  {key:>22}: " + (r.get("error") or f"{r['samples_per_s']:,.0f} samples/s{unmerged}"))
            continue
        tflops = r["samples_per_s"] * fl / 1e12
        r["tflops"], r["mfu"] = tflops, tflops / peak
        toks = f", {r['samples_per_s'] * seq:,.0f} tokens/s" if seq else ""
        extra = "" if key in ("backbone_pass", "trainer_frozen", "hftl_linear_probe") else (
            f", {tflops:.0f} TFLOP/s ({100 * tflops / peak:.0f}% of {peak:.0f})" if CUDA
            else f", {tflops * 1e3:.1f} GFLOP/s")
        lines.append(f"  {key:>22}: {r['samples_per_s']:,.0f} samples/s{toks}, peak {r['peak_gib']:.2f} GiB{extra}")
    ratios = {
        "full: hftl / Trainer": ("hftl", "trainer", "samples_per_s"),
        "lora: hftl / Trainer": ("hftl_lora", "trainer_lora", "samples_per_s"),
        "frozen: hftl linear_probe / Trainer": ("hftl_linear_probe", "trainer_frozen", "samples_per_s"),
        "lora peak memory / full (hftl)": ("hftl_lora", "hftl", "peak_gib"),
    }
    if "unmerged_samples_per_s" in row.get("hftl_lora_eval", {}):
        ev = row["hftl_lora_eval"]
        ratios_extra = {"lora evaluation: merged / unmerged": ev["samples_per_s"] / ev["unmerged_samples_per_s"]}
    else:
        ratios_extra = {}
    row["ratios"] = {}
    for label, (a, b, k) in ratios.items():
        if k in row.get(a, {}) and k in row.get(b, {}):
            row["ratios"][label] = row[a][k] / row[b][k]
    if "seconds" in row.get("hftl_linear_probe", {}) and "seconds" in row.get("backbone_pass", {}):
        row["ratios"]["frozen: hftl 10 epochs / one backbone pass"] = (
            row["hftl_linear_probe"]["seconds"] / row["backbone_pass"]["seconds"])
    row["ratios"].update(ratios_extra)
    print(f"{name} (batch {row['batch']}, {fl / 1e9:.1f} GFLOP per sample for forward + backward)")
    print("\n".join(lines))
    for label, v in row["ratios"].items():
        print(f"  {label}: x{v:.2f}")
    print(flush=True)


if __name__ == "__main__":
    main()
