"""Gradient accumulation is the larger batch with less memory: ``train.batch_size=8`` as 4 x ``grad_accum=2`` (or
2 x 4) trains on the same examples in each optimizer step, in the same order of steps, to the same weights as 8 x 1;
on one process and on two (beside tests/test_distributed.py's 1-vs-2-process test).

Each step's gradient is the whole batch's: micro-batch losses are weighted by their share of the step's loss terms
(examples, or labelled tokens for masked-LM), so an uneven last step and micro-batches with different numbers of
labelled tokens count as they do in one batch. What differs is only the summation order of float32 gradients and
the padding (each micro-batch is padded to its own longest): rounding-level differences that AdamW carries through
the run (1e-7 relative seen). A wrong grouping (micro-batches shuffled apart) or weighting moves weights by 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from hftl.recipes.finetune import main
from hypothesis import given, settings
from hypothesis import strategies as st
from same_run import assert_same_run, saved_weights
from test_distributed import launch
from torch.optim.optimizer import register_optimizer_step_post_hook

from hftl.accumulation import loss_terms
from hftl.config import TrainConfig, load_config
from hftl.data import LengthGroupedBatches
from hftl.modeling import HftlForClassification
from hftl.testing import tiny_text_model
from hftl.train import fit, make_accelerator, make_loader

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> str:
    """The tiny BERT without dropout: runs with and without accumulation draw no random numbers while training."""
    return tiny_text_model(tmp_path_factory.mktemp("still") / "bert", dropout=0.0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), bs=st.integers(1, 9), accum=st.integers(1, 5), shuffle=st.booleans(),
       group=st.booleans(), seed=st.integers(0, 3), epoch=st.integers(0, 2))
def test_accumulated_batches_are_the_larger_batches_cut_in_order(n, bs, accum, shuffle, group, seed, epoch):
    """Batches of bs x accum (accum=1) == consecutive groups of accum batches of bs, whatever the lengths."""
    lengths = [(i * 37) % 29 for i in range(n)]
    large = LengthGroupedBatches(lengths, bs * accum, shuffle, seed, group)
    small = LengthGroupedBatches(lengths, bs, shuffle, seed, group, accum=accum)
    large.set_epoch(epoch)
    small.set_epoch(epoch)
    cut = list(small)
    assert len(cut) == len(small)
    steps = [sum(cut[i : i + accum], []) for i in range(0, len(cut), accum)]
    assert steps == list(large) == small.steps()
    assert sorted(i for b in cut for i in b) == list(range(n))
    assert all(len(s) == bs * accum for s in steps[:-1])  # only the last step (the remainder) is shorter


def _record(monkeypatch) -> list:
    """Per optimizer step, the sorted token sequences the model trained on (one per example)."""
    steps, current = [], []
    real = HftlForClassification.forward

    def forward(self, labels=None, features=None, **inputs):
        if self.training and labels is not None:
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask", torch.ones_like(ids))
            current.extend(tuple(t for t, m in zip(row, keep, strict=True) if m)
                           for row, keep in zip(ids.tolist(), mask.tolist(), strict=True))
        return real(self, labels=labels, features=features, **inputs)

    def step(*_):
        steps.append(sorted(current))
        current.clear()

    monkeypatch.setattr(HftlForClassification, "forward", forward)
    handle = register_optimizer_step_post_hook(step)
    return steps, handle


def _run(overrides: list[str], out: Path, monkeypatch) -> tuple[dict, list]:
    steps, handle = _record(monkeypatch)
    try:
        metrics = main(load_config(None, [*overrides, f"output_dir={out}"]))
    finally:
        handle.remove()
        monkeypatch.undo()
    return metrics, steps


@pytest.mark.parametrize(("accum", "extra"), [
    (2, []),  # 72 examples: 9 steps of 8 per epoch, micro-batches of 4, length-grouped
    (4, ["data.max_train_samples=69"]),  # 8 steps of 8 and one of 5, cut 2 + 2 + 1: uneven weights
    (2, ["data.max_train_samples=69", "train.group_by_length=false"]),  # 5 = 4 + 1, without length grouping
], ids=["accum2-grouped", "accum4-uneven", "accum2-uneven-ungrouped"])
def test_accumulation_trains_as_the_full_batch(still_model, tiny_csv, tmp_path, monkeypatch, accum, extra):
    overrides = [f"model.name={still_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
                 "data.test_size=0.2", "model.head_dropout=0", "strategy.name=full", "train.epochs=3",
                 "train.batch_size=8", "train.eval_batch_size=16", "train.lr=3e-3", *extra]
    full, full_steps = _run([*overrides, "train.grad_accum=1"], tmp_path / "full", monkeypatch)
    accumulated, steps = _run([*overrides, f"train.grad_accum={accum}"], tmp_path / "accum", monkeypatch)
    assert len(steps) == full["train"]["steps"] == accumulated["train"]["steps"] == 27
    assert steps == full_steps  # the same examples in each optimizer step, steps in the same order
    assert [len(s) for s in steps[:9]] == [8] * 8 + [8 if not extra else 5]
    assert_same_run(full, accumulated, tmp_path / "full", tmp_path / "accum", rtol=RTOL, atol=ATOL, weight_atol=1e-5)


def _mlm_rows(n: int) -> list[dict]:
    """Sequences of 3 to 12 tokens with 1 to 6 labelled (masked) positions: micro-batches hold unequal token counts."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 3 + i % 10
        ids = torch.randint(5, 27, (length,), generator=g)
        labels = torch.full((length,), -100)
        where = torch.randperm(length, generator=g)[: 1 + i % 6]
        labels[where] = ids[where]
        ids[where] = 4  # [MASK]
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "length": length})
    return rows


def _pad(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

    ids = pad("input_ids", 0)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": pad("labels", -100)}


def _train_mlm(model_dir: str, accum: int, count_terms=loss_terms) -> dict:
    from transformers import AutoModelForMaskedLM

    from hftl.pretraining import masked_scores

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    data = Dataset.from_list(_mlm_rows(45))  # 5 steps of 8 and one of 5 per epoch
    cfg = TrainConfig(epochs=2, batch_size=8, grad_accum=accum, lr=3e-3, mixed_precision="no",
                      metric_for_best="loss")
    accelerator = make_accelerator(cfg)
    loader = make_loader(data, 8 // accum, _pad, shuffle=True, seed=0)
    val = make_loader(data, 16, _pad, shuffle=False)
    trained, state = fit(model, loader, val, accelerator, cfg, [], evaluate_fn=masked_scores,
                         count_terms=count_terms)
    assert state.step == 12
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(trained).state_dict().items()}


def test_token_level_loss_counts_labelled_tokens_across_micro_batches(still_model):
    """Masked-LM: the step's loss is the mean over all its labelled tokens, not the mean of micro-batch means."""
    full = _train_mlm(still_model, 1)
    for accum in (2, 4):
        accumulated = _train_mlm(still_model, accum)
        for name, w in full.items():
            torch.testing.assert_close(accumulated[name], w, rtol=RTOL, atol=1e-5, msg=name)
    # weighting micro-batches by examples instead of tokens is measurably another run
    by_examples = _train_mlm(still_model, 2, count_terms=lambda b: torch.tensor(len(b["labels"])))
    assert max(float((by_examples[k] - w).abs().max()) for k, w in full.items()) > 1e-4


def test_two_processes_with_accumulation_match_one_without(still_model, tiny_csv, tmp_path):
    """batch 8 = 2 per process x 2 processes x 2 accumulation steps trains as 8 x 1 x 1."""
    overrides = [f"model.name={still_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
                 "data.test_size=0.2", "model.head_dropout=0", "strategy.name=full", "train.epochs=3",
                 "train.batch_size=8", "train.eval_batch_size=10", "train.lr=3e-3"]
    out = launch([str(ROOT / "recipes" / "finetune.py"), *overrides, "train.grad_accum=2",
                  f"output_dir={tmp_path / 'two'}"])
    assert "effective batch 8 = 2 per process x 2 processes x 2 accumulation steps" in out.stdout
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert_same_run(one, two, tmp_path / "one", tmp_path / "two", rtol=RTOL, atol=ATOL, weight_atol=1e-5)
    assert saved_weights(tmp_path / "two").keys() == saved_weights(tmp_path / "one").keys()
