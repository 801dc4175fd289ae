"""``hftl predict`` / ``hftl evaluate`` read every task's model as its run read it: for each task a tiny run, then
``hftl.predict`` on its test inputs gives what the run wrote in predictions.jsonl (the recipe's own reading) and
``hftl.evaluate_file`` on its test split gives the run's test metrics; the command line once; wrong inputs and
labels are one-line DataErrors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hftl.recipes.finetune import main
from test_tasks import _rows
from test_tasks_tokens import _sentences

import hftl
from hftl.config import load_config
from hftl.data.sources import DataError

QUICK = ["eval.report=false", "train.report_to=none", "data.validation_size=0.2", "data.test_size=0.2"]


def _preds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["test"]


def _same_scores(got: dict, run: Path) -> None:
    expected = _test_metrics(run)
    assert {k: v for k, v in got.items() if k != "examples"} == pytest.approx(expected, abs=1e-4)
    assert got["examples"] == len(_preds(run))


def _write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _text_run(tiny_model, folder: Path, data: str, *extra: str) -> Path:
    main(load_config(None, [f"model.name={tiny_model}", f"data.name={data}", "train.epochs=8", "train.batch_size=8",
                            "train.eval_batch_size=32", "train.lr=3e-3", "strategy.name=full",
                            f"output_dir={folder / 'run'}", *QUICK, *extra]))
    return folder / "run"


@pytest.fixture(scope="module")
def multi_label(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multi")
    data = folder / "tags.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(60)))
    return _text_run(tiny_model, folder, str(data), "task.name=multi_label", "data.label_column=tags", "train.lr=1e-2")


@pytest.fixture(scope="module")
def regression(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two runs: one target (score) and two (score, size)."""
    folder = tmp_path_factory.mktemp("regression")
    data = _write_csv(folder / "scores.csv", [{k: r[k] for k in ("text", "score", "size")} for r in _rows(60)])
    return {"one": _text_run(tiny_model, folder / "one", data, "task.name=regression", "data.label_column=score"),
            "two": _text_run(tiny_model, folder / "two", data, "task.name=regression",
                             "data.label_columns=[score,size]")}


# -- multi_label ------------------------------------------------------------------------------------------------------
def test_multi_label_predicts_and_evaluates_as_its_run(multi_label, tmp_path):
    rows = _preds(multi_label)
    assert len({tuple(r["predicted"]) for r in rows}) > 1  # the threshold sorts labels apart
    got = hftl.predict(multi_label, [r["input"] for r in rows])
    assert [g["labels"] for g in got] == [r["predicted"] for r in rows]
    for g, r in zip(got, rows, strict=True):
        assert set(g) == {"input", "labels", "scores"} and g["scores"] == pytest.approx(r["probabilities"], abs=1e-4)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": r["input"], "tags": r["label"]}) + "\n" for r in rows))
    _same_scores(hftl.evaluate_file(multi_label, test), multi_label)
    # a CSV cell holds a JSON list or names separated by ';'
    csv_file = _write_csv(tmp_path / "test.csv", [{"text": r["input"], "tags": ";".join(r["label"])} for r in rows])
    _same_scores(hftl.evaluate_file(multi_label, csv_file), multi_label)


# -- regression -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", ["one", "two"])
def test_regression_predicts_and_evaluates_as_its_run(regression, targets, tmp_path):
    run = regression[targets]
    rows = _preds(run)
    got = hftl.predict(run, [r["input"] for r in rows])
    if targets == "one":  # a number, in the targets' units
        assert [g["value"] for g in got] == pytest.approx([r["predicted"][0] for r in rows], abs=1e-4)
        test = _write_csv(tmp_path / "test.csv", [{"text": r["input"], "score": r["label"][0]} for r in rows])
    else:  # target name -> number; the file gives them as the run's data.label_columns
        assert [v for g in got for v in (g["value"]["score"], g["value"]["size"])] == pytest.approx(
            [v for r in rows for v in r["predicted"]], abs=1e-4)
        test = _write_csv(tmp_path / "test.csv", [{"text": r["input"], "score": r["label"][0],
                                                   "size": r["label"][1]} for r in rows])
    _same_scores(hftl.evaluate_file(run, test), run)


# -- token classification ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tiny_model, tmp_path_factory) -> Path:
    from test_tasks_tokens import _conll

    folder = tmp_path_factory.mktemp("tokens")
    data = _conll(folder / "ner.conll", _sentences(60))
    return _text_run(tiny_model, folder, data, "task.name=token_classification", "data.text_column=tokens",
                     "data.label_column=tags")


def test_token_classification_predicts_and_evaluates_as_its_run(tokens, tmp_path):
    from test_tasks_tokens import _conll

    rows = _preds(tokens)
    got = hftl.predict(tokens, [" ".join(r["input"]) for r in rows])  # texts, split on whitespace as training's
    assert [g["tags"] for g in got] == [r["predicted"] for r in rows]
    assert [g["words"] for g in got] == [r["input"] for r in rows]
    from seqeval.metrics.sequence_labeling import get_entities

    for g in got:
        assert [(e["type"], e["start"], e["end"]) for e in g["entities"]] == get_entities(g["tags"])
        assert all(e["text"] == " ".join(g["words"][e["start"]:e["end"] + 1]) for e in g["entities"])
    test = _conll(tmp_path / "test.conll", [{"tokens": r["input"], "tags": r["label"]} for r in rows])
    _same_scores(hftl.evaluate_file(tokens, test), tokens)
    spaced = tmp_path / "test.jsonl"  # tags as one space-separated string, words as a text
    spaced.write_text("".join(json.dumps({"tokens": " ".join(r["input"]), "tags": " ".join(r["label"])}) + "\n"
                              for r in rows))
    _same_scores(hftl.evaluate_file(tokens, spaced), tokens)


# -- speech recognition -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asr(tmp_path_factory) -> dict[str, Path]:
    from test_asr import overrides

    from hftl.testing import tiny_speech_csv, tiny_wav2vec2_model, tiny_whisper_model

    folder = tmp_path_factory.mktemp("asr")
    runs = {}
    # Whisper trained until some words come out right (as tests/test_asr.py's whisper_learns_the_tones); CTC briefly,
    # on fewer clips: longer, the tiny wav2vec2 learns to say nothing (all blanks)
    for task, model, clips, more in (
            ("ctc", tiny_wav2vec2_model(folder / "w2v"), 20, []),
            ("seq2seq_asr", tiny_whisper_model(folder / "whisper"), 24, ["train.epochs=12", "train.lr=5e-3"])):
        data = tiny_speech_csv(folder / f"clips-{task}", n=clips)
        main(load_config(None, overrides(model, data, task, folder / task, "full", *more)))
        runs[task] = folder / task
    return runs


@pytest.mark.parametrize("task", ["ctc", "seq2seq_asr"])
def test_speech_recognition_predicts_and_evaluates_as_its_run(asr, task, tmp_path):
    run = asr[task]
    rows = _preds(run)
    assert len({r["predicted"] for r in rows}) > 1  # transcripts of different clips differ
    got = hftl.predict(run, [r["file"] for r in rows], batch_size=3)  # other batches than the run's
    assert [g["text"] for g in got] == [r["predicted"] for r in rows] and all(set(g) == {"input", "text"}
                                                                           for g in got)
    test = _write_csv(tmp_path / "test.csv", [{"audio": r["file"], "text": r["label"]} for r in rows])
    scores = hftl.evaluate_file(run, test)
    expected = _test_metrics(run)
    assert scores["wer"] == expected["wer"]  # the same words heard, exactly
    _same_scores(scores, run)


# -- detection --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detection(tmp_path_factory) -> tuple[Path, dict]:
    from hftl.data.placed import placed_objects
    from hftl.testing import tiny_detector

    folder = tmp_path_factory.mktemp("detection")
    detr = tiny_detector(folder / "detr", labels=["a", "b"])
    placed = placed_objects(folder / "data", classes=["0", "1", "2"], counts={"train": 16, "validation": 6,
                                                                              "test": 6}, seed=0)
    main(hftl.load_config(None, [
        "task.name=detection", f"model.name={detr}", f"data.name={placed['train']}",
        f"data.splits={json.dumps(placed)}", "strategy.name=full", "train.epochs=2", "train.batch_size=8",
        "train.eval_batch_size=8", "train.lr=1e-3", "train.report_to=none", f"output_dir={folder / 'run'}"]))
    return folder / "run", placed


def test_detection_predicts_and_evaluates_as_its_run(detection):
    from hftl.data.detection import load_detection

    run, placed = detection
    cfg = hftl.load_config(str(run / "config.yaml"), [])
    images = [str(r["image"]) for r in load_detection(cfg.data).splits["test"]]
    rows = _preds(run)  # the run's rows: boxes scoring 0.05 or more, at most 20, as xywh
    got = hftl.predict(run, images, threshold=0.05)
    for g, r in zip(got, rows, strict=True):
        objects = g["objects"][:20]
        assert [o["label"] for o in objects] == r["predicted"]["labels"]
        assert [o["score"] for o in objects] == pytest.approx(r["predicted"]["scores"], abs=1e-4)
        xywh = [v for x0, y0, x1, y1 in (o["box"] for o in objects) for v in (x0, y0, x1 - x0, y1 - y0)]
        assert xywh == pytest.approx([v for b in r["predicted"]["boxes"] for v in b], abs=0.02)
    assert all(o["score"] >= 0.5 for g in hftl.predict(run, images) for o in g["objects"])  # the default threshold
    scores = hftl.evaluate_file(run, placed["test"], batch_size=8)  # the run's eval batches: its loss is their mean
    _same_scores(scores, run)


# -- the command line -------------------------------------------------------------------------------------------------
def test_predict_table_and_jsonl_on_the_command_line(multi_label, regression, capsys):
    from hftl.cli import main as cli

    texts = ["good great movie", "awful boring film"]
    for run, field in ((multi_label, "labels"), (regression["one"], "value")):
        assert cli(["predict", str(run), *texts, "--format", "table"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].split() == ["input", "prediction"] and len(lines) == 3 and f"{field} " in lines[1]
        assert cli(["predict", str(run), *texts]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [r["input"] for r in rows] == texts and all(field in r for r in rows)
    assert isinstance(rows[0]["value"], float)
    assert cli(["predict", str(multi_label), *texts, "--threshold", "0"]) == 0  # every label at threshold 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert all(sorted(r["labels"]) == sorted(r["scores"]) for r in rows)


# -- wrong inputs and labels ------------------------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_wrong_inputs_and_labels_are_one_line_data_errors(multi_label, regression, asr, tmp_path):
    with pytest.raises(DataError) as err:  # a text where a recording is read
        hftl.predict(asr["ctc"], ["hello there"])
    _one_line(err, "cannot read the audio file hello there")
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(DataError) as err:  # a picture where text is read
        hftl.predict(multi_label, [str(image)])
    _one_line(err, str(image), "reads text")
    bad = _write_csv(tmp_path / "bad.csv", [{"text": "good film", "tags": '["pos", "thrilling"]'}])
    with pytest.raises(DataError) as err:
        hftl.evaluate_file(multi_label, bad)
    _one_line(err, "'thrilling'", "does not know")
    bad = _write_csv(tmp_path / "bad.csv", [{"text": "good film", "score": "1"}, {"text": "bad", "score": "lots"}])
    with pytest.raises(DataError) as err:
        hftl.evaluate_file(regression["one"], bad)
    _one_line(err, "row 2", "'lots'", "finite number")
