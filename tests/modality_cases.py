"""Shared checks of tests/test_vision.py and tests/test_speech.py: every strategy on a tiny model of a family."""

from __future__ import annotations

import pytest
import torch

from hftl.config import StrategyConfig
from hftl.models import load_classifier
from hftl.run import load
from hftl.strategies import apply_strategy, find_embeddings, find_layers

STRATEGIES = ["linear_probe", "head", "full", "freeze_n", "lora"]
LABELS = {0: "a", 1: "b", 2: "c"}


def cases(families: dict, gaps: dict) -> list:
    """family x strategy, with the known gaps (a table, not an if-chain) as strict xfails naming why."""
    out = []
    for family in families:
        for strategy in STRATEGIES:
            why = gaps.get((family, strategy)) or gaps.get((family, "*"))
            marks = [pytest.mark.xfail(reason=why, strict=True)] if why else []
            out.append(pytest.param(family, strategy, marks=marks, id=f"{family}-{strategy}"))
    return out


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _check_trainable(adapted, strategy: str) -> None:
    trainable = _trainable(adapted.model)
    assert any(".head." in f".{n}" for n in trainable), "the new head must train"
    if strategy in ("linear_probe", "head"):
        assert all(n.startswith("head.") for n in trainable)
    elif strategy == "full":
        assert adapted.trainable == adapted.total
    elif strategy == "freeze_n":
        backbone = adapted.model.backbone
        embeddings = find_embeddings(backbone)
        assert embeddings, "freeze_n found no embeddings to freeze"
        assert not any(p.requires_grad for _, m in embeddings for p in m.parameters())
        _, layers = find_layers(backbone)
        assert not any(p.requires_grad for p in layers[0].parameters())
        assert all(p.requires_grad for p in layers[1].parameters())
    else:  # peft: adapters found without the user naming target modules; the head saved with them
        assert adapted.peft_config["target_modules"], "no default target modules"
        assert any("lora_" in n for n in trainable)
        assert "head" in adapted.peft_config["modules_to_save"]


def check_strategy(model_dir: str, strategy: str, inputs: dict, tmp_path) -> None:
    """Trainable set, one training step, head kept through save -> load (and merge for adapters)."""
    torch.manual_seed(0)
    model = load_classifier(model_dir, 3, id2label=LABELS)
    adapted = apply_strategy(model, StrategyConfig(name=strategy, freeze_layers=1))
    _check_trainable(adapted, strategy)
    net = adapted.model
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    net.train()
    net(**inputs, labels=torch.arange(len(next(iter(inputs.values())))) % 3).loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        expected = net(**inputs).logits
    net.save_pretrained(tmp_path)
    if hasattr(net, "peft_config"):
        net.get_base_model().config.save_pretrained(tmp_path)
        with torch.no_grad():
            torch.testing.assert_close(net.merge_and_unload()(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    from hftl.models import load_processor

    load_processor(model_dir).save_pretrained(tmp_path)
    loaded, _ = load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    assert loaded.config.id2label == LABELS
