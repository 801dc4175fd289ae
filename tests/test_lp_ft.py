"""lp_ft: a linear probe on linear_probe's cached features, then full or adapter fine-tuning from the probed head."""

from __future__ import annotations

import json

import pytest
import torch
from hftl.recipes.finetune import main
from hypothesis import given, settings
from hypothesis import strategies as st

import hftl.train
from hftl.config import ConfigError, StrategyConfig, load_config, peft_methods


def _head_weights(model) -> dict[str, torch.Tensor]:
    """The head's trained weights, wherever peft keeps them (its modules_to_save copy)."""
    return {k.split("head.")[-1].replace("modules_to_save.default.", ""): v.detach().clone()
            for k, v in model.state_dict().items()
            if ".head." in f".{k}" and "original_module" not in k}


@pytest.mark.parametrize("after", ["full", "lora"])
def test_fine_tuning_starts_from_the_probed_head(tiny_cfg, tmp_path, monkeypatch, after):
    import hftl.lpft

    seen = {}
    probe, fit = hftl.lpft.probe_head, hftl.train.fit

    def probing(model, *args, **kwargs):
        facts = probe(model, *args, **kwargs)
        seen["probed"] = _head_weights(model)
        return facts

    def fitting(model, *args, **kwargs):
        seen["fit_start"] = _head_weights(model)
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(hftl.lpft, "probe_head", probing)
    monkeypatch.setattr(hftl.train, "fit", fitting)
    cfg = load_config(None, [*tiny_cfg, "strategy.name=lp_ft", f"strategy.after_probe={after}",
                             "strategy.probe_lr=0.05", "train.epochs=2", "eval.baselines=false", "eval.report=false"])
    metrics = main(cfg)
    assert seen["probed"].keys() == seen["fit_start"].keys() and seen["probed"]
    for name, value in seen["probed"].items():
        torch.testing.assert_close(seen["fit_start"][name], value)
    probe_facts = metrics["probe"]
    assert probe_facts["validation_accuracy"] >= 0.75 and probe_facts["epochs"] == 20  # the tiny task is learnable
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["probe"]["steps"] == probe_facts["steps"]
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists() == (after == "lora")
    import hftl

    model, tok = hftl.load(tmp_path / "run" / "model")  # the run loads back as any other
    assert model(**tok(["good film"], return_tensors="pt")).logits.shape == (1, 2)


def test_probe_reuses_linear_probes_features(tiny_cfg, tmp_path, monkeypatch):
    """After a linear_probe run with the same settings, lp_ft's probe runs no backbone pass at all."""
    import hftl.features as features

    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(features, "_MEMORY", {})
    main(load_config(None, [*tiny_cfg, "strategy.name=linear_probe", "train.epochs=1", "eval.baselines=false",
                            "eval.report=false"]))
    assert len(calls) == 3
    features._MEMORY.clear()  # as a new process: from the disk cache
    metrics = main(load_config(None, [*tiny_cfg, "strategy.name=lp_ft", "train.epochs=1", "eval.baselines=false",
                                      "eval.report=false", f"output_dir={tmp_path / 'lpft'}"]))
    assert len(calls) == 3 and metrics["probe"]["features_from_cache"]


def test_lp_ft_is_refused_before_compute_for_tasks_without_pooled_features(tiny_cfg, tmp_path):
    cfg = load_config(None, [*tiny_cfg, "strategy.name=lp_ft", "task.name=token_classification"])
    with pytest.raises(ConfigError, match="task.name=token_classification does not have"):
        main(cfg)
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing loaded


def test_after_probe_is_checked_at_parse_time():
    with pytest.raises(ConfigError, match="strategy.after_probe='linear_probe'"):
        load_config(None, ["strategy.name=lp_ft", "strategy.after_probe=linear_probe"])
    with pytest.raises(ConfigError, match="strategy.probe_lr"):
        load_config(None, ["strategy.name=lp_ft", "strategy.probe_lr=0"])
    assert load_config(None, ["strategy.name=lp_ft", "strategy.after_probe=lora"]).strategy.after_probe == "lora"
    # other strategies ignore the key
    assert load_config(None, ["strategy.name=full", "strategy.after_probe=linear_probe"]).strategy.name == "full"


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["full", "freeze_n", "linear_probe", "head", "lp_ft", "lora", "ia3", "nonsense"]))
def test_after_probe_values(after):
    allowed = after in ("full", "freeze_n") or after in peft_methods()
    try:
        StrategyConfig(name="lp_ft", after_probe=after)
    except ConfigError as err:
        assert not allowed and "after_probe" in str(err)
    else:
        assert allowed


def test_a_diverging_probe_names_probe_lr_and_writes_nothing(tiny_cfg, tmp_path):
    cfg = load_config(None, [*tiny_cfg, "strategy.name=lp_ft", "strategy.probe_lr=1e30", "strategy.probe_epochs=5",
                             "eval.baselines=false", "eval.report=false"])
    with pytest.raises(hftl.train.TrainingDiverged, match="strategy.probe_lr"):
        main(cfg)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_the_probe_trains_the_head_alone_with_linear_probes_loop(tiny_cfg, monkeypatch):
    """The probe is hftl.fit (one loop) at strategy.probe_lr for strategy.probe_epochs, the head alone; the backbone's
    requires_grad is as it was after it."""
    import hftl.lpft

    calls = []
    fit = hftl.train.fit

    def fitting(model, loader, val_loader, accelerator, cfg, *args, **kwargs):
        trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        calls.append((trainable, cfg.lr, cfg.epochs, type(loader.dataset).__name__))
        return fit(model, loader, val_loader, accelerator, cfg, *args, **kwargs)

    monkeypatch.setattr(hftl.train, "fit", fitting)
    cfg = load_config(None, [*tiny_cfg, "strategy.name=lp_ft", "strategy.probe_lr=0.03", "strategy.probe_epochs=3",
                             "train.lr=1e-4", "train.epochs=1", "eval.baselines=false", "eval.report=false"])
    metrics = main(cfg)
    assert calls[0] == ({"head"}, 0.03, 3, "FeatureDataset")  # the probe: the head on cached features
    assert calls[1][0] == {"backbone", "head"} and calls[1][1:3] == (1e-4, 1)  # then full fine-tuning, train.*
    assert metrics["probe"]["epochs"] == 3 and 1 <= metrics["probe"]["best_epoch"] <= 3
