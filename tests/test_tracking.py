"""Watching a run: TensorBoard through accelerate, quiet logs, weight drift per block, the baseline's early stop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main

import hftl
from hftl.config import ConfigError, StrategyConfig, load_config
from hftl.data import load_splits
from hftl.drift import DriftTracker, parameter_table
from hftl.reporting import read_predictions
from hftl.tracking import tracker_kwargs, tracker_names

EPOCH_TAGS = ["validation/accuracy", "validation/f1", "validation/loss", "train/epoch_loss", "train/epoch_seconds",
              "drift/embeddings", "drift/block_01", "drift/block_02"]


def _events(run: Path, stage: str = "finetune") -> dict[str, list]:
    """Every scalar the run's TensorBoard files hold: ``{tag: [(step, value), ...]}``, read by TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run / "tensorboard" / stage).glob("events.out.tfevents.*"))
    assert len(files) == 1, files  # one writer
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_has_each_metric_for_each_epoch(tiny_cfg, tmp_path):
    metrics = main(load_config(None, [*tiny_cfg, "train.epochs=3"]))
    events = _events(tmp_path / "run")
    steps = metrics["train"]["steps"]
    epoch_steps = [steps // 3 * e for e in (1, 2, 3)]
    for tag in EPOCH_TAGS:
        assert [s for s, _ in events[tag]] == epoch_steps, tag
    for h, (_, value) in zip(metrics["history"], events["validation/accuracy"], strict=True):
        assert value == pytest.approx(h["validation"]["accuracy"])
    for h, (_, value) in zip(metrics["history"], events["drift/block_02"], strict=True):
        assert value == pytest.approx(h["drift"]["block_02"]) and value > 0
    # every optimizer step: its loss and learning rate (sent in batches, no host sync per step)
    assert [s for s, _ in events["train/loss"]] == list(range(1, steps + 1))
    assert [s for s, _ in events["train/lr"]] == list(range(1, steps + 1))
    assert max(v for _, v in events["train/lr"]) == pytest.approx(3e-3, rel=0.2)
    epoch_mean = sum(v for s, v in events["train/loss"] if s <= epoch_steps[0]) / epoch_steps[0]
    assert epoch_mean == pytest.approx(metrics["history"][0]["train_loss"], rel=1e-4)


def test_no_tracker_with_report_to_none(tiny_cfg, tmp_path):
    main(load_config(None, [*tiny_cfg, "train.epochs=1", "train.report_to=none"]))
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert (tmp_path / "run" / "report.html").exists()


def test_report_to_names_are_checked_before_compute(tmp_path):
    assert tracker_names("tensorboard, wandb") == ["tensorboard", "wandb"] and tracker_names("none") == []
    with pytest.raises(ConfigError, match=r"train.report_to has 'tensorbored'.*tensorboard"):
        tracker_kwargs(load_config(None, ["train.report_to=tensorbored", f"output_dir={tmp_path}"]))
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"'wandb' but it is not installed: pip install wandb.*report_to="
                                              r"tensorboard"):
            tracker_kwargs(load_config(None, ["train.report_to=tensorboard,wandb", f"output_dir={tmp_path}"]))
    kwargs = tracker_kwargs(load_config(None, [f"output_dir={tmp_path}"]))
    assert kwargs["log_with"] == ["tensorboard"] and kwargs["project_config"].logging_dir == str(
        tmp_path / "tensorboard")


def test_two_processes_log_once_and_a_log_file_gets_one_line_per_epoch(tiny_cfg, tmp_path):
    from test_distributed import ROOT, launch

    out = launch([str(ROOT / "recipes" / "finetune.py"), *tiny_cfg, "train.epochs=2"])
    run = tmp_path / "run"
    events = _events(run)  # exactly one event file: the main process's
    assert len(events["validation/accuracy"]) == 2 and len(events["train/loss"]) == 2 * 9
    text = out.stdout + out.stderr
    assert "\r" not in text and "it/s]" not in text  # no progress bar redraws in a log
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 1", "epoch 2"]  # printed by the main process only
    assert len(text.splitlines()) < 40, text
    assert json.loads((run / "metrics.json").read_text())["baselines"]["tfidf_logreg"]["test"]["accuracy"] > 0.5
    # predictions gathered from both processes, back in dataset order (length-grouped batches reorder them)
    test = load_splits(load_config(None, tiny_cfg).data)["test"]
    assert [r["input"] for r in read_predictions(run)] == test["text"]


def test_stop_below_baseline(tiny_cfg, tmp_path):
    # a learning rate too small to learn: validation stays at chance, below TF-IDF + logistic regression
    metrics = main(load_config(None, [*tiny_cfg, "train.lr=1e-9", "train.stop_below_baseline=2"]))
    assert len(metrics["history"]) == 2 and metrics["train"]["epochs"] == 2
    with pytest.raises(ConfigError, match="eval.baselines=true"):
        load_config(None, ["train.stop_below_baseline=1", "eval.baselines=false"])


def _classifier(tiny_model):
    torch.manual_seed(0)
    return hftl.load_classifier(tiny_model, 2)


def _nudge(model, name_part: str, by: float = 0.1) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name_part in name and p.requires_grad:
                p.add_(by * torch.randn_like(p))


def test_drift_names_the_blocks_that_moved(tiny_model):
    model = _classifier(tiny_model)
    hftl.apply_strategy(model, StrategyConfig(name="freeze_n", freeze_layers=1))
    tracker = DriftTracker(model)
    assert tracker.measure() == {"embeddings": 0.0, "block_01": 0.0, "block_02": 0.0}
    _nudge(model, "layer.1.")  # the second block only (the first is frozen)
    drift = tracker.measure()
    assert drift["embeddings"] == drift["block_01"] == 0 and drift["block_02"] > 0.01
    table = parameter_table(model)
    assert table["block_01"]["trainable"] == 0 and table["block_02"]["frozen"] == 0
    assert sum(c["trainable"] + c["frozen"] for c in table.values()) == sum(p.numel() for p in model.parameters())


def test_lora_drift_is_the_merged_weights_drift(tiny_model):
    model = _classifier(tiny_model)
    pretrained = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    adapted = hftl.apply_strategy(model, StrategyConfig(name="lora", peft={"r": 4}))
    tracker = DriftTracker(adapted.model)
    assert tracker.active and max(tracker.measure().values()) == 0  # LoRA's B starts at zero
    _nudge(adapted.model, "lora_B", 0.5)
    drift = tracker.measure()
    merged = adapted.model.merge_and_unload().backbone.state_dict()
    for block, prefix in (("block_01", "encoder.layer.0."), ("block_02", "encoder.layer.1.")):
        keys = [k for k in pretrained if k.startswith(prefix)]
        moved = sum(float((merged[k] - pretrained[k]).norm()) ** 2 for k in keys) ** 0.5
        assert drift[block] == pytest.approx(moved / sum(float(pretrained[k].norm()) ** 2 for k in keys) ** 0.5,
                                             rel=1e-4)
    assert drift["embeddings"] == 0


def test_linear_probe_has_no_drift_to_track(tiny_model):
    model = _classifier(tiny_model)
    hftl.apply_strategy(model, StrategyConfig(name="linear_probe"))
    assert not DriftTracker(model).active
