"""Tasks (hftl.tasks): multi-label and regression end to end on the tiny model for each strategy, round-tripped
through the run directory and hftl.load with the same metrics; the registry and config checks."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from hftl.recipes.finetune import main

import hftl
from hftl.config import ConfigError, load_config
from hftl.tasks import TASKS, get_task
from hftl.testing import WORDS

STRATEGIES = ["linear_probe", "lora", "full"]


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences with 0-2 sentiment words of each side: labels and targets are told by the words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos, neg = i % 3, (i // 3) % 3
        words = rng.sample(WORDS["pos"], pos) + rng.sample(WORDS["neg"], neg) + rng.sample(WORDS["neutral"], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "pos": int(pos > 0), "neg": int(neg > 0), "score": pos - neg,
                     "size": len(words), "tags": [t for t, on in (("pos", pos), ("neg", neg)) if on]})
    return rows


def _csv(path, rows, fields) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _overrides(tiny_model, data, tmp_path, strategy, *extra) -> list[str]:
    lr = {"linear_probe": "0.05", "lora": "3e-3", "full": "3e-3"}[strategy]
    return [f"model.name={tiny_model}", f"data.name={data}", "data.validation_size=0.2", "data.test_size=0.2",
            "train.epochs=6", "train.batch_size=8", "train.eval_batch_size=32", f"train.lr={lr}",
            f"strategy.name={strategy}", f"output_dir={tmp_path / 'run'}", *extra]


def _reloaded_scores(cfg, run_dir) -> tuple[dict, list]:
    """The test split scored again by the model loaded back with hftl.load, and its outputs."""
    model, tokenizer = hftl.load(run_dir / "model")
    task = get_task(cfg.task.name)
    test = hftl.load_splits(cfg.data, task)["test"]
    encoded = task.encode_labels({"test": test.map(lambda b: tokenizer(b["text"]), batched=True)})["test"]
    batch = tokenizer(test["text"][:], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.float()
    labels = torch.tensor(encoded["labels" if "labels" in encoded.column_names else "label"][:])
    return task.scores(logits, labels, cfg.eval.metrics, model.config), task.outputs(logits, model.config)


@pytest.fixture(scope="module")
def rows():
    return _rows(90)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multi_label_round_trip(tiny_model, rows, tmp_path, strategy):
    data = _jsonl(tmp_path / "tags.jsonl", rows)
    cfg = load_config(None, _overrides(tiny_model, data, tmp_path, strategy, "task.name=multi_label",
                                       "data.label_column=tags"))
    metrics = main(cfg)
    assert {"f1_micro", "f1_macro", "subset_accuracy", "f1_label_pos", "f1_label_neg"} <= set(metrics["test"])
    assert metrics["test"]["f1_micro"] >= 0.6, metrics["test"]
    saved = json.loads((tmp_path / "run" / "config.yaml").parent.joinpath("model", "config.json").read_text())
    assert saved["task"] == "multi_label" and saved["problem_type"] == "multi_label_classification"
    assert saved["threshold"] == metrics["tuned"]["threshold"]  # tuned on validation, saved with the model
    assert load_config(tmp_path / "run" / "config.yaml").train.metric_for_best == "f1_micro"
    scores, outputs = _reloaded_scores(cfg, tmp_path / "run")
    assert scores == pytest.approx(metrics["test"], abs=1e-4)
    assert all(set(o) <= {"pos", "neg"} for o in outputs)


def test_multi_label_from_01_columns(tiny_model, rows, tmp_path):
    data = _csv(tmp_path / "flags.csv", rows, ["text", "pos", "neg"])
    cfg = load_config(None, _overrides(tiny_model, data, tmp_path, "full", "task.name=multi_label",
                                       "data.label_columns=[pos,neg]", "task.threshold=0.5"))
    metrics = main(cfg)
    assert "tuned" not in metrics and metrics["test"]["f1_micro"] >= 0.6, metrics["test"]
    assert hftl.load(tmp_path / "run" / "model")[0].config.threshold == 0.5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_regression_round_trip(tiny_model, rows, tmp_path, strategy):
    data = _csv(tmp_path / "scores.csv", rows, ["text", "score", "size"])
    cfg = load_config(None, _overrides(tiny_model, data, tmp_path, strategy, "task.name=regression",
                                       "data.label_columns=[score,size]"))
    metrics = main(cfg)
    assert {"rmse", "mae", "pearson", "spearman", "loss"} <= set(metrics["test"])
    assert metrics["test"]["pearson"] >= 0.5, metrics["test"]
    config = hftl.load(tmp_path / "run" / "model")[0].config
    assert config.task == "regression" and config.id2label == {0: "score", 1: "size"}
    assert config.target_mean == pytest.approx([0.0, 4.0], abs=0.5)  # standardisation saved
    scores, outputs = _reloaded_scores(cfg, tmp_path / "run")
    assert scores == pytest.approx(metrics["test"], abs=1e-4)
    assert all(len(o) == 2 for o in outputs) and max(o[1] for o in outputs) > 2  # in the targets' units


def test_registry_and_config():
    get_task("classification")
    assert {"classification", "multi_label", "regression"} <= set(TASKS)
    with pytest.raises(ConfigError, match="task.name='regresion' is unknown.*did you mean regression"):
        load_config(None, ["task.name=regresion"])
    with pytest.raises(ConfigError, match="metric_for_best='f1' is not reported by task.name=regression"):
        get_task("regression").check(load_config(None, ["task.name=regression", "train.metric_for_best=f1"]))
