"""Few-shot methods that start from the zero-shot classifier (hftl.shots.prior, hftl.shots.prior_tuned): they are the
zero-shot classifier when the support set says nothing, follow the support set when the prompts point the wrong way,
choose their weight on the support rows alone, and run for text, CLIP/SigLIP and CLAP zero-shot models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hftl
from hftl.config import ConfigError, ShotsConfig, load_config
from hftl.shots import METHODS, ShotContext, few_shot_curve, support_indices, text_encoder, zero_shot_embedding
from hftl.shots import prior as P
from hftl.shots.fewshot import accuracy
from hftl.testing import tiny_text_csv

ZS = ("zs_probe", "zs_prototype")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gaussians(n: int = 400, width: int = 16, flip: bool = False, signal: float = 1.5, seed: int = 0):
    """Two classes apart along axis 1 around a common offset (axis 0); class embeddings at the class centres, or
    swapped (``flip``: the prompts point the wrong way). Returns a ShotContext (300 train, 100 query rows)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, width, generator=gen)
    x[:, 0] += 4.0
    x[:, 1] += (2 * y - 1) * signal
    w = torch.zeros(2, width)
    w[:, 0] = 4.0
    w[:, 1] = torch.tensor([-1.0, 1.0]) * (-1 if flip else 1)
    prior = P.prior_from_weights(w, x[:300], x[300:])
    return ShotContext(x[:300], y[:300], x[300:], y[300:], 2, prior=prior)


def _run(ctx: ShotContext, method: str, k: int, seed: int = 0, **cfg):
    support = support_indices(ctx.train_labels.numpy(), k, seed)
    return METHODS[method](ctx, support, ShotsConfig(**cfg), seed)


# ---------------------------------------------------------------- the prior's weight adapts


@pytest.mark.parametrize("method", ZS)
def test_is_the_zero_shot_classifier_at_one_shot_and_when_the_support_adds_nothing(method):
    ctx = _gaussians()
    zero = ctx.prior.query_scores.argmax(-1)
    assert accuracy(ctx.prior.query_scores, ctx.query_labels) > 0.85
    for seed in range(3):  # k = 1: two examples cannot outvote the prompts
        assert torch.equal(_run(ctx, method, 1, seed).probs.argmax(-1), zero)
    # a support set that only repeats what the prompts say (rows at the class embeddings): nothing to correct
    gen = torch.Generator().manual_seed(1)
    ctx.train_features = ctx.prior.weights[ctx.train_labels] * 4 + 0.01 * torch.randn(300, 16, generator=gen)
    ctx.prior.train_scores = F.normalize(ctx.train_features, dim=-1) @ ctx.prior.weights.T
    for k in (4, 16):
        assert torch.equal(_run(ctx, method, k).probs.argmax(-1), zero), k


@pytest.mark.parametrize("method", ZS)
def test_follows_the_support_when_the_prompts_point_the_wrong_way(method):
    ctx = _gaussians(flip=True)
    majority = 0.5
    assert accuracy(ctx.prior.query_scores, ctx.query_labels) < majority - 0.3  # zero-shot far below majority
    for k in (8, 16):
        accs = [accuracy(_run(ctx, method, k, seed).probs, ctx.query_labels) for seed in range(3)]
        assert np.mean(accs) > 0.85, (k, accs)


@pytest.mark.parametrize("method", ZS)
def test_selection_reads_only_the_support_rows(method):
    ctx = _gaussians()
    support = support_indices(ctx.train_labels.numpy(), 8, 0)
    other = _gaussians(seed=7)
    poisoned = ShotContext(
        torch.full_like(ctx.train_features, float("nan")),
        ctx.train_labels.clone(),
        other.query_features,  # another query: the choice may not depend on it
        other.query_labels,
        2,
        prior=P.ZeroShotPrior(
            torch.full_like(ctx.prior.train_scores, float("nan")), other.prior.query_scores, ctx.prior.weights
        ),
    )
    poisoned.train_features[support] = ctx.train_features[support]
    poisoned.prior.train_scores[support] = ctx.prior.train_scores[support]
    for c in (ctx, poisoned):
        pred = METHODS[method](c, support, ShotsConfig(), 0)
        assert torch.isfinite(pred.probs).all()
    assert ctx.cache[f"{method}_choices"] == poisoned.cache[f"{method}_choices"]


def test_support_folds_and_the_one_standard_error_rule():
    y = torch.tensor([0] * 5 + [1] * 5)
    assert P.support_folds(y, 16).tolist() == list(range(10))  # leave-one-out
    folds = P.support_folds(torch.tensor([0] * 20 + [1] * 20 + [2] * 8), 16)
    assert int(folds.max()) == 15
    for f in range(16):  # stratified: each class spread over the folds
        for cls, n in ((0, 20), (1, 20), (2, 8)):
            in_fold = int(((folds == f) & (torch.tensor([0] * 20 + [1] * 20 + [2] * 8) == cls)).sum())
            assert in_fold <= -(-n // 16)
    assert P.one_se_choice(torch.tensor([[0, 1], [1, 1]])) == 0  # one row of two is no evidence
    assert P.one_se_choice(torch.tensor([[0] * 20, [1] * 20])) == 1
    assert P.one_se_choice(torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0]])) == 0  # a tie keeps the stronger prior


def test_nli_prior_without_class_embeddings():
    """An NLI zero-shot classifier gives scores only (no weights); train rows outside the support sets stay NaN."""
    ctx = _gaussians()
    z_train, z_query = ctx.prior.train_scores * 7 + 1, ctx.prior.query_scores * 7 + 1  # another scale, as logits
    calls = []

    def score(texts):
        calls.append(len(texts))
        return z_train[[int(t) for t in texts]]

    rows = np.concatenate([support_indices(ctx.train_labels.numpy(), 16, s) for s in range(2)])
    prior = P.nli_prior(score, [str(i) for i in range(300)], rows, z_query)
    assert calls == [len(set(rows.tolist()))] and prior.weights is None
    assert torch.isnan(prior.train_scores).any() and torch.isfinite(prior.train_scores[rows]).all()
    nli_ctx = ShotContext(ctx.train_features, ctx.train_labels, ctx.query_features, ctx.query_labels, 2, prior=prior)
    for method in ZS:
        pred = _run(nli_ctx, method, 1)
        assert torch.equal(pred.probs.argmax(-1), z_query.argmax(-1))
        assert accuracy(_run(nli_ctx, method, 16).probs, ctx.query_labels) > 0.85


# ---------------------------------------------------------------- registry and config


def test_registry_and_config_wiring(tmp_path):
    assert {"zs_probe", "zs_prototype", "zs_setfit"} <= set(METHODS)
    cfg = load_config(None, ["shots.methods=[zs_probe,zs_prototype,zs_setfit]", "shots.prior_folds=8"])
    assert cfg.shots.methods == ["zs_probe", "zs_prototype", "zs_setfit"] and cfg.shots.prior_folds == 8
    with pytest.raises(ConfigError, match=r"shots.zero_shot=none.*shots.zero_shot=auto"):
        load_config(None, ["shots.methods=[prototype,zs_prototype]", "shots.zero_shot=none"])
    with pytest.raises(ConfigError, match="shots.prior_folds=1"):
        load_config(None, ["shots.prior_folds=1"])
    with pytest.raises(ConfigError, match=r"unknown methods \['zs_knn'\].*zs_probe"):
        load_config(None, ["shots.methods=[zs_knn]"])
    ctx = _gaussians()
    ctx.prior = None
    with pytest.raises(ValueError, match="needs the zero-shot classifier"):
        _run(ctx, "zs_probe", 2)
    for name in ("minilm-rt-ladder", "minilm-fortunes-ladder"):
        cfg = load_config(f"recipes/configs/text/{name}.yaml")
        assert set(P.PRIOR_METHODS) <= set(cfg.shots.methods) and cfg.shots.seeds == [0, 1, 2, 3, 4]


def test_fortunes_source(tmp_path):
    from hftl.assets import AssetMissingError
    from hftl.data.fortunes import load_fortunes

    (tmp_path / "food").write_text("Eat your greens.\n%\nA  pie\n\tin the sky.\n%\n")
    (tmp_path / "law").write_text("Objection!\n%\n")
    raw, column, label = load_fortunes(tmp_path, ("food", "law"))
    assert (column, label) == ("text", "label") and raw["train"]["text"] == ["Eat your greens.", "A pie in the sky.",
                                                                           "Objection!"]
    assert raw["train"]["label"] == [0, 0, 1] and raw["train"].features["label"].names == ["food", "law"]
    with pytest.raises(AssetMissingError, match="apt-get install -y fortunes"):
        load_fortunes(tmp_path, ("food", "sports"))


# ---------------------------------------------------------------- tiny text, vision and audio zero-shot models


@pytest.fixture(scope="module")
def text_ctx(tmp_path_factory, tiny_model):
    data = tiny_text_csv(tmp_path_factory.mktemp("prior") / "reviews.csv", n=300)
    cfg = load_config(None, [f"model.name={tiny_model}", f"data.name={data}", "data.test_size=0.2"])
    splits = hftl.load_splits(cfg.data)
    tok = hftl.load_processor(tiny_model)
    enc = hftl.encode_text(splits, tok, "text", 32)
    model = hftl.load_classifier(tiny_model, 2)
    collate, acc = hftl.collator_for(tok), hftl.make_accelerator(cfg.train)
    feats = {s: hftl.cached_features(model, enc[s], collate, acc, disk=False) for s in ("train", "test")}
    encode = text_encoder(model, tok, max_length=32)
    labels, templates = ["neg", "pos"], ["{}", "the film is {}"]
    prior = P.text_prior(
        encode, tok, labels, feats["train"]["features"], feats["test"]["features"], templates=templates, max_length=32
    )
    zero = zero_shot_embedding(encode, feats["test"]["features"], labels, templates=templates)
    assert torch.allclose(prior.query_scores, zero, atol=1e-5)  # the prior is the zero-shot rung's classifier
    assert len(prior.prompt_inputs) == 4 and prior.prompt_labels.tolist() == [0, 0, 1, 1]
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
        prior=prior,
    )


@pytest.mark.parametrize("method,extra", [("zs_probe", {}), ("zs_prototype", {}), ("zs_setfit", {"setfit_layers": 1})])
def test_tiny_text_methods_learn_where_the_prompts_say_little(text_ctx, method, extra):
    """A random tiny encoder: its prompts carry nothing (zero-shot predicts one class: 0.5), the support set must
    carry the task (16 examples per class: enough held-out evidence to leave the prior)."""
    before = {k: v.clone() for k, v in text_ctx.model.state_dict().items()}
    assert accuracy(text_ctx.prior.query_scores, text_ctx.query_labels) <= 0.6
    cfg = ShotsConfig(ks=[16], seeds=[0, 1, 2], methods=[method], setfit_lr=1e-3, setfit_steps=10, **extra)
    curve = few_shot_curve(text_ctx, cfg, report=print)
    assert curve["inductive"][method]["16"]["mean"] >= 0.7, curve  # chance 0.5
    assert set(curve["transductive"][method]) == {"16"}
    assert all(torch.equal(before[k], v) for k, v in text_ctx.model.state_dict().items())  # tuned on a copy


def test_tiny_zs_setfit_without_tuning_is_the_zero_shot_classifier(text_ctx, monkeypatch):
    import hftl.shots.prior_tuned as T

    monkeypatch.setattr(T, "PROTOTYPE_WEIGHTS", (0.0,))  # all weight on the (tuned) prompts
    support = support_indices(text_ctx.train_labels.numpy(), 4, 0)
    for layers in (0, 1):
        pred = METHODS["zs_setfit"](text_ctx, support, ShotsConfig(setfit_lr=1e-12, setfit_layers=layers), 0)
        assert torch.equal(pred.probs.argmax(-1), text_ctx.prior.query_scores.argmax(-1))
    text_ctx.prior.prompt_inputs, inputs = None, text_ctx.prior.prompt_inputs
    try:
        with pytest.raises(ValueError, match="zs_setfit tunes a text encoder on the label prompts"):
            METHODS["zs_setfit"](text_ctx, support, ShotsConfig(), 0)
    finally:
        text_ctx.prior.prompt_inputs = inputs


def _bright_and_dark(n: int, seed: int):
    """Images whose class is their brightness: learnable from pixels, unknown to a random model's prompts."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = [
        Image.fromarray(rng.integers(150 * y, 105 + 150 * y, (30, 30, 3), dtype=np.uint8)) for y in labels.tolist()
    ]
    return images, torch.as_tensor(labels)


@pytest.mark.parametrize("family", ["clip", "siglip", "clap"])
def test_tiny_dual_models_vision_and_audio(family, tiny_model):
    from test_shots import _tiny_tower_configs
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        CLIPConfig,
        CLIPModel,
        SiglipConfig,
        SiglipModel,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    text, vision = _tiny_tower_configs()
    tok = hftl.load_processor(tiny_model)
    tok.model_max_length = 16
    labels = ["good", "bad"]
    if family == "clap":
        audio = dict(window_size=4, num_mel_bins=64, spec_size=64, patch_size=4, patch_stride=(4, 4), hidden_size=32,
                     depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, enable_fusion=False)
        model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
        extractor = ClapFeatureExtractor(feature_size=64, sampling_rate=8000, max_length_s=1, fft_window_size=256,
                                         hop_length=128, truncation="rand_trunc")
        rng = np.random.default_rng(0)

        def make(n, seed):  # class 0 a low tone, class 1 noise
            y = torch.arange(n) % 2
            t = np.arange(4000) / 8000
            clips = [np.sin(2 * np.pi * 200 * t).astype(np.float32) * 0.5 if c == 0 else
                     rng.standard_normal(4000).astype(np.float32) * 0.5 for c in y.tolist()]
            return dict(extractor(clips, sampling_rate=8000, return_tensors="pt")), y

        modality = "audio"
    else:
        model = (CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)) if family == "clip"
                 else SiglipModel(SiglipConfig(text_config=text, vision_config=vision))).eval()
        processor = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})

        def make(n, seed):
            images, y = _bright_and_dark(n, seed)
            return dict(processor(images=images, return_tensors="pt")), y

        modality = "image"
    (train, yt), (query, yq) = make(40, 0), make(20, 1)
    xt, xq, prior = P.dual_prior(model, tok, train, query, labels, modality=modality, templates=["the {} one"])
    zero = hftl.shots.zero_shot_dual(model, tok, query, labels, modality=modality, templates=["the {} one"])
    assert torch.allclose(prior.query_scores, zero, atol=1e-5) and prior.weights.shape == (2, xt.shape[1])
    ctx = ShotContext(xt, yt, xq, yq, 2, prior=prior)
    for method in ZS:
        one = _run(ctx, method, 1)
        assert torch.equal(one.probs.argmax(-1), zero.argmax(-1)) or accuracy(one.probs, yq) >= accuracy(zero, yq)
        assert accuracy(_run(ctx, method, 16).probs, yq) >= 0.75, method  # chance 0.5


# ---------------------------------------------------------------- the ladder


def test_ladder_runs_the_prior_methods(tiny_cfg, tmp_path):
    from hftl.cli import main as cli

    overrides = [
        *tiny_cfg,
        "shots.full=false",
        "shots.ks=[1,4]",
        "shots.seeds=[0,1]",
        "shots.methods=[zs_probe,zs_prototype,zs_setfit]",
        "shots.setfit_steps=2",
        "shots.label_descriptions={neg: [bad, awful], pos: good}",
        "shots.templates=['{}', 'a {} film']",
    ]
    assert cli(["ladder", *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["few_shot"]) == {"zs_probe", "zs_prototype", "zs_setfit"}
    assert set(metrics["few_shot_transductive"]["zs_setfit"]) == {"1", "4"}


def test_ladder_nli_prior_scores_only_the_support_rows(tiny_cfg, tiny_model, tmp_path, monkeypatch):
    """An NLI checkpoint: the ladder's zero-shot rung is entailment, and the prior scores the train rows that the
    support sets draw (nested in k: the largest k's sets), not the whole pool."""
    from transformers import AutoModelForSequenceClassification

    import hftl.shots.zero_shot as zs
    from hftl.cli import main as cli

    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    nli_dir = tmp_path / "nli"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    ).save_pretrained(nli_dir)
    hftl.load_processor(tiny_model).save_pretrained(nli_dir)
    calls = []
    real = zs.zero_shot_nli
    monkeypatch.setattr("hftl.recipes.ladder.zero_shot_nli", lambda m, t, texts, *a, **k: calls.append(len(texts)) or
                        real(m, t, texts, *a, **k))
    overrides = [*tiny_cfg, f"model.name={nli_dir}", "shots.full=false", "shots.ks=[1,2]", "shots.seeds=[0,1]",
                 "shots.methods=[zs_probe,zs_prototype]", "shots.templates=['the film is {}']"]
    assert cli(["ladder", *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["few_shot"]) == {"zs_probe", "zs_prototype"}
    assert len(calls) == 2 and calls[1] <= 2 * 2 * 2  # the query split, then at most 2 seeds x 2 classes x k=2 rows
    for method in ("zs_probe", "zs_prototype"):  # k=1: the zero-shot rung itself
        assert metrics["few_shot"][method]["1"]["mean"] == pytest.approx(metrics["zero_shot"]["accuracy"])
