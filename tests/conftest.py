"""Tests never reach the network; tiny models are built from configs once per session."""

from __future__ import annotations

import os
import tempfile

# An empty Hub cache per session: embedded models must be laid into it by hftl itself, as on a new machine.
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="hftl-hub-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from hftl.testing import tiny_text_csv, tiny_text_model  # noqa: E402


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "hftl-cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return tiny_text_model(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> str:
    return tiny_text_csv(tmp_path_factory.mktemp("data") / "reviews.csv", n=120)


@pytest.fixture
def tiny_cfg(tiny_model, tiny_csv, tmp_path):
    """Overrides for a fast run of a recipe on the tiny model and data."""
    return [
        f"model.name={tiny_model}",
        f"data.name={tiny_csv}",
        "data.validation_size=0.2",
        "data.test_size=0.2",
        "train.epochs=5",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.lr=3e-3",
        f"output_dir={tmp_path / 'run'}",
    ]
