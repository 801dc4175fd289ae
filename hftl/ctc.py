"""Speech recognition by transfer: a pretrained speech encoder with a new CTC head for a new vocabulary.

The vocabulary is built from the training transcripts (characters, ``|`` for the space); the pretrained
``lm_head`` (if any) is replaced by one of that size; the CNN feature encoder is frozen by default (it is what
transfers best, and what overfits first on little data). ``error_rates`` gives WER and CER with jiwer.

Example:
    >>> model, processor = load_ctc("facebook/wav2vec2-base", ["yes", "no", "stop"])  # doctest: +SKIP
    >>> batch = processor(audio=waves, sampling_rate=16000, text=texts,  # doctest: +SKIP
    ...                   padding=True, return_tensors="pt")
    >>> model(**batch).loss  # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

SPECIAL = ["<pad>", "<unk>"]
WORD_DELIMITER = "|"


def build_vocab(texts: list[str]) -> dict[str, int]:
    """Character vocabulary of the transcripts: pad and unk first, the space written as ``|``.

    Example:
        >>> build_vocab(["no go"])
        {'<pad>': 0, '<unk>': 1, 'g': 2, 'n': 3, 'o': 4, '|': 5}
    """
    chars = sorted({c for t in texts for c in t.lower() if c != " "} | {WORD_DELIMITER})
    return {token: i for i, token in enumerate(SPECIAL + chars)}


def make_processor(name: str, vocab: dict[str, int], **kwargs):
    """The model's feature extractor with a character CTC tokenizer over ``vocab``."""
    from transformers import AutoFeatureExtractor, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>",
                                         word_delimiter_token=WORD_DELIMITER, bos_token=None, eos_token=None)
    return Wav2Vec2Processor(feature_extractor=AutoFeatureExtractor.from_pretrained(name, **kwargs),
                             tokenizer=tokenizer)


def load_ctc(name: str, texts: list[str], *, freeze_feature_encoder: bool = True, revision: str = "main"):
    """A pretrained speech encoder with a new CTC head sized for the transcripts' characters, and its processor."""
    from transformers import AutoModelForCTC

    from hftl.models import resolve

    kwargs = resolve(name, revision)
    processor = make_processor(name, build_vocab(texts), **kwargs)
    tokenizer = processor.tokenizer
    model = AutoModelForCTC.from_pretrained(
        name, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, ctc_loss_reduction="mean",
        ignore_mismatched_sizes=True, **kwargs,
    )
    if freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    return model, processor


@torch.no_grad()
def transcribe(model, processor, waves: list, sampling_rate: int) -> list[str]:
    """Greedy CTC decoding of a batch of waveforms."""
    batch = processor(audio=waves, sampling_rate=sampling_rate, padding=True, return_tensors="pt")
    logits = model(**{k: v for k, v in batch.items() if k in ("input_values", "attention_mask")}).logits
    return processor.batch_decode(logits.argmax(-1))


def error_rates(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Word and character error rates (jiwer).

    Example:
        >>> error_rates(["yes no"], ["yes go"])
        {'wer': 0.5, 'cer': 0.16666666666666666}
    """
    import jiwer

    return {"wer": float(jiwer.wer(references, predictions)), "cer": float(jiwer.cer(references, predictions))}
