"""Text: tokenize without padding (each batch is padded to its own longest), keep ``label`` and ``length``.

Example:
    >>> encoded = encode_text(splits, tokenizer, "text", max_length=128)  # doctest: +SKIP
    >>> collate = text_collator(tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

from datasets import DatasetDict
from transformers import DataCollatorWithPadding

from hftl.data.batching import drop_full_mask


def encode_text(splits: DatasetDict, tokenizer, column: str, max_length: int) -> DatasetDict:
    """Tokenize without padding (batches are padded to their own longest); keep ``label`` and ``length``.

    A ``text_pair`` column (``data.text_pair_column``) is the second text of each pair. A column of word lists is
    tokenized as pre-split words, and ``word_ids`` (the word of each token, None for special tokens) is kept."""

    def encode(batch: dict) -> dict:
        return tokenize(tokenizer, batch[column], max_length, batch.get("text_pair"))

    return DatasetDict(
        {
            name: ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c != "label"])
            for name, ds in splits.items()
        }
    )


def tokenize(tokenizer, texts: list, max_length: int, pair: list | None = None) -> dict:
    """Token ids (and masks) of ``texts``, cut at ``max_length``, with ``length``; word lists are tokenized as
    pre-split words, with ``word_ids`` (the word of each token, None for special tokens). What training encodes and
    ``hftl predict`` reads."""
    # a pair (data.text_pair_column) is encoded as the tokenizer pairs two texts: [CLS] a [SEP] b [SEP] for BERT
    words = bool(texts) and isinstance(texts[0], list)  # pre-split words (token tasks)
    out = tokenizer(texts, pair, truncation=True, max_length=max_length, is_split_into_words=words)
    if words:  # which word each token comes from: how word-level tags reach sub-word tokens
        out["word_ids"] = [out.word_ids(i) for i in range(len(texts))]
    out["length"] = [len(ids) for ids in out["input_ids"]]
    return out


class TextCollator(DataCollatorWithPadding):
    """Pads each batch to its own longest sequence (dynamic padding); a mask that masks nothing is left out."""

    def __call__(self, rows):
        return drop_full_mask(super().__call__(rows))


def text_collator(tokenizer) -> TextCollator:
    """Pads each batch to its own longest sequence (dynamic padding); a mask that masks nothing is left out."""
    return TextCollator(tokenizer)
