"""Building blocks of scripts/wav2vec2_words_transfer.py: the tiny wav2vec 2.0 and the voice-disjoint word sets."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "scripts" / "wav2vec2_words_transfer.py"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")


@pytest.fixture(scope="module")
def transfer():
    spec = importlib.util.spec_from_file_location("wav2vec2_words_transfer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_wav2vec2_is_a_hub_directory_hftl_loads(transfer, tmp_path):
    import hftl
    from hftl.data import modality_of

    path = transfer.tiny_wav2vec2(tmp_path / "w2v2", seed=0)
    assert (tmp_path / "w2v2" / "config.json").is_file() and (tmp_path / "w2v2" / "preprocessor_config.json").is_file()
    extractor = hftl.load_processor(path)
    assert modality_of(extractor) == "speech" and extractor.sampling_rate == 16000
    model = hftl.load_classifier(path, 10).eval()
    assert sum(p.numel() for p in model.backbone.parameters()) < 1_000_000  # tiny: trains on one CPU thread
    waves = [np.sin(np.arange(n) / 5).astype(np.float32) for n in (16000, 9000)]
    batch = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    again = transfer.tiny_wav2vec2(tmp_path / "again", seed=0)  # the same seed gives the same initial weights
    a, b = (hftl.load_classifier(p, 10).backbone.state_dict() for p in (path, again))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _speakers(path: Path) -> set[str]:
    with open(path) as f:
        return {row["speaker"] for row in csv.DictReader(f)}


@needs_espeak
def test_target_words_and_voices_are_unseen_in_the_source(transfer, tmp_path):
    source, target = transfer.voice_disjoint_speakers(40, 20)
    variant = lambda people: {p["voice"].split("+")[1] for p in people}  # noqa: E731
    assert len(source) == 40 and len(target) == 20 and not variant(source) & variant(target)
    assert not set(transfer.SOURCE_WORDS) & set(transfer.TARGET_WORDS)

    counts = transfer.make_data(tmp_path, n_source=8, n_target=8, repeats=2)
    assert counts["source"]["train"] == 6 * 10 * 2 and counts["target"]["validation"] == 10  # 1 clip per word
    data = {(d, s): _speakers(tmp_path / d / f"{s}.csv") for d in ("source", "target") for s in counts["source"]}
    heard = set().union(*(v for (d, _), v in data.items() if d == "source"))
    assert not heard & set().union(*(v for (d, _), v in data.items() if d == "target"))  # unseen voices
    for d in ("source", "target"):  # and each stage's test speakers are not its train speakers
        assert not data[(d, "train")] & data[(d, "test")] and not data[(d, "train")] & data[(d, "validation")]
