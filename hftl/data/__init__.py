"""Datasets for transfer, one mechanism for every modality: sources, fixed splits, encoding, batching.

``load_splits`` gives ``train``/``validation``/``test`` with ``label`` (``ClassLabel``) and one input column
(``text``, ``image`` or ``audio``). ``encode`` and ``collator_for`` pick the modality from the processor the
model ships (tokenizer, image processor, feature extractor), so one recipe serves text, vision and speech.

Example:
    >>> splits = load_splits(DataConfig(name="fashion_mnist", max_train_samples=600))  # doctest: +SKIP
    >>> encoded, skipped = encode(splits, processor, cfg.data, max_length=128, augment=True)  # doctest: +SKIP
    >>> loader = DataLoader(encoded["train"], batch_size=32, collate_fn=collator_for(processor))  # doctest: +SKIP
"""

from __future__ import annotations

from datasets import DatasetDict

from hftl.config import DataConfig
from hftl.data.batching import LengthGroupedBatches
from hftl.data.sources import EMBEDDED, NO_FLIP, DataError, load_source, read_idx
from hftl.data.splits import SPLITS, label_names, load_splits, stratified_subset
from hftl.data.text import encode_text, text_collator

__all__ = [
    "EMBEDDED",
    "SPLITS",
    "DataError",
    "LengthGroupedBatches",
    "collator_for",
    "encode",
    "encode_text",
    "label_names",
    "load_source",
    "load_splits",
    "modality_of",
    "read_idx",
    "stratified_subset",
]
# Processor base class name -> modality; a composite processor (e.g. Wav2Vec2Processor) is judged by its parts.
MODALITY_BY_BASE = {
    "PreTrainedTokenizerBase": "text",
    "BaseImageProcessor": "vision",
    "ImageProcessingMixin": "vision",
    "SequenceFeatureExtractor": "speech",
}
_PARTS = ("image_processor", "feature_extractor", "tokenizer")  # tried in this order on composite processors


def _part(processor):
    """The piece of a composite processor that reads the model's input (images, audio, then text)."""
    if type(processor).__name__.endswith("Processor") and any(hasattr(processor, p) for p in _PARTS):
        for name in _PARTS:
            if getattr(processor, name, None) is not None:
                return getattr(processor, name)
    return processor


def modality_of(processor) -> str:
    """ "text", "vision" or "speech", from the processor's class.

    Example:
        >>> modality_of(AutoImageProcessor.from_pretrained("google/vit-base-patch16-224"))  # doctest: +SKIP
        'vision'
    """
    for cls in type(_part(processor)).__mro__:
        if cls.__name__ in MODALITY_BY_BASE:
            return MODALITY_BY_BASE[cls.__name__]
    raise DataError(
        f"cannot tell the modality of a {type(processor).__name__}: known bases {sorted(MODALITY_BY_BASE)}"
    )


def encode(
    splits: DatasetDict, processor, cfg: DataConfig, *, max_length: int = 128, augment: bool = False, seed: int = 0
) -> tuple[DatasetDict, dict[str, int]]:
    """Model inputs for every split, by modality; and the count of unreadable inputs skipped per split.

    Text is tokenized (up to ``max_length``); images and audio are decoded lazily, train images augmented when
    ``augment`` (leave it off for cached features).
    """
    modality = modality_of(processor)
    column = {"text": "text", "vision": "image", "speech": "audio"}[modality]
    if column not in splits["train"].column_names:
        raise DataError(
            f"the model reads {modality} but the data has no {column!r} column: "
            f"{splits['train'].column_names} (set data.input_column)"
        )
    part = _part(processor)
    if modality == "text":
        return encode_text(splits, part, "text", max_length), {k: 0 for k in splits}
    if modality == "vision":
        from hftl.data.vision import encode_images

        return encode_images(splits, part, augment=augment, seed=seed, flip=cfg.name not in NO_FLIP)
    from hftl.data.speech import encode_audio

    return encode_audio(splits, part, max_seconds=cfg.max_seconds)


def collator_for(processor):
    """The batch collator of the processor's modality: padding (text, speech) or stacking (images)."""
    modality, part = modality_of(processor), _part(processor)
    if modality == "text":
        return text_collator(part)
    if modality == "vision":
        from hftl.data.vision import image_collator

        return image_collator(part)
    from hftl.data.speech import audio_collator

    return audio_collator(part)
