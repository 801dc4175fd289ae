"""Spoken-words dataset, synthesised with espeak-ng: many voices, speeds and pitches; speaker-disjoint splits.

    python scripts/espeak_words.py data/spoken_words                    # 10 words x ~140 speakers, ~20 s
    python scripts/espeak_words.py data/spoken_words --words yes no --speakers 30
    hftl finetune --config recipes/configs/speech/wav2vec2-words-linear_probe.yaml

A "speaker" is an English accent (en-us, en-gb, scotland, caribbean, ...) with a voice variant (m1..m7, f1..f5,
croak, klatt, ...) and its own speed and pitch; each utterance jitters both a little. Speakers are split
70/15/15 into train/validation/test, so the test measures words said by voices never heard in training.
Writes ``<out>/wav/*.wav`` and ``train.csv``/``validation.csv``/``test.csv`` (path, label, speaker). The data is
synthetic: label it so wherever it is reported. Needs ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
from pathlib import Path

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANT_DIRS = ("/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/!v", "/usr/share/espeak-ng-data/voices/!v")
SPLIT_SHARES = (("train", 0.7), ("validation", 0.15), ("test", 0.15))


def variants() -> list[str]:
    """Voice variants installed with espeak-ng (e.g. m1, f3, croak); plain voices only when none are found."""
    for folder in map(Path, VARIANT_DIRS):
        if folder.is_dir():
            return sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)
    return [""]


def speakers(n: int, seed: int) -> list[dict]:
    """``n`` distinct speakers: accent + variant, each with its own speed (words/min) and pitch (0-99)."""
    rng = random.Random(seed)
    pool = [(a, v) for a in ACCENTS for v in variants()]
    rng.shuffle(pool)
    return [
        {
            "id": f"{a}+{v}" if v else a,
            "voice": f"{a}+{v}" if v else a,
            "speed": rng.randint(120, 210),
            "pitch": rng.randint(20, 80),
        }
        for a, v in pool[:n]
    ]


def split_speakers(people: list[dict], seed: int) -> dict[str, list[dict]]:
    """Speaker-disjoint train/validation/test (70/15/15, at least one speaker each)."""
    people = sorted(people, key=lambda p: p["id"])
    random.Random(seed).shuffle(people)
    n_val = max(1, round(len(people) * SPLIT_SHARES[1][1]))
    n_test = max(1, round(len(people) * SPLIT_SHARES[2][1]))
    return {"validation": people[:n_val], "test": people[n_val : n_val + n_test], "train": people[n_val + n_test :]}


def say(word: str, speaker: dict, path: Path, rng: random.Random, binary: str = "espeak-ng") -> None:
    speed = speaker["speed"] + rng.randint(-10, 10)
    pitch = min(99, max(0, speaker["pitch"] + rng.randint(-5, 5)))
    cmd = [binary, "-v", speaker["voice"], "-s", str(speed), "-p", str(pitch), "-w", str(path), word]
    subprocess.run(cmd, check=True, capture_output=True)


def generate(
    out: str | Path, words=WORDS, n_speakers: int = 140, repeats: int = 1, seed: int = 0, people: list | None = None
) -> dict:
    """Write the clips and the split CSVs; return the number of clips per split.

    ``people`` (from ``speakers``) replaces the ``n_speakers`` drawn by default, e.g. voices kept apart for transfer.

    Example:
        >>> generate("data/spoken_words", words=["yes", "no"], n_speakers=12)  # doctest: +SKIP
        {'train': 16, 'validation': 4, 'test': 4}
    """
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install -y espeak-ng")
    out, rng = Path(out), random.Random(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, group in split_speakers(people or speakers(n_speakers, seed), seed).items():
        rows = []
        for person in group:
            for word in words:
                for r in range(repeats):
                    path = out / "wav" / f"{word}-{person['id'].replace('+', '_')}-{r}.wav"
                    say(word, person, path, rng, binary)
                    rows.append({"path": str(path.relative_to(out)), "label": word, "speaker": person["id"]})
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--words", nargs="+", default=WORDS)
    parser.add_argument("--speakers", type=int, default=140)
    parser.add_argument("--repeats", type=int, default=1, help="utterances per speaker and word")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate(args.out, args.words, args.speakers, args.repeats, args.seed))


if __name__ == "__main__":
    main()
