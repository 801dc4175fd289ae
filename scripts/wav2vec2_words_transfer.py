"""Real transfer in speech, shown end to end: a small wav2vec 2.0 trained by hftl on 10 spoken command words, then
10 new words (the digits) from voices it never heard, with 5 labelled clips per word.

    OMP_NUM_THREADS=1 python scripts/wav2vec2_words_transfer.py [--out runs/speech-transfer] [--seeds 0 1 2]

1. Data (synthetic, espeak-ng, ``scripts/espeak_words.py``): espeak-ng's voice variants (m1..m7, f1..f5, croak,
   klatt, ...) are split in two. Source: the words yes/no/up/down/left/right/on/off/stop/go said by speakers
   built on the first share of the variants. Target: the digits zero..nine said by speakers built on the other
   variants only, so no target voice is heard in the source. Each set is split by speaker (70/15/15), so test
   clips come from speakers unseen in training of that stage too.
2. A wav2vec 2.0 with random weights (5 conv layers, 3 transformer layers, width 96; 0.47M parameters) is saved
   with its feature extractor as a Hub-format directory per seed.
3. Source: ``hftl finetune`` trains seed 0's from scratch on the source words (``full``).
4. Target: for each seed, ``k`` labelled clips per digit (a different stratified draw per seed, from the target's
   train speakers): the same architecture from scratch (``full``; and a probe of its random features), the
   source model fine-tuned (``full``), with its feature encoder and first 2 of 3 layers frozen (``freeze_n``),
   adapted with LoRA and probed (``linear_probe``); and Whisper tiny.en's encoder (real pretrained weights, trained on
   human speech; ``--arms "whisper encoder (linear_probe)" "whisper encoder (lora)"``), probed and adapted with LoRA
   on the same clips. Test: the target's test speakers, every digit.
Writes ``<out>/results.json`` (accuracy per seed, mean and sd, trainable parameters and train seconds per arm)
and ``<out>/transfer.png``. About 20 minutes on one CPU thread for the wav2vec2 arms (5 of them the source), about
20 more for the two Whisper arms (a 30 s window per clip); finished runs are reused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
from pathlib import Path

from hftl.rundir import is_complete, is_run
from hftl.shots.stats import mean_sd

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "speech"
SOURCE_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
TARGET_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WHISPER = "openai/whisper-tiny.en"
ARMS = {  # name -> (start: scratch | source | whisper, strategy, extra overrides)
    "scratch (full)": ("scratch", "full", []),
    "scratch (linear_probe)": ("scratch", "linear_probe", []),
    "source words (full)": ("source", "full", []),
    "source words (freeze_n, 2 of 3 layers)": ("source", "freeze_n", ["strategy.freeze_layers=2"]),
    "source words (lora)": ("source", "lora", ["train.lr=3e-3"]),
    "source words (linear_probe)": ("source", "linear_probe", []),
    # Whisper tiny.en's encoder (8.2M parameters; every clip padded to its 30 s window, so ~0.5 s of CPU per clip
    # forward): a probe of its mean-pooled features, and LoRA (q/v projections) with the head, 5 epochs
    "whisper encoder (linear_probe)": ("whisper", "linear_probe", []),
    "whisper encoder (lora)": ("whisper", "lora", ["train.lr=3e-3", "train.epochs=5", "train.eval_batch_size=8"]),
}
RUN_TAG = {"scratch": "0", "source": "1", "whisper": "whisper"}  # run folder names (0/1 as before the Whisper arms)


def espeak_words():
    spec = importlib.util.spec_from_file_location("espeak_words", ROOT / "scripts" / "espeak_words.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def voice_disjoint_speakers(n_source: int, n_target: int, seed: int = 0, source_share: float = 0.7):
    """Two speaker lists whose espeak-ng voice variants do not overlap (accents are shared, voices are not)."""
    espeak = espeak_words()
    variants = espeak.variants()
    random.Random(seed).shuffle(variants)
    cut = max(1, round(len(variants) * source_share))
    rng = random.Random(seed)

    def draw(chosen: list[str], n: int) -> list[dict]:
        pool = [(a, v) for a in espeak.ACCENTS for v in chosen]
        rng.shuffle(pool)
        if n > len(pool):
            raise ValueError(f"only {len(pool)} voices for {n} speakers")
        return [
            {"id": f"{a}+{v}", "voice": f"{a}+{v}", "speed": rng.randint(120, 210), "pitch": rng.randint(20, 80)}
            for a, v in pool[:n]
        ]

    return draw(variants[:cut], n_source), draw(variants[cut:], n_target)


def make_data(out: Path, n_source: int = 100, n_target: int = 80, repeats: int = 2, seed: int = 0) -> dict:
    """Write ``out/source`` and ``out/target`` (wav/ + train/validation/test CSVs); return clip counts."""
    espeak = espeak_words()
    source, target = voice_disjoint_speakers(n_source, n_target, seed)
    counts = {}
    for name, words, people in (("source", SOURCE_WORDS, source), ("target", TARGET_WORDS, target)):
        if not (out / name / "test.csv").exists():
            espeak.generate(out / name, words=words, repeats=repeats, seed=seed, people=people)
            if name == "target":  # few labels: validate on one clip per word and speaker, not all repeats
                rows = (out / name / "validation.csv").read_text().splitlines()
                keep = [rows[0]] + [r for r in rows[1:] if r.split(",")[0].endswith("-0.wav")]
                (out / name / "validation.csv").write_text("\n".join(keep) + "\n")
        counts[name] = {s: sum(1 for _ in open(out / name / f"{s}.csv")) - 1 for s in ("train", "validation", "test")}
    return counts


def tiny_wav2vec2(path: Path, seed: int) -> str:
    """Random-weight wav2vec 2.0 for 16 kHz audio (10 ms frames), with its feature extractor, as a Hub directory."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        conv_dim=(64, 64, 64, 64, 64),
        conv_stride=(5, 4, 2, 2, 2),
        conv_kernel=(10, 8, 4, 4, 4),
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=192,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_length=5,
    )
    Wav2Vec2Model(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(path)
    return str(path)


def run(config: str, overrides: list[str]) -> dict:
    from hftl.recipes.finetune import main

    from hftl.config import load_config

    # the script's own run folders: a rerun replaces them (only the files hftl wrote there)
    return main(load_config(CONFIGS / config, [*overrides, "overwrite=true"]))


def run_once(config: str, overrides: list[str], folder: Path) -> dict:
    """``run``, or the metrics of a finished run of the same config and overrides (a rerun adds seeds or arms)."""
    key = json.dumps([config, overrides])
    done = folder / "done.jsonl"
    for line in done.read_text().splitlines() if done.exists() else []:
        entry = json.loads(line)
        if entry["key"] == key:
            return entry["metrics"]
    import os
    import time

    load, start = os.getloadavg()[0], time.perf_counter()
    metrics = run(config, overrides)
    metrics["wall"] = {"seconds": time.perf_counter() - start, "load_before": load, "load_after": os.getloadavg()[0]}
    with open(done, "a") as f:
        f.write(json.dumps({"key": key, "metrics": metrics}) + "\n")
    return metrics


def splits(folder: Path) -> list[str]:
    return [f"data.splits.{s}={folder / f'{s}.csv'}" for s in ("train", "validation", "test")]


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per arm: accuracy per seed, mean, sd, trainable parameters and train seconds (mean over seeds)."""
    out = {}
    for name, metrics in runs.items():
        accs = [m["test"]["accuracy"] for m in metrics]
        out[name] = {
            "accuracy": accs,
            **mean_sd(accs),
            "trainable_params": metrics[0]["train"]["trainable_params"],
            "total_params": metrics[0]["train"]["total_params"],
            "train_seconds": statistics.mean(m["train"]["seconds"] for m in metrics),
            **({"wall": [m["wall"] for m in metrics]} if all("wall" in m for m in metrics) else {}),
        }
    return out


def plot(arms: dict, path: Path, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.2))
    colours = ["#999" if n.startswith("scratch") else "#37c" if n.startswith("whisper") else "#2a7" for n in names]
    ax.barh(names, [arms[n]["mean"] for n in names], xerr=[arms[n]["sd"] for n in names], color=colours)
    for i, n in enumerate(names):
        ax.plot(arms[n]["accuracy"], [i] * len(arms[n]["accuracy"]), "k.")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(out: Path, seeds: list[int], k: int = 5, arms: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    counts = make_data(out / "data")
    inits = {s: tiny_wav2vec2(out / f"w2v2-tiny-init-{s}", s) for s in seeds}
    source, arms = out / "source", arms or list(ARMS)
    needs_source = any(ARMS[name][0] == "source" for name in arms)
    trained = is_complete(source) or not is_run(source) and (source / "model" / "config.json").exists()
    if needs_source and not trained:
        run(
            "wav2vec2-tiny-words-source-full.yaml",
            [f"model.name={inits[seeds[0]]}", f"output_dir={source}", *splits(out / "data" / "source")],
        )
    source_metrics = json.loads((source / "metrics.json").read_text()) if needs_source else None
    runs: dict[str, list[dict]] = {}
    for name in arms:
        start, strategy, extra = ARMS[name]
        runs[name] = []
        for seed in seeds:
            model = {"source": source / "model", "scratch": inits[seed], "whisper": WHISPER}[start]
            overrides = [
                f"model.name={model}",
                f"strategy.name={strategy}",
                f"train.seed={seed}",
                f"data.split_seed={seed}",  # a different stratified draw of the k labelled clips per seed
                f"data.max_train_samples={k * len(TARGET_WORDS)}",
                f"output_dir={out / 'target' / f'{strategy}-{RUN_TAG[start]}-{seed}'}",
                *splits(out / "data" / "target"),
                *extra,
            ]
            if strategy == "linear_probe":
                overrides += ["train.epochs=100", "train.lr=1e-2", "train.batch_size=16"]
            runs[name].append(run_once("wav2vec2-tiny-digits-full.yaml", overrides, out / "target"))
    summary = {
        "data": "synthetic speech (espeak-ng); target voices disjoint from source voices",
        "clips": counts,
        "source": {
            "words": SOURCE_WORDS,
            "test_accuracy": source_metrics["test"]["accuracy"],
            "train_seconds": source_metrics["train"]["seconds"],
        } if source_metrics else None,
        "target": {"words": TARGET_WORDS, "labelled_per_word": k, "seeds": seeds},
        "arms": summarise(runs),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot(
        summary["arms"],
        out / "transfer.png",
        f"{k} labelled clips per spoken digit, unseen voices:\nscratch vs a model trained on 10 other words",
        f"test accuracy, {counts['target']['test']} digit clips (mean ± sd over seeds)",
    )
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/speech-transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5, help="labelled target clips per word")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: all")
    args = parser.parse_args()
    main(args.out, args.seeds, args.k, args.arms)
