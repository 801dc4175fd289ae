"""One label per input (text, image or audio): softmax over the classes, cross-entropy, eval.metrics on class ids.

The default task: the numbers are those hftl gave before tasks existed.
"""

from __future__ import annotations

import torch

from hftl.tasks import register

PIPELINE_TAGS = {"text": "text-classification", "vision": "image-classification", "speech": "audio-classification"}


@register("classification")
class Classification:
    tunes = False  # whether tune() chooses settings on validation after training
    stratify = True

    def prepare_labels(self, raw, label: str, cfg, files):
        from hftl.data.labels import clean_labels, to_class_label

        return to_class_label(clean_labels(raw, label, cfg.missing_labels, files), label), label

    def label_names(self, splits, cfg=None) -> list[str]:
        return list(splits["train"].features["label"].names)

    def model_config(self, splits, cfg) -> dict:
        return {"task": self.name, "problem_type": "single_label_classification"}

    def encode_labels(self, encoded):
        return encoded

    def check(self, cfg) -> str:
        self.check_best(cfg.eval.metrics, cfg.train.metric_for_best, trust_remote_code=cfg.model.trust_remote_code)
        return cfg.train.metric_for_best

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

    def outputs(self, logits: torch.Tensor, config) -> list:
        """The predicted class name of each input."""
        return [config.id2label[int(i)] for i in logits.argmax(-1)]

    def pipeline_tag(self, modality: str) -> str:
        return PIPELINE_TAGS.get(modality, "text-classification")
