"""Packaged models are laid into the Hub cache, never over the user's own snapshot (issue 20)."""

from __future__ import annotations

import pytest

from hftl import assets

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.integration
def test_packaged_model_never_repoints_a_users_snapshot(tmp_path):
    repo = tmp_path / ("models--" + MINILM.replace("/", "--"))
    own = repo / "snapshots" / "usersrev"
    own.mkdir(parents=True)
    (own / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("usersrev")
    assert assets.lay_into_hub_cache(MINILM, tmp_path) == own
    assert (repo / "refs" / "main").read_text() == "usersrev"
    assert [p.name for p in (repo / "snapshots").iterdir()] == ["usersrev"]


@pytest.mark.integration
def test_packaged_model_laid_once_into_an_empty_cache(tmp_path):
    snapshot = assets.lay_into_hub_cache(MINILM, tmp_path)
    assert (snapshot / "config.json").is_file()
    assert assets.lay_into_hub_cache(MINILM, tmp_path) == snapshot


def test_unreachable_hub_switches_the_process_to_the_cache(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE set by hand, a load must not spend ~20 s per file retrying an unreachable Hub."""
    from huggingface_hub import constants

    import hftl.models as models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(models.ModelNotFoundError):
        models.resolve("nobody/not-cached-anywhere")
    assert constants.HF_HUB_OFFLINE is True
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
