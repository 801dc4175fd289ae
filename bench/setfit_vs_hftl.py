"""hftl's few-shot methods against the ``setfit`` package, side by side in one run.

    python bench/setfit_vs_hftl.py                          # k = 8, 16; seeds 0-4 (about 20 min on 2 CPU cores)
    python bench/setfit_vs_hftl.py --ks 8 --seeds 0,1,2     # quicker

Same model (sentence-transformers/all-MiniLM-L6-v2, the packaged snapshot that ``hftl.resolve`` lays into the Hub
cache, loaded by SetFit from that same path), same shared Rotten Tomatoes split, same support sets
(``hftl.shots.support_indices``: k per class, by seed), same test set, same max length. SetFit runs its defaults
(1 epoch, batch 16, oversampled pairs, CosineSimilarityLoss, body lr 2e-5, logistic-regression head); hftl's
``setfit`` runs the settings of ``recipes/configs/text/minilm-rt-ladder.yaml``. The two alternate run by run so
that both see the same load on the machine. Seconds per run: SetFit from model load to test predictions; hftl from
the method call to test predictions (tokenized inputs and frozen features are shared, computed once and reported
apart). hftl's ``prototype`` and ``probe`` (frozen features) are reported next to them.
Writes ``bench/results/setfit_vs_hftl.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hftl  # noqa: E402
from hftl.config import load_config  # noqa: E402
from hftl.shots import METHODS, ShotContext, summarize, support_indices  # noqa: E402
from hftl.shots.fewshot import accuracy  # noqa: E402

CONFIG = "recipes/configs/text/minilm-rt-ladder.yaml"


def setfit_run(
    path: str, texts: list[str], labels: list[int], test_texts: list[str], max_length: int, seed: int
) -> tuple[np.ndarray, float]:
    """The setfit package with its defaults: predictions on the test texts and seconds from load to predictions."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    start = time.perf_counter()
    model = SetFitModel.from_pretrained(path)
    model.model_body.max_seq_length = max_length
    args = TrainingArguments(
        batch_size=16,
        num_epochs=1,
        seed=seed,
        report_to="none",
        save_strategy="no",
        show_progress_bar=False,
        max_length=max_length,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    preds = np.asarray(model.predict(test_texts, batch_size=128, show_progress_bar=False))
    return preds, time.perf_counter() - start


def hftl_context(cfg) -> tuple[ShotContext, dict, float]:
    splits = hftl.load_splits(cfg.data)
    tok = hftl.load_processor(cfg.model.name)
    encoded = hftl.encode_text(splits, tok, "text", cfg.model.max_length)
    labels = hftl.label_names(splits)
    model = hftl.load_classifier(cfg.model.name, len(labels), id2label=dict(enumerate(labels)))
    collate, accelerator = hftl.collator_for(tok), hftl.make_accelerator(cfg.train)
    start = time.perf_counter()
    feats = {
        s: hftl.cached_features(model, encoded[s], collate, accelerator, cfg.train.eval_batch_size)
        for s in ("train", "test")
    }
    seconds = time.perf_counter() - start
    ctx = ShotContext(
        feats["train"]["features"],
        feats["train"]["labels"],
        feats["test"]["features"],
        feats["test"]["labels"],
        len(labels),
        model=model,
        train_inputs=encoded["train"],
        query_inputs=encoded["test"],
        collate=collate,
        batch_size=cfg.train.eval_batch_size,
    )
    return ctx, splits, seconds


def run_k(k: int, seeds: list[int], ctx: ShotContext, splits, cfg, snapshot: str) -> dict:
    runs: dict = {
        name: {"accuracy": [], "seconds": []}
        for name in ("setfit_package", "hftl_setfit", "hftl_prototype", "hftl_probe")
    }
    test_texts, test_labels = splits["test"]["text"], ctx.query_labels.numpy()
    for seed in seeds:
        support = support_indices(ctx.train_labels.numpy(), k, seed)
        texts = [splits["train"][int(i)]["text"] for i in support]
        labels = ctx.train_labels[support].tolist()
        preds, seconds = setfit_run(snapshot, texts, labels, test_texts, cfg.model.max_length, seed)
        runs["setfit_package"]["accuracy"].append(float((preds == test_labels).mean()))
        runs["setfit_package"]["seconds"].append(seconds)
        for method in ("setfit", "prototype", "probe"):
            start = time.perf_counter()
            pred = METHODS[method](ctx, support, cfg.shots, seed)
            runs[f"hftl_{method}"]["seconds"].append(time.perf_counter() - start)
            runs[f"hftl_{method}"]["accuracy"].append(accuracy(pred.probs, ctx.query_labels))
        print(
            f"k={k} seed={seed}: "
            + "  ".join(f"{name} {r['accuracy'][-1]:.3f} ({r['seconds'][-1]:.1f} s)" for name, r in runs.items()),
            flush=True,
        )
    return {
        name: {"accuracy": summarize(r["accuracy"]), "seconds": summarize(r["seconds"])} for name, r in runs.items()
    }


def compare(per: dict) -> dict:
    """hftl's setfit against the package: speed ratio, mean accuracy gain, and the gain paired by support set."""
    ours, theirs = per["hftl_setfit"], per["setfit_package"]
    paired = [a - b for a, b in zip(ours["accuracy"]["runs"], theirs["accuracy"]["runs"], strict=True)]
    return {
        "setfit_seconds_over_hftl": theirs["seconds"]["mean"] / ours["seconds"]["mean"],
        "accuracy_gain": ours["accuracy"]["mean"] - theirs["accuracy"]["mean"],
        "accuracy_gain_paired": summarize(paired),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="8,16")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="bench/results/setfit_vs_hftl.json")
    args = parser.parse_args()
    ks, seeds = [int(k) for k in args.ks.split(",")], [int(s) for s in args.seeds.split(",")]
    import setfit
    from huggingface_hub import snapshot_download

    cfg = load_config(CONFIG)
    hftl.resolve(cfg.model.name)  # lays the packaged model into the Hub cache (offline)
    snapshot = snapshot_download(cfg.model.name, local_files_only=True)
    ctx, splits, feature_seconds = hftl_context(cfg)
    print(
        f"frozen features (train {len(ctx.train_labels)} + test {len(ctx.query_labels)}, computed once for "
        f"prototype/probe): {feature_seconds:.1f} s"
    )
    results = {k: run_k(k, seeds, ctx, splits, cfg, snapshot) for k in ks}
    print(f"\n{'k':>3} {'method':<15} {'accuracy':>16} {'s/run':>7}")
    for k, per in results.items():
        for name, r in per.items():
            print(
                f"{k:>3} {name:<15} {r['accuracy']['mean']:.3f} ± {r['accuracy']['std']:.3f}"
                f"   {r['seconds']['mean']:7.1f}"
            )
        per["comparison"] = compare(per)
        c = per["comparison"]
        lo, hi = c["accuracy_gain_paired"]["ci95"]
        print(
            f"{k:>3} hftl setfit vs setfit package: {c['setfit_seconds_over_hftl']:.2f}x faster, accuracy "
            f"{c['accuracy_gain']:+.3f} (paired by support set: 95% CI {lo:+.3f} to {hi:+.3f})"
        )
    out = {
        "settings": {
            "model": cfg.model.name,
            "data": "rotten_tomatoes (shared split, test 1,281)",
            "max_length": cfg.model.max_length,
            "ks": ks,
            "seeds": seeds,
            "hftl_setfit": {
                "steps": cfg.shots.setfit_steps,
                "lr": cfg.shots.setfit_lr,
                "batch_size": cfg.shots.batch_size,
                "probe_c": cfg.shots.probe_c,
            },
            "setfit_package": {"version": setfit.__version__, "batch_size": 16, "num_epochs": 1},
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "frozen_feature_seconds": feature_seconds,
        "results": {str(k): v for k, v in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
