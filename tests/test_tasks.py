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
    assert load_config(tmp_path / "run" / "config.yaml").train.metric_for_best == "auto"  # as the user set it
    scores, outputs = _reloaded_scores(cfg, tmp_path / "run")
    assert scores == pytest.approx(metrics["test"], abs=1e-4)
    assert all(set(o) <= {"pos", "neg"} for o in outputs)
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [p["predicted"] for p in preds] == outputs  # the test split's rows, in order, as the reloaded model says
    assert all(p["input"] and set(p["label"]) <= {"pos", "neg"} for p in preds)
    assert (tmp_path / "run" / "report.html").is_file()


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
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [v for p in preds for v in p["predicted"]] == pytest.approx([v for o in outputs for v in o], abs=1e-4)
    rmse = (sum(e * e for p in preds for e in p["error"]) / (2 * len(preds))) ** 0.5
    assert rmse == pytest.approx(metrics["test"]["rmse"], rel=1e-3)  # the rows are what the score was made of
    assert (tmp_path / "run" / "report.html").is_file()


def test_registry_and_config():
    get_task("classification")
    assert {"classification", "multi_label", "regression"} <= set(TASKS)
    with pytest.raises(ConfigError, match="task.name='regresion' is unknown.*did you mean regression"):
        load_config(None, ["task.name=regresion"])
    with pytest.raises(ConfigError, match="metric_for_best='f1' is not reported by task.name=regression"):
        get_task("regression").check(load_config(None, ["task.name=regression", "train.metric_for_best=f1"]))
    with pytest.raises(ConfigError, match="train.class_weights / train.balanced_sampler apply to task.name=classif"):
        get_task("multi_label").check(load_config(None, ["task.name=multi_label", "train.class_weights=balanced"]))
    with pytest.raises(ConfigError, match=r"train.class_weights=\[1, -2\] must be none, balanced, or a list"):
        load_config(None, ["train.class_weights=[1, -2]"])
    assert load_config(None, ["train.class_weights=[1, 5]"]).train.class_weights == [1.0, 5.0]


# -- bad input, named before compute (row and column) ---------------------------------------------------------------
def _splits(task: str, *overrides):
    cfg = load_config(None, [f"task.name={task}", *overrides])
    return hftl.load_splits(cfg.data, get_task(task))


def test_unknown_label_in_a_list_names_row_and_column(rows, tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", rows)
    test = _jsonl(tmp_path / "test.jsonl", [*rows[:5], {"text": "good film", "tags": ["pos", "meh"]}])
    with pytest.raises(hftl.DataError, match=r"column 'tags' has the unknown label 'meh' at row 6 of .*test.jsonl"):
        _splits("multi_label", f"data.splits={{train: {train}, test: {test}}}", "data.label_column=tags")


def test_label_list_column_that_is_not_lists(rows, tmp_path):
    data = _csv(tmp_path / "d.csv", rows, ["text", "score"])
    with pytest.raises(hftl.DataError, match=r"'score' holds 0 at row 1 of .*d.csv: task.name=multi_label needs a"):
        _splits("multi_label", f"data.name={data}", "data.label_column=score")


def test_01_column_with_another_value(rows, tmp_path):
    data = _csv(tmp_path / "d.csv", [*rows[:20], {**rows[0], "neg": 2}], ["text", "pos", "neg"])
    with pytest.raises(hftl.DataError, match=r"column 'neg' holds 2 at row 21 of .*d.csv: each label column must"):
        _splits("multi_label", f"data.name={data}", "data.label_columns=[pos,neg]")


def test_regression_target_not_a_number(rows, tmp_path):
    data = _csv(tmp_path / "d.csv", [*rows[:20], {**rows[0], "score": "high"}], ["text", "score"])
    with pytest.raises(hftl.DataError, match=r"target column 'score' holds 'high' at row 21 of .*d.csv: each target"):
        _splits("regression", f"data.name={data}", "data.label_column=score")


def test_pair_column_missing(rows, tmp_path):
    data = _csv(tmp_path / "d.csv", rows, ["text", "score"])
    with pytest.raises(hftl.DataError, match=r"data.text_pair_column='hypothesis' is not a column of split 'train'"):
        _splits("regression", f"data.name={data}", "data.label_column=score", "data.text_pair_column=hypothesis")


# -- sentence pairs -------------------------------------------------------------------------------------------------
def _pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Two short texts; the label: whether they have the same sentiment (told only by the pair)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(["pos", "neg"]), rng.choice(["pos", "neg"])
        out.append({"first": " ".join(rng.sample(WORDS[a], 1) + rng.sample(WORDS["neutral"], 2)),
                    "second": " ".join(rng.sample(WORDS[b], 1) + rng.sample(WORDS["neutral"], 2)),
                    "label": "same" if a == b else "different", "score": float(a == b), "second_kind": b})
    return out


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_pairs_encoded_as_the_tokenizer_pairs_them(tiny_model, tmp_path, task):
    data = _csv(tmp_path / "pairs.csv", _pair_rows(40), ["first", "second", "label", "score"])
    label = "label" if task == "classification" else "score"
    cfg = load_config(None, [f"task.name={task}", f"data.name={data}", "data.text_column=first",
                             "data.text_pair_column=second", f"data.label_column={label}"])
    splits = hftl.load_splits(cfg.data, get_task(task))
    assert {"text", "text_pair", "label"} <= set(splits["train"].column_names)
    tokenizer = hftl.load_processor(tiny_model)
    encoded = hftl.encode_text(splits, tokenizer, "text", 64)
    row, first = encoded["train"][0], splits["train"][0]
    assert row["input_ids"] == tokenizer(first["text"], first["text_pair"])["input_ids"]
    assert 1 in row["token_type_ids"]  # BERT's second segment


def test_pair_classification_reads_the_second_text(tiny_model, tmp_path):
    rows = [{**r, "first": " ".join(random.Random(i).sample(WORDS["neutral"], 3)), "label": r["second_kind"]}
            for i, r in enumerate(_pair_rows(120))]  # the first text is neutral: the label is in the second
    data = _csv(tmp_path / "pairs.csv", rows, ["first", "second", "label"])
    cfg = load_config(None, _overrides(tiny_model, data, tmp_path, "full", "data.text_column=first",
                                       "data.text_pair_column=second", "train.epochs=10"))
    metrics = main(cfg)
    assert metrics["test"]["accuracy"] >= 0.6, metrics["test"]


# -- imbalance ------------------------------------------------------------------------------------------------------
def _imbalanced(tmp_path, n=100, rare_every=10) -> str:
    from hftl.testing import tiny_text_rows

    rows = [r for i, r in enumerate(tiny_text_rows(2 * n)) if r["label"] == "neg" or i % (2 * rare_every) == 1]
    return _csv(tmp_path / "skewed.csv", rows, ["text", "label"])


def test_imbalance_weights_sampler_and_macro_f1(tiny_model, tmp_path, capsys):
    from hftl.tasks.classification import class_weights

    data = _imbalanced(tmp_path)
    cfg = load_config(None, _overrides(tiny_model, data, tmp_path, "full", "train.class_weights=balanced",
                                       "train.balanced_sampler=true", "train.epochs=3"))
    splits = hftl.load_splits(cfg.data, get_task("classification"))
    labels = splits["train"]["label"][:]
    assert get_task("classification").best_metric(cfg, splits, print) == "f1"  # 10:1 in train
    assert "imbalanced" in capsys.readouterr().out
    weights = class_weights("balanced", labels, ["neg", "pos"])
    assert weights[1] > 3 * weights[0]
    balanced = get_task("classification").encode_labels({"train": splits["train"]}, cfg)["train"]
    assert balanced["label"][:].count(0) == balanced["label"][:].count(1) == labels.count(0)
    metrics = main(cfg)
    model = hftl.load(tmp_path / "run" / "model")[0]
    assert model.config.class_weights == pytest.approx(weights)
    assert {"accuracy", "f1"} <= set(metrics["test"])
    with pytest.raises(ConfigError, match="train.class_weights has 3 weights but train has 2 classes"):
        get_task("classification").model_config(splits, load_config(None, ["train.class_weights=[1,2,3]"]))


def test_auto_best_is_accuracy_on_balanced_classes(tiny_csv):
    cfg = load_config(None, [f"data.name={tiny_csv}"])
    splits = hftl.load_splits(cfg.data, get_task("classification"))
    assert cfg.train.metric_for_best == "auto"
    assert get_task("classification").best_metric(cfg, splits, print) == "accuracy"
    assert get_task("classification").auto_best(["f1"]) == "f1"
