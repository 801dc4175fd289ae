"""Multitask on real data: Rotten Tomatoes sentiment and Debian fortunes topics, each alone against both together on
one MiniLM backbone with LoRA, over seeds 0, 1, 2.

    OMP_NUM_THREADS=1 nice -n 5 python bench/multitask_real.py > bench/multitask_real.log 2>&1 &

Settings fixed before any run (the same in every arm): sentence-transformers/all-MiniLM-L6-v2, strategy lora
(r 8, alpha 16, dropout 0.1 on query, key, value, dense), max_length 64, 2 epochs, batch 32, lr 5e-4, head lr 1e-3;
train subsampled (stratified, data.max_train_samples) to 1,000 examples per task; validation and test in full
(Rotten Tomatoes' own 1,066 + 1,066; fortunes' stratified 10% + 10% of 3,207). Alone: recipes/finetune.py per task
(baselines, drift and the report off: the multitask recipe computes none of them). Together: recipes/multitask.py,
sampling proportional, loss weights 1 and 1, one shared adapter. Each run is its own process; wall time is the
process's, train time is the loop's (metrics.json train.seconds). Writes bench/results/multitask_real.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "multitask_real.json"
RUNS = ROOT / "runs" / "bench-multitask"
SEEDS = (0, 1, 2)
TRAIN = 1000
SHARED = ["model.name=sentence-transformers/all-MiniLM-L6-v2", "model.max_length=64", "strategy.name=lora",
          "strategy.peft={r: 8, lora_alpha: 16, lora_dropout: 0.1, target_modules: [query, key, value, dense]}",
          "train.epochs=2", "train.batch_size=32", "train.lr=5e-4", "train.head_lr=1e-3", "train.report_to=none",
          "overwrite=true"]
TASKS = {"sentiment": {"name": "rotten_tomatoes", "max_train_samples": TRAIN},
         "topic": {"name": "fortunes", "max_train_samples": TRAIN}}
QUIET = ["eval.baselines=false", "eval.drift=false", "eval.report=false", "strategy.merge=false"]


def _run(args: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args, f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{args} failed: {done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text()), seconds


def alone(task: str, seed: int) -> dict:
    data = [f"data.{k}={v}" for k, v in TASKS[task].items()]
    metrics, wall = _run(["recipes/finetune.py", *SHARED, *QUIET, *data, f"train.seed={seed}"],
                         RUNS / f"{task}-s{seed}")
    return {"accuracy": metrics["test"]["accuracy"], "f1": metrics["test"]["f1"], "wall_seconds": wall,
            "train_seconds": metrics["train"]["seconds"], "trainable_params": metrics["train"]["trainable_params"],
            "total_params": metrics["train"]["total_params"], "best_epoch": metrics["train"]["best_epoch"]}


def together(seed: int) -> dict:
    tasks = ", ".join(f"{{name: {n}, weight: 1.0, data: {{name: {d['name']}, max_train_samples: {TRAIN}}}}}"
                      for n, d in TASKS.items())
    metrics, wall = _run(["recipes/multitask.py", *SHARED, f"multitask.tasks=[{tasks}]",
                          "multitask.sampling=proportional", f"train.seed={seed}"], RUNS / f"together-s{seed}")
    return {**{n: {"accuracy": metrics["test"][n]["accuracy"], "f1": metrics["test"][n]["f1"]} for n in TASKS},
            "wall_seconds": wall, "train_seconds": metrics["train"]["seconds"],
            "trainable_params": metrics["train"]["trainable_params"],
            "total_params": metrics["train"]["total_params"], "best_epoch": metrics["train"]["best_epoch"]}


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summary(results: dict) -> dict:
    seeds = [str(s) for s in sorted(results["together"], key=int)
             if str(s) in results["together"] and all(str(s) in results["alone"][t] for t in TASKS)]
    out = {}
    for task in TASKS:
        out[task] = {"alone": _mean_sd([results["alone"][task][s]["accuracy"] for s in seeds]),
                     "together": _mean_sd([results["together"][s][task]["accuracy"] for s in seeds])}
    for key in ("wall_seconds", "train_seconds"):
        out[key] = {"alone_sum": _mean_sd([sum(results["alone"][t][s][key] for t in TASKS) for s in seeds]),
                    "together": _mean_sd([results["together"][s][key] for s in seeds])}
    first = seeds[0]
    out["params"] = {k: {"alone_sum": sum(results["alone"][t][first][k] for t in TASKS),
                         "together": results["together"][first][k]} for k in ("trainable_params", "total_params")}
    return out


def _merge(parts: list[Path]) -> dict:
    """Seeds run in separate processes (``--seeds 2 --out FILE``), put together in one results file."""
    merged: dict = {"alone": {t: {} for t in TASKS}, "together": {}}
    for part in parts:
        results = json.loads(part.read_text())
        merged["settings"] = results["settings"]
        merged["together"].update(results["together"])
        for task in TASKS:
            merged["alone"][task].update(results["alone"][task])
    merged["summary"] = summary(merged)
    return merged


def main() -> None:
    """``--seeds 0,1`` runs only those seeds, ``--out FILE`` writes there; ``--merge A B``: A and B into OUT."""
    args = sys.argv[1:]
    if "--merge" in args:
        OUT.write_text(json.dumps(_merge([Path(p) for p in args[args.index("--merge") + 1:]]), indent=2))
        print(json.dumps(json.loads(OUT.read_text())["summary"], indent=2))
        return
    seeds = [int(s) for s in args[args.index("--seeds") + 1].split(",")] if "--seeds" in args else list(SEEDS)
    out = Path(args[args.index("--out") + 1]) if "--out" in args else OUT
    results = json.loads(out.read_text()) if out.is_file() and "--fresh" not in args else {}
    results.setdefault("alone", {t: {} for t in TASKS})
    results.setdefault("together", {})
    results["settings"] = {"shared": SHARED, "quiet_alone": QUIET, "tasks": TASKS, "seeds": list(SEEDS),
                           "sampling": "proportional", "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    for seed in seeds:
        if str(seed) not in results["together"]:
            results["together"][str(seed)] = {**together(seed), "load": os.getloadavg()[0]}
            print("together", seed, results["together"][str(seed)], flush=True)
        for task in TASKS:
            if str(seed) not in results["alone"][task]:
                results["alone"][task][str(seed)] = {**alone(task, seed), "load": os.getloadavg()[0]}
                print(task, seed, results["alone"][task][str(seed)], flush=True)
        if str(seed) in results["alone"][list(TASKS)[-1]]:
            results["summary"] = summary(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, allow_nan=False))  # after each seed: a cut run keeps what ran
    print(json.dumps(results.get("summary"), indent=2))


if __name__ == "__main__":
    main()
