"""Test-split predictions: scored once, in dataset order, and kept in ``output_dir/predictions.jsonl``.

One JSON object a line: ``id`` (the row of the test split, as ``hftl.load_splits`` gives it), the task's own
``label`` and ``predicted`` (``task.prediction_rows``: for classification class names, ``correct``, ``loss`` (the
example's cross-entropy) and ``scores`` (class name -> probability); label lists for multi-label, numbers for
regression, tag lists for token classification) and, where there is one, ``input`` (the text) or ``file`` (the
image or audio file's path).

Example:
    >>> scores, preds = evaluate_with_predictions(model, test_loader, accelerator, ["accuracy"])  # doctest: +SKIP
    >>> write_predictions("runs/x", preds, splits["test"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FILE = "predictions.jsonl"


@dataclass
class Predictions:
    """One row per example of a split (``task.prediction_rows``: label, predicted, ...) and its labels (first
    dimension: examples), in dataset order when ``order`` could be read from the loader (else in loader order, and
    ``ordered`` is False)."""

    rows: list[dict]
    labels: torch.Tensor
    ordered: bool = True


def loader_order(loader, n: int) -> list[int] | None:
    """The dataset row of each example in the order a non-shuffling loader yields them (length-grouped batches
    reorder rows); None when the batch sampler cannot be read."""
    from hftl.data import LengthGroupedBatches

    sampler = getattr(loader, "batch_sampler", None)
    for _ in range(4):  # accelerate wraps the sampler (BatchSamplerShard) around ours
        if isinstance(sampler, LengthGroupedBatches) or sampler is None:
            break
        sampler = getattr(sampler, "batch_sampler", None)
    if isinstance(sampler, LengthGroupedBatches) and not sampler.shuffle:
        order = [i for batch in sampler for i in batch]
        return order if len(order) == n else None
    return None


def evaluate_with_predictions(model, loader, accelerator, metrics: list[str], desc: str = "test"):
    """``hftl.train.evaluate``'s scores, and the predictions behind them (``Predictions``, dataset order).

    Example:
        >>> scores, preds = evaluate_with_predictions(model, test_loader, accelerator, ["accuracy"])  # doctest: +SKIP
    """
    from hftl.tasks import task_of
    from hftl.train import predict

    logits, labels = predict(model, loader, accelerator, desc)
    config = accelerator.unwrap_model(model).config
    task = task_of(accelerator.unwrap_model(model))
    scores = task.scores(logits, labels, metrics, config)
    order = loader_order(loader, len(labels))
    if order is not None:
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.as_tensor(order)] = torch.arange(len(order))
        logits, labels = logits[back], labels[back]
    return scores, Predictions(task.prediction_rows(logits, labels, config), labels, ordered=order is not None)


def _input(value, kind: str) -> dict:
    """``{"input": text}`` for text, ``{"file": path}`` for an image or audio file, else nothing."""
    if kind == "text":
        return {"input": value}
    if isinstance(value, dict):
        value = value.get("path")
    return {"file": value} if isinstance(value, str) and value else {}


def write_predictions(run_dir: str | Path, preds: Predictions, test=None) -> Path:
    """Write ``run_dir/predictions.jsonl``; ``test`` (the raw test split) adds each row's text or file path,
    checked against the labels (a mismatch leaves the inputs out rather than pairing them wrongly)."""
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, inputs = None, None
    ordered = preds.ordered and (test is None or len(test) == len(preds.labels))  # else unreadable rows were skipped
    if test is not None and ordered:
        from hftl.baselines import input_kind

        kind = input_kind(test)
        if preds.labels.dim() > 1 or preds.labels.is_floating_point() or list(test["label"]) == preds.labels.tolist():
            inputs = test[kind] if kind in ("text", "audio") or _has_paths(test, kind) else None
        else:
            log.warning("predictions: the test labels are not in dataset order; inputs left out of %s", path)
    with path.open("w") as f:
        for i, task_row in enumerate(preds.rows):
            row = {"id": i if ordered else None, **task_row}
            if inputs is not None:
                row.update(_input(inputs[i], kind))
            f.write(json.dumps(row) + "\n")
    return path


def _has_paths(ds, kind: str) -> bool:
    first = ds[0][kind] if len(ds) else None
    return isinstance(first, str) or isinstance(first, dict) and bool(first.get("path"))


def read_predictions(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/predictions.jsonl`` (empty when there is none)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
