"""Masked modeling: masking rates and whole-word groups, packing without padding, the new head reported, losses
that go down on tiny text/vision/speech models, and a chained pretrain -> fine-tune run that resumes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from hftl.config import ConfigError, load_config
from hftl.masking import IGNORE, MaskedLMCollator, PatchMaskGenerator, choose_masked, pack_texts, padding_fraction
from hftl.testing import tiny_text_rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _texts(n=60):
    return [r["text"] for r in tiny_text_rows(n)]


def test_packing_leaves_no_padding_and_keeps_every_token(tokenizer):
    texts = _texts()
    blocks = pack_texts(texts, tokenizer, block_size=16)
    total = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    assert set(blocks["length"]) == {16} and len(blocks) == total // 16
    batch = MaskedLMCollator(tokenizer)(list(blocks.select(range(8))))
    assert padding_fraction(batch) == 0.0 and batch["input_ids"].shape == (8, 16)
    flat = [t for row in blocks["input_ids"] for t in row]
    assert flat == [t for ids in tokenizer(texts)["input_ids"] for t in ids][: len(flat)]
    lines = pack_texts(texts, tokenizer, block_size=16, pack=False)
    assert len(lines) == len(texts) and padding_fraction(MaskedLMCollator(tokenizer)(list(lines))) > 0


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_random_masking_rate_and_bert_replacements(tokenizer, rate):
    blocks = pack_texts(_texts(400), tokenizer, block_size=32)
    torch.manual_seed(0)
    batch = MaskedLMCollator(tokenizer, rate=rate)(list(blocks))
    masked = batch["labels"] != IGNORE
    original = torch.as_tensor(blocks["input_ids"])
    candidates = ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (masked & ~candidates).any(), "special tokens are never masked"
    expected = (candidates.sum(1).double() * rate).round()
    assert torch.equal(masked.sum(1).double(), expected), "each block masks round(rate x candidates)"
    assert torch.equal(batch["labels"][masked], original[masked])
    as_mask = (batch["input_ids"][masked] == tokenizer.mask_token_id).double().mean()
    kept = (batch["input_ids"][masked] == original[masked]).double().mean()
    assert abs(as_mask - 0.8) < 0.05 and abs(kept - 0.1) < 0.04


def test_whole_word_masking_takes_words_whole():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(1, 4, size=30)  # words of 1 to 3 pieces
        starts = np.concatenate([[1]] + [[1] + [0] * (s - 1) for s in sizes] + [[1]]).astype(np.int8)
        candidates = np.ones(len(starts), dtype=bool)
        candidates[[0, -1]] = False  # [CLS] ... [SEP]
        chosen = choose_masked(candidates, starts, 0.15, rng, whole_word=True)
        word = np.cumsum(starts)
        for w in np.unique(word[chosen]):
            assert chosen[word == w].all(), "a word is masked whole or not at all"
        assert 0 < chosen.sum() <= max(1, round(0.15 * candidates.sum())) + 2
        assert not chosen[[0, -1]].any()


def test_validation_masks_are_fixed_and_train_masks_follow_torch_rng(tokenizer):
    rows = list(pack_texts(_texts(), tokenizer, block_size=16).select(range(6)))
    fixed = MaskedLMCollator(tokenizer, seed=1)
    assert torch.equal(fixed(rows)["labels"], fixed(rows)["labels"])
    train = MaskedLMCollator(tokenizer)
    torch.manual_seed(3)
    a = train(rows)["labels"]
    torch.manual_seed(3)
    assert torch.equal(a, train(rows)["labels"])  # a resumed run (RNG restored) masks the same way


def test_patch_mask_generator_rate_and_blocks():
    gen = PatchMaskGenerator(input_size=28, model_patch_size=2, mask_patch_size=4, rate=0.5)
    mask = gen(np.random.default_rng(0)).reshape(14, 14)
    assert mask.sum() == round(0.5 * 49) * 4  # 24 blocks of 2x2 patches
    blocks = mask.reshape(7, 2, 7, 2).transpose(0, 2, 1, 3).reshape(49, 4)
    assert set(blocks.sum(1).tolist()) <= {0, 4}, "masked in whole 4-pixel blocks"
    with pytest.raises(ValueError, match="mask_patch_size=5"):
        PatchMaskGenerator(28, 4, 5, 0.5)


def test_pretrain_config_checks():
    with pytest.raises(ConfigError, match="pretrain.mask_rate"):
        load_config(None, ["pretrain.mask_rate=1.5"])
    with pytest.raises(ConfigError, match="pretrain.text_sources"):
        load_config(None, ["pretrain.text_sources=[train, test]"])
    with pytest.raises(ConfigError, match="pretrain.strategy"):
        load_config(None, ["pretrain.strategy=linear_probe"])


def test_mlm_head_is_reported_new(tiny_model, caplog):
    from hftl.pretraining import load_masked_model

    with caplog.at_level(logging.WARNING, logger="hftl.pretraining"):
        model, new = load_masked_model(tiny_model, "text")
    assert new and all(n.startswith("cls.") for n in new)
    assert "masked-LM head of" in caplog.text and "starts new" in caplog.text
    _, all_new = load_masked_model(tiny_model, "text", from_scratch=True)
    assert len(all_new) > len(new)


def _text_overrides(tiny_cfg):
    return [*tiny_cfg, "model.max_length=16", "pretrain.epochs=2", "pretrain.batch_size=8", "pretrain.lr=3e-3",
            "pretrain.whole_word=true", "train.epochs=3"]


def test_chained_run_saves_hub_model_and_resumes_skipping_the_finished_stage(tiny_cfg, tmp_path, monkeypatch):
    import hftl.recipes.pretrain_masked as recipe
    from transformers import AutoModel, AutoModelForMaskedLM

    cfg = load_config(None, [*_text_overrides(tiny_cfg), "pretrain.then_finetune=true"])
    metrics = recipe.main(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) >= {"pretrain", "test", "validation", "train"}
    history = saved["pretrain"]["history"]
    assert len(history) == 2 and {"loss", "perplexity", "masked_accuracy"} <= set(history[0]["validation"])
    assert (run / "pretrained" / "history.png").exists() and load_config(run / "config.yaml") == cfg
    AutoModelForMaskedLM.from_pretrained(run / "pretrained")  # Hub format, with its head
    AutoModel.from_pretrained(run / "pretrained")  # and as the backbone that fine-tuning loaded

    monkeypatch.setattr(recipe, "pretrain", lambda *a, **k: pytest.fail("the finished stage ran again"))
    again = recipe.main(load_config(None, [*_text_overrides(tiny_cfg), "pretrain.then_finetune=true",
                                           "train.resume=true"]))
    assert again["pretrain"] == json.loads(json.dumps(metrics["pretrain"]))
    assert again["test"]["accuracy"] == metrics["test"]["accuracy"]  # fine-tuning resumed from its last checkpoint


def test_text_stage_with_lora_merges_adapters_on_save(tiny_cfg, tmp_path):
    import hftl.recipes.pretrain_masked as recipe
    from safetensors.torch import load_file

    metrics = recipe.main(load_config(None, [*_text_overrides(tiny_cfg), "pretrain.strategy=lora",
                                             "pretrain.epochs=1"]))
    assert metrics["pretrain"]["train"]["trainable_params"] < 10_000
    names = load_file(tmp_path / "run" / "pretrained" / "model.safetensors")
    assert not any("lora" in n for n in names) and any(n.startswith("cls.") for n in names)


def _losses(metrics):
    return [h["validation"]["loss"] for h in metrics["pretrain"]["history"]]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("vit") / "vit"
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       image_size=28, patch_size=4)
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(path)
    return str(path)


def test_masked_image_modeling_loss_goes_down(tiny_vit, tmp_path):
    import hftl.recipes.pretrain_masked as recipe

    metrics = recipe.main(load_config(None, [
        f"model.name={tiny_vit}", "data.name=mnist_digits", "pretrain.max_samples=512", "pretrain.epochs=3",
        "pretrain.batch_size=32", "pretrain.lr=2e-3", "pretrain.mask_rate=0.5", "train.eval_batch_size=256",
        f"output_dir={tmp_path / 'run'}"]))
    losses = _losses(metrics)
    assert losses[-1] < losses[0] * 0.95, losses
    from transformers import ViTModel

    ViTModel.from_pretrained(tmp_path / "run" / "pretrained")  # what fine-tuning starts from


def test_masked_speech_modeling_loss_goes_down(tmp_path):
    import hftl.recipes.pretrain_masked as recipe
    import soundfile as sf
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    model_dir = tmp_path / "w2v"
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_negatives=10,
                            codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=32)
    Wav2Vec2Model(config).save_pretrained(model_dir)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "clips").mkdir()
    for i in range(40):
        t = np.arange(int(16000 * rng.uniform(0.3, 0.5))) / 16000
        wave = 0.5 * np.sin(2 * np.pi * rng.choice([220.0, 440.0, 880.0]) * t) + rng.normal(0, 0.02, t.size)
        sf.write(tmp_path / "clips" / f"{i}.wav", wave.astype(np.float32), 16000)
        rows.append(f"{i}.wav,{'ab'[i % 2]}")
    (tmp_path / "clips" / "clips.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    metrics = recipe.main(load_config(None, [
        f"model.name={model_dir}", f"data.name={tmp_path / 'clips' / 'clips.csv'}", "data.validation_size=0.2",
        "data.test_size=0.2", "pretrain.epochs=4", "pretrain.batch_size=8", "pretrain.lr=2e-3",
        "pretrain.mask_rate=0.3", "pretrain.mask_span=4", f"output_dir={tmp_path / 'run'}"]))
    losses = _losses(metrics)
    assert losses[-1] < losses[0], losses
    Wav2Vec2Model.from_pretrained(tmp_path / "run" / "pretrained")


def test_speech_validation_loss_is_per_masked_frame():
    """wav2vec2 sums its loss over the masked frames of a batch: the stage's validation loss divides by them, so it
    does not grow with the batch (and is near ln(1 + negatives) for a random model)."""
    from accelerate import Accelerator
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    from hftl.masking import MaskedSpeechCollator
    from hftl.pretraining import masked_scores

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_negatives=10,
                            codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=32)
    model = Wav2Vec2ForPreTraining(config).eval()
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    rng = np.random.default_rng(0)
    rows = [{"waveform": rng.normal(0, 0.1, 4000 + 800 * i).astype(np.float32)} for i in range(8)]
    collate = MaskedSpeechCollator(extractor, model, rate=0.3, span=4, seed=1)
    batch = collate(rows)
    with torch.no_grad():
        summed = model(**batch).loss
    frames = batch["mask_time_indices"].sum()
    score = masked_scores(model, [batch], Accelerator(cpu=True))["loss"]
    assert frames > 8
    assert score == pytest.approx(float(summed / frames), rel=1e-5)
    assert 0.5 * np.log(11) < score < 2 * np.log(11) + 1
    small = masked_scores(model, [collate(rows[:2]), collate(rows[2:4])], Accelerator(cpu=True))["loss"]
    assert small == pytest.approx(score, rel=0.5)  # not a quarter of it, as a per-batch sum would be


def test_cli_has_pretrain():
    from hftl.cli import MODULES, RECIPES

    assert "pretrain" in RECIPES and MODULES["pretrain"] == "pretrain_masked"


@pytest.mark.integration
def test_minilm_mlm_head_new_and_whole_words_on_real_text():
    from hftl.config import DataConfig
    from hftl.models import load_processor
    from hftl.pretraining import load_masked_model, unlabeled_texts

    name = "sentence-transformers/all-MiniLM-L6-v2"
    _, new = load_masked_model(name, "text")
    assert "cls.predictions.transform.dense.weight" in new and "bert.embeddings.word_embeddings.weight" not in new
    tokenizer = load_processor(name)
    plots = unlabeled_texts(DataConfig(name="rotten_tomatoes"), ["unlabeled"])
    assert len(plots) == 1083  # 1,097 plot rows, 14 of them empty
    blocks = pack_texts(plots[:50], tokenizer, block_size=64)
    torch.manual_seed(0)
    batch = MaskedLMCollator(tokenizer, whole_word=True)(list(blocks))
    masked = batch["labels"] != IGNORE
    pieces = tokenizer.convert_ids_to_tokens(torch.as_tensor(blocks["input_ids"])[masked].tolist())
    starts = torch.as_tensor(blocks["word_start"])
    # a masked '##' piece always has its word's first piece masked too
    for row, col in masked.nonzero().tolist():
        if not starts[row, col] and col > 0:
            assert masked[row, col - 1]
    assert any(p.startswith("##") for p in pieces)


def test_half_checkpoint_trains_in_float32_with_a_finite_new_head(tiny_model, tmp_path, tokenizer):
    from transformers import AutoModel

    from hftl.pretraining import load_masked_model

    AutoModel.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(tmp_path / "half")
    tokenizer.save_pretrained(tmp_path / "half")
    model, new = load_masked_model(str(tmp_path / "half"), "text")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    head = dict(model.named_parameters())
    assert all(torch.isfinite(head[n]).all() for n in new if n in head)
    assert not head["cls.predictions.bias"].any(), "a new bias starts at zero"
    batch = MaskedLMCollator(tokenizer)(list(pack_texts(_texts(), tokenizer, block_size=16).select(range(4))))
    assert torch.isfinite(model(**batch).loss)


def test_chained_run_on_two_processes(tiny_cfg, tmp_path):
    """``accelerate launch`` with 2 CPU processes (DDP over gloo): both stages split each batch, one writer."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(root / "recipes" / "pretrain_masked.py"),
           *_text_overrides(tiny_cfg), "pretrain.then_finetune=true", "train.epochs=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 processes" in out.stdout
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(saved["pretrain"]["history"]) == 2 and 0 <= saved["test"]["accuracy"] <= 1
