"""Audio: files decoded with soundfile, mixed to mono, resampled to the feature extractor's rate, cut to length.

No torchaudio, torchcodec or FFmpeg: ``soundfile`` reads WAV/FLAC/OGG, ``scipy.signal.resample_poly`` resamples.
Wrong sample rates and multi-channel files are converted; unreadable files and silent clips are dropped before
training, each named in a log line and counted (``skipped``); a file that breaks later is skipped in its batch.

Example:
    >>> encoded, skipped = encode_audio(splits, feature_extractor, max_seconds=5.0)  # doctest: +SKIP
    >>> batch = audio_collator(feature_extractor)([encoded["train"][0]])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from math import gcd

import numpy as np
import torch
from datasets import DatasetDict

from hftl.data.batching import drop_full_mask
from hftl.data.checks import drop_unreadable, processor_key

log = logging.getLogger(__name__)
SILENCE = 1e-4  # peak amplitude below which a clip is taken as silent
# How each feature extractor pads a batch: Whisper and AST want their fixed frame count, the others the longest.
PADDING = {
    "WhisperFeatureExtractor": {"padding": "max_length"},
    "ASTFeatureExtractor": {},  # pads or cuts to its own max_length itself
}


def load_audio(path: str, rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 waveform at ``rate`` Hz, at most ``max_seconds`` long.

    Example:
        >>> wave = load_audio("yes.wav", 16000, max_seconds=2.0)  # doctest: +SKIP
    """
    import soundfile as sf

    wave, source_rate = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if source_rate != rate:
        from scipy.signal import resample_poly

        g = gcd(int(source_rate), int(rate))
        wave = resample_poly(wave, rate // g, int(source_rate) // g).astype(np.float32)
    if max_seconds:
        wave = wave[: int(max_seconds * rate)]
    return wave


def _checker(rate: int, max_seconds: float):
    def check(path) -> str | None:
        try:
            wave = load_audio(path, rate, max_seconds)
        except Exception as err:  # noqa: BLE001 - soundfile raises several types for broken files
            return f"{type(err).__name__}: {err}"
        if wave.size == 0 or np.abs(wave).max() < SILENCE:
            return "silent clip"
        return None

    return check


class AudioTransform:
    """The ``with_transform`` function: decode to waveforms; a file that fails is skipped and logged."""

    def __init__(self, rate: int, max_seconds: float) -> None:
        self.rate, self.max_seconds = rate, max_seconds

    def __call__(self, batch: dict) -> dict:
        waves, labels = [], []
        for path, label in zip(batch["audio"], batch["label"], strict=True):
            try:
                waves.append(load_audio(path, self.rate, self.max_seconds))
                labels.append(label)
            except Exception as err:  # noqa: BLE001
                log.warning("skipping %s mid-epoch: %s", path, err)
        return {"waveform": waves, "label": labels}


def encode_audio(splits: DatasetDict, extractor, *, max_seconds: float = 10.0):
    """Splits whose rows become waveforms on access (the collator extracts features); and skipped counts."""
    rate = extractor.sampling_rate
    out, skipped = {}, {}
    key = processor_key(extractor, max_seconds)
    for name, ds in splits.items():
        ds = ds.select_columns(["audio", "label"])
        if ds.features["audio"].dtype not in ("string", "large_string"):
            from hftl.data.sources import DataError

            raise DataError(
                f"split {name!r}: the audio column must hold file paths, not {ds.features['audio']}; set "
                f"data.input_column to a column of .wav/.flac/.ogg paths"
            )
        ds, skipped[name] = drop_unreadable(ds, "audio", _checker(rate, max_seconds), name)
        ds = ds.add_column("preprocess", [key] * len(ds))
        ds.set_transform(AudioTransform(rate, max_seconds))
        out[name] = ds
    return DatasetDict(out), skipped


def audio_collator(extractor):
    """Features of a batch of waveforms, padded the way the extractor's model expects, and ``labels``."""
    padding = PADDING.get(type(extractor).__name__, {"padding": True})

    def collate(rows: list[dict]) -> dict:
        waves = [np.asarray(r["waveform"], dtype=np.float32) for r in rows]
        batch = dict(extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt", **padding))
        batch["labels"] = torch.as_tensor([r["label"] for r in rows])
        return drop_full_mask(batch)

    return collate
