"""Debian's ``fortunes`` as a topic-classification set: a quote's category file is its label.

A second real text task, of another domain and label set than Rotten Tomatoes' sentiment: short quotes, jokes and
aphorisms about computers, education, food, law, medicine, politics, science and sports (8 classes, 3,207 quotes;
``apt-get install fortunes``). The categories were fixed before any measurement: every topic file of the package
whose name is a plain topic and that holds at least 70 quotes (k = 32 per class still fits the train split), less
the catch-alls (``people``, ``work``, ``wisdom``, ``miscellaneous``) whose quotes belong to many topics.

Example:
    >>> raw, column, label = load_fortunes()  # doctest: +SKIP
    >>> raw["train"].features["label"].names  # doctest: +SKIP
    ['computers', 'education', 'food', 'law', 'medicine', 'politics', 'science', 'sports']
"""

from __future__ import annotations

from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_TOPICS = ("computers", "education", "food", "law", "medicine", "politics", "science", "sports")


def read_fortunes(path: str | Path) -> list[str]:
    """The quotes of one fortune file (``%`` lines separate them), whitespace collapsed, empty ones dropped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    quotes = (" ".join(q.split()) for q in text.split("\n%\n"))
    return [q for q in quotes if q and q != "%"]


def load_fortunes(directory: str | Path = FORTUNES_DIR, topics: tuple[str, ...] = FORTUNE_TOPICS):
    """``(DatasetDict(train=...), "text", "label")`` with one row per quote, labels in ``topics`` order.

    Raises ``hftl.assets.AssetMissingError`` (with the install command) when a category file is missing.
    """
    from datasets import ClassLabel, Dataset, DatasetDict

    from hftl import assets

    texts, labels = [], []
    for label, topic in enumerate(topics):
        path = Path(directory) / topic
        if not path.is_file():
            raise assets.AssetMissingError(
                f"fortune category file {path} is missing; install it with: apt-get install -y fortunes"
            )
        quotes = read_fortunes(path)
        texts += quotes
        labels += [label] * len(quotes)
    ds = Dataset.from_dict({"text": texts, "label": labels})
    return DatasetDict(train=ds.cast_column("label", ClassLabel(names=list(topics)))), "text", "label"
