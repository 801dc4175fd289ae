"""The figures of bench/tasks_real.sh as tables (markdown on stdout) and ``bench/results/tasks_real.json``.

Per task and strategy: the task's test metrics of the epoch best on validation, trainable parameters, wall seconds
and the machine's load while it ran (runs/tasks/times.tsv). Imbalance: test macro-F1 and accuracy, mean and sample
standard deviation over the seeds, per arm (none, class weights, balanced sampler).

Run: ``python bench/tasks_summary.py [runs/tasks]``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TASKS = {  # run prefix -> (task, data, metrics shown)
    "gi-multi_label": ("multi-label", "General Inquirer, 10 affect tags", ["f1_micro", "f1_macro", "subset_accuracy"]),
    "whissell-regression": ("regression", "Whissell DAL, 3 ratings", ["rmse", "mae", "pearson", "spearman"]),
    "roget-pairs": ("pairs (classification)", "Roget same head word", ["accuracy", "f1"]),
    "wnut16-tokens": ("token classification", "WNUT-16 tweets, 10 entity types", ["f1", "precision", "recall",
                                                                                  "accuracy"]),
}
ARMS = {"none": "none", "weights": "train.class_weights=balanced", "sampler": "train.balanced_sampler=true"}


def _times(root: Path) -> dict:
    out = {}
    if (root / "times.tsv").is_file():
        for line in (root / "times.tsv").read_text().splitlines():
            name, rc, seconds, load = line.split("\t")
            out[name] = {"rc": int(rc), "wall_s": int(seconds), "load": load}
    return out


def _best_by(cards) -> str:
    """The metric the run's best epoch was chosen by, as its model card says it (auto resolved)."""
    import re

    for card in cards:
        found = re.search(r"the best on the validation split by (\S+)\.", " ".join(card.read_text().split()))
        if found:
            return found.group(1)
    return "?"


def main(root: str = "runs/tasks") -> None:
    root, times, results = Path(root), _times(Path(root)), {"tasks": [], "imbalance": {}}
    print("| task | data | strategy (epochs) | test metrics | tuned | trains | wall s (load) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for prefix, (task, data, keys) in TASKS.items():
        for strategy in ("linear_probe", "lora", "full"):
            name = f"{prefix}-{strategy}"
            path = root / name / "metrics.json"
            if not path.is_file():
                print(f"| {task} | {data} | {strategy} | not run | | | |")
                continue
            m = json.loads(path.read_text())
            test = {k: round(m["test"][k], 3) for k in keys}
            row = {"run": name, "task": task, "strategy": strategy, "test": test, "tuned": m.get("tuned", {}),
                   "epochs": m["train"]["epochs"], "steps": m["train"]["steps"],
                   "train_examples": m["train"]["examples"], "trainable_params": m["train"]["trainable_params"],
                   **times.get(name, {})}
            results["tasks"].append(row)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items())
            print(f"| {task} | {data} | `{strategy}` ({row['epochs']} ep) | {shown} | {row['tuned'] or ''} | "
                  f"{row['trainable_params']:,} | {row.get('wall_s', '?')} ({row.get('load', '?')}) |")
    print("\n| train.* | seeds | test macro-F1, mean ± sd | test accuracy, mean | macro-F1 per seed (0, 1, 2) |")
    print("| --- | --- | --- | --- | --- |")
    for arm, setting in ARMS.items():
        runs = [json.loads(p.read_text()) for p in sorted(root.glob(f"rt-skewed-{arm}-*/metrics.json"))]
        if not runs:
            continue
        f1 = [r["test"]["f1"] for r in runs]
        acc = [r["test"]["accuracy"] for r in runs]
        sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
        results["imbalance"][arm] = {"setting": setting, "f1": f1, "accuracy": acc,
                                     "best_by": _best_by(p for p in sorted(root.glob(f"rt-skewed-{arm}-*/README.md")))}
        print(f"| `{setting}` | {len(f1)} | {statistics.mean(f1):.3f} ± {sd:.3f} | {statistics.mean(acc):.3f} | "
              f"{', '.join(f'{v:.3f}' for v in f1)} |")
    out = Path(__file__).parent / "results" / "tasks_real.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
