"""The run report, the test predictions, the baselines every run is compared with, and the report in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from hftl.recipes.finetune import main

from hftl.baselines import guard_lines, score_baselines
from hftl.cli import main as cli
from hftl.config import load_config
from hftl.data import load_splits
from hftl.reporting import read_predictions

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def lora_run(tiny_model, tiny_csv, tmp_path_factory):
    """A finished LoRA run of the tiny model (its own directory, shared by the tests here)."""
    run = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(None, [f"model.name={tiny_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
                             "data.test_size=0.2", "strategy.name=lora", "train.epochs=3", "train.batch_size=8",
                             "train.lr=3e-3", f"output_dir={run}"])
    return run, cfg, main(cfg)


def _images(run: Path) -> list[str]:
    return re.findall(r'<img class="[a-z]+" src="([^"]+)"', (run / "report.html").read_text())


def test_report_and_predictions_of_a_run(lora_run):
    run, cfg, metrics = lora_run
    html = (run / "report.html").read_text()
    for title in ("Summary", "Learning curves", "Test: confusion and per-class scores",
                  "Transfer: which weights trained and how far they moved", "Config"):
        assert f"<h2>{title}</h2>" in html, title
    assert {"report/curves.png", "report/confusion.png", "report/drift.png"} <= set(_images(run))
    assert all((run / src).is_file() for src in _images(run))  # opens offline: every figure is beside it
    assert "http" not in html.replace("http-equiv", "")  # no network
    # predictions.jsonl: the test split in dataset order, each row with its text, label, prediction and scores
    test = load_splits(cfg.data)["test"]
    rows = read_predictions(run)
    names = test.features["label"].names
    assert [r["id"] for r in rows] == list(range(len(test)))
    assert [r["input"] for r in rows] == test["text"]
    assert [r["label"] for r in rows] == [names[i] for i in test["label"]]
    assert all(set(r["scores"]) == set(names) and abs(sum(r["scores"].values()) - 1) < 1e-3 for r in rows)
    accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    # metrics.json: baselines on the same splits, the parameters per block, drift per epoch
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["baselines"]) == {"majority", "tfidf_logreg"}
    assert saved["baselines"]["majority"]["test"]["accuracy"] == pytest.approx(0.5)
    assert set(saved["history"][-1]["drift"]) == {"embeddings", "block_01", "block_02"}
    assert saved["history"][-1]["drift"]["embeddings"] == 0 < saved["history"][-1]["drift"]["block_01"]
    params = saved["parameters"]
    assert params["embeddings"]["trainable"] == 0 and params["block_01"]["trainable"] > 0  # the adapters
    assert params["head"]["frozen"] > 0 and params["head"]["trainable"] > 0  # peft's trained copy of the head


def test_hftl_report_rebuilds_it(lora_run):
    run = lora_run[0]
    before = (run / "report.html").read_text()
    (run / "report.html").unlink()
    shutil.rmtree(run / "report")
    assert cli(["report", str(run)]) == 0
    assert (run / "report.html").read_text() == before
    assert all((run / src).is_file() for src in _images(run))
    assert cli(["report", str(run / "nothing-here")]) == 2


def test_worst_examples_and_thumbnails(tmp_path):
    """An image run's report shows thumbnails of the misclassified test images, loaded again from the config."""
    from hftl.reporting import write_report
    from hftl.reporting.predictions import Predictions, write_predictions

    splits = _image_splits(n=40)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {name: none}\n")
    probs = np.full((len(splits["test"]), 2), 0.1)
    probs[np.arange(len(probs)), 0] = 0.9  # always "dark": every bright image is wrong
    import torch
    from transformers import PretrainedConfig

    from hftl.tasks import get_task

    labels = torch.tensor(splits["test"]["label"])
    rows = get_task("classification").prediction_rows(torch.tensor(probs).log(), labels,
                                                      PretrainedConfig(id2label={0: "dark", 1: "bright"}))
    write_predictions(run, Predictions(rows, labels), splits["test"])
    (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    write_report(run, splits=splits)
    thumbs = [src for src in _images(run) if "examples/" in src]
    wrong = sum(1 for y in splits["test"]["label"] if y == 1)
    assert len(thumbs) == min(wrong, 12) and all((run / t).is_file() for t in thumbs)


def _image_splits(n: int) -> DatasetDict:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = (rng.integers(0, 60, (n, 8, 8)) + 150 * labels[:, None, None]).astype(np.uint8)
    ds = Dataset.from_dict({"image": images.tolist(), "label": labels.tolist()})
    ds = ds.cast_column("label", ClassLabel(names=["dark", "bright"]))
    third = n // 3
    return DatasetDict(train=ds.select(range(third)), validation=ds.select(range(third, 2 * third)),
                       test=ds.select(range(2 * third, n)))


def _audio_splits(tmp_path: Path, n: int = 24) -> DatasetDict:
    import soundfile as sf

    paths, labels = [], []
    t = np.arange(8000) / 16000
    for i in range(n):
        label = i % 2
        wave = 0.3 * np.sin(2 * np.pi * (300 if label else 2000) * t) + 0.01 * np.random.default_rng(i).normal(
            size=t.size)
        paths.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(paths[-1], wave.astype(np.float32), 16000)
        labels.append(label)
    ds = Dataset.from_dict({"audio": paths, "label": labels}).cast_column("label", ClassLabel(names=["high", "low"]))
    return DatasetDict(train=ds.select(range(12)), validation=ds.select(range(12, 18)), test=ds.select(range(18, n)))


def test_baselines_of_each_modality(tiny_csv, tmp_path):
    text = load_splits(load_config(None, [f"data.name={tiny_csv}", "data.validation_size=0.2",
                                          "data.test_size=0.2"]).data)
    for splits, name in ((text, "tfidf_logreg"), (_image_splits(60), "pixels_logreg"),
                         (_audio_splits(tmp_path), "spectrum_logreg")):
        scores = score_baselines(splits, ["accuracy", "f1"])
        assert set(scores) == {"majority", name}
        assert scores[name]["test"]["accuracy"] == 1.0, name  # each task is separable by simple features
        share = np.bincount(splits["test"]["label"]).max() / len(splits["test"])
        assert scores["majority"]["test"]["accuracy"] == pytest.approx(share)
        assert set(scores[name]["validation"]) == {"accuracy", "f1", "loss"} and scores[name]["seconds"] >= 0


def test_guard_warns_when_transfer_loses():
    baselines = {"majority": {"test": {"accuracy": 0.5}}, "tfidf_logreg": {"test": {"accuracy": 0.77}}}
    lines, warnings = guard_lines({"accuracy": 0.65}, baselines, "accuracy")
    assert lines == ["test accuracy: this run 0.6500 | majority 0.5000 | tfidf_logreg 0.7700"]
    assert len(warnings) == 1 and "does not beat the tfidf_logreg baseline on test accuracy (0.6500 vs 0.7700)" in \
        warnings[0]
    assert guard_lines({"accuracy": 0.8}, baselines, "accuracy")[1] == []
    assert guard_lines({"loss": 0.3}, {"majority": {"test": {"loss": 0.69}}}, "loss")[1] == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(lora_run, tmp_path):
    """The report opened by a real browser: its figures load (the plots' blue shows) and the page is not blank."""
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run([str(ROOT / "scripts" / "report_screenshot.sh"), str(lora_run[0] / "report.html"), str(shot)],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = (pixels[..., 2] > pixels[..., 0] + 60) & (pixels[..., 2] > 120)  # the confusion matrix, the curves
    assert pixels.shape[:2] == (2000, 1200) and blue.mean() > 0.01
