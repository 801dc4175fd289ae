"""Disentanglement (hftl/disentangle.py, recipes/disentangle.py): the split, its measure, its checks, the run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from hftl.config import ConfigError, parse_args
from hftl.data.sources import DataError
from hftl.disentangle import (
    Eraser,
    FactorData,
    SplitModel,
    check_factors,
    dann_schedule,
    disentangle,
    grad_reverse,
    probe_accuracy,
    standardize,
)


def mixed(n: int, seed: int):
    """Features where both binary factors are linearly readable and one direction mixes them: a full-width
    projection for factor a keeps factor b unless it is removed."""
    r = np.random.default_rng(seed)
    a, b = r.integers(0, 2, n), r.integers(0, 2, n)
    sa, sb = 2 * a - 1, 2 * b - 1
    x = np.stack([sa, sb, sa + sb, np.zeros(n)], 1) + 0.3 * r.normal(size=(n, 4))
    return x.astype(np.float32), a, b


def factor_data(n: int = 300) -> FactorData:
    (xtr, atr, btr), (xte, ate, bte) = mixed(n, 1), mixed(n, 2)
    return FactorData({"train": xtr, "test": xte}, {"train": atr, "test": ate}, {"train": btr, "test": bte},
                      ["a0", "a1"], ["b0", "b1"])


def test_grad_reverse_flips_and_scales_the_gradient():
    x = torch.ones(3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (2 * y).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -1.0))
    x.grad = None
    grad_reverse(x, 0.0).sum().backward()
    assert torch.count_nonzero(x.grad) == 0  # weight 0: the adversary only watches


def test_reverse_mode_pushes_the_projection_up_the_adversary_loss():
    torch.manual_seed(0)
    model = SplitModel(4, 3, 2, 2)
    x, a, b = torch.randn(16, 4), torch.randint(0, 2, (16,)), torch.randint(0, 2, (16,))
    model.losses(x, a, b, 1.0, "reverse")["adv_a"].backward()
    reversed_grad = model.proj_a.weight.grad.clone()
    model.zero_grad()
    # the same cross-entropy without reversal: the projection's gradient is its negative
    z_a, _ = model.parts(x)
    torch.nn.functional.cross_entropy(model.adv_a(z_a), b).backward()
    assert torch.allclose(reversed_grad, -model.proj_a.weight.grad, atol=1e-6)
    assert model.adv_a.weight.grad is not None


def test_dann_schedule_ramps_from_zero_to_one():
    assert dann_schedule(0.0) == 0.0
    assert 0.99 < dann_schedule(1.0) <= 1.0
    assert dann_schedule(0.1) < dann_schedule(0.5)


def test_eraser_leaves_the_other_factor_at_chance_and_keeps_its_own():
    data = factor_data()
    feats = standardize(data.features)
    erase = Eraser(feats["train"], data.b["train"])
    train, test = erase(feats["train"]), erase(feats["test"])
    for k in (0, 1):  # equal class means of b on train: what makes every linear classifier no better than constant
        assert np.allclose(train[data.b["train"] == k].mean(0), train.mean(0), atol=1e-4)
    assert probe_accuracy(train, data.b["train"], test, data.b["test"]) < 0.6
    assert probe_accuracy(train, data.a["train"], test, data.a["test"]) > 0.95


def test_split_without_removal_keeps_the_other_factor_and_erasure_removes_it():
    result = disentangle(factor_data(), dim=4, epochs=15, lr=1e-2, adversary_steps=1, seed=0)
    assert result["raw"]["factor_b"] > 0.95 and result["raw"]["factor_a"] > 0.95
    # weight 0: part a, trained to predict a only, still lets a fresh probe read b far above chance
    assert result["plain"]["z_a"]["factor_b"] > result["chance"]["factor_b"] + 0.15
    # the other factor erased from each part's input: near chance, its own factor kept
    assert abs(result["erasure"]["z_a"]["factor_b"] - result["chance"]["factor_b"]) < 0.1
    assert abs(result["erasure"]["z_b"]["factor_a"] - result["chance"]["factor_a"]) < 0.1
    assert result["erasure"]["z_a"]["factor_a"] > 0.95 and result["erasure"]["z_b"]["factor_b"] > 0.95
    assert set(result["adversarial"]) == {"z_a", "z_b"}
    assert all(math.isfinite(v) for part in result["adversarial"].values() for v in part.values())


def splits_of(**columns) -> DatasetDict:
    n = len(next(iter(columns.values())))
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(n)], **columns})
    ds = ds.cast_column("label", ClassLabel(names=sorted(set(columns["label"]))))
    return DatasetDict({"train": ds, "test": ds})


def test_check_factors_refuses_bad_columns_in_one_line():
    good = splits_of(label=["x", "y", "x", "y"], speaker=["s1", "s1", "s2", "s2"])
    check_factors(good, "word", "speaker")
    with pytest.raises(DataError, match=r"disentangle.factor_column='voice' is not a column .*set disentangle"):
        check_factors(good, "word", "voice")
    with pytest.raises(DataError, match=r"'speaker' has one value \('s1'\) in train"):
        check_factors(splits_of(label=["x", "y"], speaker=["s1", "s1"]), "word", "speaker")
    with pytest.raises(DataError, match=r"data.label_column='word' has one value"):
        check_factors(splits_of(label=["x", "x"], speaker=["s1", "s2"]), "word", "speaker")
    with pytest.raises(DataError, match="empty cells"):
        check_factors(splits_of(label=["x", "y"], speaker=["s1", ""]), "word", "speaker")
    with pytest.raises(ConfigError, match="is data.label_column too"):
        check_factors(good, "speaker", "speaker")
    unseen = DatasetDict({"train": good["train"], "test": splits_of(label=["x", "y"], speaker=["s1", "s9"])["test"]})
    with pytest.raises(DataError, match=r"values in split 'test' that train never shows \(\['s9'\]\)"):
        check_factors(unseen, "word", "speaker")


def test_config_refuses_the_same_column_for_both_factors():
    with pytest.raises(ConfigError, match="disentangle.factor_column='label' is data.label_column too"):
        parse_args(["disentangle.factor_column=label"])
    with pytest.raises(ConfigError, match="disentangle.adversary"):
        parse_args(["disentangle.adversary=nope"])


@pytest.fixture
def two_factor_csv(tmp_path) -> str:
    """Texts whose adjective is the sentiment and whose noun is the topic: two known, independent factors."""
    rng = np.random.default_rng(0)
    rows = ["text,label,topic"]
    for i in range(120):
        adj, noun = rng.choice(["good", "bad"]), rng.choice(["movie", "song", "book"])
        rows.append(f"the {adj} {noun} number {i},{adj},{noun}")
    path = tmp_path / "two.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_recipe_writes_a_run_with_strict_numeric_metrics(tiny_model, two_factor_csv, tmp_path):
    from recipes.disentangle import main

    out = tmp_path / "run"
    cfg = parse_args([f"model.name={tiny_model}", f"data.name={two_factor_csv}", "data.validation_size=0.2",
                      "data.test_size=0.2", "disentangle.factor_column=topic", "disentangle.epochs=3",
                      "disentangle.dim=8", "train.eval_batch_size=32", f"output_dir={out}"])
    metrics = main(cfg)
    written = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))

    def numbers(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and numbers(v) for k, v in value.items())
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    assert numbers(written) and written["raw"] == metrics["raw"]
    assert set(written) >= {"chance", "raw", "plain", "adversarial", "erasure", "train", "features"}
    assert written["features"]["train_examples"] + written["features"]["test_examples"] > 0
    assert json.loads((out / "factors.json").read_text())["factor_b"]["names"] == ["book", "movie", "song"]
    assert (out / "split_models.safetensors").exists() and (out / "config.yaml").exists()
    with pytest.raises(ConfigError):  # the run directory is the user's: a second run there needs overwrite
        main(cfg)


def test_recipe_names_a_missing_factor_before_the_model_loads(tiny_model, two_factor_csv, tmp_path, monkeypatch):
    import hftl
    from recipes.disentangle import main

    monkeypatch.setattr(hftl, "load_processor", lambda *a, **k: pytest.fail("loaded the model before the check"))
    cfg = parse_args([f"model.name={tiny_model}", f"data.name={two_factor_csv}", "disentangle.factor_column=genre",
                      f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="disentangle.factor_column='genre' is not a column of split 'train'"):
        main(cfg)


def test_knn_tables_sit_beside_the_linear_ones():
    result = disentangle(factor_data(120), dim=4, epochs=2, adversary_steps=1, seed=0)
    assert set(result["knn"]) == {"raw", "plain", "adversarial", "erasure"}
    assert result["knn"]["raw"]["factor_a"] > 0.9  # a neighbour vote reads what is plainly there
    assert set(result["knn"]["erasure"]) == {"z_a", "z_b"}
