"""Real transfer, shown end to end: a small ViT trained by hftl on Fashion-MNIST, then 100 labelled MNIST digits.

    OMP_NUM_THREADS=1 python scripts/vit_fashion_to_digits.py [--out runs/transfer] [--seeds 0 1 2]

1. A 4-layer ViT (width 64, 4x4 patches) with random weights is saved as a Hub-format directory per seed.
2. Source: ``hftl finetune`` trains seed 0's from scratch on Fashion-MNIST (57,000 images, 3 epochs, ``full``).
3. Target: 100 MNIST digits (10 per class), for each seed: the same architecture from scratch (``full``), the
   Fashion-MNIST model fine-tuned (``full``) and probed (``linear_probe``). Test accuracy on 500 digits.
Writes ``<out>/results.json`` and ``<out>/transfer.png``. Real data; about 15 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs" / "vision"
ARMS = {  # name -> (start from the Fashion-MNIST model?, strategy)
    "scratch (full)": (False, "full"),
    "Fashion-MNIST ViT (full)": (True, "full"),
    "Fashion-MNIST ViT (linear_probe)": (True, "linear_probe"),
}


def tiny_vit(path: Path, seed: int) -> str:
    """Random-weight ViT for 28x28 images, with its image processor, as a Hugging Face directory."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=28,
        patch_size=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(path)
    return str(path)


def run(config: str, overrides: list[str]) -> dict:
    from hftl.recipes.finetune import main

    from hftl.config import load_config

    return main(load_config(CONFIGS / config, overrides))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [statistics.mean(results[n]) for n in names]
    sds = [statistics.stdev(results[n]) if len(results[n]) > 1 else 0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, means, xerr=sds, color=["#999", "#2a7", "#27a"][: len(names)])
    for i, accs in enumerate(results.values()):
        ax.plot(accs, [i] * len(accs), "k.")
    ax.set_xlabel("test accuracy, 500 MNIST digits (mean ± sd over seeds)")
    ax.set_title("100 labelled MNIST digits: scratch vs Fashion-MNIST source", fontsize=10)
    ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(out: Path, seeds: list[int]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    inits = {s: tiny_vit(out / f"vit-tiny-init-{s}", s) for s in seeds}
    source = out / "fashion"
    if not (source / "model" / "config.json").exists():
        run("vit-tiny-fashion-full.yaml", [f"model.name={inits[seeds[0]]}", f"output_dir={source}"])
    source_metrics = json.loads((source / "metrics.json").read_text())
    results: dict[str, list[float]] = {name: [] for name in ARMS}
    for seed in seeds:
        for name, (transfer, strategy) in ARMS.items():
            model = source / "model" if transfer else inits[seed]
            overrides = [
                f"model.name={model}",
                f"strategy.name={strategy}",
                f"train.seed={seed}",
                f"output_dir={out / 'digits' / f'{strategy}-{int(transfer)}-{seed}'}",
            ]
            if strategy == "linear_probe":
                overrides += ["train.epochs=60", "train.lr=1e-2"]
            results[name].append(run("vit-tiny-digits-full.yaml", overrides)["test"]["accuracy"])
    summary = {
        "source_test_accuracy": source_metrics["test"]["accuracy"],
        "seeds": seeds,
        "target": results,
        "mean": {n: statistics.mean(v) for n, v in results.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot(results, out / "transfer.png")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    main(args.out, args.seeds)
