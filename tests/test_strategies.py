"""Every strategy on a tiny model: what trains, and that the head survives save -> load (and merge)."""

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoTokenizer

from hftl.config import ConfigError, StrategyConfig
from hftl.modeling import HftlForClassification
from hftl.models import load_classifier
from hftl.run import load
from hftl.strategies import adapters_merged, apply_strategy, find_layers

PEFT = ["lora", "dora", "ia3", "loha", "lokr", "adalora", "vera"]
ALL = ["linear_probe", "head", "full", "freeze_n", *PEFT]


def _model(tiny_model):
    torch.manual_seed(0)
    return load_classifier(tiny_model, 3, id2label={0: "a", 1: "b", 2: "c"})


def _inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(5, 27, (4, 9), generator=g),
        "attention_mask": torch.ones(4, 9, dtype=torch.long),
    }


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _train_a_step(model):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**_inputs(), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    opt.step()
    model.eval()


@pytest.mark.parametrize("name", ALL)
def test_head_always_trains(tiny_model, name):
    args = {"total_step": 10} if name == "adalora" else {}
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name=name, freeze_layers=1, peft=args))
    trainable = _trainable(adapted.model)
    assert any(".head." in f".{n}" for n in trainable), trainable
    assert 0 < adapted.trainable <= adapted.total


@pytest.mark.parametrize("name", ["linear_probe", "head"])
def test_frozen_backbone(tiny_model, name):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name=name))
    assert all(n.startswith("head.") for n in _trainable(adapted.model))
    assert adapted.frozen_backbone == (name == "linear_probe")


def test_full_trains_everything(tiny_model):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name="full"))
    assert adapted.trainable == adapted.total


def test_freeze_n_freezes_embeddings_and_first_layers(tiny_model):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name="freeze_n", freeze_layers=1))
    trainable = _trainable(adapted.model)
    assert not any("embeddings" in n for n in trainable)
    assert not any(".layer.0." in n for n in trainable)
    assert any(".layer.1." in n for n in trainable)
    with pytest.raises(ConfigError, match="has 2 layers"):
        apply_strategy(_model(tiny_model), StrategyConfig(name="freeze_n", freeze_layers=5))


def test_find_layers(tiny_model):
    name, layers = find_layers(_model(tiny_model).backbone)
    assert name == "encoder.layer" and len(layers) == 2


def test_peft_targets_found_without_naming_them(tiny_model):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name="lora"))
    assert set(adapted.peft_config["target_modules"]) == {"query", "value"}  # peft's default for BERT
    assert "head" in adapted.peft_config["modules_to_save"]


def test_peft_unknown_argument_is_named(tiny_model):
    with pytest.raises(ConfigError, match=r"does not take: \['rank'\]"):
        apply_strategy(_model(tiny_model), StrategyConfig(name="lora", peft={"rank": 8}))


@pytest.mark.parametrize("name", ["full", "freeze_n", "linear_probe", "lora", "ia3", "loha"])
def test_head_survives_save_and_load(tiny_model, tmp_path, name):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name=name, freeze_layers=1))
    _train_a_step(adapted.model)
    with torch.no_grad():
        expected = adapted.model(**_inputs()).logits
    adapted.model.save_pretrained(tmp_path)
    if hasattr(adapted.model, "peft_config"):
        adapted.model.get_base_model().config.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    model, tokenizer = load(tmp_path)  # the base backbone comes from its recorded name for adapters
    with torch.no_grad():
        got = model(**_inputs()).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_lora_merge_keeps_predictions(tiny_model):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name="lora", peft={"r": 4}))
    _train_a_step(adapted.model)
    with torch.no_grad():
        expected = adapted.model(**_inputs()).logits
        merged = adapted.model.merge_and_unload()
        assert isinstance(merged, HftlForClassification)
        torch.testing.assert_close(merged(**_inputs()).logits, expected, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_predictions(tiny_model):
    """A new head on a loaded backbone must keep the backbone's attention implementation (masking included)."""
    model = _model(tiny_model).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = {"input_ids": torch.tensor([[5, 6, 7, 8, 0, 0, 0]]), "attention_mask": torch.tensor([[1] * 4 + [0] * 3])}
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(model(**padded).logits, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "loha", "vera"])
def test_evaluation_with_merged_adapters_gives_the_same_logits_and_restores_every_bit(tiny_model, name):
    adapted = apply_strategy(_model(tiny_model), StrategyConfig(name=name, peft={} if name == "ia3" else {"r": 4}))
    model = adapted.model
    _train_a_step(model)  # adapters away from their identity init, so a merge changes the base weights
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        expected = model(**_inputs()).logits
        with adapters_merged(model) as merged:
            assert merged
            layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
            assert layers and all(m.merged for m in layers)
            moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
            assert moved  # the merge really wrote into the base weights
            got = model(**_inputs()).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not any(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == []  # bit for bit: training goes on from the same weights
    _train_a_step(model)  # and it still trains through the adapters
    adapter = [n for n in before if ".default" in n and "modules_to_save" not in n]
    assert adapter and any(not torch.equal(model.get_parameter(n), before[n]) for n in adapter)


def test_merged_evaluation_leaves_unmergeable_models_alone(tiny_model):
    full = apply_strategy(_model(tiny_model), StrategyConfig(name="full")).model
    with adapters_merged(full) as merged:
        assert not merged
    lora = apply_strategy(_model(tiny_model), StrategyConfig(name="lora", peft={"r": 4})).model
    _train_a_step(lora)
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    with adapters_merged(lora, sharded=True) as merged:  # FSDP/DeepSpeed: weights are shards
        assert not merged
        assert all(torch.equal(p, before[n]) for n, p in lora.named_parameters())
