"""Masked-modeling inputs for every modality: packed text with random or whole-word masks, image patch masks
(SimMIM), speech frame spans (wav2vec2).

Masks are drawn from a generator seeded per batch: from torch's RNG while training (so a resumed run, whose RNG
states accelerate restores, masks the same way), from the batch's own content when ``seed`` is set (evaluation:
the same masks every epoch, whatever the order of the batches).

Example:
    >>> blocks = pack_texts(texts, tokenizer, block_size=64)  # doctest: +SKIP
    >>> collate = MaskedLMCollator(tokenizer, rate=0.15, whole_word=True)  # doctest: +SKIP
    >>> batch = collate([blocks[0], blocks[1]])  # input_ids, attention_mask, labels (-100 where not masked)
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from datasets import Dataset

IGNORE = -100  # label of the positions the loss skips


def _rng(seed: int | None, content: np.ndarray) -> np.random.Generator:
    """A generator for one batch: from torch's RNG (training), or from the batch's bytes and ``seed`` (eval)."""
    if seed is None:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(content).tobytes())])


# --- text ---------------------------------------------------------------------------------------------------------


def word_starts(encoding, index: int, tokenizer) -> list[int]:
    """1 where a token begins a word (special tokens are words of their own): from a fast tokenizer's word ids,
    else from WordPiece's ``##`` continuation prefix."""
    try:
        ids = encoding.word_ids(index)
    except (ValueError, AttributeError):  # a slow tokenizer keeps no word ids
        tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"][index])
        return [int(not t.startswith("##")) for t in tokens]
    return [int(w is None or i == 0 or w != ids[i - 1]) for i, w in enumerate(ids)]


def pack_texts(texts: list[str], tokenizer, block_size: int, *, pack: bool = True, batch: int = 1000) -> Dataset:
    """Token blocks for masked-LM training, with ``word_start`` flags for whole-word masking and ``length``.

    ``pack``: every text tokenized whole (``[CLS] text [SEP]``), all of them concatenated and cut into blocks of
    exactly ``block_size`` tokens (the remainder is dropped when at least one block is full): no padding at all,
    as ``run_mlm``'s ``group_texts``. Without it, one row per text, truncated to ``block_size`` (``line_by_line``).

    Example:
        >>> ds = pack_texts(["a fine film", "dull"], tokenizer, block_size=4)  # doctest: +SKIP
    """
    texts = [t for t in texts if t and t.strip()]
    ids, starts = [], []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], truncation=not pack, max_length=None if pack else block_size,
                        return_attention_mask=False, return_token_type_ids=False)
        ids += enc["input_ids"]
        starts += [word_starts(enc, j, tokenizer) for j in range(len(enc["input_ids"]))]
    if not pack:
        return Dataset.from_dict({"input_ids": ids, "word_start": starts, "length": [len(x) for x in ids]})
    flat_ids = np.fromiter((t for x in ids for t in x), dtype=np.int64)
    flat_starts = np.fromiter((t for x in starts for t in x), dtype=np.int8)
    n = len(flat_ids) // block_size * block_size or len(flat_ids)
    rows = max(1, n // block_size)
    size = n // rows
    return Dataset.from_dict({
        "input_ids": flat_ids[:n].reshape(rows, size).tolist(),
        "word_start": flat_starts[:n].reshape(rows, size).tolist(),
        "length": [size] * rows,
    })


def choose_masked(candidates: np.ndarray, starts: np.ndarray, rate: float, rng: np.random.Generator,
                  whole_word: bool) -> np.ndarray:
    """Which positions of one sequence to mask: ``round(rate x candidates)`` of them (at least one).

    Whole words: words are taken in random order, all their tokens together, while the count stays within the
    target (BERT's whole-word masking); a word longer than what is left is passed over.

    Example:
        >>> choose_masked(np.ones(20, bool), np.ones(20, np.int8), 0.15, np.random.default_rng(0), False).sum()
        3
    """
    chosen = np.zeros(len(candidates), dtype=bool)
    positions = np.flatnonzero(candidates)
    if len(positions) == 0:
        return chosen
    target = max(1, int(round(rate * len(positions))))
    if not whole_word:
        chosen[rng.choice(positions, size=min(target, len(positions)), replace=False)] = True
        return chosen
    after_special = np.concatenate([[False], ~candidates[:-1]])
    group = np.cumsum((starts > 0) | ~candidates | after_special)  # special tokens are words of their own
    words = [positions[group[positions] == g] for g in np.unique(group[positions])]
    count = 0
    for k in rng.permutation(len(words)):
        if count + len(words[k]) > target:
            continue
        chosen[words[k]] = True
        count += len(words[k])
        if count == target:
            break
    if count == 0:  # every word is longer than the target: mask one whole word
        chosen[words[int(rng.integers(len(words)))]] = True
    return chosen


class MaskedLMCollator:
    """Pads (when rows differ in length), masks ``rate`` of the non-special tokens: 80% ``[MASK]``, 10% a random
    token, 10% unchanged (BERT), and sets ``labels`` to the original ids there, -100 elsewhere.

    Example:
        >>> collate = MaskedLMCollator(tokenizer, rate=0.15, whole_word=True)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, rate: float = 0.15, whole_word: bool = False, seed: int | None = None) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token: masked-LM needs one")
        self.tokenizer, self.rate, self.whole_word, self.seed = tokenizer, rate, whole_word, seed
        self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.vocab_size = len(tokenizer)

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        starts = np.ones((len(rows), width), dtype=np.int8)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], attention[i, :n] = r["input_ids"], 1
            if "word_start" in r:
                starts[i, :n] = r["word_start"]
        rng = _rng(self.seed, ids)
        candidates = (attention > 0) & ~np.isin(ids, self.special)
        masked = np.stack([choose_masked(c, s, self.rate, rng, self.whole_word)
                           for c, s in zip(candidates, starts, strict=True)])
        labels = np.where(masked, ids, IGNORE)
        roll = rng.random(ids.shape)
        inputs = ids.copy()
        inputs[masked & (roll < 0.8)] = self.tokenizer.mask_token_id
        swap = masked & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = rng.integers(0, self.vocab_size, size=int(swap.sum()))
        return {"input_ids": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels)}


# --- vision -------------------------------------------------------------------------------------------------------


class PatchMaskGenerator:
    """SimMIM's mask: square blocks of ``mask_patch_size`` pixels, ``rate`` of them masked, as a flat boolean map
    over the model's patches (``bool_masked_pos``).

    Example:
        >>> PatchMaskGenerator(28, 4, 4, 0.5)(np.random.default_rng(0)).reshape(7, 7).sum()
        24
    """

    def __init__(self, input_size: int, model_patch_size: int, mask_patch_size: int = 0, rate: float = 0.6) -> None:
        mask_patch_size = mask_patch_size or model_patch_size
        if input_size % mask_patch_size or mask_patch_size % model_patch_size:
            raise ValueError(f"pretrain.mask_patch_size={mask_patch_size} must divide the image size {input_size} "
                             f"and be a multiple of the model's patch size {model_patch_size}")
        self.blocks = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.count = max(1, int(round(rate * self.blocks**2)))

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros(self.blocks**2, dtype=bool)
        mask[rng.permutation(self.blocks**2)[: self.count]] = True
        mask = mask.reshape(self.blocks, self.blocks).repeat(self.scale, 0).repeat(self.scale, 1)
        return mask.reshape(-1)


class MaskedImageCollator:
    """Stacks ``pixel_values`` and draws one patch mask per image (``bool_masked_pos``); labels are not used."""

    def __init__(self, generator: PatchMaskGenerator, seed: int | None = None) -> None:
        self.generator, self.seed = generator, seed

    def __call__(self, rows: list[dict]) -> dict:
        pixels = np.stack([np.asarray(r["pixel_values"], dtype=np.float32) for r in rows])
        rng = _rng(self.seed, pixels[:, :, ::4, ::4])
        masks = np.stack([self.generator(rng) for _ in rows])
        return {"pixel_values": torch.from_numpy(pixels), "bool_masked_pos": torch.from_numpy(masks)}


# --- speech -------------------------------------------------------------------------------------------------------


class MaskedSpeechCollator:
    """Waveforms to features, then wav2vec2's pretraining inputs: masked frame spans (``mask_time_indices``,
    spans of ``span`` frames starting at ``rate`` of the frames) and the negatives the contrastive loss compares
    each masked frame with (``sampled_negative_indices``), drawn among the masked frames of the same clip.

    Example:
        >>> collate = MaskedSpeechCollator(feature_extractor, model, rate=0.65, span=10)  # doctest: +SKIP
    """

    def __init__(self, extractor, model, rate: float = 0.65, span: int = 10, seed: int | None = None) -> None:
        self.extractor, self.rate, self.span, self.seed = extractor, rate, span, seed
        self.frames = model._get_feat_extract_output_lengths  # samples -> frames of the CNN feature encoder
        self.negatives = model.config.num_negatives

    def __call__(self, rows: list[dict]) -> dict:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        waves = [np.asarray(r["waveform"], dtype=np.float32) for r in rows]
        batch = dict(self.extractor(waves, sampling_rate=self.extractor.sampling_rate, return_tensors="pt",
                                    padding=True, return_attention_mask=True))
        lengths = self.frames(batch["attention_mask"].sum(-1))
        width = int(self.frames(torch.tensor(batch["input_values"].shape[-1])))
        frame_mask = (torch.arange(width)[None] < lengths[:, None]).long()
        state = np.random.get_state()  # transformers draws with numpy's global RNG: seed it, then put it back
        np.random.seed(int(_rng(self.seed, batch["input_values"].numpy()[:, ::64]).integers(2**31)))
        try:
            masked = _compute_mask_indices((len(rows), width), self.rate, self.span, attention_mask=frame_mask,
                                           min_masks=2)
            negatives = _sample_negative_indices((len(rows), width), self.negatives, mask_time_indices=masked)
        finally:
            np.random.set_state(state)
        batch["mask_time_indices"] = torch.from_numpy(masked)
        batch["sampled_negative_indices"] = torch.from_numpy(negatives)
        return batch


def padding_fraction(batch: dict) -> float:
    """Share of the batch's positions that are padding (0 for packed text)."""
    mask = batch["attention_mask"]
    return float(1 - mask.sum() / mask.numel())
