"""Zero- and few-shot evaluation and the ladder recipe, on tiny models built from configs (and one real run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import hftl
from hftl.config import ConfigError, ShotsConfig, load_config
from hftl.shots import (
    ShotContext,
    class_prompts,
    few_shot_curve,
    pair_cosine_loss,
    soft_kmeans,
    summarize,
    support_indices,
    text_encoder,
    zero_shot_dual,
    zero_shot_embedding,
    zero_shot_nli,
)
from hftl.testing import numbers_only, tiny_text_csv

T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student's t quantiles, from tables
NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on shared cores two threads mostly wait for each other (25x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- statistics and support sets


def test_summarize_known_numbers():
    s = summarize([0.5, 0.6, 0.7])
    half = T_975[2] * 0.1 / math.sqrt(3)
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx([0.6 - half, 0.6 + half]) and s["runs"] == [0.5, 0.6, 0.7]
    s = summarize([1, 2, 3, 4])
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["ci95"][1] - s["mean"] == pytest.approx(T_975[3] * math.sqrt(5 / 3) / 2)
    assert summarize([0.7, 0.7])["ci95"] == pytest.approx([0.7, 0.7])
    with pytest.raises(ValueError, match="at least 2"):
        summarize([0.5])


def test_support_sets_exact_k_reproducible_and_nested():
    labels = np.array([0] * 30 + [1] * 12 + [2] * 50)
    a, b, c = support_indices(labels, 4, 0), support_indices(labels, 4, 0), support_indices(labels, 4, 1)
    assert np.bincount(labels[a]).tolist() == [4, 4, 4] and len(set(a.tolist())) == 12
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert set(support_indices(labels, 2, 0)) <= set(a) <= set(support_indices(labels, 8, 0))  # nested in k
    with pytest.raises(ValueError, match="class 1 has 12 examples"):
        support_indices(labels, 13, 0)


def test_shots_config_checks():
    assert load_config(None, ["shots.methods=[prototype,setfit]"]).shots.methods == ["prototype", "setfit"]
    with pytest.raises(ConfigError, match=r"unknown methods \['knn'\].*lora.*probe.*prototype.*setfit"):
        load_config(None, ["shots.methods=[prototype,knn]"])
    with pytest.raises(ConfigError, match="at least 2"):
        load_config(None, ["shots.seeds=[3]"])
    with pytest.raises(ConfigError, match="shots.ks"):
        load_config(None, ["shots.ks=[0,4]"])
    with pytest.raises(ConfigError, match="hold {}"):
        load_config(None, ["shots.templates=[a review]"])
    cfg = load_config("recipes/configs/text/minilm-rt-ladder.yaml")
    assert cfg.strategy.name == "linear_probe" and len(cfg.shots.seeds) >= 5 and cfg.shots.ks == [1, 2, 4, 8, 16, 32]


def test_pair_loss_and_transductive_refinement():
    assert float(pair_cosine_loss(torch.eye(2), torch.tensor([0, 1]))) == 0.0
    # one positive pair at cos 0 (loss 1); two negatives at cos 0 and 1 (mean 0.5): each kind weighs half
    assert float(pair_cosine_loss(torch.tensor([[1.0, 0], [0, 1], [0, 1]]), torch.tensor([0, 0, 1]))) == 0.75
    # two classes along axis 0, a larger nuisance spread along axis 1; one support example per class, off-centre
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    signal, nuisance = (y * 2 - 1) + 0.3 * torch.randn(400, generator=gen), 3 * torch.randn(400, generator=gen)
    xq = torch.stack([signal, nuisance], 1)
    xq = xq + torch.tensor([0.0, 10.0])
    xs, ys = torch.tensor([[-0.2, 10.0], [1.8, 10.0]]), torch.tensor([0, 1])
    init = hftl.shots.prototype_probs(xs, ys, xq, 2)
    refined = soft_kmeans(xs, ys, xq, init, 2)
    acc = lambda p: float((p.argmax(-1) == y).float().mean())  # noqa: E731
    assert refined.shape == (400, 2) and torch.allclose(refined.sum(-1), torch.ones(400))
    assert acc(refined) > max(acc(init), 0.9)


# ---------------------------------------------------------------- few-shot methods on the tiny learnable task


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory, tiny_model):
    data = tiny_text_csv(tmp_path_factory.mktemp("shots") / "reviews.csv", n=400)
    cfg = load_config(None, [f"model.name={tiny_model}", f"data.name={data}", "data.test_size=0.2"])
    splits = hftl.load_splits(cfg.data)
    tok = hftl.load_processor(tiny_model)
    enc = hftl.encode_text(splits, tok, "text", 32)
    model = hftl.load_classifier(tiny_model, 2)
    collate, acc = hftl.collator_for(tok), hftl.make_accelerator(cfg.train)
    feats = {s: hftl.cached_features(model, enc[s], collate, acc, disk=False) for s in ("train", "test")}
    return ShotContext(
        feats["train"]["features"],
        feats["train"]["labels"],
        feats["test"]["features"],
        feats["test"]["labels"],
        2,
        model=model,
        train_inputs=enc["train"],
        query_inputs=enc["test"],
        collate=collate,
        batch_size=64,
    )


@pytest.mark.parametrize(
    "method,extra",
    [
        ("prototype", {}),
        ("probe", {}),
        ("setfit", {"setfit_layers": 0}),
        ("setfit", {"setfit_layers": 1}),
        ("lora", {}),
    ],
)
def test_methods_beat_chance(tiny_ctx, method, extra):
    cfg = ShotsConfig(
        ks=[8],
        seeds=[0, 1, 2],
        methods=[method],
        setfit_lr=1e-3,
        setfit_steps=10,
        lora_lr=5e-3,
        lora_steps=15,
        probe_c=10.0,
        **extra,
    )
    before = {k: v.clone() for k, v in tiny_ctx.model.state_dict().items()}
    curve = few_shot_curve(tiny_ctx, cfg, report=print)
    summary = curve["inductive"][method]["8"]
    assert len(summary["runs"]) == 3 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert summary["mean"] >= 0.7, summary  # chance is 0.5
    assert set(curve["transductive"][method]) == {"8"}
    after = tiny_ctx.model.state_dict()  # methods that tune the encoder work on a copy
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_setfit_top_blocks_reproduce_the_model(tiny_ctx):
    from hftl.shots.tuned import lower_states, top_cut, upper_features

    assert top_cut(tiny_ctx, 1) == 1 and top_cut(tiny_ctx, 0) == 0 and top_cut(tiny_ctx, 2) == 0  # 2 blocks
    batch = tiny_ctx.collate([tiny_ctx.query_inputs[i] for i in range(6)])
    batch = {k: v for k, v in batch.items() if k not in ("labels", "length")}
    with torch.no_grad():
        split = upper_features(tiny_ctx.model, lower_states(tiny_ctx.model, batch, 1), batch["attention_mask"], 1)
        assert torch.allclose(split, tiny_ctx.model.features(**batch), atol=1e-5)


# ---------------------------------------------------------------- zero-shot code paths


def test_zero_shot_text_embedding_is_cosine_to_prompt_ensemble(tiny_ctx, tiny_model):
    tok = hftl.load_processor(tiny_model)
    encode = text_encoder(tiny_ctx.model, tok, max_length=32)
    texts = ["good film", "awful plot", "the actor was fine"]
    descriptions = {"neg": ["bad", "awful"], "pos": "good"}
    scores = zero_shot_embedding(
        encode, encode(texts), ["neg", "pos"], descriptions=descriptions, templates=["{}", "a {} movie"]
    )
    assert class_prompts(["neg", "pos"], descriptions, ["{}", "a {} movie"])[0] == [
        "bad",
        "awful",
        "a bad movie",
        "a awful movie",
    ]
    norm = torch.nn.functional.normalize
    neg = norm(norm(encode(["bad", "awful", "a bad movie", "a awful movie"]), dim=-1).mean(0), dim=0)
    pos = norm(norm(encode(["good", "a good movie"]), dim=-1).mean(0), dim=0)
    expected = norm(encode(texts), dim=-1) @ torch.stack([neg, pos]).T
    assert scores.shape == (3, 2) and torch.allclose(scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown labels"):
        zero_shot_embedding(encode, encode(texts), ["neg", "pos"], descriptions={"positive": "good"})


def test_zero_shot_nli_matches_transformers_pipeline(tiny_model):
    from transformers import AutoModelForSequenceClassification, pipeline

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, id2label=NLI_LABELS, label2id={v: k for k, v in NLI_LABELS.items()}
    )
    tok = hftl.load_processor(tiny_model)
    texts, labels = ["good film very good", "awful boring plot", "the plot was dull"], ["good", "bad", "plot"]
    scores = zero_shot_nli(model, tok, texts, labels, templates=["the film is {}"], batch_size=4)
    assert scores.shape == (3, 3) and hftl.shots.entailment_index(model.config) == 0
    pipe = pipeline("zero-shot-classification", model=model, tokenizer=tok, device="cpu")
    for text, row in zip(texts, scores.softmax(-1), strict=True):
        out = pipe(text, candidate_labels=labels, hypothesis_template="the film is {}")
        expected = torch.tensor([out["scores"][out["labels"].index(name)] for name in labels])
        assert torch.allclose(row, expected, atol=1e-5) and labels[int(row.argmax())] == out["labels"][0]
    two = zero_shot_nli(model, tok, texts, labels, templates=["the film is {}", "{} it is"])
    one = zero_shot_nli(model, tok, texts, labels, templates=["{} it is"])
    assert torch.allclose(two, (scores + one) / 2, atol=1e-5)  # a template ensemble averages entailment logits


def _tiny_tower_configs():
    text = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=30, patch_size=10
    )
    return text, vision


def _images(n: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_images_clip_siglip(family, tiny_model):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    text, vision = _tiny_tower_configs()
    model = (
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        if family == "clip"
        else SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    ).eval()
    tok = hftl.load_processor(tiny_model)
    tok.model_max_length = 16  # SigLIP pads text to its fixed length
    pixels = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})(
        images=_images(5), return_tensors="pt"
    )
    labels = ["good", "bad", "plot"]
    scores = zero_shot_dual(model, tok, pixels, labels, modality="image", templates=["a {} film"], batch_size=2)
    padding = "max_length" if family == "siglip" else True
    text_in = tok([f"a {name} film" for name in labels], padding=padding, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(
            input_ids=text_in["input_ids"],
            attention_mask=text_in["attention_mask"],
            pixel_values=pixels["pixel_values"],
        ).logits_per_image
    scaled = scores * model.logit_scale.exp() + (model.logit_bias if family == "siglip" else 0)
    assert scores.shape == (5, 3) and torch.allclose(scaled, expected, atol=1e-4)
    assert scores.argmax(-1).tolist() == expected.argmax(-1).tolist()
    ensemble = zero_shot_dual(model, tok, pixels, labels, modality="image")  # default photo templates
    assert ensemble.shape == (5, 3) and ensemble.abs().max() <= 1 + 1e-5


def test_zero_shot_audio_clap(tiny_model):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    text, _ = _tiny_tower_configs()
    audio = dict(
        window_size=4,
        num_mel_bins=64,
        spec_size=64,
        patch_size=4,
        patch_stride=(4, 4),
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        patch_embeds_hidden_size=16,
        enable_fusion=False,
    )
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
    extractor = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=8000,
        max_length_s=1,
        fft_window_size=256,
        hop_length=128,
        truncation="rand_trunc",
    )
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (8000, 4000, 6000)]
    feats = extractor(clips, sampling_rate=8000, return_tensors="pt")
    tok = hftl.load_processor(tiny_model)
    labels = ["good", "bad"]
    scores = zero_shot_dual(model, tok, feats, labels, modality="audio", templates=["the sound of {}"])
    text_in = tok([f"the sound of {name}" for name in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(input_ids=text_in["input_ids"], attention_mask=text_in["attention_mask"], **feats)
    assert scores.shape == (3, 2)
    assert torch.allclose(scores * model.logit_scale_a.exp(), expected.logits_per_audio, atol=1e-4)
    assert scores.argmax(-1).tolist() == expected.logits_per_audio.argmax(-1).tolist()
    with pytest.raises(ValueError, match="modality"):
        zero_shot_dual(model, tok, feats, labels, modality="video")


# ---------------------------------------------------------------- the ladder recipe




def test_ladder_writes_metrics_and_plot_features_once(tiny_cfg, tmp_path, monkeypatch):
    import hftl.features as features
    from hftl.cli import main as cli

    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(features, "_MEMORY", {})  # earlier tests may have cached the same tiny features in memory
    overrides = [
        *tiny_cfg,
        "strategy.name=linear_probe",
        "train.lr=0.05",
        "train.epochs=3",
        "shots.ks=[1,2,4,8]",
        "shots.seeds=[0,1,2,3,4]",
        "shots.methods=[prototype,probe]",
        "shots.label_descriptions={neg: [bad, awful], pos: good}",
        "shots.templates=['{}', 'a {} film']",
    ]
    assert cli(["ladder", *overrides]) == 0
    # one pass over train and one over test for 4 k x 5 seeds x 2 methods; the full rung adds validation only
    assert len(calls) == 3
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert numbers_only(metrics)
    assert set(metrics) >= {"zero_shot", "few_shot", "few_shot_transductive", "full", "majority", "cost", "seconds"}
    assert set(metrics["few_shot"]) == {"prototype", "probe"} and set(metrics["few_shot"]["probe"]) == {
        "1",
        "2",
        "4",
        "8",
    }
    rung = metrics["few_shot"]["probe"]["8"]
    assert set(rung) == {"mean", "std", "ci95", "runs"} and len(rung["runs"]) == 5 and len(rung["ci95"]) == 2
    assert 0 <= metrics["zero_shot"]["accuracy"] <= 1 and metrics["full"]["test"]["accuracy"] >= 0.75
    assert metrics["cost"]["backbone_ran"] == 1 and metrics["cost"]["ratio_to_one_pass"] > 1
    assert (run / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "full" / "metrics.json").exists() and load_config(run / "config.yaml").shots.ks == [1, 2, 4, 8]


# ---------------------------------------------------------------- real weights and data


@pytest.mark.integration
def test_real_minilm_rotten_tomatoes_small_ladder(tmp_path):
    from hftl.recipes.ladder import main

    cfg = load_config(
        "recipes/configs/text/minilm-rt-ladder.yaml",
        [
            "shots.ks=[4,16]",
            "shots.seeds=[0,1,2]",
            "shots.methods=[prototype,probe]",
            "shots.full=false",
            "data.max_train_samples=2000",
            f"output_dir={tmp_path / 'ladder'}",
        ],
    )
    metrics = main(cfg)
    assert metrics["majority"] == pytest.approx(0.578, abs=0.002)
    for method in ("prototype", "probe"):
        assert metrics["few_shot"][method]["16"]["mean"] > 0.578, metrics["few_shot"][method]
    assert metrics["zero_shot"]["accuracy"] > 0.6
    assert (tmp_path / "ladder" / "ladder.png").exists()


def test_mean_sd_and_paired_difference():
    from hftl.shots.stats import mean_sd, paired_difference

    assert mean_sd([0.7]) == {"mean": 0.7, "sd": 0.0}
    d = paired_difference([0.6, 0.7, 0.9], [0.5, 0.8, 0.6])
    assert d["wins"] == 2 and d["seeds"] == 3
    assert d["mean"] == pytest.approx(0.1) and d["sd"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.6], [0.5, 0.4])
