"""Macro F1: the unweighted mean of per-class F1 over the classes present (an evaluate module that loads offline)."""

import datasets
import evaluate
import numpy as np


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Macro-averaged F1 over classes.",
            citation="",
            inputs_description="predictions and references: lists of class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        scores = []
        for c in np.union1d(predictions, references):
            tp = np.sum((predictions == c) & (references == c))
            denom = np.sum(predictions == c) + np.sum(references == c)
            scores.append(2 * tp / denom if denom else 0.0)
        return {"f1": float(np.mean(scores))}
