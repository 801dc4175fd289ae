"""One or more numbers per input: a linear output per target, mean squared error, RMSE, MAE, Pearson, Spearman.

Targets come from ``data.label_column`` or from several columns (``data.label_columns``). With
``task.standardize`` the model learns standardised targets; the train mean and standard deviation are saved in the
model's config (``target_mean``, ``target_std``) and undone by ``outputs`` and the metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from hftl.tasks import (
    build_pooled,
    logits_of,
    modality_collator,
    only_classification,
    pooled_model_class,
    register,
    resolve_best,
)

KEYS = ("rmse", "mae", "pearson", "spearman", "loss")


def _where(split: str, row: int, files: dict) -> str:
    return f"row {row + 1} of {files[split]}" if split in files else f"row {row + 1} of split {split!r}"


def _columns(label: str, cfg) -> list[str]:
    return list(cfg.label_columns) or [label]


@register("regression")
class Regression:
    caches_features = True  # frozen strategies train the head on cached pooled features
    model_class = staticmethod(pooled_model_class)
    build_model = build_pooled
    collator = staticmethod(modality_collator)
    tunes = False  # whether tune() chooses settings on validation after training
    stratify = False

    def prepare_labels(self, raw, label: str, cfg, files):
        """``label``: a list of float targets per row; DataError naming the row and column of a cell that is not a
        number (an empty one follows data.missing_labels)."""
        from datasets import DatasetDict, List, Value

        from hftl.data.labels import is_missing, number
        from hftl.data.sources import DataError

        columns, out = _columns(label, cfg), {}
        for split, ds in raw.items():
            cells = {c: ds[c][:] for c in columns}
            empty = sorted({i for c in columns for i, v in enumerate(cells[c]) if is_missing(v)})
            for c in columns:
                bad = next((i for i, v in enumerate(cells[c]) if not is_missing(v) and number(v) is None), None)
                if bad is not None:
                    raise DataError(f"regression target column {c!r} holds {cells[c][bad]!r} at "
                                    f"{_where(split, bad, files)}: each target must be a finite number; fix that cell")
            if empty and cfg.missing_labels != "drop":
                raise DataError(f"regression target {columns} has {len(empty)} empty cell(s) at "
                                f"{_where(split, empty[0], files)} (and maybe more): fill them, or set "
                                f"data.missing_labels=drop")
            keep = [i for i in range(len(ds)) if i not in set(empty)]
            rows = [[float(number(cells[c][i])) for c in columns] for i in keep]
            ds = ds.select(keep).remove_columns(columns)
            out[split] = ds.add_column("label", rows, feature=List(Value("float32")))
        return DatasetDict(out), "label"

    def label_names(self, splits, cfg) -> list[str]:
        return _columns(cfg.label_column, cfg)

    def model_config(self, splits, cfg) -> dict:
        targets = np.asarray(splits["train"]["label"][:], dtype=np.float64)
        config = {"task": self.name, "problem_type": "regression"}
        if cfg.task.standardize:
            std = targets.std(0)
            config.update(target_mean=targets.mean(0).tolist(), target_std=np.where(std > 0, std, 1.0).tolist())
        return config

    def encode_labels(self, encoded, cfg=None):
        return encoded

    def check(self, cfg) -> None:
        only_classification(cfg)
        resolve_best(cfg, list(KEYS), "rmse")

    def best_metric(self, cfg, splits=None, log=print) -> str:
        return resolve_best(cfg, list(KEYS), "rmse")

    def auto_best(self, metrics) -> str:
        return "rmse"

    def check_best(self, metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
        if metric_for_best not in KEYS and metric_for_best != "auto":
            from hftl.config import ConfigError

            raise ConfigError(f"train.metric_for_best={metric_for_best!r} is not reported by task.name=regression: "
                              f"it reports {list(KEYS)}")
        return list(KEYS)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, metrics=None, config=None) -> dict:
        """RMSE, MAE (in the targets' units), Pearson and Spearman (mean over targets); ``loss``: the training
        loss (MSE of the standardised targets when standardised)."""
        from scipy.stats import pearsonr, spearmanr

        pred = np.asarray(self.outputs(logits, config), dtype=np.float64)
        true = labels.double().view(pred.shape).numpy()
        err = pred - true
        scores = {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean())}
        for name, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
            values = [fn(pred[:, j], true[:, j])[0] if np.ptp(pred[:, j]) and np.ptp(true[:, j]) else 0.0
                      for j in range(pred.shape[1])]
            scores[name] = float(np.mean(values))
        scores["loss"] = float(_scaled_mse(logits, labels, config))
        return scores

    def tune(self, config, logits, labels, cfg=None) -> dict:
        return {}

    def prediction_rows(self, logits: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        """Per input: ``label`` and ``predicted`` (lists of numbers in the targets' units) and ``error``
        (predicted - label); ``logits`` ``[n, targets]``, ``labels`` ``[n]`` or ``[n, targets]``."""
        pred = self.outputs(logits, config)
        true = labels.double().view(len(pred), -1).tolist()
        return [{"label": t, "predicted": p, "error": [round(a - b, 6) for a, b in zip(p, t, strict=True)]}
                for t, p in zip(true, pred, strict=True)]

    def outputs(self, logits: torch.Tensor, config) -> list:
        """The predicted numbers of each input, in the targets' units (standardisation undone)."""
        values = logits.double()
        if getattr(config, "target_mean", None) is not None:
            values = values * torch.tensor(config.target_std, dtype=torch.float64) + torch.tensor(
                config.target_mean, dtype=torch.float64)
        return values.tolist()

    def targets(self, values, config, items, where: str) -> list:
        """The targets of each row of a labelled file as floats: a number (one target), a list or JSON list of
        numbers, or a dict target name -> number (``data.label_columns``); zeros when predicting."""
        names = [config.id2label[i] for i in range(len(config.id2label))]
        if values is None:
            return [[0.0] * len(names) for _ in items]
        return [_numbers(v, names, f"row {i + 1} of {where}") for i, v in enumerate(values)]

    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per input: ``value``, a number in the targets' units, or target name -> number for several targets."""
        names = [config.id2label[i] for i in range(len(config.id2label))]
        values = self.outputs(logits_of(model, batch), config)
        return [{"value": v[0] if len(v) == 1 else dict(zip(names, v, strict=True))} for v in values]

    def pipeline_tag(self, modality: str) -> str:
        return "text-classification"  # the Hub files regression heads (num_labels, problem_type) under it


def _numbers(value, names: list[str], where: str) -> list[float]:
    """One row's targets, ordered as ``names``; DataError naming the row when they are not finite numbers."""
    import json

    from hftl.data.labels import number
    from hftl.data.sources import DataError

    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        value = [value.get(n) for n in names]
    cells = list(value) if isinstance(value, (list, tuple)) else [value]
    out = [number(c) for c in cells]
    if len(out) != len(names) or any(v is None or not np.isfinite(v) for v in out):
        raise DataError(f"{where} holds {value!r}: the model predicts {len(names)} number(s) ({names}); give one "
                        f"finite number per target")
    return [float(v) for v in out]


def _scaled_mse(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    target = labels.float().view_as(logits)
    if getattr(config, "target_mean", None) is not None:
        target = (target - torch.tensor(config.target_mean)) / torch.tensor(config.target_std)
    return torch.nn.functional.mse_loss(logits.float(), target)
