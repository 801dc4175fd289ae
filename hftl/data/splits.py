"""Fixed, seeded, stratified train/validation/test splits with a ``ClassLabel`` label, for every modality.

The input column is renamed to its kind: ``text``, ``image`` or ``audio``; its names give the model's ``id2label``.
Every recipe and benchmark that asks for the same data gets the same examples.

Example:
    >>> splits = load_splits(DataConfig(name="rotten_tomatoes"))  # doctest: +SKIP
    >>> {k: len(v) for k, v in splits.items()}  # doctest: +SKIP
    {'train': 10246, 'validation': 1281, 'test': 1281}
"""

from __future__ import annotations

from datasets import ClassLabel, Dataset, DatasetDict

from hftl.config import DataConfig
from hftl.data.sources import DataError, input_kind, load_source

SPLITS = ("train", "validation", "test")


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
                f"(set data.text_column / data.input_column / data.label_column)"
            )


def stratified_subset(ds: Dataset, n: int, seed: int, label: str = "label") -> Dataset:
    """At most n examples with the label proportions of ds."""
    if n <= 0 or n >= len(ds):
        return ds
    return ds.train_test_split(train_size=n, stratify_by_column=label, seed=seed)["train"]


def load_splits(cfg: DataConfig) -> DatasetDict:
    """train/validation/test with columns ``label`` and ``text``/``image``/``audio``: stratified where split here.

    Example:
        >>> load_splits(DataConfig(name="mnist_digits"))["train"].column_names  # doctest: +SKIP
        ['image', 'label']
    """
    raw, column, label = load_source(cfg)
    raw = DatasetDict({("validation" if k in ("valid", "val", "dev") else k): v for k, v in raw.items()})
    _check_columns(raw, [column, label])
    raw = _class_label(raw, label)
    kind = input_kind(raw["train"], column)
    for old, new in ((label, "label"), (column, kind)):
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
    _check_columns(splits, [kind, "label"])
    return splits


def label_names(splits: DatasetDict) -> list[str]:
    return list(splits["train"].features["label"].names)
