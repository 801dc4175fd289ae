"""Speech: every strategy on tiny models of the audio families; audio decoding and skipping; a recipe run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from modality_cases import cases, check_strategy

from hftl.config import DataConfig, load_config
from hftl.data import collator_for, encode, load_splits, modality_of

RATE = 16000
_W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
_ENC = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    num_mel_bins=16,
    max_source_positions=50,
)
# model_type -> (tiny config kwargs, feature extractor class, its kwargs, inputs for the strategy check)
FAMILIES = {
    "wav2vec2": (_W2V, "Wav2Vec2FeatureExtractor", {"return_attention_mask": True}, ("input_values", (1600,))),
    "hubert": (_W2V, "Wav2Vec2FeatureExtractor", {"return_attention_mask": True}, ("input_values", (1600,))),
    "wavlm": (_W2V, "Wav2Vec2FeatureExtractor", {"return_attention_mask": True}, ("input_values", (1600,))),
    "audio-spectrogram-transformer": (
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            num_mel_bins=16,
            max_length=32,
            frequency_stride=10,
            time_stride=4,
        ),
        "ASTFeatureExtractor",
        {"num_mel_bins": 16, "max_length": 32},
        ("input_values", (32, 16)),
    ),
    "whisper": (
        _ENC,
        "WhisperFeatureExtractor",
        {"feature_size": 16, "chunk_length": 1},
        ("input_features", (16, 100)),
    ),
}
GAPS: dict = {}


@pytest.fixture(scope="module")
def tiny_speech(tmp_path_factory):
    """model_type -> directory of a tiny model built from its config, with its feature extractor."""
    import transformers
    from transformers import AutoConfig, AutoModel

    root, dirs = tmp_path_factory.mktemp("speech"), {}
    for family, (kwargs, extractor, fe_kwargs, _) in FAMILIES.items():
        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.for_model(family, **kwargs)).save_pretrained(root / family)
        getattr(transformers, extractor)(sampling_rate=RATE, **fe_kwargs).save_pretrained(root / family)
        dirs[family] = str(root / family)
    return dirs


@pytest.mark.parametrize("family,strategy", cases(FAMILIES, GAPS))
def test_strategy_on_family(tiny_speech, family, strategy, tmp_path):
    name, shape = FAMILIES[family][3]
    inputs = {name: torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))}
    check_strategy(tiny_speech[family], strategy, inputs, tmp_path)


def _tone(freq: float, seconds: float, rate: int, rng) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.02, t.size)).astype(np.float32)


def _clips(root, n=10) -> str:
    """Low and high tones; one at 8 kHz, one stereo (converted); one silent, one corrupt (skipped)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    rows = []
    for label, freq in (("low", 220.0), ("high", 1760.0)):
        for i in range(n):
            path = root / f"{label}{i}.wav"
            sf.write(path, _tone(freq * rng.uniform(0.9, 1.1), rng.uniform(0.3, 0.6), RATE, rng), RATE)
            rows.append((path.name, label))
    sf.write(root / "slow.wav", _tone(220.0, 0.5, 8000, rng), 8000)
    stereo = _tone(1760.0, 0.5, RATE, rng)
    sf.write(root / "stereo.wav", np.stack([stereo, stereo], 1), RATE)
    sf.write(root / "silent.wav", np.zeros(RATE // 2, np.float32), RATE)
    (root / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    rows += [("slow.wav", "low"), ("stereo.wav", "high"), ("silent.wav", "low"), ("corrupt.wav", "high")]
    (root / "clips.csv").write_text("path,label\n" + "\n".join(f"{p},{lab}" for p, lab in rows) + "\n")
    return str(root / "clips.csv")


def test_audio_decoding_resampling_and_skips(tmp_path, tiny_speech, caplog):
    from transformers import AutoFeatureExtractor

    splits = load_splits(DataConfig(name=_clips(tmp_path / "clips"), validation_size=0.2, test_size=0.2))
    assert splits["train"].column_names == ["audio", "label"]
    extractor = AutoFeatureExtractor.from_pretrained(tiny_speech["wav2vec2"])
    assert modality_of(extractor) == "speech"
    encoded, skipped = encode(splits, extractor, DataConfig(max_seconds=0.4))
    assert sum(skipped.values()) == 2 and "silent.wav" in caplog.text and "corrupt.wav" in caplog.text
    rows = [r for d in encoded.values() for r in d]
    assert len(rows) == 22 and max(len(r["waveform"]) for r in rows) <= 0.4 * RATE  # cut to max_seconds
    batch = collator_for(extractor)(rows[:4])
    assert batch["input_values"].shape[0] == 4 and batch["attention_mask"].shape == batch["input_values"].shape


def test_load_audio_resamples_and_mixes_down(tmp_path):
    from hftl.data.speech import load_audio

    wave = np.stack([_tone(440.0, 1.0, 8000, np.random.default_rng(0))] * 2, 1)
    sf.write(tmp_path / "a.wav", wave, 8000)
    out = load_audio(str(tmp_path / "a.wav"), RATE)
    assert out.ndim == 1 and abs(len(out) - RATE) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * RATE / len(out) - 440) < 5  # same pitch after resampling


@pytest.mark.parametrize("family", ["wav2vec2", "audio-spectrogram-transformer"])
def test_finetune_recipe_on_audio(tiny_speech, tmp_path, family):
    from hftl.recipes.finetune import main

    overrides = [
        f"model.name={tiny_speech[family]}",
        f"data.name={_clips(tmp_path / 'clips')}",
        "data.validation_size=0.2",
        "data.test_size=0.2",
        "strategy.name=linear_probe",
        "train.epochs=5",
        "train.batch_size=4",
        "train.lr=0.01",
        f"output_dir={tmp_path / 'run'}",
    ]
    metrics = main(load_config(None, overrides))
    assert 0 <= metrics["test"]["accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sum(saved["data"]["skipped"].values()) == 2
    assert "pipeline_tag: audio-classification" in (tmp_path / "run" / "README.md").read_text()


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="apt-get install espeak-ng")
def test_espeak_words_are_speaker_disjoint_and_load(tmp_path, tiny_speech):
    import importlib.util
    from pathlib import Path

    from transformers import AutoFeatureExtractor

    path = Path(__file__).parent.parent / "scripts" / "espeak_words.py"
    spec = importlib.util.spec_from_file_location("espeak_words", path)
    espeak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(espeak)
    counts = espeak.generate(tmp_path / "words", words=["yes", "no"], n_speakers=10)
    assert counts == {"validation": 4, "test": 4, "train": 12}
    files = {s: str(tmp_path / "words" / f"{s}.csv") for s in counts}
    speakers = {
        s: set(load_splits(DataConfig(splits={s: f, "train": files["train"]}))[s]["speaker"])
        for s, f in files.items()
        if s != "train"
    }
    train = set(load_splits(DataConfig(splits=files))["train"]["speaker"])
    assert not train & speakers["test"] and not train & speakers["validation"]  # speaker-disjoint
    splits = load_splits(DataConfig(splits=files))
    encoded, skipped = encode(splits, AutoFeatureExtractor.from_pretrained(tiny_speech["wav2vec2"]), DataConfig())
    assert skipped == {"train": 0, "validation": 0, "test": 0} and len(encoded["test"][0]["waveform"]) > 1000


def test_ctc_head_replaced_for_a_new_vocabulary(tiny_speech, tmp_path):
    from transformers import AutoModelForCTC, Wav2Vec2Processor

    from hftl.ctc import build_vocab, error_rates, load_ctc, transcribe

    texts = ["yes", "no", "stop go"]
    model, processor = load_ctc(tiny_speech["wav2vec2"], texts)
    assert model.lm_head.out_features == len(build_vocab(texts)) == 11
    assert not any(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())  # frozen by default
    waves = [np.sin(np.arange(n) / 7).astype(np.float32) for n in (3200, 4000, 4800)]
    batch = processor(audio=waves, sampling_rate=RATE, text=texts, padding=True, return_tensors="pt")
    labels = batch["labels"].masked_fill(batch["labels"] == processor.tokenizer.pad_token_id, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=labels).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, proc = AutoModelForCTC.from_pretrained(tmp_path).eval(), Wav2Vec2Processor.from_pretrained(tmp_path)
    model.eval()
    assert transcribe(again, proc, waves, RATE) == transcribe(model, processor, waves, RATE)
    assert error_rates(["yes no"], ["yes go"]) == {"wer": 0.5, "cer": 1 / 6}


def test_odd_rates_formats_empty_quiet_and_missing_clips(tmp_path, tiny_speech, caplog):
    """44.1 kHz 24-bit FLAC and 48 kHz float WAV are converted; empty, near-silent and missing files are named."""
    from transformers import AutoFeatureExtractor

    rng = np.random.default_rng(0)
    rows = []
    for label, freq in (("low", 220.0), ("high", 1760.0)):
        for i in range(6):
            sf.write(tmp_path / f"{label}{i}.wav", _tone(freq, 0.3, RATE, rng), RATE)
            rows.append((f"{label}{i}.wav", label))
    sf.write(tmp_path / "cd.flac", _tone(220.0, 0.5, 44100, rng), 44100, subtype="PCM_24")
    sf.write(tmp_path / "studio.wav", _tone(1760.0, 0.5, 48000, rng), 48000, subtype="FLOAT")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(tmp_path / "quiet.wav", np.full(RATE // 2, 1e-5, np.float32), RATE, subtype="FLOAT")
    rows += [("cd.flac", "low"), ("studio.wav", "high"), ("empty.wav", "low"), ("quiet.wav", "high")]
    rows.append(("missing.wav", "low"))
    (tmp_path / "clips.csv").write_text("path,label\n" + "\n".join(f"{p},{lab}" for p, lab in rows) + "\n")
    splits = load_splits(DataConfig(name=str(tmp_path / "clips.csv"), validation_size=0.2, test_size=0.2))
    extractor = AutoFeatureExtractor.from_pretrained(tiny_speech["wav2vec2"])
    encoded, skipped = encode(splits, extractor, DataConfig(max_seconds=1.0))
    assert sum(skipped.values()) == 3
    assert all(name in caplog.text for name in ("empty.wav", "quiet.wav", "missing.wav"))
    lengths = {r["waveform"].shape[0] for d in encoded.values() for r in d}
    assert lengths == {int(0.3 * RATE), RATE // 2}  # both odd rates resampled to 16 kHz
