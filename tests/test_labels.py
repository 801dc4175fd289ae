"""Labels mean what the user meant; splits share no example; bad data and models are named before compute (issue 20).

Kinds: (3) labels silently wrong: order, missing cells, lists, one class; (4) an unreadable split found before
training; (5) errors that name the problem: empty text, encoding, one-example class, pad token, custom code;
and property-based checks of the label and split logic.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from unittest import mock

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hftl.config import ConfigError, DataConfig, load_config
from hftl.data import DataError, label_names, load_splits
from hftl.data.labels import label_namer, ordered_names
from hftl.data.sources import dedupe_texts
from hftl.data.splits import split_overlaps
from hftl.testing import WORDS


def _write(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _rows(labels, per_class=10):
    return [{"text": f"example {c} {i}", "label": c} for c in labels for i in range(per_class)]


def _check_rows_keep_their_labels(splits, truth: dict) -> None:
    """Every output row's label name is the user's own label of that text."""
    names = label_names(splits)
    for ds in splits.values():
        for text, label in zip(ds["text"][:], ds["label"][:], strict=True):
            assert names[label] == truth[text], (text, names[label], truth[text])


# --- kind 3: labels ordered as their values -------------------------------------------------------------------


def test_integer_labels_sort_numerically_and_map_back(tmp_path):
    rows = _rows(range(12), per_class=12)
    splits = load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows)))
    names = label_names(splits)
    assert names == [str(i) for i in range(12)]  # was sorted as text: id 2 meant "10"
    assert names.index("10") == 10
    _check_rows_keep_their_labels(splits, {r["text"]: str(r["label"]) for r in rows})


def test_numeric_strings_floats_and_words_order():
    assert ordered_names(["10", "2", "1"]) == ["1", "2", "10"]  # numbers read as strings sort as numbers
    assert ordered_names(["10", "2", "b", "a"]) == ["2", "10", "a", "b"]  # then words, as words
    assert ordered_names([2.5, 0.5, 10.0]) == ["0.5", "2.5", "10.0"]
    assert ordered_names([2.0, 10.0, 1.0]) == ["1", "2", "10"]  # integral floats: an int column with a gap
    assert ordered_names(["b", "B", "a"]) == ["B", "a", "b"]
    assert label_namer([1.0, 2.0])(2.0) == "2" and label_namer([1.5, 2.0])(2.0) == "2.0"


def test_int_column_with_a_dropped_gap_keeps_integer_names(tmp_path):
    rows = _rows([1, 2, 10])
    rows[3]["label"] = ""  # pandas then reads the column as floats
    cfg = DataConfig(name=_write(tmp_path / "d.csv", rows), missing_labels="drop")
    splits = load_splits(cfg)
    assert label_names(splits) == ["1", "2", "10"]
    assert sum(len(s) for s in splits.values()) == len(rows) - 1


def test_class_label_keeps_its_declared_order(tmp_path):
    features = {"text": [f"t{i}" for i in range(24)], "label": [i % 3 for i in range(24)]}
    ds = Dataset.from_dict(features).cast_column("label", ClassLabel(names=["zeta", "alpha", "mid"]))
    ds.to_parquet(tmp_path / "d.parquet")
    splits = load_splits(DataConfig(name=str(tmp_path / "d.parquet")))
    assert label_names(splits) == ["zeta", "alpha", "mid"]
    _check_rows_keep_their_labels(splits, {f"t{i}": ["zeta", "alpha", "mid"][i % 3] for i in range(24)})


def test_given_splits_map_by_value_not_by_position(tmp_path):
    train = _write(tmp_path / "train.csv", _rows([0, 1, 10]))
    test_rows = _rows([10, 1], per_class=2)
    test_rows[0]["label"] = 10.0  # a test file whose column reads as floats still names "10"
    test = _write(tmp_path / "test.csv", test_rows)
    splits = load_splits(DataConfig(splits={"train": train, "test": test}))
    names = label_names(splits)
    assert [names[i] for i in splits["test"]["label"][:]] == ["10", "10", "1", "1"]


def test_finetuned_model_predicts_the_users_label(tiny_cfg, tmp_path):
    """End to end: labels 10 and 2 in a CSV; the saved id2label maps the predicted id back to them."""
    from hftl.recipes.finetune import main

    import hftl
    from hftl.testing import tiny_text_rows

    rows = [{"text": r["text"], "label": {"neg": 10, "pos": 2}[r["label"]]} for r in tiny_text_rows(120)]
    data = _write(tmp_path / "numeric.csv", rows)
    main(load_config(None, [*tiny_cfg, f"data.name={data}", "train.epochs=8"]))
    model, tok = hftl.load(tmp_path / "run" / "model")
    assert model.config.id2label == {0: "2", 1: "10"}
    texts = ["good great movie", "awful terrible film", "lovely superb plot", "boring dull actor"]
    with torch.no_grad():
        ids = model(**tok(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in ids] == ["2", "10", "2", "10"]


# --- kind 3: missing labels, lists, one class ------------------------------------------------------------------


def test_missing_labels_are_named_with_rows_and_fix(tmp_path):
    rows = _rows(["a", "b"])
    rows[2]["label"] = rows[6]["label"] = ""
    path = _write(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"'label' has 2 empty cell\(s\) in split 'train' \(rows 3, 7 of .*d\.csv.*"
                       r"data.missing_labels=drop"):
        load_splits(DataConfig(name=path))


def test_missing_labels_in_a_given_test_split_name_it(tmp_path):
    train = _write(tmp_path / "train.csv", _rows(["a", "b"]))
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": null}\n')
    with pytest.raises(DataError, match=r"in split 'test' \(rows 2 of .*test\.jsonl"):
        load_splits(DataConfig(splits={"train": train, "test": str(test)}))


def test_missing_labels_dropped_with_a_logged_count(tmp_path, caplog):
    rows = _rows(["a", "b"])
    rows[0]["label"] = rows[1]["label"] = rows[2]["label"] = ""
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows), missing_labels="drop"))
    assert label_names(splits) == ["a", "b"]  # no class named "None"
    assert sum(len(s) for s in splits.values()) == len(rows) - 3
    assert "dropped 3 row(s) with an empty label" in caplog.text


def test_missing_labels_setting_is_checked():
    with pytest.raises(ConfigError, match=r"data.missing_labels='skip' is not allowed; choose one of"):
        load_config(None, ["data.missing_labels=skip"])


def test_one_class_is_refused_also_after_dropping(tmp_path):
    with pytest.raises(DataError, match="only one class 'a' in train: a classifier needs at least two"):
        load_splits(DataConfig(name=_write(tmp_path / "one.csv", _rows(["a"]))))
    rows = _rows(["a"]) + [{"text": "blank", "label": ""}]
    with pytest.raises(DataError, match="only one class 'a' in train"):
        load_splits(DataConfig(name=_write(tmp_path / "gap.csv", rows), missing_labels="drop"))


def test_list_labels_are_refused_until_multilabel_exists(tmp_path):
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": ["x", "y"][: 1 + i % 2]}) + "\n" for i in range(12)))
    with pytest.raises(DataError, match=r"holds lists.*set task.name=multi_label"):
        load_splits(DataConfig(name=str(path)))


# --- kind 3/4: splits share no example; small classes ------------------------------------------------------------


def test_texts_in_two_splits_are_counted_and_warned(tmp_path, caplog):
    train_rows = _rows(["a", "b"])
    test_rows = [{"text": "  EXAMPLE a 0 ", "label": "a"}, {"text": "example b 1", "label": "b"}]
    test_rows.append({"text": "new", "label": "a"})
    files = {"train": _write(tmp_path / "tr.csv", train_rows), "test": _write(tmp_path / "te.csv", test_rows)}
    cfg = DataConfig(splits=files)
    with caplog.at_level(logging.WARNING):
        splits = load_splits(cfg)
    assert "2 input(s) occur in two splits" in caplog.text and "e.g. 'example" in caplog.text
    overlaps = split_overlaps(splits, "text")  # validation is split from train: the repeats may land in either
    assert sum(overlaps.values()) == 2 and set(overlaps) <= {"train/test", "validation/test"}
    assert "__hftl_input_key" not in splits["train"].column_names


def test_dedupe_keeps_first_and_drops_conflicting_texts():
    import pandas as pd

    df = pd.DataFrame({"text": ["a b", "A  b", "c", "c", "d"], "label": ["x", "x", "x", "y", "y"]})
    out, removed = dedupe_texts(df)
    assert out["text"].tolist() == ["a b", "d"] and removed == 3


def test_rotten_tomatoes_source_is_deduped(caplog):
    """The embedded set holds each review text once (its splits share none: tests/test_data.py checks them)."""
    from hftl.data.sources import _rotten_tomatoes, text_key

    with caplog.at_level(logging.INFO):
        raw, _, _ = _rotten_tomatoes()
    texts = raw["train"]["text"][:]
    assert "57 repeated review(s) removed" in caplog.text
    assert len(texts) == 12808 - 57 == len({text_key(t) for t in texts})


def test_class_with_one_example_is_named_before_splitting(tmp_path):
    rows = _rows(["a", "b"]) + [{"text": "lonely", "label": "c"}]
    with pytest.raises(DataError, match=r"class 'c' has only 1 example in the data.*give data.splits files"):
        load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows)))


def test_split_smaller_than_the_classes_names_the_key(tmp_path):
    path = _write(tmp_path / "d.csv", _rows(range(8)))
    with pytest.raises(DataError, match=r"test_size = 4 should be .* classes = 8; raise data.test_size \(now 0.05\)"):
        load_splits(DataConfig(name=path, test_size=0.05))
    with pytest.raises(DataError, match=r"raise data.max_train_samples \(now 4\)"):
        load_splits(DataConfig(name=path, max_train_samples=4))


# --- kind 5: data errors that name the problem -------------------------------------------------------------------


def test_empty_text_cells_are_named(tmp_path):
    rows = _rows(["a", "b"])
    rows[4]["text"] = ""
    with pytest.raises(DataError, match=r"data.text_column 'text' has 1 empty cell\(s\) in split 'train' \(rows 5 of"):
        load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows)))


def test_numbers_in_the_text_column_become_text(tmp_path):
    rows = [{"text": i, "label": "ab"[i % 2]} for i in range(20)]
    splits = load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows)))
    assert all(isinstance(t, str) for s in splits.values() for t in s["text"][:])


def test_non_utf8_csv_names_the_file_and_data_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    rows = "".join(f"caf\u00e9 tr\u00e8s {i},{'ab'[i % 2]}\n" for i in range(20))
    path.write_bytes(("text,label\n" + rows).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not valid utf-8.*set data.encoding"):
        load_splits(DataConfig(name=str(path)))
    splits = load_splits(DataConfig(name=str(path), encoding="latin-1"))
    assert splits["train"]["text"][0].startswith("caf\u00e9 tr\u00e8s")
    with pytest.raises(ConfigError, match="data.encoding='utf-9' is not a known text encoding"):
        load_config(None, ["data.encoding=utf-9"])


def test_unreadable_test_split_is_refused_before_training(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessorPil

    from hftl.data import encode

    rows = []
    for i in range(12):
        path = tmp_path / f"ok{i}.png"
        Image.fromarray(np.full((8, 8), 40 + 150 * (i % 2), np.uint8)).save(path)
        rows.append({"file": str(path), "label": "ab"[i % 2]})
    bad = []
    for i in range(4):
        (tmp_path / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        bad.append({"file": str(tmp_path / f"bad{i}.png"), "label": "ab"[i % 2]})
    files = {"train": _write(tmp_path / "train.csv", rows, ("file", "label")),
             "test": _write(tmp_path / "test.csv", bad, ("file", "label"))}
    splits = load_splits(DataConfig(splits=files))
    with pytest.raises(DataError, match=r"every input of split 'test' is unreadable \(4 of 4; first .*bad0\.png"):
        encode(splits, ViTImageProcessorPil(size={"height": 8, "width": 8}), DataConfig())


def test_label_descriptions_with_number_keys_reach_their_classes():
    from hftl.config import ShotsConfig
    from hftl.shots import check_ladder_data
    from hftl.shots.zero_shot import class_prompts

    descriptions = {0: "a bad review", 1: "a good review"}  # as YAML reads `0: a bad review`
    check_ladder_data(ShotsConfig(ks=[1], label_descriptions=descriptions), ["0", "1"], [0, 1, 0, 1])
    assert class_prompts(["0", "1"], descriptions, ["{}"]) == [["a bad review"], ["a good review"]]


# --- kind 5: models ------------------------------------------------------------------------------------------------


def test_gpt2_style_tokenizer_pads_with_eos_and_padding_changes_nothing(tmp_path, caplog):
    import hftl
    from hftl.data import collator_for
    from hftl.testing import tiny_gpt2_model

    path = tiny_gpt2_model(tmp_path / "gpt2")
    with caplog.at_level(logging.WARNING):
        tok = hftl.load_processor(path)
    assert tok.pad_token == tok.eos_token and "has no pad token: padding with its eos" in caplog.text
    model = hftl.load_classifier(path, 2).eval()
    assert model.config.backbone_config.pad_token_id == tok.pad_token_id
    short, long = "good film", "the movie was very good and the plot was quite lovely"
    collate = collator_for(tok)
    batch = collate([dict(tok(t)) for t in (short, long)])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short one is padded
    with torch.no_grad():
        together = model(**batch).logits[0]
        alone = model(**collate([dict(tok(short))])).logits[0]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_gpt2_style_model_finetunes(tiny_cfg, tmp_path):
    from hftl.recipes.finetune import main

    from hftl.testing import tiny_gpt2_model

    path = tiny_gpt2_model(tmp_path / "gpt2")
    metrics = main(load_config(None, [*tiny_cfg, f"model.name={path}", "train.epochs=1"]))
    assert math.isfinite(metrics["test"]["loss"])


def test_custom_code_names_trust_remote_code(tiny_model, tmp_path):
    import shutil

    from hftl.config import ModelConfig
    from hftl.models import ModelNotFoundError, check_max_length, load_classifier, load_processor

    path = tmp_path / "custom"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="xmodel", auto_map={"AutoConfig": "x.XConfig", "AutoModel": "x.XModel"})
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"ships its own code.*set model.trust_remote_code=true"):
        load_classifier(str(path), 2)
    with pytest.raises(ConfigError, match=r"ships its own code.*set model.trust_remote_code=true"):
        check_max_length(ModelConfig(name=str(path)), load_processor(str(path)))
    del config["auto_map"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"model_type 'xmodel'.*pip install -U transformers.*trust_remote"):
        load_classifier(str(path), 2)


# --- property-based: the label and split logic -------------------------------------------------------------------

WORDS_POOL = sorted({w for ws in WORDS.values() for w in ws})
LABEL_POOLS = {
    "int": st.integers(-20, 1000),
    "numeric_str": st.integers(0, 500).map(str),
    "float": st.sampled_from([0.5, 1.0, 2.25, 10.0, -3.5, 100.0, 7.0]),
    "integral_float": st.integers(0, 30).map(float),
    "word": st.sampled_from(WORDS_POOL),
    "mixed_str": st.one_of(st.integers(0, 99).map(str), st.sampled_from(WORDS_POOL)),
}


@st.composite
def label_columns(draw):
    """(kind, labels with None for a missing cell): 2-4 classes of 4-8 examples each, a few missing."""
    kind = draw(st.sampled_from(sorted(LABEL_POOLS)))
    values = draw(st.lists(LABEL_POOLS[kind], min_size=2, max_size=4, unique_by=lambda v: str(v)))
    labels = [v for v in values for _ in range(draw(st.integers(4, 8)))]
    labels = draw(st.permutations(labels))
    missing = draw(st.lists(st.integers(0, len(labels) - 1), max_size=3, unique=True))
    return kind, [None if i in missing else v for i, v in enumerate(labels)]


def _expected_name(value, column) -> str:
    floats = [v for v in column if isinstance(v, float)]
    if isinstance(value, float) and all(f.is_integer() for f in floats):
        return str(int(value))
    return str(value)


def _number(name: str):
    try:
        return float(name)
    except ValueError:
        return None


def _load_in_memory(labels, **cfg):
    raw = DatasetDict(train=Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "label": labels}))
    with mock.patch("hftl.data.splits.load_source", return_value=(raw, "text", "label")):
        return load_splits(DataConfig(name="in-memory", **cfg))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_columns(), st.integers(0, 3))
def test_property_id2label_maps_back_and_splits_partition(column, seed):
    kind, labels = column
    present = {i: v for i, v in enumerate(labels) if v is not None}
    try:
        splits = _load_in_memory(labels, missing_labels="drop", split_seed=seed, test_size=0.2, validation_size=0.2)
    except DataError as err:  # too few examples left to stratify: named with its fix, never a traceback
        event("too few to split")
        assert any(m in str(err) for m in ("too few to split", "only one class", "give data.splits")), err
        return
    names = label_names(splits)
    values = list(present.values())
    # id2label maps back to the user's values
    truth = {f"row {i}": _expected_name(v, values) for i, v in present.items()}
    _check_rows_keep_their_labels(splits, truth)
    assert sorted(names) == sorted(set(truth.values()))
    # order: numbers numerically (ties by text), then the rest as text
    keys = [(0, _number(n), n) if _number(n) is not None else (1, 0.0, n) for n in names]
    assert keys == sorted(keys), (kind, names)
    # no example in two splits; nothing lost but the missing cells; sizes add up
    texts = [t for s in splits.values() for t in s["text"][:]]
    assert len(texts) == len(set(texts)) == len(present)
    assert set(texts) == set(truth)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_columns())
def test_property_missing_labels_are_an_error_by_default(column):
    _, labels = column
    missing = [i for i, v in enumerate(labels) if v is None]
    if not missing:
        return
    match = rf"has {len(missing)} empty cell\(s\) in split 'train' \(rows {missing[0] + 1}"
    with pytest.raises(DataError, match=match):
        _load_in_memory(labels)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(["zeta", "alpha", "mid", "10", "2"]), st.integers(0, 3))
def test_property_class_label_order_is_kept(names, seed):
    ids = [i % len(names) for i in range(5 * len(names))]
    raw = Dataset.from_dict({"text": [f"row {i}" for i in range(len(ids))], "label": ids})
    raw = DatasetDict(train=raw.cast_column("label", ClassLabel(names=list(names))))
    with mock.patch("hftl.data.splits.load_source", return_value=(raw, "text", "label")):
        splits = load_splits(DataConfig(name="in-memory", split_seed=seed, test_size=0.2, validation_size=0.2))
    assert label_names(splits) == list(names)
    _check_rows_keep_their_labels(splits, {f"row {i}": names[c] for i, c in enumerate(ids)})
