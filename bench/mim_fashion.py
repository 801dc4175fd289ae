"""Masked image pretraining, then fine-tuning, against the same fine-tuning from scratch: a tiny ViT on Fashion-MNIST.

    OMP_NUM_THREADS=1 python bench/mim_fashion.py --out runs/mim-fashion [--labels 500] [--seeds 0 1 2]

1. A 4-layer ViT (width 64, 4x4 patches; ``scripts/vit_fashion_to_digits.py``'s ``tiny_vit``) with random weights.
2. SimMIM on unlabelled Fashion-MNIST training images (``--unlabelled`` of them, labels unused), half of the 7x7
   patches masked, ``pretrain.*`` of recipes/configs/vision/vit-tiny-fashion-mim-then-full.yaml.
3. ``full`` fine-tuning on ``--labels`` labelled training images (a stratified subset, the same for every arm and
   seed), from the SimMIM model and from the random ViT, for each seed (head initialisation, order, dropout);
   test accuracy on the 10,000 Fashion-MNIST test images.
Writes ``<out>/results.json`` and ``<out>/mim.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

from hftl.shots.stats import mean_sd, paired_difference

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "recipes" / "configs" / "vision" / "vit-tiny-fashion-mim-then-full.yaml"


def tiny_vit(path: Path, seed: int) -> str:
    script = ROOT / "scripts" / "vit_fashion_to_digits.py"
    spec = importlib.util.spec_from_file_location("vit_fashion_to_digits", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_vit(path, seed)


def main(out: Path, labels: int, seeds: list[int], unlabelled: int, overrides: list[str]) -> dict:
    import torch
    from hftl.recipes.finetune import main as finetune
    from hftl.recipes.pretrain_masked import main as pretrain

    from hftl.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    base = [f"data.max_train_samples={labels}", "train.num_workers=0", "train.compile=false", *overrides]
    start = time.perf_counter()
    init = tiny_vit(out / "init-0", 0)
    stage = pretrain(load_config(CONFIG, [*base, f"model.name={init}", f"pretrain.max_samples={unlabelled}",
                                          "pretrain.then_finetune=false", f"output_dir={out / 'mim'}",
                                          "train.resume=true"]))["pretrain"]
    stage_seconds = time.perf_counter() - start
    runs = []
    for seed in seeds:
        arms = {"scratch": tiny_vit(out / f"init-{seed}", seed), "SimMIM": str(out / "mim" / "pretrained")}
        for arm, name in arms.items():
            t = time.perf_counter()
            m = finetune(load_config(CONFIG, [*base, f"model.name={name}", f"train.seed={seed}",
                                              f"output_dir={out / f'{arm}-{seed}'}", "overwrite=true"]))
            runs.append({"arm": arm, "seed": seed, "test_accuracy": m["test"]["accuracy"],
                         "best_epoch": m["train"]["best_epoch"], "seconds": time.perf_counter() - t})
            print(json.dumps(runs[-1]), flush=True)
    accuracy = {arm: [r["test_accuracy"] for r in runs if r["arm"] == arm] for arm in ("scratch", "SimMIM")}
    summary = {arm: mean_sd(accs) for arm, accs in accuracy.items()}
    summary["difference"] = paired_difference(accuracy["SimMIM"], accuracy["scratch"])
    results = {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)", "labels": labels,
               "unlabelled": stage["train"]["examples"], "pretrain": {"validation": stage["validation"],
                                                                      "history": stage["history"],
                                                                      "seconds": stage_seconds},
               "overrides": overrides, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "mim.png")
    print(json.dumps(summary, indent=2))
    return results


def plot(results: dict, path: Path) -> None:
    from hftl.pretraining import plot_stage_against_scratch

    arms = {label: [r["test_accuracy"] for r in results["runs"] if r["arm"] == arm]
            for arm, label in (("scratch", "random ViT (full)"), ("SimMIM", "SimMIM ViT (full)"))}
    plot_stage_against_scratch(
        results["pretrain"]["history"], arms, path, stage_label="SimMIM epoch",
        loss_label="reconstruction loss (L1, masked)",
        accuracy_label=f"test accuracy, 10,000 images\n({results['labels']} labels; mean ± sd, dots: seeds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/mim-fashion"))
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--unlabelled", type=int, default=0, help="unlabelled images for SimMIM (0: all 57,000)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, key=value")
    args = parser.parse_args()
    main(args.out, args.labels, args.seeds, args.unlabelled, args.overrides)
