"""LP-FT against full fine-tuning and LoRA with few labels: MiniLM on Rotten Tomatoes.

    OMP_NUM_THREADS=1 python bench/lp_ft_rt.py --data runs/select-bench/data --out runs/lpft [--labels 64 256]

``--data``: the CSV files bench/model_selection.py writes, made here when missing (Rotten Tomatoes deduped;
validation 300 stratified snippets for the best epoch, test all 1,276). Each arm trains on the same
``data.max_train_samples`` stratified snippets (the seeds vary the head's initialisation, the order and dropout; the
sample is drawn with data.split_seed 0): ``full`` is minilm-rt-full.yaml (lr 5e-5, head lr 1e-3, batch 32); ``lora``
is minilm-rt-lora.yaml (r 8, lr 5e-4, head lr 1e-3); ``lp_ft`` probes the head on cached features
(``strategy.probe_epochs=100``, ``probe_lr=1e-2``), then fine-tunes everything from it with lr 5e-5 for head and
backbone alike (``train.head_lr=0``), as Kumar et al. 2022 do. Epochs: 10 with 64 labels, 6 with 256. Runs go seed
by seed, so a cut run still has whole seeds; ``--results`` is rewritten after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "text"
ARMS = {
    "full": (CONFIGS / "minilm-rt-full.yaml", []),
    "lora": (CONFIGS / "minilm-rt-lora.yaml", ["strategy.merge=false"]),
    "lp_ft": (CONFIGS / "minilm-rt-full.yaml", ["strategy.name=lp_ft", "strategy.probe_epochs=100",
                                                  "strategy.probe_lr=0.01", "train.head_lr=0"]),
}
EPOCHS = {64: 10, 256: 6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/select-bench/data")
    parser.add_argument("--out", default="runs/lpft")
    parser.add_argument("--labels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default=str(ROOT / "bench/results/lp_ft_rt.json"))
    args = parser.parse_args()

    from hftl.recipes.finetune import main as finetune

    from hftl.config import load_config

    data = Path(args.data).absolute()
    sys.path.insert(0, str(ROOT / "bench"))
    from model_selection import write_data  # the same CSV files as model_selection's (made here when missing)

    files = write_data(data)
    results = {"command": f"OMP_NUM_THREADS=1 python bench/lp_ft_rt.py --data {args.data} --out {args.out} "
                          f"--labels {' '.join(map(str, args.labels))} --seeds {' '.join(map(str, args.seeds))}",
               "machine": "2-core shared CPU (other jobs running), "
                          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
               "runs": []}
    for seed in args.seeds:
        for labels in args.labels:
            for arm, (config, extra) in ARMS.items():
                run_dir = Path(args.out).absolute() / f"{arm}-{labels}-{seed}"
                overrides = [f"data.splits={json.dumps(files)}", "data.name=rotten_tomatoes-csv",
                             f"data.max_train_samples={labels}", f"train.epochs={EPOCHS.get(labels, 6)}",
                             f"train.seed={seed}", f"output_dir={run_dir}", "overwrite=true", "eval.baselines=false",
                             "eval.report=false", "eval.drift=false", "train.report_to=none", *extra]
                start = time.perf_counter()
                metrics = finetune(load_config(config, overrides))
                results["runs"].append({
                    "arm": arm, "labels": labels, "seed": seed, "test_accuracy": metrics["test"]["accuracy"],
                    "validation_accuracy": metrics["validation"]["accuracy"],
                    "best_epoch": metrics["train"]["best_epoch"],
                    "probe_validation_accuracy": metrics.get("probe", {}).get("validation_accuracy"),
                    "trainable_params": metrics["train"]["trainable_params"],
                    "wall_seconds": time.perf_counter() - start, "load": os.getloadavg()[0]})
                Path(args.results).write_text(json.dumps(results, indent=2, allow_nan=False))
                print(f"{arm} {labels} seed {seed}: test {metrics['test']['accuracy']:.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
