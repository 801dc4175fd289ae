"""Real pretrained weights and real data that install as packages: MiniLM and Rotten Tomatoes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main

from hftl.config import load_config

pytestmark = pytest.mark.integration
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CONFIGS = Path(__file__).parent.parent / "recipes" / "configs" / "text"


def test_minilm_resolves_by_hub_id_offline_from_an_empty_cache(tmp_path):
    code = f"""
import os, torch
from transformers import AutoModel, AutoTokenizer
import hftl
from hftl.models import resolve
kwargs = resolve("{MINILM}")
model, tok = AutoModel.from_pretrained("{MINILM}", **kwargs), AutoTokenizer.from_pretrained("{MINILM}", **kwargs)
b = tok(["a great movie", "a wonderful film", "the tax form is due"], padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**b).last_hidden_state
mask = b.attention_mask[..., None]
e = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
print(float(e[0] @ e[1]), float(e[0] @ e[2]), os.listdir(os.environ["HF_HUB_CACHE"]))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    values = out.stdout.strip().splitlines()[-1].split(" ", 2)
    related, unrelated = float(values[0]), float(values[1])
    assert related > 0.6 > unrelated + 0.2  # real sentence embeddings, not random weights
    assert "models--sentence-transformers--all-MiniLM-L6-v2" in values[2]


def test_linear_probe_on_real_minilm_and_rotten_tomatoes(tmp_path):
    cfg = load_config(
        CONFIGS / "minilm-rt-linear_probe.yaml", ["data.max_train_samples=1000", f"output_dir={tmp_path / 'lp'}"]
    )
    metrics = main(cfg)
    # reference: logistic regression on 1,500 mean-pooled MiniLM embeddings reaches 0.766; majority class 0.578
    assert metrics["test"]["accuracy"] >= 0.72, metrics["test"]
    assert json.loads((tmp_path / "lp" / "metrics.json").read_text())["train"]["examples"] == 1000


def test_lora_on_real_minilm_round_trips(tmp_path):
    cfg = load_config(
        CONFIGS / "minilm-rt-lora.yaml",
        ["data.max_train_samples=128", "train.epochs=1", f"output_dir={tmp_path / 'lora'}"],
    )
    main(cfg)
    code = """
import sys, json, torch, hftl
model, tok = hftl.load(sys.argv[1])
with torch.no_grad():
    print(json.dumps(model(**tok(["a fine film", "dull"], padding=True, return_tensors="pt")).logits.tolist()))
"""
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "lora" / d)], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
        for d in ("model", "merged")
    ]
    adapter, merged = (torch.tensor(json.loads(r)) for r in runs)
    torch.testing.assert_close(adapter, merged, atol=1e-4, rtol=1e-4)
