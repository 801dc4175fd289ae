"""The finetune recipe on a tiny model: the run-directory contract, reload in a fresh process, bad input."""

import json
import subprocess
import sys
import time

import pytest
import torch
import yaml
from hftl.recipes.finetune import main

from hftl.config import load_config
from hftl.models import ModelNotFoundError, load_classifier
from hftl.testing import numbers_only

PREDICT = """
import json, sys, torch, hftl
model, tok = hftl.load(sys.argv[1])
batch = tok(json.loads(sys.argv[2]), padding=True, return_tensors="pt")
with torch.no_grad():
    print(json.dumps(model(**batch).logits.tolist()))
"""
TEXTS = ["good film very good", "awful boring plot", "the actor was fine"]


def _predict_in_fresh_process(model_dir) -> torch.Tensor:
    out = subprocess.run([sys.executable, "-c", PREDICT, str(model_dir), json.dumps(TEXTS)],
                         capture_output=True, text=True, check=True)
    return torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))




@pytest.mark.parametrize("strategy", ["linear_probe", "full", "lora"])
def test_run_contract(tiny_cfg, strategy, tmp_path):
    overrides = [*tiny_cfg, f"strategy.name={strategy}", "strategy.merge=true"]
    if strategy == "linear_probe":
        overrides += ["train.lr=0.05", "train.epochs=10"]
    cfg = load_config(None, overrides)
    metrics = main(cfg)
    run = tmp_path / "run"
    # config.yaml: the resolved config, loadable again
    assert load_config(run / "config.yaml") == cfg
    # metrics.json: numbers only, nested by stage and split
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) >= {"test", "validation", "train"} and numbers_only(saved)
    assert saved["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert saved["test"]["accuracy"] >= 0.75, saved["test"]  # the tiny task is learnable
    # README.md: a model card with Hub metadata
    card = (run / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    # a local base model is no Hub id: the metadata names none (issue 15: nothing local in what is pushed)
    assert "base_model" not in meta and meta["pipeline_tag"] == "text-classification"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(saved["test"]["accuracy"], 4)
    # model/: loads in a fresh process with identical predictions
    import hftl

    model, tok = hftl.load(run / "model")
    with torch.no_grad():
        expected = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(_predict_in_fresh_process(run / "model"), expected, atol=1e-5, rtol=1e-5)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    if strategy == "lora":
        assert (run / "model" / "adapter_config.json").exists()
        torch.testing.assert_close(_predict_in_fresh_process(run / "merged"), expected, atol=1e-4, rtol=1e-4)
    else:
        assert not (run / "merged").exists()


def test_linear_probe_computes_features_once(tiny_cfg, tmp_path, monkeypatch):
    import hftl.features as features

    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(features, "_MEMORY", {})
    main(load_config(None, [*tiny_cfg, "strategy.name=linear_probe", "train.epochs=5"]))
    assert len(calls) == 3  # train, validation, test: once each, whatever the number of epochs
    features._MEMORY.clear()
    main(load_config(None, [*tiny_cfg, "strategy.name=linear_probe", "train.epochs=3", "train.lr=0.01",
                            "overwrite=true"]))
    assert len(calls) == 3  # a second run (new process: memory empty) reuses the disk cache
    main(load_config(None, [*tiny_cfg, "strategy.name=linear_probe", "model.max_length=4", "overwrite=true"]))
    assert len(calls) == 6  # other preprocessing: other inputs, so a new key; the stale cache is not used


def test_unknown_model_offline_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=r"'nobody/no-such-model'.*not in the Hub cache.*cannot be reached"):
        load_classifier("nobody/no-such-model", 2)
    assert time.perf_counter() - start < 5


def test_cli_reports_bad_key_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hftl.cli", "finetune", "train.epochz=1"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "train.epochz" in out.stderr and "did you mean train.epochs" in out.stderr


def test_push_without_token_fails_before_training(tiny_cfg, tmp_path, monkeypatch):
    import hftl.hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hftl.hub, "_resolve_token", lambda token=None: None)  # no stored login either
    cfg = load_config(None, [*tiny_cfg, "hub.push=true", "hub.repo_id=alice/tiny"])
    with pytest.raises(hftl.hub.HubAccessError, match="No Hugging Face token found.*alice/tiny"):
        main(cfg)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
