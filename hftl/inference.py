"""Use a trained model: labels and scores for new inputs (``hftl predict``), metrics on a labelled file
(``hftl evaluate``), from a run directory, a model folder or a Hub repo id.

Inputs go through the functions training used, so what trained is what predicts: texts are tokenized with the run's
``model.max_length`` and truncation; images are decoded by ``hftl.data.vision.to_pil`` (grayscale, palette, alpha,
16-bit) then the saved image processor; audio is read by ``hftl.data.speech.load_audio`` (mixed to mono, resampled
to the extractor's rate, cut at the run's ``data.max_seconds``) then the saved feature extractor.

Example:
    >>> hftl.predict("runs/demo", ["a gripping, funny film", "a dull mess"])  # doctest: +SKIP
    [{'input': 'a gripping, funny film', 'label': 'pos', 'score': 0.91, 'scores': {'neg': 0.09, 'pos': 0.91}}, ...]
    >>> hftl.evaluate_file("runs/demo", "test.csv")  # doctest: +SKIP
    {'accuracy': 0.77, 'f1': 0.77, 'examples': 1066}
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


@dataclass
class Predictor:
    """A loaded model with what its run trained with: the processor, modality, labels, lengths and metrics."""

    model: Any
    processor: Any
    modality: str
    labels: list[str]
    max_length: int = 512
    max_seconds: float | None = None
    metrics: tuple[str, ...] = tuple(DEFAULT_METRICS)
    input_column: str = ""
    label_column: str = "label"


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
                     label_column=data.get("label_column", "label"))


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
    return list(inputs), None


def read_table(path: Path) -> dict[str, list]:
    """Columns of a CSV/TSV, JSON (a list of records), JSON-lines or parquet file, read directly: no cache written,
    no progress bar. Raises DataError for a file that does not parse, naming it."""
    from hftl.data import DataError

    suffix = path.suffix.lower()
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
    return values, ([str(v) for v in table[label]] if label else None)


# -- the model's inputs, as in training -----------------------------------------------------------------------------
def _batch(predictor: Predictor, items: list) -> dict:
    """Model inputs for ``items`` through the conversion training used (see the module docstring)."""
    from hftl.data import DataError, _part, collator_for

    part, collate = _part(predictor.processor), collator_for(predictor.processor)
    if predictor.modality == "text":
        encoded = part([str(t) for t in items], truncation=True, max_length=predictor.max_length)
        rows = [{k: encoded[k][i] for k in encoded} | {"label": 0} for i in range(len(items))]
    elif predictor.modality == "vision":
        from hftl.data.vision import to_pil

        images = []
        for item in items:
            try:
                images.append(to_pil(item))
            except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
                raise DataError(f"cannot read the image {item}: {type(err).__name__}: {err}; give image files "
                                f"({', '.join(IMAGE_SUFFIXES)})") from err
        pixels = part(images=images, return_tensors="np")["pixel_values"]
        rows = [{"pixel_values": p, "label": 0} for p in pixels]
    else:
        from hftl.data.speech import load_audio

        rows = []
        for item in items:
            try:
                rows.append({"waveform": load_audio(str(item), part.sampling_rate, predictor.max_seconds), "label": 0})
            except Exception as err:  # noqa: BLE001 - soundfile raises several types for broken files
                raise DataError(f"cannot read the audio file {item}: {type(err).__name__}: {err}; give "
                                f"{', '.join(AUDIO_SUFFIXES)} files") from err
    batch = collate(rows)
    batch.pop("labels", None)
    batch.pop("length", None)
    return batch


def outputs_to_predictions(logits, labels: list[str]) -> list[dict]:
    """The task's reading of the model's outputs: here single-label classification, a softmax over the labels.

    This is the one place a task hook goes: each task (multi-label, regression, token classification) turns its
    outputs into labels and scores in its own way.
    """
    probs = logits.float().softmax(-1).tolist()
    out = []
    for row in probs:
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))})
    return out


def predict(model, inputs, *, batch_size: int = 32, column: str | None = None, device: Any = None,
            revision: str | None = None, token: str | None = None) -> list[dict]:
    """Labels and scores for ``inputs``: one dict per input, ``{"input", "label", "score", "scores"}``.

    ``model``: a run directory, a model folder, a Hub repo id, or a :class:`Predictor` already loaded.
    ``inputs``: see :func:`read_inputs` (a list, a text, a file, a folder, ``"-"``). Raises DataError for inputs
    that cannot be read, naming them; ModelNotFoundError / RunDirError for a model that cannot be loaded.

    Example:
        >>> [p["label"] for p in predict("runs/demo", ["great fun", "a bore"])]  # doctest: +SKIP
        ['pos', 'neg']
    """
    import torch

    predictor = model if isinstance(model, Predictor) else load_predictor(model, revision=revision, token=token,
                                                                          device=device)
    items, _ = read_inputs(inputs, predictor, column=column)
    param = next(predictor.model.parameters())
    out: list[dict] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = {k: v.to(param.device) if hasattr(v, "to") else v for k, v in _batch(predictor, chunk).items()}
        with torch.inference_mode():
            logits = predictor.model(**batch).logits
        for item, pred in zip(chunk, outputs_to_predictions(logits, predictor.labels), strict=True):
            out.append({"input": item if isinstance(item, str) else repr(item)[:80], **pred})
    return out


def evaluate_file(model, labelled, *, batch_size: int = 32, column: str | None = None,
                  label_column: str | None = None, metrics: list[str] | None = None) -> dict:
    """The run's metrics (its ``eval.metrics``) of ``model`` on a labelled file or class-folder, and ``examples``.

    Labels are matched by name (the model's labels) or, for integers, by index. Raises DataError when the file has
    no label column or holds labels the model does not know.
    """
    from hftl.data import DataError
    from hftl.metrics import compute_metrics

    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    items, truth = read_inputs(labelled, predictor, column=column, label_column=label_column)
    if truth is None:
        raise DataError(f"{labelled} has no labels: give a file with a {predictor.label_column!r} column (or "
                        f"--label-column), or a folder with one subfolder per class")
    index = {name: i for i, name in enumerate(predictor.labels)}
    numeric = all(t.lstrip("-").isdigit() and t not in index for t in truth)
    unknown = sorted({t for t in truth if (int(t) not in range(len(index)) if numeric else t not in index)})
    if unknown:
        raise DataError(f"{labelled} has labels the model does not know: {unknown[:10]}; its labels are "
                        f"{predictor.labels}")
    refs = [int(t) if numeric else index[t] for t in truth]
    preds = [index[p["label"]] for p in predict(predictor, items, batch_size=batch_size)]
    return {**compute_metrics(list(metrics or predictor.metrics), preds, refs), "examples": len(refs)}


def format_table(rows: list[dict]) -> str:
    """Predictions as an aligned text table: input (cut to 60 characters), label, score."""
    lines = [f"{'input':<60}  {'label':<16}  score"]
    for r in rows:
        text = " ".join(str(r["input"]).split())
        lines.append(f"{text[:57] + '...' if len(text) > 60 else text:<60}  {r['label']:<16}  {r['score']:.4f}")
    return "\n".join(lines)


def format_jsonl(rows: list[dict]) -> str:
    """Predictions as JSON lines (strict JSON: scores are finite floats)."""
    return "\n".join(json.dumps(r, allow_nan=False) for r in rows)
