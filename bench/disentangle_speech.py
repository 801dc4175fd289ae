"""Disentanglement on real pretrained features: the spoken word and the voice in Whisper tiny.en's encoder.

    OMP_NUM_THREADS=1 nice -n 5 python bench/disentangle_speech.py [--out runs/disentangle] [--seeds 0 1 2]
    OMP_NUM_THREADS=1 python bench/disentangle_speech.py --out runs/disentangle-reverse \
        --result bench/results/disentangle-reverse.json disentangle.adversary=reverse

Data (synthetic, espeak-ng; ``scripts/espeak_words.py``'s voices): the 10 words yes..go, each said by 8 voice
variants (m1, m2, m3, m7, f1, f2, f3, f5) in each of espeak-ng's 7 English accents, one clip per (word, voice,
accent) with its own random speed (140-190 words/min, then +-10) and pitch (35-65, then +-5): 560 clips. Split by
ACCENT: 4 accents train, 1 validation, 2 test, so every word and every voice is in every split, and test clips are
said in accents never heard in train. Factor a: the word (10 classes); factor b: the voice variant (8 classes).
Then ``recipes/disentangle.py`` with recipes/configs/speech/whisper-words-voices-disentangle.yaml for each seed (the
Whisper features are computed once and cached; each seed re-trains the splits and probes). Writes
``bench/results/disentangle.json``: each arm's 2x2 table (mean, sd over seeds), chance, seconds, the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "recipes" / "configs" / "speech" / "whisper-words-voices-disentangle.yaml"
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
VOICES = ["m1", "m2", "m3", "m7", "f1", "f2", "f3", "f5"]
SPLIT_ACCENTS = {"train": ["en-us", "en-gb", "en-gb-x-rp", "en-029"], "validation": ["en-gb-x-gbcwmd"],
                 "test": ["en-gb-scotland", "en-gb-x-gbclan"]}


def espeak_words():
    spec = importlib.util.spec_from_file_location("espeak_words", ROOT / "scripts" / "espeak_words.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(out: Path, seed: int = 0) -> dict[str, int]:
    """The clips and train/validation/test CSVs (path, label, speaker, accent) under ``out``; kept when present."""
    if all((out / f"{s}.csv").exists() for s in SPLIT_ACCENTS):
        return {s: sum(1 for _ in open(out / f"{s}.csv")) - 1 for s in SPLIT_ACCENTS}
    say, rng, binary = espeak_words().say, random.Random(seed), shutil.which("espeak-ng")
    (out / "wav").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, accents in SPLIT_ACCENTS.items():
        rows = []
        for accent in accents:
            for voice in VOICES:
                for word in WORDS:
                    person = {"voice": f"{accent}+{voice}", "speed": rng.randint(140, 190),
                              "pitch": rng.randint(35, 65)}
                    path = out / "wav" / f"{word}-{accent}-{voice}.wav"
                    say(word, person, path, rng, binary)  # jitters speed and pitch once more
                    rows.append({"path": str(path.resolve()), "label": word, "speaker": voice, "accent": accent})
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
    return counts


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(runs: list[dict]) -> dict:
    out = {"chance": {f: mean_sd([r["chance"][f] for r in runs]) for f in ("factor_a", "factor_b")},
           "raw": {f: mean_sd([r["raw"][f] for r in runs]) for f in ("factor_a", "factor_b")}}
    for arm in ("plain", "adversarial", "erasure"):
        out[arm] = {p: {f: mean_sd([r[arm][p][f] for r in runs]) for f in ("factor_a", "factor_b")}
                    for p in ("z_a", "z_b")}
    out["knn"] = {"raw": {f: mean_sd([r["knn"]["raw"][f] for r in runs]) for f in ("factor_a", "factor_b")}}
    for arm in ("plain", "adversarial", "erasure"):
        out["knn"][arm] = {p: {f: mean_sd([r["knn"][arm][p][f] for r in runs]) for f in ("factor_a", "factor_b")}
                           for p in ("z_a", "z_b")}
    out["seconds"] = {"features_first_seed": runs[0]["features"]["seconds"],
                      "per_seed": mean_sd([r["seconds"] for r in runs])}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/disentangle")
    parser.add_argument("--data", default="runs/disentangle/data", help="the clips (made there when missing); "
                        "shared across --out folders, so the cached Whisper features are too")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--result", default=str(ROOT / "bench" / "results" / "disentangle.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. disentangle.adversary=reverse")
    args = parser.parse_args(argv)
    out = Path(args.out)
    counts = make_data(Path(args.data))
    import hftl
    from recipes.disentangle import main as run

    runs, start, load = [], time.perf_counter(), os.getloadavg()
    for seed in args.seeds:
        splits = [f"data.splits.{s}={Path(args.data) / f'{s}.csv'}" for s in SPLIT_ACCENTS]
        cfg = hftl.parse_args(["--config", str(CONFIG), *splits, f"train.seed={seed}",
                               f"output_dir={out / f'seed{seed}'}", "overwrite=true", *args.overrides])
        runs.append(run(cfg))
    result = {"data": "synthetic speech (espeak-ng): 10 words x 8 voice variants x 7 accents; test accents unheard",
              "backbone": "openai/whisper-tiny.en encoder, mean-pooled, frozen", "clips": counts,
              "factors": {"factor_a": "word (10)", "factor_b": "voice variant (8)"}, "seeds": args.seeds,
              "overrides": args.overrides, **summarise(runs), "wall_seconds": time.perf_counter() - start,
              "machine": {"cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
                          "load_at_start": load, "load_at_end": os.getloadavg(), "python": platform.python_version()}}
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2, allow_nan=False))
    print(json.dumps({k: result[k] for k in ("chance", "raw", "plain", "adversarial", "erasure", "knn")}, indent=1))


if __name__ == "__main__":
    main()
