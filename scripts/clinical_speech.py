"""Clinical dictation spoken by espeak-ng voices: a speech-recognition set with its own vocabulary, sentences and
voices split so that test sentences are never heard in training and half of the test voices are new.

    python scripts/clinical_speech.py data/clinical                 # 48 train, 8 validation, 24 test clips, ~30 s
    hftl finetune --config recipes/configs/speech/whisper-clinical-lora.yaml

Sentences are drawn from dictation templates filled with drug names, doses, symptoms and measurements (numbers
spoken as words: "forty milligrams"); each sentence belongs to one split only. Voices are espeak-ng accents with a
variant, speed and pitch: train and validation use the train voices, test has each of its sentences spoken once by a
train voice (``voice_seen=1``) and once by a voice never heard in training (``voice_seen=0``), so the table can say
WER on unseen sentences by known voices and by new voices. Writes ``<out>/wav/*.wav`` and ``train.csv``,
``validation.csv``, ``test.csv`` (audio, text, voice, voice_seen). The speech is synthetic: label it so wherever it
is reported. Needs ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
from pathlib import Path

DRUGS = ["metformin", "lisinopril", "atorvastatin", "amoxicillin", "furosemide", "warfarin", "omeprazole",
         "levothyroxine", "prednisolone", "salbutamol", "ibuprofen", "paracetamol", "gabapentin", "ramipril"]
DOSES = ["five milligrams", "ten milligrams", "twenty milligrams", "forty milligrams", "two hundred milligrams",
         "five hundred milligrams", "one gram", "twenty five micrograms"]
FREQUENCY = ["once daily", "twice daily", "three times a day", "at night", "every four hours", "as required"]
SYMPTOMS = ["chest pain", "shortness of breath", "palpitations", "dizziness", "nausea", "a persistent cough",
            "abdominal pain", "headache", "swollen ankles", "fatigue", "a productive cough", "fever"]
DURATION = ["two days", "three weeks", "one month", "five days", "several hours", "six months"]
MEASURE = [("blood pressure", ["one forty over ninety", "one twenty over eighty", "one sixty over one hundred"]),
           ("heart rate", ["seventy two", "one hundred and ten", "fifty eight"]),
           ("temperature", ["thirty eight point five", "thirty seven point two", "thirty nine degrees"]),
           ("oxygen saturation", ["ninety four percent", "ninety eight percent", "eighty nine percent"])]
TEMPLATES = [
    "patient reports {symptom} for {duration}",
    "start {drug} {dose} {frequency}",
    "{measure} is {value} today",
    "continue {drug} and review in {duration}",
    "history of {symptom} treated with {drug}",
    "stop {drug} because of {symptom}",
    "{measure} was {value} and the patient denies {symptom}",
    "increase {drug} to {dose} {frequency}",
]
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-x-rp+m3", "en-029+f2"]
NEW_VOICES = ["en-gb-scotland+f3", "en-us-nyc+m5"]


def sentence(rng: random.Random) -> str:
    measure, values = rng.choice(MEASURE)
    return rng.choice(TEMPLATES).format(drug=rng.choice(DRUGS), dose=rng.choice(DOSES),
                                         frequency=rng.choice(FREQUENCY), symptom=rng.choice(SYMPTOMS),
                                         duration=rng.choice(DURATION), measure=measure, value=rng.choice(values))


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        s = sentence(rng)
        if s not in out:
            out.append(s)
    return out


def say(text: str, voice: str, path: Path, rng: random.Random, binary: str) -> None:
    speed, pitch = rng.randint(140, 180), rng.randint(30, 70)
    subprocess.run([binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text], check=True,
                   capture_output=True)


def generate(out: str | Path, n_train: int = 24, n_val: int = 4, n_test: int = 12, seed: int = 0) -> dict:
    """Write the clips and the CSVs: each train/validation sentence by 2 train voices, each test sentence by one
    train voice and one new voice. Returns the clip count per split."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install -y espeak-ng")
    out, rng = Path(out), random.Random(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    pool = sentences(n_train + n_val + n_test, seed)
    parts = {"train": pool[:n_train], "validation": pool[n_train:n_train + n_val], "test": pool[n_train + n_val:]}
    counts = {}
    for split, texts in parts.items():
        rows = []
        for i, text in enumerate(texts):
            voices = rng.sample(TRAIN_VOICES, 2) if split != "test" else [rng.choice(TRAIN_VOICES), NEW_VOICES[i % 2]]
            for voice in voices:
                path = out / "wav" / f"{split}-{i}-{voice.replace('+', '_')}.wav"
                say(text, voice, path, rng, binary)
                rows.append({"audio": str(path.relative_to(out)), "text": text, "voice": voice,
                             "voice_seen": int(voice in TRAIN_VOICES)})
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["audio", "text", "voice", "voice_seen"])
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--train", type=int, default=24, help="train sentences (2 voices each)")
    parser.add_argument("--validation", type=int, default=4, help="validation sentences (2 voices each)")
    parser.add_argument("--test", type=int, default=12, help="test sentences (a train voice and a new one each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate(args.out, args.train, args.validation, args.test, args.seed))


if __name__ == "__main__":
    main()
