"""One tag per word (named entities, parts of speech): word-level tags aligned to sub-word tokens, only a word's
first sub-token scored (-100 elsewhere), entity-level precision/recall/F1 by ``seqeval`` (IOB tags) and token
accuracy.

Input: a dataset whose ``data.text_column`` holds word lists and ``data.label_column`` tag lists, or CoNLL-style
files (``.conll``: one ``word ... tag`` line per word, a blank line between sentences; columns ``tokens``, ``tags``).

Example:
    hftl finetune task.name=token_classification data.name=train.conll data.text_column=tokens \\
        data.label_column=tags
"""

from __future__ import annotations

import torch

from hftl.tasks import class_ids, logits_of, only_classification, register, resolve_best

KEYS = ("precision", "recall", "f1", "accuracy", "loss")
IGNORE = -100  # labels of positions that are not scored


def _where(split: str, row: int, files: dict) -> str:
    return f"row {row + 1} of {files[split]}" if split in files else f"row {row + 1} of split {split!r}"


def _check_rows(ds, split: str, words: str, tags: str, files: dict) -> None:
    """DataError naming the row and column of a row that is not two lists of the same length."""
    from hftl.data.sources import DataError

    for i, (w, t) in enumerate(zip(ds[words][:], ds[tags][:], strict=True)):
        if not isinstance(w, list) or not isinstance(t, list):
            raise DataError(f"token_classification needs lists in data.text_column {words!r} and data.label_column "
                            f"{tags!r}; {_where(split, i, files)} holds {type(w).__name__} and {type(t).__name__}")
        if len(w) != len(t):
            raise DataError(f"{_where(split, i, files)}: data.label_column {tags!r} has {len(t)} tags for {len(w)} "
                            f"words in data.text_column {words!r}: give one tag per word")


@register("token_classification")
class TokenClassification:
    tunes = False
    stratify = False
    caches_features = False  # per-token features vary in length: frozen strategies run the backbone every step

    def model_class(self):
        from hftl.modeling import HftlForTokenClassification

        return HftlForTokenClassification

    def build_model(self, cfg, labels: list[str], splits):
        from hftl.modeling import HftlForTokenClassification
        from hftl.models import load_backbone

        m = cfg.model
        backbone, _ = load_backbone(m.name, m.revision, m.trust_remote_code, m.dtype)
        return HftlForTokenClassification.from_backbone(
            backbone, len(labels), pooling="mean", head_hidden=m.head_hidden, head_dropout=m.head_dropout,
            id2label=dict(enumerate(labels)), name=m.name, revision=m.revision, **self.model_config(splits, cfg))

    reads_words = True  # inputs are word lists: hftl predict splits a text on whitespace, as training's words

    def collator(self, processor):
        from transformers import DataCollatorForTokenClassification

        pad = DataCollatorForTokenClassification(processor, label_pad_token_id=IGNORE)

        def collate(rows: list[dict]) -> dict:
            # rows straight from the tokenizer (hftl predict/evaluate) carry word tags and word_ids: aligned here as
            # encode_labels aligns a dataset's
            rows = [{k: v for k, v in r.items() if k not in ("label", "word_ids")} | {
                "labels": align_tags(r["label"], r["word_ids"])} if "word_ids" in r else r for r in rows]
            return pad(rows)

        return collate

    def prepare_labels(self, raw, label: str, cfg, files):
        """Tags as lists of class ids (``List(ClassLabel)``): "O" first, then the other tags sorted."""
        from datasets import ClassLabel, DatasetDict, List

        from hftl.data.sources import DataError, input_column

        words = input_column(raw, cfg)
        for split, ds in raw.items():
            _check_rows(ds, split, words, label, files)
        seen = {str(t) for row in raw["train"][label][:] for t in row}
        names = sorted(seen, key=lambda t: (t != "O", t[2:], t))
        index = {n: i for i, n in enumerate(names)}
        out = {}
        for split, ds in raw.items():
            rows = [[str(t) for t in row] for row in ds[label][:]]
            bad = next(((i, t) for i, row in enumerate(rows) for t in row if t not in index), None)
            if bad:
                raise DataError(f"data.label_column {label!r} has the tag {bad[1]!r} at {_where(split, bad[0], files)}"
                                f" that train never has (train's tags: {names[:20]}): fix it, or add it to train")
            feature = List(ClassLabel(names=names))
            out[split] = ds.remove_columns(label).add_column(label, [[index[t] for t in r] for r in rows],
                                                            feature=feature)
        return DatasetDict(out), label

    def label_names(self, splits, cfg=None) -> list[str]:
        return list(splits["train"].features["label"].feature.names)

    def model_config(self, splits, cfg) -> dict:
        return {"task": self.name, "problem_type": "single_label_classification"}

    def encode_labels(self, encoded, cfg=None):
        """Word tags -> one label per token: a word's first sub-token gets its tag, the rest and specials -100."""
        from datasets import DatasetDict

        def align(batch: dict) -> dict:
            return {"labels": [align_tags(t, ids) for t, ids in zip(batch["label"], batch["word_ids"], strict=True)]}

        return DatasetDict({k: ds.map(align, batched=True, remove_columns=["label", "word_ids"])
                            for k, ds in encoded.items()})

    def check(self, cfg) -> None:
        only_classification(cfg)
        resolve_best(cfg, list(KEYS), "f1")

    def best_metric(self, cfg, splits=None, log=print) -> str:
        return resolve_best(cfg, list(KEYS), "f1")

    def auto_best(self, metrics) -> str:
        return "f1"

    def check_best(self, metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
        if metric_for_best not in KEYS and metric_for_best != "auto":
            from hftl.config import ConfigError

            raise ConfigError(f"train.metric_for_best={metric_for_best!r} is not reported by "
                              f"task.name=token_classification: it reports {list(KEYS)}")
        return list(KEYS)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, metrics=None, config=None) -> dict:
        """Entity-level precision, recall, F1 (seqeval, micro over entities), accuracy over scored tokens."""
        from seqeval.metrics import f1_score, precision_score, recall_score

        names = config.id2label
        pred, true = _tag_lists(logits.argmax(-1), labels, names), _tag_lists(labels, labels, names)
        flat = [(p, t) for ps, ts in zip(pred, true, strict=True) for p, t in zip(ps, ts, strict=True)]
        scored = labels != IGNORE
        return {"precision": float(precision_score(true, pred, zero_division=0)),
                "recall": float(recall_score(true, pred, zero_division=0)),
                "f1": float(f1_score(true, pred, zero_division=0)),
                "accuracy": sum(p == t for p, t in flat) / max(len(flat), 1),
                "loss": float(torch.nn.functional.cross_entropy(logits[scored].float(), labels[scored]))}

    def tune(self, config, logits, labels, cfg=None) -> dict:
        return {}

    def prediction_rows(self, logits: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        """Per input: ``label`` and ``predicted`` (one tag per word), ``correct`` (every tag right);
        ``logits`` ``[n, tokens, tags]``, ``labels`` ``[n, tokens]`` (-100 where not scored)."""
        true, pred = _tag_lists(labels, labels, config.id2label), self.outputs(logits, config, labels)
        return [{"label": t, "predicted": p, "correct": t == p} for t, p in zip(true, pred, strict=True)]

    def outputs(self, logits: torch.Tensor, config, labels: torch.Tensor | None = None) -> list:
        """The tag of each scored position (each word's first sub-token when ``labels`` marks them), per input."""
        marks = labels if labels is not None else torch.zeros(logits.shape[:2], dtype=torch.long)
        return _tag_lists(logits.argmax(-1), marks, config.id2label)

    def targets(self, values, config, items: list, where: str) -> list:
        """Tag ids per word of each row of a labelled file (a list of tags, or tags separated by spaces), one per
        word of its input; "O" (id 0) for every word when predicting. DataError naming a row whose count differs or
        a tag the model does not know."""
        from hftl.data.sources import DataError

        if values is None:
            return [[0] * len(words) for words in items]
        rows = [v if isinstance(v, (list, tuple)) else str(v).split() for v in values]
        for i, (tags, words) in enumerate(zip(rows, items, strict=True)):
            if len(tags) != len(words):
                raise DataError(f"row {i + 1} of {where} has {len(tags)} tags for {len(words)} words: give one tag "
                                f"per word (words are split on whitespace)")
        ids = class_ids([t for r in rows for t in r], [config.id2label[i] for i in range(len(config.id2label))],
                        where, "tags")
        out, start = [], 0
        for r in rows:
            out.append(ids[start:start + len(r)])
            start += len(r)
        return out

    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per input: ``words``, ``tags`` (each word's first sub-token's tag, as in training; words past
        ``model.max_length`` get none) and ``entities`` (IOB spans: ``type``, ``start`` and ``end`` word, ``text``)."""
        from seqeval.metrics.sequence_labeling import get_entities

        tags = self.outputs(logits_of(model, batch), config, batch["labels"])
        out = []
        for words, row in zip(items, tags, strict=True):
            spans = [{"type": t, "start": a, "end": b, "text": " ".join(words[a:b + 1])}
                     for t, a, b in get_entities(list(row))]
            out.append({"words": list(words), "tags": row, "entities": spans})
        return out

    def pipeline_tag(self, modality: str) -> str:
        return "token-classification"


def align_tags(tags: list[int], word_ids: list) -> list[int]:
    """One label per token from one tag per word: a word's first sub-token gets its tag, its other sub-tokens and
    the special tokens -100 (not scored)."""
    prev, row = None, []
    for w in word_ids:
        row.append(IGNORE if w is None or w == prev else tags[w])
        prev = w
    return row


def _tag_lists(ids: torch.Tensor, labels: torch.Tensor, names: dict) -> list[list[str]]:
    return [[names[int(i)] for i, lab in zip(row, lrow, strict=True) if lab != IGNORE]
            for row, lrow in zip(ids, labels, strict=True)]
