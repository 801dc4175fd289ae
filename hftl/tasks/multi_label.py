"""Any number of labels per input: a sigmoid per label, binary cross-entropy, a decision threshold tuned on
validation (saved in the model's config), micro/macro F1, subset accuracy and per-label F1.

Labels come from a column of lists (``data.label_column``: ``["drama", "war"]``, ``[]`` for none) or from several
0/1 columns, one per label (``data.label_columns: [drama, war, comedy]``).
"""

from __future__ import annotations

import numpy as np
import torch

from hftl.tasks import (
    build_pooled,
    class_ids,
    logits_of,
    modality_collator,
    only_classification,
    pooled_model_class,
    register,
    resolve_best,
)

KEYS = ("f1_micro", "f1_macro", "subset_accuracy", "loss")
GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)  # thresholds tried on validation


def _where(split: str, row: int, files: dict) -> str:
    return f"row {row + 1} of {files[split]}" if split in files else f"row {row + 1} of split {split!r}"


def _from_columns(raw, columns: list[str], files: dict):
    """Several 0/1 columns -> a ``label`` list of the names whose cell is 1; DataError naming a cell that is not."""
    from datasets import DatasetDict

    from hftl.data.sources import DataError

    out = {}
    for split, ds in raw.items():
        cells = {c: ds[c][:] for c in columns}
        for c in columns:
            bad = next((i for i, v in enumerate(cells[c]) if v not in (0, 1, True, False, "0", "1")), None)
            if bad is not None:
                raise DataError(f"data.label_columns column {c!r} holds {cells[c][bad]!r} at "
                                f"{_where(split, bad, files)}: each label column must be 0 or 1")
        rows = [[c for c in columns if int(cells[c][i]) == 1] for i in range(len(ds))]
        out[split] = ds.remove_columns(columns).add_column("label", rows)
    return DatasetDict(out)


def _names_of(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else None


@register("multi_label")
class MultiLabel:
    caches_features = True  # frozen strategies train the head on cached pooled features
    model_class = staticmethod(pooled_model_class)
    build_model = build_pooled
    collator = staticmethod(modality_collator)
    tunes = True  # whether tune() chooses settings on validation after training
    stratify = False

    def prepare_labels(self, raw, label: str, cfg, files):
        """``label`` as lists of class ids (``List(ClassLabel)``), names from train in the order of their values."""
        from datasets import ClassLabel, DatasetDict, List

        from hftl.data.labels import label_namer, ordered_names
        from hftl.data.sources import DataError as Error

        if cfg.label_columns:
            raw, names = _from_columns(raw, list(cfg.label_columns), files), list(cfg.label_columns)
        else:
            for split, ds in raw.items():
                bad = next((i for i, v in enumerate(ds[label][:]) if _names_of(v) is None), None)
                if bad is not None:
                    raise Error(f"data.label_column {label!r} holds {ds[label][bad]!r} at {_where(split, bad, files)}"
                                f": task.name=multi_label needs a list of labels per row ([] for none), or set "
                                f"data.label_columns to several 0/1 columns")
            values = [v for row in raw["train"][label][:] for v in row]
            namer = label_namer(values)
            names = ordered_names(values, namer)
        namer = label_namer([v for ds in raw.values() for row in ds[label if not cfg.label_columns else "label"][:]
                             for v in row])
        column = "label" if cfg.label_columns else label
        index = {n: i for i, n in enumerate(names)}
        out = {}
        for split, ds in raw.items():
            rows = [[namer(v) for v in row] for row in ds[column][:]]
            bad = next(((i, n) for i, row in enumerate(rows) for n in row if n not in index), None)
            if bad:
                raise Error(f"data.label_column {column!r} has the unknown label {bad[1]!r} at "
                            f"{_where(split, bad[0], files)} (train's labels: {names[:20]}): fix it, or add examples "
                            f"of it to train")
            features = ds.features.copy()
            features[column] = List(ClassLabel(names=names))
            ids = [sorted({index[n] for n in row}) for row in rows]
            out[split] = ds.remove_columns(column).add_column(column, ids, feature=features[column])
        if len(names) < 2:
            raise Error(f"only {len(names)} label(s) in train ({names}): multi_label needs at least two")
        return DatasetDict(out), column

    def label_names(self, splits, cfg=None) -> list[str]:
        return list(splits["train"].features["label"].feature.names)

    def model_config(self, splits, cfg) -> dict:
        return {"task": self.name, "problem_type": "multi_label_classification",
                "threshold": cfg.task.threshold or 0.5}

    def encode_labels(self, encoded, cfg=None):
        """Class-id lists -> 0/1 float rows (``labels``), which the collator stacks into (batch, labels)."""
        from datasets import DatasetDict

        def hot(batch: dict, n: int) -> dict:
            rows = np.zeros((len(batch["label"]), n), dtype=np.float32)
            for r, ids in enumerate(batch["label"]):
                rows[r, ids] = 1.0
            return {"labels": rows.tolist()}

        out = {}
        for name, ds in encoded.items():
            n = len(ds.features["label"].feature.names)
            out[name] = ds.map(hot, batched=True, fn_kwargs={"n": n}, remove_columns=["label"])
        return DatasetDict(out)

    def check(self, cfg) -> None:
        only_classification(cfg)
        resolve_best(cfg, list(KEYS), "f1_micro")

    def best_metric(self, cfg, splits=None, log=print) -> str:
        return resolve_best(cfg, list(KEYS), "f1_micro")

    def auto_best(self, metrics) -> str:
        return "f1_micro"

    def check_best(self, metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
        if metric_for_best not in KEYS and metric_for_best != "auto" and not metric_for_best.startswith("f1_label_"):
            from hftl.config import ConfigError

            raise ConfigError(f"train.metric_for_best={metric_for_best!r} is not reported by task.name=multi_label:"
                              f" it reports {list(KEYS)} and f1_label_<name>")
        return list(KEYS)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, metrics=None, config=None) -> dict:
        """Micro/macro F1, subset accuracy and per-label F1 (``f1_label_<name>``) at ``config.threshold``."""
        threshold = getattr(config, "threshold", 0.5)
        pred = (torch.sigmoid(logits) >= threshold).numpy()
        true = labels.numpy() >= 0.5
        scores = f1_scores(pred, true)
        names = getattr(config, "id2label", None) or {}
        per = _per_label(pred, true)
        scores.update({f"f1_label_{names.get(i, i)}": float(f) for i, f in enumerate(per)})
        scores["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()))
        return scores

    def tune(self, config, logits: torch.Tensor, labels: torch.Tensor, cfg=None) -> dict:
        """With ``task.threshold=0``: the threshold of best micro-F1 on validation, set in ``config`` (saved)."""
        if cfg is not None and cfg.task.threshold:
            return {}
        probs, true = torch.sigmoid(logits).numpy(), labels.numpy() >= 0.5
        best = max(GRID, key=lambda t: (f1_scores(probs >= t, true)["f1_micro"], -abs(t - 0.5)))
        config.threshold = float(best)
        return {"threshold": float(best)}

    def prediction_rows(self, logits: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        """Per input: ``label`` and ``predicted`` (lists of label names, at ``config.threshold``), ``correct`` (the
        same set) and ``scores`` (label name -> probability); ``logits``, ``labels`` ``[n, labels]``."""
        names = [config.id2label[i] for i in range(logits.shape[-1])]
        probs = torch.sigmoid(logits.float())
        true = [[names[j] for j in row.nonzero().flatten().tolist()] for row in labels >= 0.5]
        return [{"label": t, "predicted": p, "correct": set(t) == set(p),
                 "probabilities": {n: round(v, 5) for n, v in zip(names, q, strict=True)}}
                for t, p, q in zip(true, self.outputs(logits, config), probs.tolist(), strict=True)]

    def outputs(self, logits: torch.Tensor, config) -> list:
        """The names of the labels whose probability reaches the threshold, per input."""
        on = torch.sigmoid(logits) >= getattr(config, "threshold", 0.5)
        return [[config.id2label[int(j)] for j in row.nonzero().flatten()] for row in on]

    def targets(self, values, config, items, where: str) -> list:
        """0/1 rows (one column per label) of a file's label sets: a list of names, a JSON list (``["drama",
        "war"]``), names separated by ``;``, an empty cell for none, or 0/1 columns (``data.label_columns``)."""
        names = [config.id2label[i] for i in range(len(config.id2label))]
        rows = [[] if values is None else label_list(v) for v in (values or [None] * len(items))]
        ids = class_ids([n for r in rows for n in r], names, where, "labels") if any(rows) else []
        out, start = [], 0
        for r in rows:
            hot = [0.0] * len(names)
            for j in ids[start:start + len(r)]:
                hot[j] = 1.0
            out.append(hot)
            start += len(r)
        return out

    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per input: ``labels`` (the names at the saved threshold, or ``threshold``) and ``scores`` (label name ->
        sigmoid probability)."""
        from types import SimpleNamespace

        logits = logits_of(model, batch)
        at = config if threshold is None else SimpleNamespace(id2label=config.id2label, threshold=threshold)
        names = [config.id2label[i] for i in range(logits.shape[-1])]
        return [{"labels": on, "scores": dict(zip(names, p, strict=True))}
                for on, p in zip(self.outputs(logits, at), torch.sigmoid(logits).tolist(), strict=True)]

    def pipeline_tag(self, modality: str) -> str:
        return {"vision": "image-classification", "speech": "audio-classification"}.get(modality,
                                                                                        "text-classification")


def label_list(value) -> list:
    """The label names of one cell of a labelled file: a list, a dict of 0/1 columns, a JSON list, ``a;b``."""
    import json

    if isinstance(value, dict):
        return [k for k, v in value.items() if str(v).strip() in ("1", "1.0", "True", "true")]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = "" if value is None else str(value).strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except ValueError:
            pass
    return [t.strip() for t in text.split(";") if t.strip()]


def _per_label(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    tp = (pred & true).sum(0)
    denom = pred.sum(0) + true.sum(0)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)  # a label never predicted nor present: perfect


def f1_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """Micro F1 (pooled over labels), macro F1 (mean of per-label F1), subset accuracy; (inputs, labels) bools.

    Example:
        >>> f1_scores(np.array([[1, 0], [1, 1]], bool), np.array([[1, 0], [0, 1]], bool))["f1_micro"]
        0.8
    """
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp, denom = (pred & true).sum(), pred.sum() + true.sum()
    return {"f1_micro": float(2 * tp / denom) if denom else 1.0,
            "f1_macro": float(_per_label(pred, true).mean()),
            "subset_accuracy": float((pred == true).all(1).mean())}
