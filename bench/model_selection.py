"""hftl select on Rotten Tomatoes: do LogME, kNN and LEEP rank backbones as fine-tuning does, and at what cost?

    OMP_NUM_THREADS=1 python bench/model_selection.py --out runs/select-bench [--sample 1000] [--stages probe full]

Candidates (built once under ``<out>/models``): MiniLM (sentence-transformers/all-MiniLM-L6-v2, 6 blocks, from the
Hub cache), MiniLM cut to its first 4, 2 and 1 blocks (the rest of its weights kept), and random initialisations of
the 6- and 2-block shapes (seed 0). Data: Rotten Tomatoes (deduped) written as CSV files: train = all 10,200
snippets, of which ``data.max_train_samples=--sample`` are drawn stratified (the select sample and the training set of
every fine-tuning alike); validation = 300 snippets stratified from its validation split (only to pick the best epoch);
test = all 1,276 test snippets. ``model.max_length=64`` throughout.
Stages: ``probe``: ``hftl select --finetune linear_probe`` (minilm-rt-linear_probe.yaml: 20 epochs, lr 1e-2); its
train features come from the selection's cache. ``full``: ``hftl select --finetune full`` (minilm-rt-full.yaml's
settings, ``--full-epochs`` epochs); the selection then comes from the cache (its costs are those of the first run).
Writes ``<out>/<stage>/selection.json`` and ``--results`` (default bench/results/model_selection_rt.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STAGES = {
    "probe": (ROOT / "recipes/configs/text/minilm-rt-linear_probe.yaml", "linear_probe", []),
    "full": (ROOT / "recipes/configs/text/minilm-rt-full.yaml", "full", []),
}


def build_candidates(folder: Path) -> list[str]:
    """MiniLM, MiniLM cut to 4/2/1 blocks, random 6- and 2-block models of its shape: local model folders."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    names = [MINILM]
    for layers in (4, 2, 1):
        path = folder / f"minilm-first{layers}"
        if not (path / "config.json").exists():
            model = AutoModel.from_pretrained(MINILM)
            model.encoder.layer = model.encoder.layer[:layers]
            model.config.num_hidden_layers = layers
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        names.append(str(path))
    for layers in (6, 2):
        path = folder / f"random-{layers}"
        if not (path / "config.json").exists():
            torch.manual_seed(0)
            config = AutoConfig.from_pretrained(MINILM, num_hidden_layers=layers)
            AutoModel.from_config(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
        names.append(str(path))
    return names


def write_data(folder: Path) -> dict:
    """Rotten Tomatoes as train/validation/test CSV files (validation cut to 300, stratified)."""
    import hftl
    from hftl.config import DataConfig
    from hftl.data.splits import stratified_subset

    folder.mkdir(parents=True, exist_ok=True)
    files = {s: folder / f"rt-{s}.csv" for s in ("train", "validation", "test")}
    if not all(p.exists() for p in files.values()):
        splits = hftl.load_splits(DataConfig(name="rotten_tomatoes"))
        names = hftl.label_names(splits)
        splits["validation"] = stratified_subset(splits["validation"], 300, seed=0)
        for split, path in files.items():
            frame = splits[split].to_pandas()
            frame["label"] = [names[i] for i in frame["label"]]
            frame[["text", "label"]].to_csv(path, index=False)
    return {s: str(p) for s, p in files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/select-bench")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--full-epochs", type=float, default=1.0)
    parser.add_argument("--stages", nargs="+", default=["probe", "full"], choices=list(STAGES))
    parser.add_argument("--results", default=str(ROOT / "bench/results/model_selection_rt.json"))
    args = parser.parse_args()

    from hftl.config import load_config
    from hftl.selection import main as select

    out = Path(args.out).absolute()
    candidates = build_candidates(out / "models")
    files = write_data(out / "data")
    results = {"command": f"OMP_NUM_THREADS=1 python bench/model_selection.py --out {args.out} --sample {args.sample} "
                          f"--full-epochs {args.full_epochs} --stages {' '.join(args.stages)}",
               "machine": f"2-core shared CPU (other jobs running), OMP_NUM_THREADS="
                          f"{os.environ.get('OMP_NUM_THREADS')}, {platform.processor() or platform.machine()}",
               "candidates": candidates, "sample": args.sample, "data": "rotten_tomatoes (deduped): train sample "
               f"{args.sample} stratified of 10,200; validation 300 of 1,275 (best epoch); test 1,276",
               "stages": {}}
    for stage in args.stages:
        config, strategy, extra = STAGES[stage]
        overrides = [f"data.splits={json.dumps(files)}", "data.name=rotten_tomatoes-csv",
                     f"data.max_train_samples={args.sample}", "model.max_length=64", f"select.finetune={strategy}",
                     f"select.candidates={json.dumps(candidates)}", f"output_dir={out / stage}", "overwrite=true",
                     "eval.baselines=false", "eval.report=false", "eval.drift=false", "train.report_to=none", *extra]
        if stage == "full":
            overrides += [f"train.epochs={args.full_epochs}"]
        start = time.perf_counter()
        result = select(load_config(config, overrides))
        results["stages"][stage] = {"wall_seconds": time.perf_counter() - start, "load_after": os.getloadavg(),
                                    "selection": result}
        Path(args.results).write_text(json.dumps(results, indent=2, allow_nan=False))
        print(f"{stage}: {time.perf_counter() - start:.0f} s wall; results in {args.results}", flush=True)


if __name__ == "__main__":
    main()
