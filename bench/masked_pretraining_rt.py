"""Does domain-adaptive masked-LM pretraining help few-label fine-tuning? MiniLM on Rotten Tomatoes.

    python bench/masked_pretraining_rt.py --out runs/dapt-rt [--labels 64 256] [--seeds 0 1 2 3 4]

1. Masked-LM stage once (recipes/configs/text/minilm-rt-pretrain.yaml): the unlabelled text of the whole train
   split of the shared seed-0 split plus the 1,097 plot texts, packed 64-token blocks, whole-word masks, 1 epoch.
2. For each label count and seed: a stratified labelled subset of that train split (seeded), fine-tuned
   (``full``, settings of minilm-rt-pretrain-then-full.yaml) from MiniLM and from the stage-1 model: the same
   subset, seed, validation (1,281) and test (1,281) snippets for both arms; validation and test texts are in
   neither stage's training data.
Writes ``<out>/results.json`` (every run, mean ± sd per arm, the paired difference) and ``<out>/dapt.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from hftl.shots.stats import mean_sd, paired_difference

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "text"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXED = ["train.compile=false", "train.num_workers=0"]  # the same code path on CPU and GPU, whatever the defaults


def write_splits(out: Path, labels: int, seed: int) -> str:
    """CSV files of a seeded labelled subset of the seed-0 train split, and of its validation and test splits."""
    from hftl.config import DataConfig
    from hftl.data import load_splits, stratified_subset

    splits = load_splits(DataConfig(name="rotten_tomatoes"))
    names = splits["train"].features["label"].names
    parts = {"train": stratified_subset(splits["train"], labels, seed), "validation": splits["validation"],
             "test": splits["test"]}
    files = {}
    for name, ds in parts.items():
        path = out / "data" / (f"train-{labels}-{seed}.csv" if name == "train" else f"{name}.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.map(lambda b: {"label": [names[i] for i in b["label"]]}, batched=True,
               features=None).to_pandas()[["text", "label"]].to_csv(path, index=False)
        files[name] = str(path)
    return "{" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"


def finetune(model: str, splits: str, seed: int, out: Path, extra: list[str]) -> dict:
    from hftl.recipes.finetune import main

    from hftl.config import load_config

    cfg = load_config(CONFIGS / "minilm-rt-pretrain-then-full.yaml", [
        f"model.name={model}", f"data.splits={splits}", "data.max_train_samples=0", "pretrain.then_finetune=false",
        f"train.seed={seed}", f"output_dir={out}", "overwrite=true", *FIXED, *extra])
    start = time.perf_counter()
    metrics = main(cfg)
    return {"test_accuracy": metrics["test"]["accuracy"], "test_f1": metrics["test"].get("f1"),
            "best_epoch": metrics["train"]["best_epoch"], "seconds": time.perf_counter() - start}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for n in sorted({r["labels"] for r in runs}):
        acc = {arm: {r["seed"]: r["test_accuracy"] for r in runs if r["labels"] == n and r["arm"] == arm}
               for arm in ("minilm", "minilm+mlm")}
        seeds = [s for s in sorted(acc["minilm"]) if s in acc["minilm+mlm"]]
        out[str(n)] = {arm: mean_sd(list(v.values())) for arm, v in acc.items()}
        out[str(n)]["difference"] = paired_difference([acc["minilm+mlm"][s] for s in seeds],
                                                      [acc["minilm"][s] for s in seeds])
    return out


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = sorted({r["labels"] for r in results["runs"]})
    for j, (arm, color) in enumerate((("minilm", "#888"), ("minilm+mlm", "#2a7"))):
        for i, n in enumerate(labels):
            accs = [r["test_accuracy"] for r in results["runs"] if r["labels"] == n and r["arm"] == arm]
            x = i + (j - 0.5) * 0.3
            s = results["summary"][str(n)][arm]
            ax.errorbar([x], [s["mean"]], yerr=[s["sd"]], fmt="o", color=color, capsize=4, markersize=8,
                        label=("MiniLM" if arm == "minilm" else "MiniLM + masked-LM on RT text") if i == 0 else None)
            ax.plot([x + 0.06] * len(accs), accs, ".", color=color, alpha=0.6)
    ax.set_xticks(range(len(labels)), [f"{n} labels" for n in labels])
    ax.set_ylabel("test accuracy (1,281 snippets)")
    ax.set_title("Rotten Tomatoes, full fine-tuning: mean ± sd over seeds (dots: seeds)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(out: Path, labels: list[int], seeds: list[int], model: str, pretrain_overrides: list[str],
         finetune_overrides: list[str]) -> dict:
    import torch
    from hftl.recipes.pretrain_masked import main as pretrain

    from hftl.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stage = pretrain(load_config(CONFIGS / "minilm-rt-pretrain.yaml", [
        f"model.name={model}", f"output_dir={out / 'mlm'}", "train.resume=true", *FIXED, *pretrain_overrides]))
    pretrain_seconds = time.perf_counter() - start
    arms = {"minilm": model, "minilm+mlm": str(out / "mlm" / "pretrained")}
    runs = []
    for n in labels:
        for seed in seeds:
            splits = write_splits(out, n, seed)
            for arm, name in arms.items():
                result = finetune(name, splits, seed, out / "ft" / f"{arm}-{n}-{seed}", finetune_overrides)
                runs.append({"labels": n, "seed": seed, "arm": arm, **result})
                print(json.dumps(runs[-1]), flush=True)
    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    results = {"machine": machine, "torch": torch.__version__, "labels": labels, "seeds": seeds,
               "pretrain": {"validation": stage["pretrain"]["validation"], "train": stage["pretrain"]["train"],
                            "history": stage["pretrain"]["history"], "seconds": pretrain_seconds},
               "pretrain_overrides": pretrain_overrides, "finetune_overrides": finetune_overrides, "runs": runs}
    results["summary"] = summarise(runs)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "dapt.png")
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dapt-rt"))
    parser.add_argument("--labels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--pretrain", nargs="*", default=[], help="overrides of the masked stage, key=value")
    parser.add_argument("--finetune", nargs="*", default=[], help="overrides of every fine-tuning run, key=value")
    args = parser.parse_args()
    main(args.out, args.labels, args.seeds, args.model, args.pretrain, args.finetune)
