"""Fixed, seeded, stratified train/validation/test splits with a ``ClassLabel`` label, for every modality.

The input column is renamed to its kind: ``text``, ``image`` or ``audio``; its names give the model's ``id2label``.
Every recipe and benchmark that asks for the same data gets the same examples.

Example:
    >>> splits = load_splits(DataConfig(name="rotten_tomatoes"))  # doctest: +SKIP
    >>> {k: len(v) for k, v in splits.items()}  # doctest: +SKIP
    {'train': 10200, 'validation': 1275, 'test': 1276}
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import numpy as np
from datasets import Dataset, DatasetDict

from hftl.config import DataConfig
from hftl.data.labels import check_texts, clean_labels, to_class_label
from hftl.data.sources import DataError, input_kind, load_source, source_files, text_key

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
KEY = "__hftl_input_key"  # each row's input key, computed before splitting (where reading it is fast)


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


def _stratified(ds: Dataset, seed: int, context: str, key: str, fix: str = "", **size) -> DatasetDict:
    """``ds.train_test_split`` stratified by label, with a DataError naming the class instead of datasets' error.

    ``context``: where ``ds`` stands, for the message ("in the data"); ``key``: the config key that sizes the split;
    ``fix``: what to do about a class with one example (default: add examples, or give data.splits files).
    """
    fix = fix or "add examples of it (at least 3 per class), or give data.splits files with your own validation/test"
    names = ds.features["label"].names
    counts = Counter(ds["label"][:])
    few = sorted((n, names[c]) for c, n in counts.items() if n < 2)
    if few:
        others = f" (also {', '.join(repr(c) for _, c in few[1:6])})" if len(few) > 1 else ""
        raise DataError(
            f"class {few[0][1]!r} has only {few[0][0]} example {context}{others}: too few to split stratified; {fix}"
        )
    try:
        return ds.train_test_split(stratify_by_column="label", seed=seed, **size)
    except ValueError as err:  # a split smaller than the number of classes
        raise DataError(
            f"cannot split {len(ds)} examples of {len(counts)} classes {context} stratified: {err}; "
            f"raise {key}, or give data.splits files"
        ) from err


def stratified_subset(ds: Dataset, n: int, seed: int, label: str = "label") -> Dataset:
    """At most n examples with the label proportions of ds.

    Raises DataError when n is smaller than the number of classes, or a class has one example.
    """
    if n <= 0 or n >= len(ds):
        return ds
    if label != "label":
        return ds.train_test_split(train_size=n, stratify_by_column=label, seed=seed)["train"]
    fix = "add examples of it, or set data.max_train_samples=0 to keep all of train"
    return _stratified(ds, seed, "in train", f"data.max_train_samples (now {n})", fix, train_size=n)["train"]


def _array_rows(ds: Dataset, column: str) -> np.ndarray:
    """(rows, values) of a fixed-shape array column, read from arrow in one piece (row-wise reads take minutes)."""
    import pyarrow as pa

    chunks = ds.with_format("arrow")[:][column].chunks
    arr = pa.concat_arrays([getattr(c, "storage", c) for c in chunks])
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(len(ds), -1)


def input_keys(ds: Dataset, column: str, kind: str) -> list:
    """One key per row that is equal for the same example: the text (case and spacing aside), the file path, or a
    hash of the bytes or pixels; None where the input cannot be told (an in-memory image)."""
    feature = type(ds.features[column]).__name__
    if feature in ("Array2D", "Array3D", "Array4D", "List", "Sequence"):
        return [hashlib.sha1(row.tobytes()).hexdigest() for row in _array_rows(ds, column)]
    if feature == "Image":
        from datasets import Image

        ds = ds.cast_column(column, Image(decode=False))
    keys = []
    for value in ds[column][:]:
        if isinstance(value, dict):
            value = value.get("path") or value.get("bytes")
        if isinstance(value, str):
            keys.append(text_key(value) if kind == "text" else value)
        elif isinstance(value, (bytes, bytearray)):
            keys.append(hashlib.sha1(value).hexdigest())
        else:
            keys.append(None)
    return keys


def _keys_or_none(ds: Dataset, kind: str) -> list:
    try:
        return input_keys(ds, kind, kind)
    except Exception as err:  # noqa: BLE001 - a check that cannot read an input type must not stop the run
        log.debug("no split overlap check for %s inputs: %s", kind, err)
        return [None] * len(ds)


def split_overlaps(splits: DatasetDict, kind: str) -> dict[str, int]:
    """Inputs that occur in two splits, counted per pair of splits ("train/test": 3), and logged with an example.

    Texts are compared up to case and spacing; images and audio by path, bytes or pixels. An example in two
    splits makes validation and test scores optimistic: the warning says so, it does not stop the run.
    """
    try:
        keys = {
            name: ds[KEY][:] if KEY in ds.column_names else input_keys(ds, kind, kind) for name, ds in splits.items()
        }
    except Exception as err:  # noqa: BLE001 - a check that cannot read an input type must not stop the run
        log.debug("no split overlap check for %s inputs: %s", kind, err)
        return {}
    counts, example = {}, None
    names = list(keys)
    for i, a in enumerate(names):
        seen = {k: j for j, k in enumerate(keys[a]) if k is not None}
        for b in names[i + 1 :]:
            shared = {k: j for j, k in enumerate(keys[b]) if k in seen}
            if shared:
                counts[f"{a}/{b}"] = len(shared)
                if example is None:
                    row = seen[next(iter(shared))]
                    shown = splits[a][row][kind] if kind == "text" else keys[a][row]
                    example = (str(shown)[:60], a, b)
    if counts:
        log.warning(
            "%d input(s) occur in two splits (%s; e.g. %r in %s and %s): validation/test scores will be optimistic; "
            "remove the repeats from the data, or give data.splits files that do not share inputs",
            sum(counts.values()), ", ".join(f"{k}: {v}" for k, v in counts.items()), *example,
        )
    return counts


def load_splits(cfg: DataConfig, task=None) -> DatasetDict:
    """train/validation/test with columns ``label`` and ``text``/``image``/``audio`` (and ``text_pair`` when
    ``data.text_pair_column`` is set): stratified where split here, when the task's labels are classes.

    ``task``: an ``hftl.tasks`` entry, whose ``prepare_labels`` turns the raw label column(s) into ``label`` and
    whose ``stratify`` says whether splits keep the class proportions; default single-label classification.

    Example:
        >>> load_splits(DataConfig(name="mnist_digits"))["train"].column_names  # doctest: +SKIP
        ['image', 'label']
    """
    raw, column, label = load_source(cfg)
    files = source_files(cfg)
    rename = {k: ("validation" if k in ("valid", "val", "dev") else k) for k in raw}
    raw = DatasetDict({rename[k]: v for k, v in raw.items()})
    files = {rename.get(k, k): v for k, v in files.items()}
    _check_pair_column(raw, cfg.text_pair_column)
    used = list(dict.fromkeys([column, *([cfg.text_pair_column] if cfg.text_pair_column else []),
                               *(list(cfg.label_columns) or [label])]))
    _check_columns(raw, used)
    if "label" not in used:  # an unused column called "label" would clash with the label column's new name
        raw = DatasetDict({k: v.remove_columns(["label"]) if "label" in v.column_names else v
                           for k, v in raw.items()})
    kind = input_kind(raw["train"], column)
    if task is None:
        raw = to_class_label(clean_labels(raw, label, cfg.missing_labels, files), label)
    else:
        raw, label = task.prepare_labels(raw, label, cfg, files)
    if kind == "text":
        key = "data.input_column" if cfg.input_column else "data.text_column"
        raw = check_texts(raw, column, key, files)
        if cfg.text_pair_column:
            raw = check_texts(raw, cfg.text_pair_column, "data.text_pair_column", files)
    renames = ((label, "label"), (column, kind), (cfg.text_pair_column, "text_pair"))
    for old, new in renames:
        if old and old != new:
            raw = DatasetDict({k: v.rename_column(old, new) for k, v in raw.items()})
    raw = DatasetDict({k: v.add_column(KEY, _keys_or_none(v, kind)) for k, v in raw.items()})  # before splitting
    stratify = task is None or task.stratify
    if "test" not in raw:
        parts = _split(raw["train"], stratify, cfg.split_seed, "in the data", f"data.test_size (now {cfg.test_size})",
                       test_size=cfg.test_size)
        raw["train"], raw["test"] = parts["train"], parts["test"]
    if "validation" not in raw:
        size = cfg.validation_size / (1 - cfg.test_size)
        parts = _split(raw["train"], stratify, cfg.split_seed, "in train after the test split",
                       f"data.validation_size (now {cfg.validation_size})", test_size=size)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    if stratify:
        raw["train"] = stratified_subset(raw["train"], cfg.max_train_samples, cfg.split_seed)
    elif 0 < cfg.max_train_samples < len(raw["train"]):
        raw["train"] = raw["train"].shuffle(seed=cfg.split_seed).select(range(cfg.max_train_samples))
    splits = DatasetDict({k: raw[k] for k in SPLITS})
    _check_columns(splits, [kind, "label"])
    split_overlaps(splits, kind)
    return DatasetDict({k: v.remove_columns(KEY) for k, v in splits.items()})


def _split(ds: Dataset, stratify: bool, seed: int, context: str, key: str, **size) -> DatasetDict:
    """Stratified by class (``_stratified``), or a seeded random split when the labels are not one class each."""
    if stratify:
        return _stratified(ds, seed, context, key, **size)
    return ds.train_test_split(seed=seed, **size)


def _check_pair_column(raw: DatasetDict, pair: str) -> None:
    """DataError naming ``data.text_pair_column`` when a split lacks it (before any model or data work)."""
    for name, ds in raw.items() if pair else ():
        if pair not in ds.column_names:
            raise DataError(f"data.text_pair_column={pair!r} is not a column of split {name!r} (its columns: "
                            f"{ds.column_names}): set data.text_pair_column to the second text's column, or to '' "
                            f"for one text per input")


def label_names(splits: DatasetDict) -> list[str]:
    return list(splits["train"].features["label"].names)
