"""Multitask: tasks on one shared backbone (hftl.multitask, recipes/multitask.py).

Bad configs fail at parse time and bad data before the model loads, each in one line naming the task and the fix;
batches are drawn across tasks as each sampling promises, deterministically; each task's loss is weighted; a tiny
run of two tasks (different numbers of classes) gives per-task metrics, and each task saved alone loads with
hftl.load (and predicts with hftl.predict) with that task's test metrics; 2 processes end as 1 does; a run killed
with SIGKILL and resumed ends as the run never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main as finetune
from hftl.recipes.multitask import main, task_configs
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import hftl
from hftl.config import ConfigError, load_config
from hftl.data.sources import DataError
from hftl.multitask import MultitaskModel, TaskBatches, build_multitask, load_multitask
from hftl.tasks import get_task
from hftl.testing import numbers_only, tiny_text_csv, tiny_text_model
from hftl.train import KILL_ENV

ROOT = Path(__file__).resolve().parents[1]


def _tasks(a: str, b: str, *, weight_b: float = 0.5, extra_b: str = "") -> str:
    split = "validation_size: 0.25, test_size: 0.25"
    return (f"multitask.tasks=[{{name: sent, data: {{name: {a}, {split}}}}}, "
            f"{{name: topic, weight: {weight_b}, data: {{name: {b}, {split}{extra_b}}}}}]")


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[str, str]:
    """Two tasks told by words: sentiment (2 classes) and pos/neg/neutral (3 classes)."""
    folder = tmp_path_factory.mktemp("mt")
    return (tiny_text_csv(folder / "sent.csv", n=64), tiny_text_csv(folder / "topic.csv", n=72, seed=1,
                                                                     labels=("pos", "neg", "neutral")))


def _overrides(model: str, sets, out: Path, *extra: str) -> list[str]:
    return [f"model.name={model}", _tasks(*sets), "train.epochs=2", "train.batch_size=8", "train.lr=3e-3",
            "train.eval_batch_size=16", f"output_dir={out}", *extra]


@pytest.mark.parametrize("override, words", [
    ("multitask.tasks=[{name: a}, {name: a}]", "multitask.tasks[1].name='a' is used twice"),
    ("multitask.tasks=[{name: a}, {name: b, model: {name: other/model}}]", "disagrees with model.name"),
    ("multitask.sampling=sometimes", "multitask.sampling='sometimes' is not allowed"),
    ("multitask.tasks=[{name: a}]", "lists one task"),
    ("multitask.tasks=[{name: a}, {name: b, weight: -1}]", "multitask.tasks[1].weight=-1.0 must be"),
    ("multitask.tasks=[{name: a}, {name: b, labels: x}]", "multitask.tasks[1] must be a mapping"),
    ("multitask.tasks=[{name: a}, {name: b, task: {name: ctc}}]", "multitask.tasks[1].task.name='ctc'"),
    ("multitask.tasks=[{name: a}, {name: b, data: {nmae: x}}]", "multitask.tasks[1].data.nmae"),
])
def test_bad_multitask_config_is_one_line_at_parse_time(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_adapter_per_task_needs_a_peft_strategy(tiny_model, two_sets, tmp_path):
    cfg = load_config(None, _overrides(tiny_model, two_sets, tmp_path / "run", "strategy.name=full",
                                       "multitask.adapter_per_task=true"))
    with pytest.raises(ConfigError, match="adapter_per_task=true needs a peft strategy"):
        main(cfg)


def test_empty_split_is_named_before_the_model_loads(tiny_model, two_sets, tmp_path, monkeypatch):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    train = tiny_text_csv(tmp_path / "train.csv", n=40)
    extra = f", splits: {{train: {train}, validation: {empty}, test: {train}}}"
    tasks = _tasks(two_sets[0], train, extra_b=extra).replace(", validation_size: 0.25, test_size: 0.25, splits",
                                                              ", splits")
    cfg = load_config(None, [f"model.name={tiny_model}", tasks, f"output_dir={tmp_path / 'run'}"])

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(hftl, "load_processor", no_model)
    with pytest.raises(DataError) as err:
        main(cfg)
    message = str(err.value)
    assert "'topic'" in message and "validation" in message and "\n" not in message


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(4, 60), min_size=2, max_size=4), batch=st.integers(1, 4), seed=st.integers(0, 99),
       sampling=st.sampled_from(["proportional", "temperature", "round_robin"]), grouped=st.booleans())
def test_each_batch_is_one_tasks_and_the_order_is_seeded(sizes, batch, seed, sampling, grouped):
    lengths = [[(i * 7) % 13 for i in range(n)] for n in sizes] if grouped else None  # grouped by length or not
    batches = TaskBatches(sizes, batch, sampling, temperature=2.0, seed=seed, lengths=lengths)
    drawn = list(batches)
    assert drawn == list(TaskBatches(sizes, batch, sampling, temperature=2.0, seed=seed, lengths=lengths))
    assert len(drawn) == len(batches) == sum(n // batch for n in sizes)
    owners = []
    for rows in drawn:
        assert len(rows) == batch
        tasks = {next(i for i in range(len(sizes)) if batches.offsets[i] <= r < batches.offsets[i + 1]) for r in rows}
        assert len(tasks) == 1  # one task per batch
        owners.append(tasks.pop())
    counts = Counter(owners)
    if sampling == "proportional":  # each task's full batches exactly once, no example twice
        assert counts == Counter({i: n // batch for i, n in enumerate(sizes) if n // batch})
        assert len({r for rows in drawn for r in rows}) == sum(len(rows) for rows in drawn)
    if sampling == "round_robin":
        assert owners == [i % len(sizes) for i in range(len(owners))]


def test_temperature_draws_tasks_as_n_to_the_one_over_t():
    sizes = [9000, 1000]
    for temperature, expected in ((1.0, 0.9), (2.0, 3 / 4), (1e6, 0.5)):  # sqrt(9000) / (sqrt(9000) + sqrt(1000))
        batches = TaskBatches(sizes, 1, "temperature", temperature, seed=0)
        assert batches.probabilities()[0] == pytest.approx(expected, abs=1e-4)
        share = Counter(batches.task_order())[0] / len(batches)
        assert share == pytest.approx(expected, abs=0.02)
    one = TaskBatches(sizes, 1, "temperature", 2.0, seed=0)
    other = TaskBatches(sizes, 1, "temperature", 2.0, seed=0)
    other.set_epoch(1)
    assert one.task_order() != other.task_order()  # a new draw each epoch, the same for every process


def test_each_tasks_loss_is_weighted(tiny_model, two_sets, tmp_path):
    cfg = load_config(None, _overrides(tiny_model, two_sets, tmp_path / "run"))
    tasks = task_configs(cfg)
    splits = {n: hftl.load_splits(one.data, t) for n, (one, t, _) in tasks.items()}
    models = {n: t.build_model(one, t.label_names(splits[n]), splits[n]) for n, (one, t, _) in tasks.items()}
    model = build_multitask(models, {"sent": 1.0, "topic": 2.5}).eval()
    assert isinstance(model, MultitaskModel) and model.backbone is models["sent"].backbone
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 8, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 2])}
    with torch.no_grad():
        topic = model(task=torch.tensor([1, 1]), **batch)
        alone = models["topic"].eval()(**batch)
        sent = model(task=torch.tensor([0, 0]), **{**batch, "labels": torch.tensor([0, 1])})
        sent_alone = models["sent"](**{**batch, "labels": torch.tensor([0, 1])})
    assert topic.logits.shape == (2, 3) and sent.logits.shape == (2, 2)  # each task its own head
    assert float(topic.loss) == pytest.approx(2.5 * float(alone.loss), rel=1e-6)
    assert float(sent.loss) == pytest.approx(float(sent_alone.loss), rel=1e-6)


def _test_scores(run: Path, name: str, cfg) -> dict:
    """Task ``name``'s test scores from its folder alone (hftl.load), on its test split as the run read it."""
    model, tokenizer = hftl.load(run / "tasks" / name)
    one, task, _ = task_configs(cfg)[name]
    test = hftl.load_splits(one.data, task)["test"]
    encoded = task.encode_labels(hftl.encode_text({"test": test}, tokenizer, "text", cfg.model.max_length))["test"]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "label") if k in encoded.column_names]
    batch = dict(task.collator(tokenizer)([{k: r[k] for k in keys} for r in encoded]))
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits.float()
    return task.scores(logits, labels, one.eval.metrics, model.config)


# A task saved alone, loaded by transformers' Auto class in a process that never imports hftl: logits as JSON.
PLAIN_LOAD = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
batch = AutoTokenizer.from_pretrained(sys.argv[1])(["good great film", "bad awful plot"], padding=True,
                                                  return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
assert not [m for m in sys.modules if m.split(".")[0] == "hftl"], "hftl was imported"
print(json.dumps(logits.tolist()))
"""


@pytest.mark.parametrize("strategy", ["full", "lora-per-task"])
def test_two_tasks_train_and_each_loads_alone(tiny_model, two_sets, tmp_path, strategy):
    extra = ["strategy.name=lora", "multitask.adapter_per_task=true"] if strategy != "full" else ["strategy.name=full"]
    cfg = load_config(None, _overrides(tiny_model, two_sets, tmp_path / "run", *extra, "train.epochs=3"))
    metrics = finetune(cfg)  # hftl finetune hands a multitask config to recipes/multitask.py
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert numbers_only(saved) and set(saved["test"]) == {"sent", "topic"}
    assert set(saved["test"]["topic"]) == {"accuracy", "f1", "loss"}
    assert [set(h["validation"]) for h in saved["history"]] == [{"sent", "topic", "multitask_mean"}] * 3
    best = saved["history"][saved["train"]["best_epoch"] - 1]["validation"]
    assert best["multitask_mean"] == max(h["validation"]["multitask_mean"] for h in saved["history"])
    assert best["multitask_mean"] == pytest.approx((best["sent"]["accuracy"] + best["topic"]["accuracy"]) / 2)
    if strategy == "full":
        assert metrics["test"]["sent"]["accuracy"] > 0.6  # the words tell the sentiment
    else:  # one adapter per task, each trained (LoRA's B starts at zero) on its own task's batches only
        weights = load_file(tmp_path / "run" / "model" / "multitask.safetensors")
        for name in ("sent", "topic"):
            b = [w for k, w in weights.items() if "lora_B" in k and k.endswith(f".{name}.weight")]
            assert b and all(w.abs().sum() > 0 for w in b)
    for name in ("sent", "topic"):
        alone = _test_scores(tmp_path / "run", name, cfg)
        assert alone == pytest.approx(saved["test"][name], rel=1e-4, abs=1e-5)
        task_metrics = json.loads((tmp_path / "run" / "tasks" / name / "metrics.json").read_text())
        assert task_metrics["test"] == saved["test"][name]
    tokenizer = hftl.load(tmp_path / "run" / "tasks" / "topic")[1]
    whole = load_multitask(tmp_path / "run")
    inputs = dict(tokenizer(["good great film", "bad awful plot"], return_tensors="pt", padding=True))
    with torch.no_grad():
        for i, name in enumerate(("sent", "topic")):
            alone = hftl.load(tmp_path / "run" / "tasks" / name)[0]
            torch.testing.assert_close(whole(task=torch.tensor([i, i]), **inputs).logits, alone(**inputs).logits,
                                       rtol=1e-4, atol=1e-5)  # the adapter merged: rounding
    for name in ("sent", "topic"):  # each task alone loads with transformers' own loader, hftl never imported
        out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path / "run" / "tasks" / name / "model")],
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        with torch.no_grad():
            expected = hftl.load(tmp_path / "run" / "tasks" / name)[0](**inputs).logits
        torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), expected,
                                   rtol=1e-4, atol=1e-5)
    predicted = hftl.predict(tmp_path / "run" / "tasks" / "topic", ["good great film", "bad awful plot"])
    assert {p["label"] for p in predicted} <= {"pos", "neg", "neutral"}
    card = (tmp_path / "run" / "README.md").read_text()
    assert "share the backbone" in card and ("its own adapter" in card) == (strategy != "full")
    assert get_task("classification").name == "classification"


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> str:
    """The tiny BERT without dropout: 1 and 2 processes draw no random numbers while training."""
    return tiny_text_model(tmp_path_factory.mktemp("still") / "bert", dropout=0.0)


@pytest.mark.parametrize("setting", [
    ["strategy.name=full", "multitask.sampling=temperature"],
    ["strategy.name=lora", "multitask.adapter_per_task=true", "multitask.sampling=round_robin"],  # unused adapters
], ids=["full-temperature", "lora-per-task-round_robin"])
def test_two_processes_match_one(still_model, two_sets, tmp_path, setting):
    overrides = [*_overrides(still_model, two_sets, tmp_path / "x"), "model.head_dropout=0", *setting]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(ROOT / "recipes" / "multitask.py"),
           *overrides, f"output_dir={tmp_path / 'two'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "2 processes" in out.stdout
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["train"]["steps"] == one["train"]["steps"]
    for name in ("sent", "topic"):
        assert two["test"][name] == pytest.approx(one["test"][name], rel=1e-5, abs=1e-6)
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-6)


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, two_sets, tmp_path):
    overrides = [*_overrides(tiny_model, two_sets, tmp_path / "x"), "strategy.name=lora", "train.checkpoint_every=3"]
    reference = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'reference'}"]))
    killed = [*overrides, f"output_dir={tmp_path / 'killed'}"]
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "multitask.py"), *killed],
                         env={**os.environ, KILL_ENV: "step-10"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = main(load_config(None, [*killed, "train.resume=true"]))
    assert resumed["train"]["steps"] == reference["train"]["steps"] > 10
    for name in ("sent", "topic"):
        assert resumed["test"][name] == pytest.approx(reference["test"][name], rel=1e-6, abs=1e-7)
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in reference["history"]], rel=1e-6)


def test_each_task_alone_is_pushable(tiny_model, two_sets, tmp_path, monkeypatch):
    """hftl push takes a task's folder as a single-task run: the Hub itself is tests/test_tasks_roundtrip.py's."""
    import hftl.hub

    main(load_config(None, _overrides(tiny_model, two_sets, tmp_path / "run", "strategy.name=lora",
                                      "train.epochs=1")))
    sent: dict = {}
    monkeypatch.setattr(hftl.hub, "_resolve_token", lambda token: "hf_token")
    monkeypatch.setattr(hftl.hub, "check_push_access", lambda repo_id, token=None: repo_id)
    monkeypatch.setattr(hftl.hub, "_upload", lambda files, repo_id, *args: sent.update(files) or "url/oid")
    assert hftl.push(tmp_path / "run" / "tasks" / "topic", "alice/topic") == "url/oid"
    assert {"config.json", "model.safetensors", "modeling_hftl.py", "README.md", "metrics.json"} <= set(sent)
    card = (tmp_path / "run" / "tasks" / "topic" / "README.md").read_text()
    assert "neutral" in card  # the task's own labels
