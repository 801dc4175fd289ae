"""What the speech-recognition tasks (``ctc``, ``seq2seq_asr``) share: transcripts checked before compute, text
normalised before scoring, WER and CER by jiwer, and the packed evaluation output the loop gathers.

Normalisation is Whisper's English normaliser (``transformers``' ``EnglishTextNormalizer``, without the
British-to-American spelling table): lower case, punctuation and fillers ("um", "hmm") dropped, spelled numbers
written as digits ("twenty one" and "21" both become "21"; "forty milligrams" and "40 milligrams" are the same
words), contractions and titles standardised. So WER counts words heard wrong, not how a number or a comma is written.

Evaluation output (``pack``): one float row per clip, ``[summed loss, scored tokens, token id, token id, ...]``, ids
padded with ``PAD_ID`` past their end: a single tensor, so the loop gathers it across processes and pads it across
batches like a per-token output, and predictions keep their dataset order.

Example:
    >>> normalize("Twenty-one milligrams, twice daily.")  # doctest: +SKIP
    '21 milligrams twice daily'
    >>> error_rates(["start 40 milligrams"], ["start forty milligrams"])  # doctest: +SKIP
    {'wer': 0.0, 'cer': 0.0}
"""

from __future__ import annotations

import functools

import torch

KEYS = ("wer", "cer", "loss")
IGNORE = -100  # label padding: not scored
PAD_ID = 0.0  # pad of packed token ids (the CTC blank; Whisper rows end with their end token first)


@functools.lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize(text: str) -> str:
    """The words of ``text`` as scored: see the module docstring."""
    return " ".join(_normalizer()(str(text)).split())


def error_rates(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Word and character error rates (jiwer) over all clips, both sides normalised (``normalize``).

    A reference that normalises to nothing (refused before training, see ``prepare_transcripts``) is skipped.

    Example:
        >>> error_rates(["yes no"], ["yes go"])
        {'wer': 0.5, 'cer': 0.16666666666666666}
    """
    import jiwer

    pairs = [(normalize(r), normalize(p)) for p, r in zip(predictions, references, strict=True)]
    pairs = [(r, p) for r, p in pairs if r]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = [r for r, _ in pairs], [p for _, p in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def _where(split: str, rows: list[int], files: dict) -> str:
    shown = ", ".join(str(i + 1) for i in rows[:5]) + (" ..." if len(rows) > 5 else "")
    return f"rows {shown} of {files[split]}" if split in files else f"rows {shown} of split {split!r}"


def prepare_transcripts(raw, label: str, cfg, files):
    """``label`` as one transcript string per clip. A missing or empty transcript (nothing left once normalised,
    e.g. "..."), is a DataError naming the split and rows, or with ``data.missing_labels=drop`` those clips are
    dropped and counted in the log. A transcript that is not text (a number read from a CSV) becomes its text."""
    import logging

    from datasets import DatasetDict

    from hftl.data.labels import is_missing
    from hftl.data.sources import DataError

    out = {}
    for split, ds in raw.items():
        if label not in ds.column_names:
            raise DataError(f"split {split!r} has no transcript column {label!r} (its columns: {ds.column_names}): "
                            f"set data.label_column to the column of transcripts")
        texts = ["" if is_missing(v) else str(v) for v in ds[label][:]]
        bad = [i for i, t in enumerate(texts) if not any(c.isalnum() for c in normalize(t))]  # "..." keeps a "."
        if bad and cfg.missing_labels != "drop":
            raise DataError(f"data.label_column {label!r} has {len(bad)} missing or empty transcript(s) in split "
                            f"{split!r} ({_where(split, bad, files)}): write them, or set data.missing_labels=drop "
                            f"to drop those clips")
        keep = [i for i in range(len(ds)) if i not in set(bad)]
        if bad:
            logging.getLogger(__name__).warning(
                "dropped %d clip(s) without a transcript from split %r (data.missing_labels=drop)", len(bad), split)
        if not keep:
            raise DataError(f"split {split!r} has no clip with a transcript in data.label_column {label!r}")
        out[split] = ds.select(keep).remove_columns(label).add_column(label, [texts[i].strip() for i in keep])
    return DatasetDict(out), label


def targets(values, config, items: list, where: str) -> list[str]:
    """The transcripts of a labelled file as the collator takes them ("" when predicting); DataError naming the rows
    whose transcript is missing or empty (they would count as nothing to hear)."""
    from hftl.data.labels import is_missing
    from hftl.data.sources import DataError

    if values is None:
        return [""] * len(items)
    texts = ["" if is_missing(v) else str(v).strip() for v in values]
    bad = [i + 1 for i, t in enumerate(texts) if not any(c.isalnum() for c in normalize(t))]
    if bad:
        raise DataError(f"{where} has {len(bad)} missing or empty transcript(s) (rows {bad[:10]}): write them, or "
                        f"drop those rows")
    return texts


def pack(loss: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, 2 + length]`` floats: each clip's summed loss, its scored tokens, its predicted token ids."""
    return torch.cat([loss.float()[:, None], tokens.float()[:, None], ids.float()], dim=1)


def unpack(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """``pack``'s parts back: summed losses, token counts, the id lists (padding left in)."""
    return outputs[:, 0], outputs[:, 1], outputs[:, 2:].round().long().tolist()


def loss_of(outputs: torch.Tensor) -> float:
    """Mean loss per scored token over all clips."""
    loss, tokens, _ = unpack(outputs)
    return float(loss.sum() / tokens.sum().clamp(min=1))


def scores_of(hypotheses: list[str], references: list[str], outputs: torch.Tensor) -> dict:
    """``wer``, ``cer`` (normalised, jiwer) and ``loss``: the tasks' validation and test scores."""
    return {**error_rates(hypotheses, references), "loss": loss_of(outputs)}


def rows_of(hypotheses: list[str], references: list[str]) -> list[dict]:
    """``predictions.jsonl`` rows: the transcript, the model's, ``correct`` (same words once normalised) and the
    clip's own ``wer``."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        rows.append({"label": ref, "predicted": hyp, "correct": normalize(hyp) == normalize(ref),
                     "wer": error_rates([hyp], [ref])["wer"]})
    return rows


def check(task, cfg) -> None:
    """What a speech-recognition task refuses before compute: classification-only settings; ``metric_for_best``
    other than wer, cer or loss; a strategy in ``refused`` (name -> why)."""
    from hftl.config import ConfigError
    from hftl.tasks import only_classification, resolve_best

    only_classification(cfg)
    resolve_best(cfg, list(KEYS), "wer")
    why = task.refused_strategies.get(cfg.strategy.name)
    if why:
        raise ConfigError(f"strategy.name={cfg.strategy.name} means nothing for task.name={task.name}: {why}; use "
                          f"full, freeze_n (e.g. strategy.freeze_layers=<encoder layers> freezes the encoder) or a "
                          f"peft method such as lora")


def check_best(metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
    from hftl.config import ConfigError

    if metric_for_best not in KEYS and metric_for_best != "auto":
        raise ConfigError(f"train.metric_for_best={metric_for_best!r} is not reported by speech recognition: it "
                          f"reports {list(KEYS)}; set train.metric_for_best to one of them")
    return list(KEYS)


def unwrap(model):
    """The transformers model under DDP (``module``) and peft (``get_base_model``) wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_clips(splits, limit: float, what: str) -> None:
    """DataError when a clip lasts longer than ``limit`` seconds: its audio would be cut and its transcript not, so
    the model would learn words it never heard. Durations come from the file headers; a file whose header cannot be
    read is left to the audio loader, which skips and counts it."""
    import soundfile as sf

    from hftl.data.sources import DataError

    for split, ds in splits.items():
        long = []
        for i, path in enumerate(ds["audio"][:]):
            try:
                seconds = sf.info(path).duration
            except Exception:  # noqa: BLE001 - soundfile raises several types for broken files
                continue
            if seconds > limit + 0.01:
                long.append((i, seconds))
        if long:
            rows = ", ".join(str(i + 1) for i, _ in long[:5])
            raise DataError(f"{len(long)} clip(s) in split {split!r} last longer than {what} ({limit:g} s; rows "
                            f"{rows}, up to {max(s for _, s in long):.1f} s): their audio would be cut and not their "
                            f"transcripts; raise data.max_seconds (up to what the model reads), or cut those clips "
                            f"and their transcripts into shorter ones")
