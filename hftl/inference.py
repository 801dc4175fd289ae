"""Use a trained model: its predictions for new inputs (``hftl predict``), its task's metrics on a labelled file
(``hftl evaluate``), from a run directory, a model folder or a Hub repo id.

The model's task (``hftl.tasks``: its ``config.json``'s ``task``, else the run's ``task.name``, else its class) reads
what the model gives, as the run's evaluation read it: ``task.targets`` turns a file's labels into what its collator
takes, ``task.predict_rows`` turns a batch into what is printed per input, ``task.scores`` gives the metrics.

Inputs go through the functions training used, so what trained is what predicts: texts are tokenized with the run's
``model.max_length`` and truncation; images are decoded by ``hftl.data.vision.to_pil`` (grayscale, palette, alpha,
16-bit) then the saved image processor (a detector's images as training's ``DetectionDataset`` reads them, their
sizes kept for the boxes); audio is read by ``hftl.data.speech.load_audio`` (mixed to mono, resampled
to the extractor's rate, cut at the run's ``data.max_seconds``) then the saved feature extractor.

Example:
    >>> hftl.predict("runs/demo", ["a gripping, funny film", "a dull mess"])  # doctest: +SKIP
    [{'input': 'a gripping, funny film', 'label': 'pos', 'score': 0.91, 'scores': {'neg': 0.09, 'pos': 0.91}}, ...]
    >>> hftl.evaluate_file("runs/demo", "test.csv")  # doctest: +SKIP
    {'accuracy': 0.77, 'f1': 0.77, 'loss': 0.49, 'examples': 1066}
    >>> hftl.predict("runs/genres", ["a war drama"])  # a multi_label run  # doctest: +SKIP
    [{'input': 'a war drama', 'labels': ['drama', 'war'], 'scores': {'comedy': 0.04, 'drama': 0.93, 'war': 0.71}}]
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftl.data.sources import AUDIO_SUFFIXES, FILE_BUILDERS, IMAGE_SUFFIXES

DEFAULT_METRICS = ["accuracy", "f1"]
SHOWN = 5  # objects or entities shown per line of --format table


@dataclass
class Predictor:
    """A loaded model with what its run trained with: the processor, modality, labels, lengths, metrics and task
    (``hftl.tasks``; from the model when not given)."""

    model: Any
    processor: Any
    modality: str
    labels: list[str]
    max_length: int = 512
    max_seconds: float | None = None
    metrics: tuple[str, ...] = tuple(DEFAULT_METRICS)
    input_column: str = ""
    label_column: str = "label"
    task: Any = None
    label_columns: tuple[str, ...] = ()
    box_format: str = "xywh"

    def __post_init__(self) -> None:
        if self.task is None:
            from hftl.tasks import task_of

            self.task = task_of(self.model)

    @property
    def config(self):
        """The model's config (the base model's, under a peft adapter)."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.config


def _task(model, cfg: dict):
    """The model's task: ``task`` in its config, else the run's ``task.name``, else by its class (``task_of``)."""
    from hftl.tasks import get_task, task_of

    name = getattr(getattr(model, "config", None), "task", None) or (cfg.get("task") or {}).get("name")
    return get_task(name) if name else task_of(model)


def _run_config(local: Path) -> dict:
    """The run's resolved config.yaml beside (or above) the model folder, {} when there is none."""
    import yaml

    for folder in (local, local.parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return {}


def load_predictor(source: str | os.PathLike, *, revision: str | None = None, token: str | None = None,
                   device: Any = None) -> Predictor:
    """Load a run directory, model folder or Hub repo id for prediction (``hftl.load`` underneath).

    Raises RunDirError for a run that did not finish, ModelNotFoundError when nothing loads from ``source``.
    """
    from hftl.data import modality_of
    from hftl.hub import _load_local, _local_dir
    from hftl.models import ModelNotFoundError

    path = Path(source)
    if not path.exists() and (str(source).startswith((".", "/", "~")) or str(source).count("/") != 1):
        raise ModelNotFoundError(f"{source} is neither a folder nor a Hub repo id (user/name): give the output_dir of "
                                 f"a finished run, its model/ folder, or the repo id it was pushed to")
    local = _local_dir(source, revision, token)
    model, processor = _load_local(local, token)
    model = model.eval() if device is None else model.to(device).eval()
    cfg = _run_config(local)
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    data, mdl = cfg.get("data", {}), cfg.get("model", {})
    return Predictor(model=model, processor=processor, modality=modality_of(processor),
                     labels=[str(id2label[i]) for i in sorted(id2label, key=int)],
                     max_length=int(mdl.get("max_length", 512)), max_seconds=data.get("max_seconds"),
                     metrics=tuple(cfg.get("eval", {}).get("metrics") or DEFAULT_METRICS),
                     input_column=data.get("input_column") or data.get("text_column", ""),
                     label_column=data.get("label_column", "label"), task=_task(model, cfg),
                     label_columns=tuple(data.get("label_columns") or ()), box_format=data.get("box_format", "xywh"))


# -- inputs ---------------------------------------------------------------------------------------------------------
def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def read_inputs(inputs, predictor: Predictor, *, column: str | None = None,
                label_column: str | None = None) -> tuple[list, list | None]:
    """``(inputs, labels or None)`` from what a user gives: a list of texts or file paths, one text or file, a CSV /
    JSON / JSONL / parquet file (its input column, and its label column when it has one), a folder of images or
    audio (class subfolders are the labels), or ``"-"`` for standard input (one text or path per line).

    Raises DataError naming the file and the column or folder that does not fit.
    """
    from hftl.data import DataError

    media = IMAGE_SUFFIXES if predictor.modality == "vision" else AUDIO_SUFFIXES
    if isinstance(inputs, (str, os.PathLike)):
        if str(inputs) == "-":
            return [line.rstrip("\n") for line in sys.stdin if line.strip()], None
        path = Path(inputs)
        if path.is_dir():
            files = _files(path, media)
            if not files:
                raise DataError(f"{path} holds no {predictor.modality} files ({', '.join(media)}): give a folder of "
                                f"them, or a CSV/JSON/parquet file with a column of inputs")
            labelled = all(f.parent != path for f in files)  # class subfolders, as in training's image folders
            return [str(f) for f in files], [f.parent.name for f in files] if labelled else None
        if path.is_file() and path.suffix.lower() in FILE_BUILDERS:
            return _table(path, predictor, column, label_column)
        inputs = [str(inputs)]
    items = list(inputs)
    if predictor.modality == "text":  # a picture's or a recording's path would be read as words
        media = next((i for i in items if isinstance(i, str) and Path(i).suffix.lower() in IMAGE_SUFFIXES +
                      AUDIO_SUFFIXES and Path(i).is_file()), None)
        if media is not None:
            raise DataError(f"{media} is an image or audio file, but this model reads text: give texts (or a "
                            f"CSV/JSON file with a text column), or use a model trained on that kind of input")
    return items, None


def read_table(path: Path) -> dict[str, list]:
    """Columns of a CSV/TSV, JSON (a list of records), JSON-lines or parquet file, read directly: no cache written,
    no progress bar. Raises DataError for a file that does not parse, naming it."""
    from hftl.data import DataError

    suffix = path.suffix.lower()
    if suffix == ".conll":  # one word and its tag per line: columns tokens and tags
        from hftl.data.sources import read_conll

        return read_conll(str(path)).to_dict()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pydict()
        if suffix in (".csv", ".tsv"):
            import csv

            with path.open(newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            text = path.read_text(encoding="utf-8")
            records = ([json.loads(line) for line in text.splitlines() if line.strip()] if suffix == ".jsonl"
                       else json.loads(text))
            records = records.get("data", records) if isinstance(records, dict) else records
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}; give a valid {suffix[1:]} file") from err
    names = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in names}


def _table(path: Path, predictor: Predictor, column: str | None, label_column: str | None) -> tuple[list, list | None]:
    from hftl.data import DataError

    table = read_table(path)
    names = list(table)
    wanted = [c for c in (column, predictor.input_column, "text", "input", "image", "audio", "path", "file") if c]
    found = next((c for c in wanted if c in names), None)
    if found is None:
        raise DataError(f"{path} has no input column: tried {', '.join(dict.fromkeys(wanted))} among its columns "
                        f"{names}; name it with --column")
    label = next((c for c in (label_column, predictor.label_column, "label") if c and c in names), None)
    values = [str(v) if predictor.modality != "text" else v for v in table[found]]
    if predictor.modality != "text":  # paths relative to the file, as a dataset's own files are
        values = [v if os.path.isabs(v) else str(path.parent / v) for v in values]
    columns = [c for c in predictor.label_columns if c in names]
    if label_column is None and columns and len(columns) == len(predictor.label_columns):  # data.label_columns
        return values, [{c: table[c][i] for c in columns} for i in range(len(values))]
    return values, (list(table[label]) if label else None)


# -- the model's inputs, as in training -----------------------------------------------------------------------------
def _rows(predictor: Predictor, items: list) -> list[dict]:
    """The rows training's encoding gives the collator, for ``items`` (see the module docstring)."""
    from hftl.data import DataError, _part

    if hasattr(predictor.task, "input_rows"):  # e.g. detection: images encoded with their sizes for the boxes
        return predictor.task.input_rows(items, predictor.processor)
    part = _part(predictor.processor)
    if predictor.modality == "text":
        from hftl.data.text import tokenize

        encoded = tokenize(part, [t if isinstance(t, list) else str(t) for t in items], predictor.max_length)
        return [{k: encoded[k][i] for k in encoded if k != "length"} for i in range(len(items))]
    if predictor.modality == "vision":
        from hftl.data.vision import to_pil

        images = []
        for item in items:
            try:
                images.append(to_pil(item))
            except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
                raise DataError(f"cannot read the image {item}: {type(err).__name__}: {_line(err)}; give image files "
                                f"({', '.join(IMAGE_SUFFIXES)})") from err
        return [{"pixel_values": p} for p in part(images=images, return_tensors="np")["pixel_values"]]
    from hftl.data.speech import load_audio

    rows = []
    for item in items:
        try:
            rows.append({"waveform": load_audio(str(item), part.sampling_rate, predictor.max_seconds)})
        except Exception as err:  # noqa: BLE001 - soundfile raises several types for broken files
            raise DataError(f"cannot read the audio file {item}: {type(err).__name__}: {_line(err)}; give "
                            f"{', '.join(AUDIO_SUFFIXES)} files") from err
    return rows


def _line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _batch(predictor: Predictor, items: list, targets: list | None = None) -> dict:
    """A batch for ``items`` as the task's collator makes it in training; ``targets`` from ``task.targets`` (its
    placeholders when None: ``labels`` then mark what the task reads, e.g. each word's first sub-token)."""
    task = predictor.task
    if targets is None:
        targets = task.targets(None, predictor.config, items, "the inputs")
    rows = [r | ({"label": t} if t is not None else {}) for r, t in zip(_rows(predictor, items), targets, strict=True)]
    return task.collator(predictor.processor)(rows)


def _model_items(predictor: Predictor, items: list) -> list:
    """What the model reads of each input: word lists for a task that reads words (split on whitespace, as
    training's words), else the inputs."""
    if not getattr(predictor.task, "reads_words", False):
        return items
    return [[str(w) for w in i] if isinstance(i, (list, tuple)) else str(i).split() for i in items]


def _to(value, device):
    """Tensors (also in lists and dicts: detection's targets) on ``device``."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value.to(device) if hasattr(value, "to") else value


def _shown(item) -> str:
    if isinstance(item, str):
        return item
    return " ".join(map(str, item)) if isinstance(item, (list, tuple)) else repr(item)[:80]


def _loaded(model, revision=None, token=None, device=None) -> Predictor:
    return model if isinstance(model, Predictor) else load_predictor(model, revision=revision, token=token,
                                                                     device=device)


def predict(model, inputs, *, batch_size: int = 32, column: str | None = None, device: Any = None,
            revision: str | None = None, token: str | None = None, threshold: float | None = None) -> list[dict]:
    """What the model predicts for ``inputs``, one dict per input: ``input`` and the fields of the model's task
    (``task.predict_rows``): classification ``label``, ``score``, ``scores``; multi_label ``labels``, ``scores``;
    regression ``value``; token_classification ``words``, ``tags``, ``entities``; ctc / seq2seq_asr ``text``;
    detection ``objects`` (``label``, ``score``, ``box`` [x0, y0, x1, y1] in pixels).

    ``model``: a run directory, a model folder, a Hub repo id, or a :class:`Predictor` already loaded.
    ``inputs``: see :func:`read_inputs` (a list, a text, a file, a folder, ``"-"``). ``threshold``: detection's
    lowest score shown (default 0.5); multi_label's decision threshold (default: the one the run saved). Raises
    DataError for inputs that cannot be read, naming them; ModelNotFoundError / RunDirError for a model that
    cannot be loaded.

    Example:
        >>> [p["label"] for p in predict("runs/demo", ["great fun", "a bore"])]  # doctest: +SKIP
        ['pos', 'neg']
    """
    import torch

    predictor = _loaded(model, revision, token, device)
    items, _ = read_inputs(inputs, predictor, column=column)
    words = _model_items(predictor, items)
    param = next(predictor.model.parameters())
    out: list[dict] = []
    for start in range(0, len(items), batch_size):
        chunk = words[start:start + batch_size]
        batch = _to(_batch(predictor, chunk), param.device)
        with torch.inference_mode():
            rows = predictor.task.predict_rows(predictor.model, batch, predictor.config, chunk, threshold=threshold)
        out += [{"input": _shown(item), **row} for item, row in zip(items[start:start + batch_size], rows,
                                                                        strict=True)]
    return out


def evaluate_file(model, labelled, *, batch_size: int = 32, column: str | None = None,
                  label_column: str | None = None, metrics: list[str] | None = None) -> dict:
    """The metrics the run reports (its task's ``scores``: classification its ``eval.metrics`` and ``loss``;
    multi_label f1_micro, f1_macro, subset_accuracy, per-label F1; regression rmse, mae, pearson, spearman;
    token_classification seqeval precision, recall, f1 and accuracy; ctc / seq2seq_asr wer, cer; detection COCO mAP
    from a COCO JSON file) of ``model`` on a labelled file or class-folder, and ``examples``.

    Labels are in the task's format: class names (or indices), label lists (JSON lists, ``a;b``, or the run's 0/1
    ``data.label_columns``), numbers, tag lists (or space-separated tags, or a CoNLL file), transcripts. Every label
    is checked before the model runs: DataError when the file has no label column or holds labels the model does
    not know, naming them.
    """
    import torch

    from hftl.data import DataError
    from hftl.tasks import logits_of

    predictor = _loaded(model)
    task, config = predictor.task, predictor.config
    if hasattr(task, "evaluate_labelled"):  # detection: a COCO file, boxes per image
        return task.evaluate_labelled(predictor.model, predictor.processor, labelled, batch_size,
                                      box_format=predictor.box_format)
    items, truth = read_inputs(labelled, predictor, column=column, label_column=label_column)
    if truth is None:
        raise DataError(f"{labelled} has no labels: give a file with a {predictor.label_column!r} column (or "
                        f"--label-column), or a folder with one subfolder per class")
    words = _model_items(predictor, items)
    targets = task.targets(truth, config, words, str(labelled))  # all of them, before any compute
    step = getattr(task, "eval_outputs", None)  # e.g. generate's ids and each clip's loss, as the run evaluated
    param = next(predictor.model.parameters())
    outputs, labels = [], []
    for start in range(0, len(items), batch_size):
        batch = _to(_batch(predictor, words[start:start + batch_size], targets[start:start + batch_size]),
                    param.device)
        with torch.inference_mode():
            outputs.append((step(predictor.model, batch) if step else logits_of(predictor.model, batch)).float().cpu())
        labels.append(batch["labels"].cpu())
    scores = task.scores(_joined(outputs, 0.0), _joined(labels, -100), list(metrics or predictor.metrics), config)
    return {**scores, "examples": len(items)}


def _joined(parts: list, value: float):
    """Batches concatenated; per-token ones (of different lengths) padded with ``value``, as the run's evaluation
    pads them."""
    import torch

    from hftl.train import _cat_padded

    if parts[0].dim() < 2 or len({p.shape[1:] for p in parts}) == 1:
        return torch.cat(parts)
    return _cat_padded(parts, value)


def format_table(rows: list[dict]) -> str:
    """Predictions as an aligned text table, one line per input: the input (cut to 60 characters), then label and
    score for a classifier, else the task's fields in short (labels, value, tags, transcript, objects)."""
    if rows and all("label" in r and "score" in r for r in rows):
        lines = [f"{'input':<60}  {'label':<16}  score"]
        for r in rows:
            lines.append(f"{_cut(r['input']):<60}  {r['label']:<16}  {r['score']:.4f}")
        return "\n".join(lines)
    lines = [f"{'input':<60}  prediction"]
    for r in rows:
        shown = "; ".join(f"{k} {_short(v)}" for k, v in r.items() if k not in ("input", "scores", "words"))
        lines.append(f"{_cut(r['input']):<60}  {shown}")
    return "\n".join(lines)


def _cut(text) -> str:
    text = " ".join(str(text).split())
    return text[:57] + "..." if len(text) > 60 else text


def _short(value) -> str:
    """A field in a few words: numbers to 4 figures, lists joined, dicts as key=value, objects as their values."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):  # objects, entities: the first few
            more = f", ... ({len(value)} in all)" if len(value) > SHOWN else ""
            return ", ".join(" ".join(_short(x) for x in v.values()) for v in value[:SHOWN]) + more
        return "[" + " ".join(_short(v) for v in value) + "]" if value and all(
            isinstance(v, (int, float)) for v in value) else " ".join(map(str, value)) or "-"
    return str(value)


def format_jsonl(rows: list[dict]) -> str:
    """Predictions as JSON lines (strict JSON: scores are finite floats)."""
    return "\n".join(json.dumps(r, allow_nan=False) for r in rows)
