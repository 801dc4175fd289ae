"""Labels mean what the user meant: ordered as their values, never a class made of missing cells or of lists.

The class order (``id2label``) comes from the train split: a ``ClassLabel`` keeps its declared order; numbers
(ints, floats, and numeric strings such as a CSV column read as text) sort numerically, with floats that are all
integral named as integers (``1.0`` -> ``"1"``: an integer CSV column with an empty cell reads as floats); other
strings sort as strings, after the numbers. Each name is the user's own value as text, so ``id2label[i]`` maps a
prediction back to what the user wrote (label ``10`` is class ``"10"``, never id 2 of a text sort).

Empty, None and NaN labels are an error naming the split and rows, or dropped with a logged count when
``data.missing_labels=drop``. A label column of lists (multi-label) and a train split with one class are refused.

Example:
    >>> splits = clean_labels(raw, "label", "error", {"train": "train.csv"})  # doctest: +SKIP
    >>> splits = to_class_label(splits, "label")  # doctest: +SKIP
    >>> splits["train"].features["label"].names  # doctest: +SKIP
    ['0', '1', '2', '10', '11']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Value

from hftl.data.sources import DataError

log = logging.getLogger(__name__)
SHOWN_ROWS = 5  # rows named in an error message


def is_missing(value: Any) -> bool:
    """True for a label or text cell that holds nothing: None, NaN, or an empty or blank string."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def rows_where(split: str, rows: Sequence[int], files: dict[str, str]) -> str:
    """Where rows are, for a message: 'rows 4, 17 of train.csv (data rows counted from 1)'. ``rows`` are 0-based."""
    shown = ", ".join(str(r + 1) for r in rows[:SHOWN_ROWS]) + (", ..." if len(rows) > SHOWN_ROWS else "")
    if split in files:
        return f"rows {shown} of {files[split]}, data rows counted from 1"
    return f"rows {shown} of split {split!r}, counted from 1"


def number(value: Any) -> float | int | None:
    """The value as a finite number (ints, floats, numeric strings), else None; booleans are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def label_namer(values: Sequence[Any]) -> Callable[[Any], str]:
    """How a column's values become class names: their text, integral floats of an all-integral column as ints."""
    floats = [v for v in values if isinstance(v, float)]
    integral = bool(floats) and all(v.is_integer() for v in floats)

    def name(value: Any) -> str:
        if isinstance(value, float) and integral:
            return str(int(value))
        return str(value)

    return name


def _order_key(value: Any, name: str) -> tuple:
    num = number(value)
    return (0, num, name) if num is not None else (1, 0, name)


def ordered_names(values: Sequence[Any], name: Callable[[Any], str] | None = None) -> list[str]:
    """Distinct class names of ``values`` in class-id order: numbers numerically, then strings as strings.

    Example:
        >>> ordered_names([10, 2, 0, 1, 2])
        ['0', '1', '2', '10']
        >>> ordered_names(["10", "2", "b", "a"])
        ['2', '10', 'a', 'b']
    """
    name = name or label_namer(values)
    distinct = {name(v): v for v in values}
    return sorted(distinct, key=lambda n: _order_key(distinct[n], n))


def _refuse_non_scalar(ds: Dataset, split: str, label: str) -> None:
    feature = ds.features[label]
    if isinstance(feature, (ClassLabel, Value)):
        return
    kind = type(feature).__name__
    if kind in ("List", "Sequence", "LargeList") or isinstance(feature, (list, tuple)):
        example = next((v for v in ds[label][:100] if v), [])
        raise DataError(
            f"data.label_column {label!r} holds lists in split {split!r} (e.g. {example!r}): several labels per "
            f"example is multi-label: set task.name=multi_label, or give one label per row"
        )
    raise DataError(f"data.label_column {label!r} holds {kind} values in split {split!r}: give one label per row")


def clean_labels(splits: DatasetDict, label: str, missing: str, files: dict[str, str]) -> DatasetDict:
    """Splits whose label column holds one present label per row.

    ``missing``: "error" raises a DataError naming the split, count and first rows; "drop" drops those rows and
    logs the count. A ClassLabel's -1 counts as missing. ``files``: split -> data file, for the message.
    Raises DataError for list-valued (multi-label) columns and for a split left without rows.
    """
    out = {}
    for split, ds in splits.items():
        _refuse_non_scalar(ds, split, label)
        if isinstance(ds.features[label], ClassLabel):
            bad = [i for i, v in enumerate(ds[label][:]) if v is None or v < 0]
        else:
            bad = [i for i, v in enumerate(ds[label][:]) if is_missing(v)]
        if bad and missing != "drop":
            raise DataError(
                f"data.label_column {label!r} has {len(bad)} empty cell(s) in split {split!r} "
                f"({rows_where(split, bad, files)}): fill them, or set data.missing_labels=drop to drop those rows"
            )
        if bad:
            log.warning("dropped %d row(s) with an empty label from split %r (data.missing_labels=drop)",
                        len(bad), split)
            ds = ds.select(sorted(set(range(len(ds))) - set(bad)))
            if len(ds) == 0:
                raise DataError(f"split {split!r} has no labelled rows: every cell of {label!r} is empty")
        out[split] = ds
    return DatasetDict(out)


def check_texts(splits: DatasetDict, column: str, key: str, files: dict[str, str]) -> DatasetDict:
    """Splits whose text column holds non-empty strings; numbers read from a file become their text.

    ``key``: the config key that names the column (data.text_column or data.input_column), for the message.
    Raises DataError naming the split, count and first rows of empty cells (None, NaN, blank).
    """
    out = {}
    for split, ds in splits.items():
        feature = ds.features[column]
        if isinstance(feature, Value) and feature.dtype not in ("string", "large_string"):
            ds = ds.cast_column(column, Value("string"))  # e.g. a column of numbers: its text is what was written
        bad = [i for i, v in enumerate(ds[column][:]) if is_missing(v)]
        if bad:
            raise DataError(
                f"{key} {column!r} has {len(bad)} empty cell(s) in split {split!r} "
                f"({rows_where(split, bad, files)}): fill them or delete those rows"
            )
        out[split] = ds
    return DatasetDict(out)


def _row_names(ds: Dataset, label: str, name: Callable[[Any], str]) -> list[str]:
    feature = ds.features[label]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(v)) for v in ds[label][:]]
    return [name(v) for v in ds[label][:]]


def to_class_label(splits: DatasetDict, label: str) -> DatasetDict:
    """Every split's label as a ``ClassLabel`` whose names come from train, in the order of their values.

    Raises DataError for labels of another split that train never saw, and when train holds one class.
    """
    train = splits["train"]
    # one naming for the column in every split: a test file whose integers read as floats still names "1"
    plain = [v for ds in splits.values() if not isinstance(ds.features[label], ClassLabel) for v in ds[label][:]]
    name = label_namer(plain)
    feature = train.features[label]
    names = list(feature.names) if isinstance(feature, ClassLabel) else ordered_names(train[label][:], name)
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for split, ds in splits.items():
        if isinstance(ds.features[label], ClassLabel) and list(ds.features[label].names) == names:
            out[split] = ds
            continue
        rows = _row_names(ds, label, name)
        unseen = sorted(set(rows) - set(index), key=lambda n: _order_key(n, n))
        if unseen:
            raise DataError(
                f"split {split!r} has labels that train never saw: {unseen[:10]} (train has {names[:20]}): "
                f"add examples of them to train, or fix those labels"
            )
        ids = [index[n] for n in rows]
        features = ds.features.copy()
        features[label] = ClassLabel(names=names)
        out[split] = ds.map(
            lambda _, idx, ids=ids: {label: [ids[i] for i in idx]}, with_indices=True, batched=True, features=features
        )
    present = sorted(set(out["train"][label][:]))
    if len(present) < 2:
        only = names[present[0]] if present else None
        raise DataError(
            f"only one class {only!r} in train: a classifier needs at least two; check data.label_column={label!r} "
            f"and the data"
        )
    return DatasetDict(out)
