"""Few-shot from the zero-shot classifier (issue 21): the ladder's support sets, hftl's methods and the ``setfit``
package side by side in one run, with the zero-shot and majority-class lines.

    OMP_NUM_THREADS=1 python bench/fewshot_prior.py                     # Rotten Tomatoes, k = 1..32, 5 seeds
    OMP_NUM_THREADS=1 python bench/fewshot_prior.py --config recipes/configs/text/minilm-fortunes-ladder.yaml \\
        --peer-ks 1,2,4,8 --out bench/results/fewshot_prior_fortunes.json \\
        --figure docs/figures/fewshot-prior-fortunes.png

Same model, split, test set and support sets (``hftl.shots.support_indices``: k per class by seed, nested in k) as
the ladder config names; hftl's methods run with its settings (``shots.*``). SetFit 1.2.0 runs its defaults (1 epoch,
batch 16, 20 pair iterations, body lr 2e-5, logistic-regression head) from the same MiniLM snapshot; it and hftl's
methods alternate support set by support set, so that both see the same load on the machine. Seconds per support
set: SetFit from model load to test predictions; hftl from the method call to test predictions (tokenized inputs,
frozen features and the zero-shot classifier are computed once, reported apart). The transductive refinement
(``soft_kmeans`` over the unlabelled test inputs) is reported apart. "All data": logistic regression (C=1) on the
frozen features of the whole train split. Writes the JSON (ladder format plus costs) and the ladder plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hftl.recipes.ladder import zero_shot, zero_shot_prior  # noqa: E402
from setfit_vs_hftl import hftl_context, setfit_run  # noqa: E402

import hftl  # noqa: E402
from hftl.config import load_config  # noqa: E402
from hftl.shots import METHODS, logistic_probs, soft_kmeans, summarize, support_indices  # noqa: E402
from hftl.shots.fewshot import accuracy  # noqa: E402
from hftl.shots.stats import paired_difference  # noqa: E402

PLOTTED = ("probe", "setfit", "setfit_package", "zs_prototype", "zs_probe", "zs_setfit")
SHOTS_KEYS = ("setfit_steps", "setfit_lr", "setfit_layers", "batch_size", "probe_c", "prior_folds", "templates")


def one_support_set(ctx, splits, cfg, k: int, seed: int, methods: list[str], snapshot: str | None, runs: dict) -> None:
    """Every method (and the package when ``snapshot``) on the support set of (k, seed); appends to ``runs``."""
    support = support_indices(ctx.train_labels.numpy(), k, seed)
    if snapshot:
        texts = [splits["train"][int(i)]["text"] for i in support]
        preds, seconds = setfit_run(
            snapshot, texts, ctx.train_labels[support].tolist(), splits["test"]["text"], cfg.model.max_length, seed
        )
        runs.setdefault(("setfit_package", k), []).append((float((preds == ctx.query_labels.numpy()).mean()), seconds))
    for method in methods:
        start = time.perf_counter()
        pred = METHODS[method](ctx, support, cfg.shots, seed)
        seconds = time.perf_counter() - start
        runs.setdefault((method, k), []).append((accuracy(pred.probs, ctx.query_labels), seconds))
        refined = soft_kmeans(
            pred.support_embeddings, ctx.train_labels[support], pred.query_embeddings, pred.probs, ctx.num_labels
        )
        runs.setdefault((method + "/transductive", k), []).append((accuracy(refined, ctx.query_labels), 0.0))
    line = "  ".join(f"{m} {r[-1][0]:.3f} ({r[-1][1]:.1f} s)" for (m, kk), r in runs.items() if kk == k)
    print(f"k={k} seed={seed}: {line}", flush=True)


def resume(path: Path) -> tuple[dict, set]:
    """Runs of the support sets that an earlier, interrupted run of the same command finished."""
    runs: dict = {}
    done = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        done.add((record["k"], record["seed"]))
        for key, values in record["runs"].items():
            method, k = key.split("|")
            runs.setdefault((method, int(k)), []).extend(tuple(v) for v in values)
    if done:
        print(f"resuming: {len(done)} support sets from {path}")
    return runs, done


def summaries(runs: dict, zero: float) -> dict:
    out: dict = {"few_shot": {}, "few_shot_transductive": {}, "seconds_per_support_set": {}, "paired": {}}
    for (name, k), values in runs.items():
        acc, secs = [a for a, _ in values], [s for _, s in values]
        if name.endswith("/transductive"):
            out["few_shot_transductive"].setdefault(name.split("/")[0], {})[str(k)] = summarize(acc)
        else:
            out["few_shot"].setdefault(name, {})[str(k)] = summarize(acc)
            out["seconds_per_support_set"].setdefault(name, {})[str(k)] = summarize(secs)
    for name in out["few_shot"]:
        for k, s in out["few_shot"][name].items():
            pair = {"minus_zero_shot": summarize([a - zero for a in s["runs"]])}
            if "setfit_package" in out["few_shot"] and k in out["few_shot"]["setfit_package"]:
                peer = out["few_shot"]["setfit_package"][k]["runs"]
                pair["minus_setfit_package"] = paired_difference(s["runs"], peer)
            out["paired"].setdefault(name, {})[k] = pair
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/configs/text/minilm-rt-ladder.yaml")
    parser.add_argument("--ks", default="1,2,4,8,16,32")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default="prototype,probe,setfit,zs_probe,zs_prototype,zs_setfit")
    parser.add_argument("--peer-ks", default="1,2,4,8,16,32", help="ks at which the setfit package runs ('' none)")
    parser.add_argument("--out", default="bench/results/fewshot_prior_rt.json")
    parser.add_argument("--figure", help="the plot (default: beside --out, .png): the README's combined plots are "
                        "bench/fewshot_prior_plot.py's, not overwritten by one part's run")
    args = parser.parse_args()
    ks, seeds = [int(k) for k in args.ks.split(",")], [int(s) for s in args.seeds.split(",")]
    peer_ks = {int(k) for k in args.peer_ks.split(",") if k}
    methods = args.methods.split(",")
    cfg = load_config(args.config, [f"shots.methods=[{','.join(methods)}]", "shots.split=test"])
    snapshot = None
    if peer_ks:
        import setfit
        from huggingface_hub import snapshot_download

        hftl.resolve(cfg.model.name)
        snapshot = snapshot_download(cfg.model.name, local_files_only=True)
    start = time.perf_counter()
    ctx, splits, feature_seconds = hftl_context(cfg)
    labels = hftl.label_names(splits)
    tok = hftl.load_processor(cfg.model.name)
    t0 = time.perf_counter()
    mode, scores = zero_shot(cfg, ctx.model, tok, labels, splits["test"]["text"], ctx.query_features)
    feats = {
        "train": {"features": ctx.train_features, "labels": ctx.train_labels},
        "test": {"features": ctx.query_features},
    }
    ctx.prior = zero_shot_prior(cfg, mode, ctx.model, tok, labels, splits["train"]["text"], feats, scores)
    zero_seconds = time.perf_counter() - t0
    zero = accuracy(scores, ctx.query_labels)
    majority = float((ctx.query_labels == ctx.train_labels.bincount().argmax()).float().mean())
    full_probs = logistic_probs(ctx.train_features, ctx.train_labels, ctx.query_features, len(labels), 1.0)
    full = accuracy(full_probs, ctx.query_labels)
    print(f"zero-shot ({mode}) {zero:.3f}  majority {majority:.3f}  all data (logistic regression) {full:.3f}")
    runs, partial = resume(Path(args.out + ".partial.jsonl"))
    for k in ks:
        for seed in seeds:
            if (k, seed) in partial:
                continue
            before = {key: len(v) for key, v in runs.items()}
            one_support_set(ctx, splits, cfg, k, seed, methods, snapshot if k in peer_ks else None, runs)
            with open(args.out + ".partial.jsonl", "a") as f:  # a killed run resumes where it stopped
                new = {f"{m}|{kk}": v[before.get((m, kk), 0) :] for (m, kk), v in runs.items()}
                f.write(json.dumps({"k": k, "seed": seed, "runs": {key: v for key, v in new.items() if v}}) + "\n")
    out = summaries(runs, zero)
    out.update(
        zero_shot={"accuracy": zero, "mode": mode, "seconds": zero_seconds},
        majority=majority,
        full={"test": {"accuracy": full}},
        choices={key: value for key, value in ctx.cache.items() if str(key).endswith("_choices")},
        settings={
            "config": args.config,
            "model": cfg.model.name,
            "data": cfg.data.name,
            "train_rows": len(ctx.train_labels),
            "test_rows": len(ctx.query_labels),
            "ks": ks,
            "seeds": seeds,
            "peer_ks": sorted(peer_ks),
            "shots": {k: getattr(cfg.shots, k) for k in SHOTS_KEYS},
            "setfit_package": {"version": setfit.__version__, "batch_size": 16, "num_epochs": 1} if peer_ks else None,
        },
        machine={"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        frozen_feature_seconds=feature_seconds,
        total_seconds=time.perf_counter() - start,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    Path(args.out + ".partial.jsonl").unlink(missing_ok=True)
    table(out)
    from hftl.report import plot_ladder

    shown = dict(
        out,
        few_shot={m: v for m, v in out["few_shot"].items() if m in PLOTTED},
        few_shot_transductive={m: v for m, v in out["few_shot_transductive"].items() if m == "zs_setfit"},
    )
    title = f"{cfg.model.name.split('/')[-1]} on {Path(cfg.data.name).name} (test)"
    args.figure = args.figure or str(Path(args.out).with_suffix(".png"))
    plot_ladder(shown, args.figure, title=title, full_label="all data, logistic regression")
    print(f"written to {args.out} and {args.figure} ({out['total_seconds']:.0f} s)")


def table(out: dict) -> None:
    ks = sorted({int(k) for per in out["few_shot"].values() for k in per})
    print(f"\n{'method':<16}" + "".join(f"{'k=' + str(k):>22}" for k in ks))
    for name, per in out["few_shot"].items():
        cells = []
        for k in ks:
            s = per.get(str(k))
            secs = out["seconds_per_support_set"][name].get(str(k), {}).get("mean", np.nan)
            cells.append(f"{s['mean']:.3f}±{s['ci95'][1] - s['mean']:.3f} {secs:5.1f}s" if s else "-")
        print(f"{name:<16}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
