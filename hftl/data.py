"""Datasets for transfer: sources, fixed stratified splits, label maps, encoding and batching.

Every source becomes a ``DatasetDict`` with ``train``/``validation``/``test`` and a ``label`` column typed as
``ClassLabel``; its names give the model's ``id2label``. The split is stratified and seeded, so every recipe
and benchmark that asks for the same data gets the same examples.

Example:
    >>> splits = load_splits(DataConfig(name="rotten_tomatoes"))  # doctest: +SKIP
    >>> {k: len(v) for k, v in splits.items()}  # doctest: +SKIP
    {'train': 10246, 'validation': 1281, 'test': 1281}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

from hftl import assets
from hftl.config import DataConfig

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """The data does not fit the config: the message names the column, split or label."""


def _rotten_tomatoes() -> tuple[DatasetDict, str, str]:
    import pandas as pd

    df = pd.read_csv(assets.data_file("rotten_tomatoes"))
    df = df[df["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    ds = Dataset.from_dict({"text": df["text"].astype(str).tolist(), "label": df["category"].tolist()})
    ds = ds.cast_column("label", ClassLabel(names=["rotten", "fresh"]))
    return DatasetDict(train=ds), "text", "label"


EMBEDDED = {"rotten_tomatoes": _rotten_tomatoes}


def _load_file(path: str) -> Dataset:
    suffix = Path(path).suffix.lower()
    if suffix not in _FILE_BUILDERS:
        raise DataError(f"cannot read {path}: use one of {sorted(_FILE_BUILDERS)}")
    if not Path(path).is_file():
        raise DataError(f"data file {path} does not exist")
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        return load_dataset(_FILE_BUILDERS[suffix], data_files=path, split="train", **kwargs)
    except ValueError as err:
        if "corresponds to no data" in str(err):  # a header and no rows
            return Dataset.from_dict({})
        raise DataError(f"cannot read data file {path}: {err}") from err


def load_source(cfg: DataConfig) -> tuple[DatasetDict, str, str]:
    """Raw splits of the source, with the names of its text and label columns."""
    if cfg.name in EMBEDDED and not cfg.splits:
        return EMBEDDED[cfg.name]()
    if cfg.splits:
        if "train" not in cfg.splits:
            raise DataError(f"data.splits must name a train split; got {sorted(cfg.splits)}")
        return DatasetDict({k: _load_file(v) for k, v in cfg.splits.items()}), cfg.text_column, cfg.label_column
    if Path(cfg.name).suffix.lower() in _FILE_BUILDERS:
        return DatasetDict(train=_load_file(cfg.name)), cfg.text_column, cfg.label_column
    try:
        raw = load_dataset(cfg.name)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not found / offline"
        raise DataError(
            f"cannot load dataset {cfg.name!r}: {err}. Use an embedded set {sorted(EMBEDDED)}, a local "
            f"file ({', '.join(_FILE_BUILDERS)}), or a Hub id on a connected machine"
        ) from err
    return raw, cfg.text_column, cfg.label_column


def _class_label(splits: DatasetDict, label: str) -> DatasetDict:
    feature = splits["train"].features[label]
    if isinstance(feature, ClassLabel):
        names = feature.names
    else:
        names = sorted({str(v) for v in splits["train"][label]})
    for name, ds in splits.items():
        if isinstance(ds.features[label], ClassLabel):
            continue
        unseen = sorted({str(v) for v in ds[label]} - set(names))
        if unseen:
            raise DataError(f"split {name!r} has labels that train never saw: {unseen[:10]} (train has {names})")
        ds = ds.map(lambda b: {label: [str(v) for v in b[label]]}, batched=True)
        splits[name] = ds.cast_column(label, ClassLabel(names=names))
    return splits


def _check_columns(splits: DatasetDict, columns: list[str]) -> None:
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"split {name!r} is empty")
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"split {name!r} has no column {missing[0]!r}; its columns are {ds.column_names} "
                f"(set data.text_column / data.label_column)"
            )


def stratified_subset(ds: Dataset, n: int, seed: int, label: str = "label") -> Dataset:
    """At most n examples with the label proportions of ds."""
    if n <= 0 or n >= len(ds):
        return ds
    return ds.train_test_split(train_size=n, stratify_by_column=label, seed=seed)["train"]


def load_splits(cfg: DataConfig) -> DatasetDict:
    """train/validation/test with columns ``text`` and ``label``: split if the source lacks them, stratified."""
    raw, text, label = load_source(cfg)
    raw = DatasetDict({("validation" if k in ("valid", "val", "dev") else k): v for k, v in raw.items()})
    _check_columns(raw, [text, label])
    raw = _class_label(raw, label)
    for old, new in ((label, "label"), (text, "text")):
        if old != new:
            raw = DatasetDict({k: v.rename_column(old, new) for k, v in raw.items()})
    if "test" not in raw:
        parts = raw["train"].train_test_split(test_size=cfg.test_size, stratify_by_column="label", seed=cfg.split_seed)
        raw["train"], raw["test"] = parts["train"], parts["test"]
    if "validation" not in raw:
        size = cfg.validation_size / (1 - cfg.test_size)
        parts = raw["train"].train_test_split(test_size=size, stratify_by_column="label", seed=cfg.split_seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    raw["train"] = stratified_subset(raw["train"], cfg.max_train_samples, cfg.split_seed)
    splits = DatasetDict({k: raw[k] for k in SPLITS})
    _check_columns(splits, ["text", "label"])
    return splits


def label_names(splits: DatasetDict) -> list[str]:
    return list(splits["train"].features["label"].names)


def encode_text(splits: DatasetDict, tokenizer, column: str, max_length: int) -> DatasetDict:
    """Tokenize without padding (batches are padded to their own longest); keep ``label`` and ``length``."""

    def encode(batch: dict) -> dict:
        out = tokenizer(batch[column], truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    return DatasetDict(
        {
            name: ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c != "label"])
            for name, ds in splits.items()
        }
    )


class LengthGroupedBatches:
    """Batches of similar length (less padding), shuffled per epoch with a fixed seed; ordered when not.

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of 50 batches, sort each by length,
    then shuffle the batches. ``set_epoch`` makes the order reproducible for resume and across processes.
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool, seed: int = 0, group: bool = True) -> None:
        self.lengths = np.asarray(lengths if lengths is not None else [], dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.group, self.epoch = batch_size, shuffle, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group:
            mega = bs * 50
            chunks = [order[i : i + mega] for i in range(0, n, mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + bs].tolist() for i in range(0, n, bs)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)


def collator_for(processor):
    """Pads each batch to its own longest sequence (dynamic padding)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(processor)
