"""Shared check of tests/test_resume.py and tests/test_fsdp.py: two runs of one recipe ended the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def saved_weights(run: Path) -> dict[str, torch.Tensor]:
    """The run's ``model/`` tensors: the full model, or the adapter + head."""
    model_dir = run / "model"
    name = "adapter_model.safetensors" if (model_dir / "adapter_config.json").exists() else "model.safetensors"
    return load_file(model_dir / name)


def assert_same_run(expected: dict, got: dict, expected_dir: Path, got_dir: Path, *, rtol: float, atol: float,
                    weight_atol: float | None = None) -> None:
    """Same epochs, steps and best epoch; test scores and per-epoch losses and scores within ``rtol``/``atol``;
    the same saved tensors within ``rtol``/``weight_atol`` (``atol`` unless given)."""
    assert got["test"] == pytest.approx(expected["test"], rel=rtol, abs=atol)
    for key in ("epochs", "steps", "best_epoch"):
        assert got["train"][key] == expected["train"][key], key
    for a, b in zip(expected["history"], got["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=rtol, abs=atol)
        assert b["validation"] == pytest.approx(a["validation"], rel=rtol, abs=atol)
    want, have = saved_weights(expected_dir), saved_weights(got_dir)
    assert want.keys() == have.keys()
    for name, w in want.items():
        torch.testing.assert_close(have[name], w, rtol=rtol, atol=atol if weight_atol is None else weight_atol,
                                   msg=name)
