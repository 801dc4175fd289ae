"""Inputs that cannot be read are dropped before training, each named in a log line and counted, never silently.

Example:
    >>> ds, n = drop_unreadable(ds, "audio", check, "train")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging

from datasets import Dataset

log = logging.getLogger(__name__)


def input_name(value) -> str:
    if isinstance(value, dict):
        return value.get("path") or "<bytes>"
    return value if isinstance(value, str) else "<in-memory image>"


def drop_unreadable(ds: Dataset, column: str, check, split: str) -> tuple[Dataset, int]:
    """Rows whose input ``check`` reports a problem for are dropped, each logged by file name; returns the count.

    Raises DataError, before any training, when every input of the split is unreadable: an empty test split
    would otherwise end the run after all of its training.
    """
    bad, first = [], None
    for i, value in enumerate(ds[column][:]):
        problem = check(value)
        if problem:
            log.warning("skipping %s in split %r: %s", input_name(value), split, problem)
            bad.append(i)
            first = first or f"{input_name(value)}: {problem}"
    if bad and len(bad) == len(ds):
        from hftl.data.sources import DataError

        raise DataError(
            f"every input of split {split!r} is unreadable ({len(bad)} of {len(ds)}; first {first}): fix or replace "
            f"those files, or point data.splits.{split} at readable ones"
        )
    if bad:
        log.warning("skipped %d unreadable file(s) in split %r", len(bad), split)
        ds = ds.select(sorted(set(range(len(ds))) - set(bad)))
    return ds, len(bad)


def processor_key(processor, *extra) -> str:
    """Hash of the processor's settings (and extra values): it joins the cached-feature key."""
    settings = processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor)
    return hashlib.sha256(repr((settings, extra)).encode()).hexdigest()[:16]
