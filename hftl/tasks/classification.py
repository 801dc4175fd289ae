"""One label per input (text, image or audio): softmax over the classes, cross-entropy, eval.metrics on class ids.

The default task: the numbers are those hftl gave before tasks existed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from hftl.tasks import build_pooled, class_ids, logits_of, modality_collator, pooled_model_class, register

IMBALANCED = 3.0  # train is imbalanced when its largest class has this many times the examples of its smallest

PIPELINE_TAGS = {"text": "text-classification", "vision": "image-classification", "speech": "audio-classification"}


@register("classification")
class Classification:
    caches_features = True  # frozen strategies train the head on cached pooled features
    model_class = staticmethod(pooled_model_class)
    build_model = build_pooled
    collator = staticmethod(modality_collator)
    tunes = False  # whether tune() chooses settings on validation after training
    baselines = True  # whether hftl.baselines (majority class, a classical model) can score it
    stratify = True

    def prepare_labels(self, raw, label: str, cfg, files):
        from hftl.data.labels import clean_labels, to_class_label

        return to_class_label(clean_labels(raw, label, cfg.missing_labels, files), label), label

    def label_names(self, splits, cfg=None) -> list[str]:
        return list(splits["train"].features["label"].names)

    def model_config(self, splits, cfg) -> dict:
        config = {"task": self.name, "problem_type": "single_label_classification"}
        weights = class_weights(cfg.train.class_weights, splits["train"]["label"][:], self.label_names(splits))
        return {**config, "class_weights": weights} if weights else config

    def encode_labels(self, encoded, cfg=None):
        """With ``train.balanced_sampler``: train's smaller classes repeated (seeded) up to the largest one's count."""
        if cfg is None or not cfg.train.balanced_sampler:
            return encoded
        from datasets import DatasetDict

        labels = np.asarray(encoded["train"]["label"][:])
        rng = np.random.default_rng(cfg.train.seed)
        most = max(Counter(labels.tolist()).values())
        rows = np.concatenate([np.resize(rng.permutation(np.flatnonzero(labels == c)), most)
                               for c in np.unique(labels)])
        return DatasetDict({**encoded, "train": encoded["train"].select(np.sort(rows))})

    def check(self, cfg) -> None:
        self.check_best(cfg.eval.metrics, cfg.train.metric_for_best, trust_remote_code=cfg.model.trust_remote_code)

    def best_metric(self, cfg, splits, log=print) -> str:
        """``auto``: macro-F1 (``f1``) when train is imbalanced and f1 is computed (said in the log), else as fit."""
        best = cfg.train.metric_for_best
        if best != "auto":
            return best
        counts = Counter(splits["train"]["label"][:])
        ratio = max(counts.values()) / min(counts.values())
        keys = self.check_best(cfg.eval.metrics, "auto", trust_remote_code=cfg.model.trust_remote_code)
        if ratio >= IMBALANCED and "f1" in keys:
            log(f"train.metric_for_best=auto: train's classes are imbalanced (largest {ratio:.1f}x the smallest): "
                f"the best epoch is picked by macro-F1 (f1), not accuracy")
            return "f1"
        return self.auto_best(cfg.eval.metrics)

    def auto_best(self, metrics) -> str:
        keys = self.check_best(metrics, "auto")
        return next(k for k in ("accuracy", "f1", "loss") if k in keys)

    def check_best(self, metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
        from hftl.metrics import check_metrics

        return check_metrics(metrics, metric_for_best, trust_remote_code=trust_remote_code)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, metrics, config=None) -> dict:
        from hftl.metrics import compute_metrics

        scores = compute_metrics(metrics, logits.argmax(-1).tolist(), labels.tolist())
        scores["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
        return scores

    def tune(self, config, logits, labels) -> dict:
        return {}

    def prediction_rows(self, logits: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        """Per input: ``label`` and ``predicted`` (class names), ``correct``, ``loss`` (its cross-entropy) and
        ``scores`` (class name -> probability); ``logits`` ``[n, classes]``, ``labels`` ``[n]`` class ids."""
        names = [config.id2label[i] for i in range(logits.shape[-1])]
        probs = logits.float().softmax(-1)
        losses = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()
        return [{"label": names[y], "predicted": names[z], "correct": y == z, "loss": round(loss, 5),
                 "scores": {n: round(v, 5) for n, v in zip(names, p, strict=True)}}
                for p, y, z, loss in zip(probs.tolist(), labels.tolist(), probs.argmax(-1).tolist(), losses.tolist(),
                                         strict=True)]

    def outputs(self, logits: torch.Tensor, config) -> list:
        """The predicted class name of each input."""
        return [config.id2label[int(i)] for i in logits.argmax(-1)]

    def targets(self, values, config, items, where: str) -> list:
        """Class ids of a file's labels (names, or indices); 0 when predicting (``values`` None)."""
        if values is None:
            return [0] * len(items)
        return class_ids(values, [config.id2label[i] for i in range(len(config.id2label))], where)

    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per input: ``label`` (the most probable class), its ``score`` and ``scores`` (class name -> softmax
        probability)."""
        probs = logits_of(model, batch).softmax(-1).tolist()
        names = [config.id2label[i] for i in range(len(config.id2label))]
        out = []
        for row in probs:
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row, strict=True))})
        return out

    def pipeline_tag(self, modality: str) -> str:
        return PIPELINE_TAGS.get(modality, "text-classification")


def class_weights(setting, labels: list[int], names: list[str]) -> list[float] | None:
    """The loss weight of each class: None for ``none``; ``balanced``: n / (classes x count) on train; a list as
    given. ConfigError when a list's length differs from the number of classes.

    Example:
        >>> class_weights("balanced", [0, 0, 0, 1], ["a", "b"])
        [0.6666666666666666, 2.0]
    """
    if setting == "none":
        return None
    if setting == "balanced":
        counts = Counter(labels)
        return [len(labels) / (len(names) * counts.get(c, 1)) for c in range(len(names))]
    if len(setting) != len(names):
        from hftl.config import ConfigError

        raise ConfigError(f"train.class_weights has {len(setting)} weights but train has {len(names)} classes "
                          f"{names[:20]}: give one weight per class in that order, or set class_weights=balanced")
    return list(setting)
