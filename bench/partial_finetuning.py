"""Partly fine-tuning on few labels: one rate for all, layer-wise rates, gradual unfreezing. MiniLM on Rotten Tomatoes.

    OMP_NUM_THREADS=1 python bench/partial_finetuning.py --out runs/partial [--labels 256] [--seeds 0 1 2]

Every arm: ``full`` from MiniLM (recipes/configs/text/minilm-rt-full.yaml: lr 5e-5, head 1e-3, batch 32) for
``--epochs`` epochs on the same stratified ``--labels`` training snippets (``data.max_train_samples``; the seeds vary
the head's initialisation, the order and dropout), best epoch on the 1,281 validation snippets, test accuracy on the
1,281 test snippets. The arms differ in one config value each, fixed before any run:
``train.layer_lr_decay=0.8`` and ``train.unfreeze_every=0.5`` (one more of the 6 blocks every half epoch).
Writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from hftl.shots.stats import mean_sd, paired_difference

CONFIG = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "text" / "minilm-rt-full.yaml"
ARMS = {
    "one rate": [],
    "layer-wise rates (decay 0.8)": ["train.layer_lr_decay=0.8"],
    "gradual unfreezing (every 0.5 epoch)": ["train.unfreeze_every=0.5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/partial")
    parser.add_argument("--labels", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    from hftl.recipes.finetune import main as finetune

    from hftl.config import load_config

    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        for arm, overrides in ARMS.items():
            run_dir = out / f"{arm.split(' (')[0].replace(' ', '-')}-{seed}"
            done = run_dir / "metrics.json"
            if not done.exists():
                finetune(load_config(CONFIG, [
                    f"data.max_train_samples={args.labels}", f"train.epochs={args.epochs}", f"train.seed={seed}",
                    f"output_dir={run_dir}", "overwrite=true", *overrides]))
            metrics = json.loads(done.read_text())
            runs.append({"arm": arm, "seed": seed, "accuracy": metrics["test"]["accuracy"],
                         "best_epoch": metrics["train"]["best_epoch"], "seconds": metrics["train"]["seconds"]})
            print(runs[-1], flush=True)
    accuracy = {arm: [r["accuracy"] for r in runs if r["arm"] == arm] for arm in ARMS}
    summary = {arm: {**mean_sd(accs), "difference": paired_difference(accs, accuracy["one rate"])}
               for arm, accs in accuracy.items()}
    for arm, s in summary.items():
        d = s["difference"]
        print(f"{arm:>40}: {s['mean']:.3f} ± {s['sd']:.3f}  vs one rate {d['mean']:+.3f} ± {d['sd']:.3f}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, CPU", "args": vars(args),
              "runs": runs, "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
