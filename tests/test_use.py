"""Use what you trained (issue 15): small run directories, outputs that load anywhere without hftl, pushes that carry
nothing local and work without Xet, one input conversion for training and prediction, ``hftl predict``/``evaluate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main
from safetensors import safe_open

from hftl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["good great movie", "awful boring film", "the actor was fine"]
# Loads a saved output with the ecosystem's own loader, in a process where hftl is never imported; prints the
# class probabilities of TEXTS (label order) as JSON.
NO_HFTL = """
import json, sys
loader, path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import torch
from transformers import AutoTokenizer
if loader == "pipeline":
    from transformers import pipeline
    classify = pipeline("text-classification", model=path, trust_remote_code=True, top_k=None)
    labels = classify.model.config.id2label
    probs = [[{d["label"]: d["score"] for d in row}[labels[i]] for i in range(len(labels))] for row in classify(texts)]
else:
    if loader == "transformers":
        from transformers import AutoModelForSequenceClassification as Auto
    else:
        from peft import AutoPeftModelForSequenceClassification as Auto
    model = Auto.from_pretrained(path, trust_remote_code=True).eval()
    batch = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1).tolist()
assert not [m for m in sys.modules if m.split(".")[0] == "hftl"], "hftl was imported"
print(json.dumps(probs))
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(tiny_cfg, tmp_path, strategy: str, *extra: str) -> Path:
    overrides = [*tiny_cfg, f"strategy.name={strategy}", "train.epochs=2", "eval.report=false",
                 "train.report_to=none", *extra]
    main(load_config(None, overrides))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_csv, tmp_path_factory) -> dict[str, Path]:
    """A full run and a LoRA run (merged export too) of the tiny model, made once."""
    out = {}
    for strategy in ("full", "lora"):
        root = tmp_path_factory.mktemp(strategy)
        cfg = [f"model.name={tiny_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
               "data.test_size=0.2", "train.batch_size=8", "train.lr=3e-3", f"output_dir={root / 'run'}"]
        out[strategy] = _run(cfg, root, strategy, "strategy.merge=true")
    return out


def _hftl_probs(model_dir: Path) -> torch.Tensor:
    import hftl

    model, tokenizer = hftl.load(model_dir)
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)


# -- small run directories ------------------------------------------------------------------------------------------
def _weights(path: Path) -> dict[str, tuple]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("strategy", ["linear_probe", "lora"])
def test_checkpoints_of_frozen_strategies_hold_only_what_trains(tiny_cfg, tmp_path, strategy):
    run = _run(tiny_cfg, tmp_path, strategy, "strategy.merge=false")
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints
    trained = {k.removeprefix("base_model.model.") for k in _weights(checkpoints[-1] / "model.safetensors")}
    assert trained and all("head" in k or "lora_" in k or "position_ids" in k or "buffer" in k for k in trained), \
        sorted(trained)
    assert (checkpoints[-1] / "trainable_only.json").is_file()
    # the backbone is not copied again: the checkpoint's weights are a small part of the model's
    backbone = Path(tiny_cfg[0].split("=", 1)[1]) / "model.safetensors"
    size = (checkpoints[-1] / "model.safetensors").stat().st_size
    assert size < backbone.stat().st_size / 8, (size, backbone.stat().st_size)


def test_full_strategy_checkpoints_stay_whole(tiny_cfg, tmp_path):
    run = _run(tiny_cfg, tmp_path, "full", "train.epochs=1")
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert not (last / "trainable_only.json").exists()
    assert any("embeddings" in k for k in _weights(last / "model.safetensors"))


# -- outputs that load anywhere -------------------------------------------------------------------------------------
CASES = {  # (run, folder) -> loaders that must load it
    ("full", "model"): ("transformers", "pipeline"),
    ("lora", "model"): ("transformers", "peft", "pipeline"),
    ("lora", "merged"): ("transformers", "pipeline"),
}


@pytest.mark.parametrize(("kind", "loader"), [(k, loader) for k, loaders in CASES.items() for loader in loaders],
                         ids=lambda v: "/".join(v) if isinstance(v, tuple) else v)
def test_saved_outputs_load_without_hftl(runs, tmp_path, kind, loader):
    model_dir = runs[kind[0]] / kind[1]
    out = subprocess.run([sys.executable, "-c", NO_HFTL, loader, str(model_dir), json.dumps(TEXTS)], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probs = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(probs, _hftl_probs(model_dir), rtol=1e-4, atol=1e-5)


def test_adapter_names_a_base_that_resolves_and_has_one_card(runs):
    model_dir = runs["lora"] / "model"
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute() and Path(config["base_model_name_or_path"]).is_dir()
    assert config["auto_mapping"]["parent_library"] == "transformers"  # not hftl: loads without it
    backbone = json.loads((model_dir / "config.json").read_text())["backbone_name"]
    assert Path(backbone).is_absolute() and Path(backbone).is_dir()  # a relative model.name resolves from anywhere
    assert not (model_dir / "README.md").exists() and (runs["lora"] / "README.md").is_file()  # one card per run
    assert (model_dir / "modeling_hftl.py").is_file() and (runs["lora"] / "merged" / "modeling_hftl.py").is_file()


def test_card_is_plain_words_with_how_to_load_and_predict(runs):
    card = (runs["lora"] / "README.md").read_text()
    assert "hftl predict" in card and "pipeline(" in card and "trust_remote_code=True" in card
    assert "AutoPeftModelForSequenceClassification" in card
    body = card.split("## Configuration")[0]
    assert not any(s in body for s in ("{'", "['", "PeftType.", "set()")), body  # no raw Python values
