"""Broken training is never saved as a success (issue 20, kind 2): a non-finite loss, weight or validation score
stops the run with TrainingDiverged naming the step and the fix, the last good checkpoint is kept, nothing of the
run is saved, and every metrics file is valid JSON."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main
from safetensors.torch import load_file

import hftl.train
from hftl import cli
from hftl.config import load_config
from hftl.train import TrainingDiverged, last_checkpoint

ROOT = Path(__file__).parent.parent


def _assert_nothing_saved(run: Path) -> None:
    for name in ("model", "metrics.json", "README.md", "merged"):
        assert not (run / name).exists(), name


def test_huge_learning_rate_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = load_config(None, [*tiny_cfg, "train.lr=1e9", "train.checkpoint_every=1", "train.keep_checkpoints=5"])
    with pytest.raises(TrainingDiverged) as err:
        main(cfg)
    message = str(err.value)
    run = tmp_path / "run"
    last = last_checkpoint(run / "checkpoints")
    assert last is not None and str(last) in message
    assert "the training loss became nan" in message or "the training loss became inf" in message
    assert "by optimizer step" in message and "(epoch 1)" in message and "lower train.lr (now 1e+09)" in message
    step = int(message.split("by optimizer step ")[1].split()[0])
    assert int(last.name.split("-")[1]) < step  # nothing written once the loss went non-finite
    for checkpoint in (run / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
    _assert_nothing_saved(run)


def test_divergence_exits_3_through_the_cli(tiny_cfg, tmp_path, capsys):
    assert cli.main(["finetune", *tiny_cfg, "train.lr=1e9"]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hftl finetune: training diverged: the training loss became")
    assert "no checkpoint had been written yet" in last  # it went non-finite in the first epoch
    _assert_nothing_saved(tmp_path / "run")


def test_non_finite_validation_score_counts(tiny_cfg, tmp_path, monkeypatch):
    real = hftl.train.evaluate

    def evaluate(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": math.nan}

    monkeypatch.setattr(hftl.train, "evaluate", evaluate)
    with pytest.raises(TrainingDiverged, match=r"the validation scores became \{'loss': nan\} by optimizer step"):
        main(load_config(None, tiny_cfg))
    assert last_checkpoint(tmp_path / "run" / "checkpoints") is None  # the epoch's checkpoint follows validation
    _assert_nothing_saved(tmp_path / "run")


def test_non_finite_weights_are_never_checkpointed():
    from accelerate import Accelerator

    from hftl.config import TrainConfig
    from hftl.train import LoopState, _check_weights

    model = torch.nn.Linear(2, 2)
    _check_weights(model, LoopState(), TrainConfig(), Accelerator(cpu=True), None)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    with pytest.raises(TrainingDiverged, match="the weights became non-finite"):
        _check_weights(model, LoopState(step=7), TrainConfig(), Accelerator(cpu=True), None)


def test_few_shot_training_that_blows_up_is_refused():
    from hftl.shots.tuned import _check_finite

    _check_finite("lora", 1e-3, 0, torch.zeros(2, 3))
    with pytest.raises(TrainingDiverged, match=r"shots.methods lora: .* lower shots.lora_lr \(now 1e\+06\)"):
        _check_finite("lora", 1e6, 0, torch.zeros(2, 3), torch.tensor([math.nan]))


def _metric_writes(path: Path):
    """Every json.dumps call in a file whose line names metrics."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "dumps" and \
                "metrics" in lines[node.lineno - 1]:
            yield node


def test_every_metrics_file_is_written_as_strict_json():
    """The kind: json.dumps writes NaN as a bare NaN (not JSON); every metrics write refuses it instead."""
    calls = [(path, node) for folder in ("hftl", "recipes") for path in sorted((ROOT / folder).rglob("*.py"))
             for node in _metric_writes(path)]
    assert len(calls) >= 5
    for path, node in calls:
        strict = [k for k in node.keywords if k.arg == "allow_nan" and getattr(k.value, "value", True) is False]
        assert strict, f"{path}:{node.lineno} writes metrics without allow_nan=False"
