"""Masked speech pretraining, then fine-tuning, against the same fine-tuning from scratch: a tiny wav2vec 2.0 on
synthetic spoken digits (espeak-ng voices).

    OMP_NUM_THREADS=1 python bench/masked_speech.py --out runs/masked-speech [--seeds 0 1 2] [--epochs 4]

1. Data: ``scripts/wav2vec2_words_transfer.py``'s target set (the digits zero..nine said by espeak-ng voices that
   its source words never use; train/validation/test split by speaker), reused from ``--data`` when it is there.
2. A wav2vec 2.0 with random weights (5 conv layers, 3 transformer layers, width 96; the transfer script's
   ``tiny_wav2vec2``, the same weights per seed).
3. wav2vec2's own pretraining objective (masked frame spans, contrastive against its quantized frames; hftl's
   ``pretrain_masked`` recipe, ``pretrain.*`` below) on every clip of the target's train speakers with its label
   unused (the target-domain unlabelled audio: the DAPT analogue), starting from seed 0's random model; its
   quantizer and projections start new, sized for the tiny model (``HEAD``: 20 negatives, 64-d codevectors).
   The target's validation clips score the stage, test clips are never read.
4. ``full`` fine-tuning on 5 labelled clips per digit (a different stratified draw per seed, ``data.split_seed``),
   from the masked-stage model and from the random model, with the transfer script's scratch-arm settings
   (``recipes/configs/speech/wav2vec2-tiny-digits-full.yaml``, overrides identical); test accuracy on the target's
   test speakers.
Writes ``<out>/results.json`` and ``<out>/masked-speech.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from hftl.shots.stats import mean_sd, paired_difference

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "recipes" / "configs" / "speech" / "wav2vec2-tiny-digits-full.yaml"
# the masked stage, fixed before any fine-tuning result: wav2vec2's own mask (65% of frames start a 10-frame span),
# batch 16, lr 5e-4 (wav2vec2-base's pretraining lr), the digits config's warmup, schedule and weight decay
HEAD = {"num_negatives": 20, "codevector_dim": 64, "proj_codevector_dim": 64}  # 2 groups of 320 codevectors kept
STAGE = ["pretrain.batch_size=16", "pretrain.lr=5e-4", "pretrain.mask_rate=0.65", "pretrain.mask_span=10"]


def transfer_script():
    spec = importlib.util.spec_from_file_location("wav2vec2_words_transfer",
                                                  ROOT / "scripts" / "wav2vec2_words_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_init(init: str, path: Path) -> str:
    """Seed 0's random model with a pretraining head scaled to its width (``HEAD``): the same weights, the
    contrastive head's sizes in its config. wav2vec2-base's head (100 negatives, 256-d codevectors and projection)
    made a step of 16 clips 5.2 s on one CPU thread against 0.3 s for fine-tuning (0.8 s with ``HEAD``); its
    weights start new either way."""
    import shutil

    shutil.copytree(init, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **HEAD}, indent=2))
    return str(path)


def main(out: Path, data: Path, seeds: list[int], k: int, epochs: float, overrides: list[str]) -> dict:
    import torch
    from hftl.recipes.finetune import main as finetune
    from hftl.recipes.pretrain_masked import main as pretrain

    from hftl.config import load_config

    t = transfer_script()
    out.mkdir(parents=True, exist_ok=True)
    counts = t.make_data(data)  # writes the clips only where they are missing
    base = [*t.splits(data / "target"), *overrides]
    start = time.perf_counter()
    init = stage_init(t.tiny_wav2vec2(out / "init-0", 0), out / "stage-init")
    stage = pretrain(load_config(CONFIG, [*base, *STAGE, f"pretrain.epochs={epochs}", f"model.name={init}",
                                          "pretrain.then_finetune=false", f"output_dir={out / 'masked'}",
                                          "train.resume=true"]))["pretrain"]
    stage_seconds = time.perf_counter() - start
    runs = []
    for seed in seeds:
        arms = {"scratch": t.tiny_wav2vec2(out / f"init-{seed}", seed), "masked": str(out / "masked" / "pretrained")}
        for arm, name in arms.items():
            s = time.perf_counter()
            m = finetune(load_config(CONFIG, [*base, f"model.name={name}", "strategy.name=full", f"train.seed={seed}",
                                              f"data.split_seed={seed}", f"data.max_train_samples={k * 10}",
                                              f"output_dir={out / f'{arm}-{seed}'}", "overwrite=true"]))
            runs.append({"arm": arm, "seed": seed, "test_accuracy": m["test"]["accuracy"],
                         "validation_accuracy": m["validation"]["accuracy"], "best_epoch": m["train"]["best_epoch"],
                         "seconds": time.perf_counter() - s})
            print(json.dumps(runs[-1]), flush=True)
    accuracy = {arm: [r["test_accuracy"] for r in runs if r["arm"] == arm] for arm in ("scratch", "masked")}
    summary = {arm: {"accuracy": accs, **mean_sd(accs)} for arm, accs in accuracy.items()}
    summary["difference"] = paired_difference(accuracy["masked"], accuracy["scratch"])
    results = {
        "machine": f"2-core x86_64 CPU, {torch.get_num_threads()} thread(s)",
        "data": "synthetic speech (espeak-ng): the digits zero..nine, voices disjoint from the transfer source's",
        "clips": counts["target"], "labelled_per_word": k,
        "pretrain": {"unlabelled": "every target train clip, label unused", "clips": stage["train"]["examples"],
                     "settings": [*STAGE, f"pretrain.epochs={epochs}"], "head": HEAD,
                     "validation": stage["validation"],
                     "history": stage["history"], "steps": stage["train"]["steps"], "seconds": stage_seconds},
        "finetune": {"config": str(CONFIG.relative_to(ROOT)), "strategy": "full"},
        "overrides": overrides, "runs": runs, "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "masked-speech.png")
    print(json.dumps(summary, indent=2))
    return results


def plot(results: dict, path: Path) -> None:
    from hftl.pretraining import plot_stage_against_scratch

    arms = {"random wav2vec2 (full)": results["summary"]["scratch"]["accuracy"],
            "masked stage, then full": results["summary"]["masked"]["accuracy"]}
    plot_stage_against_scratch(
        results["pretrain"]["history"], arms, path, train_curve=False,
        loss_label="loss per masked frame\n(contrastive + diversity, validation)",
        accuracy_label=f"test accuracy, {results['clips']['test']} digit clips, unseen voices\n"
        f"({results['labelled_per_word']} labels per digit; mean ± sd, dots: seeds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/masked-speech"))
    parser.add_argument("--data", type=Path, default=Path("runs/speech-transfer/data"),
                        help="the transfer script's data folder (written if missing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5, help="labelled clips per digit")
    parser.add_argument("--epochs", type=float, default=4.0, help="epochs of the masked stage")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, key=value")
    args = parser.parse_args()
    main(args.out, args.data, args.seeds, args.k, args.epochs, args.overrides)
