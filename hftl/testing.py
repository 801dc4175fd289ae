"""Tiny models and datasets for tests: built from configs in a second, never downloaded.

Example:
    >>> path = tiny_text_model(tmp_path / "bert")  # doctest: +SKIP
    >>> data = tiny_text_csv(tmp_path / "data.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

WORDS = {
    "pos": ["good", "great", "fine", "superb", "lovely", "brilliant"],
    "neg": ["bad", "awful", "poor", "dull", "boring", "terrible"],
    "neutral": ["movie", "film", "the", "a", "plot", "actor", "was", "is", "very", "quite"],
}


def tiny_text_model(path: str | Path, seed: int = 0, model_type: str = "bert", dropout: float = 0.1,
                    positions: int = 512) -> str:
    """A 2-layer, 32-wide encoder with a real word-level tokenizer, saved as a Hugging Face directory.

    ``dropout``: of hidden states and attention (BERT-style names); 0 makes training runs comparable step by step.
    ``positions``: learned positions, 512 like BERT (the default ``model.max_length`` of 128 fits); the weights are
    drawn as for 64 positions, the rows past 64 after them, so every other weight stays what it was with 64.
    """
    import torch
    from transformers import AutoConfig, AutoModel, BertTokenizer

    torch.manual_seed(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws})
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})

    def config(n: int):
        return AutoConfig.for_model(
            model_type,
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=n,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )

    model = AutoModel.from_config(config(64))
    if positions != 64:
        state = model.state_dict()
        model = AutoModel.from_config(config(positions))
        key = next(k for k in state if k.endswith("position_embeddings.weight"))
        rows = model.state_dict()[key]
        rows[: min(64, positions)] = state[key][:positions]
        model.load_state_dict({**state, key: rows}, strict=False)  # position_ids buffers follow the new size
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_gpt2_model(path: str | Path, seed: int = 0) -> str:
    """A 2-layer, 32-wide GPT-2 whose word-level tokenizer has an eos token and no pad token, as GPT-2's has none."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    vocab = ["<|endoftext|>", "<unk>"] + sorted({w for ws in WORDS.values() for w in ws})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    config = AutoConfig.for_model(
        "gpt2", vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=512, bos_token_id=0, eos_token_id=0
    )
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_text_rows(n: int = 120, seed: int = 0, labels=("neg", "pos")) -> list[dict]:
    """Short sentences whose label is told by their sentiment words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(WORDS[label], 2) + rng.sample(WORDS["neutral"], rng.randint(1, 6))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tiny_text_csv(path: str | Path, n: int = 120, seed: int = 0, labels=("neg", "pos")) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(tiny_text_rows(n, seed, labels))
    return str(path)


SPEECH_WORDS = {"yes": 300.0, "no": 500.0, "up": 700.0, "down": 900.0}  # each word is a tone of its own pitch


def tiny_speech_csv(folder: str | Path, n: int = 24, seed: int = 0, rate: int = 16000) -> str:
    """``n`` clips of 1-3 "words" (a 0.2 s tone each, a pitch per word, 0.05 s apart) and their transcripts:
    ``folder/clips.csv`` with columns ``audio`` (wav path) and ``text``; returns the CSV's path."""
    import numpy as np
    import soundfile as sf

    rng, folder = random.Random(seed), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.2 * rate)) / rate
    rows = []
    for i in range(n):
        words = [rng.choice(sorted(SPEECH_WORDS)) for _ in range(rng.randint(1, 3))]
        gap = np.zeros(int(0.05 * rate), dtype=np.float32)
        wave = np.concatenate([np.concatenate([0.5 * np.sin(2 * np.pi * SPEECH_WORDS[w] * t), gap]) for w in words])
        sf.write(folder / f"clip{i}.wav", wave.astype(np.float32), rate)
        rows.append({"audio": f"clip{i}.wav", "text": " ".join(words)})
    with open(folder / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return str(folder / "clips.csv")


def _whisper_tokenizer(folder: Path):
    """A byte-level Whisper tokenizer with no merges (one token per character) and Whisper's special tokens."""
    import json

    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    special = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
               "<|nocaptions|>", "<|notimestamps|>"]
    vocab = {c: i for i, c in enumerate(sorted(set(bytes_to_unicode().values())))}
    vocab.update({s: len(vocab) + k for k, s in enumerate(special)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = special[0]
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end,
                                 bos_token=end, eos_token=end, pad_token=end)
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    return tokenizer


def tiny_whisper_model(path: str | Path, seed: int = 0, max_target_positions: int = 64) -> str:
    """A 2+2-layer, 32-wide English-only Whisper (16 mel bins, 1 s of audio, ``max_target_positions`` decoder
    positions) with a character-level Whisper tokenizer, feature extractor and generation config, saved as a Hugging
    Face directory: what ``openai/whisper-tiny.en`` is, in miniature."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _whisper_tokenizer(path)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>",
                                                            "<|notimestamps|>")}
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                           decoder_ffn_dim=37,
                           num_mel_bins=16, max_source_positions=50, max_target_positions=max_target_positions,
                           decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end,
                           suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=start, eos_token_id=end, pad_token_id=end,
                                               bos_token_id=end, no_timestamps_token_id=ids["<|notimestamps|>"],
                                               is_multilingual=False, max_length=max_target_positions)
    model.save_pretrained(path)
    extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=1, sampling_rate=16000)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


def tiny_wav2vec2_model(path: str | Path, seed: int = 0) -> str:
    """A 2-layer, 32-wide wav2vec2 encoder (no CTC head) with its feature extractor: what a pretrained speech
    encoder is before ``task.name=ctc`` gives it a character head."""
    import torch
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    # no dropout, no time masking, layer norm in the feature encoder (not group norm over the padded batch): the
    # same clips give the same outputs in any batch, so 1 and 2 processes and a resumed run can be compared
    still = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                 final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, feat_extract_norm="layer")
    config = AutoConfig.for_model("wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
                                  conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                  do_stable_layer_norm=True, **still)
    AutoModel.from_config(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(path)
    return str(path)


def tiny_detector(path: str | Path, kind: str = "detr", labels: list[str] | tuple = ("a", "b"), size: int = 64,
                  seed: int = 0, width: int = 32, queries: int = 10, layers: int = 1, aux_loss: bool = True,
                  dropout: float | None = None) -> str:
    """A small randomly initialised detector (``detr`` or ``conditional_detr`` on transformers' own ResNet backbone,
    or ``yolos``) and its image processor (PIL class, images resized to ``size`` x ``size``), saved as a Hugging Face
    directory: what detection tests and the from-scratch arm of the detection benchmark start from. ``aux_loss``:
    the loss of every decoder layer's predictions too (DETR's auxiliary losses: faster convergence). ``dropout``: the
    transformer's (DETR, Conditional DETR; the family's default when None); 0 makes runs on 1 and N processes draw no
    random numbers while training."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForObjectDetection,
        ConditionalDetrImageProcessorPil,
        DetrImageProcessorPil,
        ResNetConfig,
        YolosImageProcessorPil,
    )

    torch.manual_seed(seed)
    id2label = dict(enumerate(labels))
    common = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if kind == "yolos":
        config = AutoConfig.for_model("yolos", hidden_size=width, num_hidden_layers=max(2, layers),
                                      num_attention_heads=2, intermediate_size=2 * width, image_size=[size, size],
                                      patch_size=8, num_detection_tokens=queries,
                                      auxiliary_loss=aux_loss, **common)  # hftl turns it off (load_detector)
        processor = YolosImageProcessorPil(size={"height": size, "width": size})
    else:
        # two stages: features at stride 8 (8 x 8 on a 64-pixel image), fine enough for objects of 10-30 pixels
        backbone = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                                layer_type="basic", out_features=["stage2"])
        config = AutoConfig.for_model(kind, backbone_config=backbone, use_timm_backbone=False,
                                      use_pretrained_backbone=False, d_model=width, encoder_layers=layers,
                                      decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
                                      encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width, num_queries=queries,
                                      auxiliary_loss=aux_loss, **common)
        if dropout is not None:
            config.dropout = dropout
        cls = ConditionalDetrImageProcessorPil if kind == "conditional_detr" else DetrImageProcessorPil
        processor = cls(size={"height": size, "width": size})
    AutoModelForObjectDetection.from_config(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def numbers_only(tree) -> bool:
    """Whether a metrics tree (dicts and lists) holds only numbers at its leaves: metrics.json's contract."""
    if isinstance(tree, dict):
        return all(numbers_only(v) for v in tree.values())
    if isinstance(tree, list):
        return all(numbers_only(v) for v in tree)
    return isinstance(tree, (int, float))  # bool too: a yes/no fact (lp_ft's cached) is a 0/1
