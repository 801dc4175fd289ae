"""The baseline guard: what a run must beat, scored on the same splits as the run.

Two baselines, fitted on the run's train split and scored on validation and test with the run's metrics:
``majority`` (always the most frequent train class) and a classical model on simple features, by modality:
``tfidf_logreg`` (TF-IDF of words and word pairs), ``pixels_logreg`` (the image shrunk to 16x16 pixels) or
``spectrum_logreg`` (mean and spread of 32 log-spaced band energies), each a standardised logistic regression
whose strength C is picked on validation from three values, fitted on at most 20,000 train examples (stratified)
so that it stays cheap beside the run. Transfer that does not beat them is not transfer:
on a held-out 3-class text task MiniLM's probe scored 0.65 where TF-IDF + logistic regression scored 0.77.

Example:
    >>> scores = score_baselines(splits, ["accuracy", "f1"])  # doctest: +SKIP
    >>> scores["tfidf_logreg"]["test"]["accuracy"]  # doctest: +SKIP
    0.771
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np

log = logging.getLogger(__name__)
NAMES = {"text": "tfidf_logreg", "image": "pixels_logreg", "audio": "spectrum_logreg"}
C_GRID = (0.1, 1.0, 10.0)
PIXELS = 16  # images shrink to PIXELS x PIXELS
BANDS, FRAME, RATE = 32, 512, 16000  # audio: band energies of 512-sample frames at 16 kHz (32 ms)
MAX_FIT = 20_000  # the classical model fits on at most this many train examples (stratified), to bound its time
MAX_ITER = 300  # of each logistic regression; 20,000 Fashion-MNIST images, 3 values of C: about 15 s of one core


def input_kind(ds) -> str:
    """``text``, ``image`` or ``audio``: the input column ``load_splits`` named by its kind."""
    return next(k for k in ("text", "image", "audio") if k in ds.column_names)


def _shrink(arrays: np.ndarray) -> np.ndarray:
    """Images stored as one uint8 array ``[n, h, w(, c)]`` shrunk to 16x16 at once (area averaging), in [0, 1]."""
    import torch

    x = torch.as_tensor(arrays, dtype=torch.float32) / 255
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(x, size=(PIXELS, PIXELS), mode="area").flatten(1).numpy()


def _image_features(values) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each image shrunk to 16x16 (grey when every sampled image is), in [0, 1]; which rows decoded."""
    from PIL import Image

    from hftl.data.vision import to_pil

    rows, ok = [], []
    for value in values:
        try:
            rows.append(np.asarray(to_pil(value).resize((PIXELS, PIXELS), Image.BILINEAR), dtype=np.float32) / 255)
            ok.append(True)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files; the run skips them too
            log.debug("baseline: image not readable: %s", err)
            ok.append(False)
    x = np.stack(rows) if rows else np.zeros((0, PIXELS, PIXELS, 3), np.float32)
    grey = len(x) and np.allclose(x[:200, ..., 0], x[:200, ..., 1]) and np.allclose(x[:200, ..., 0], x[:200, ..., 2])
    return (x[..., 0] if grey else x).reshape(len(x), -1), np.asarray(ok)


def spectral_features(wave: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over time of 32 log band energies (log-spaced, 60 Hz to 8 kHz), and the
    clip's length in seconds: 65 numbers per clip, for ``spectrum_logreg``."""
    wave = np.pad(wave, (0, max(0, FRAME - len(wave))))
    frames = np.lib.stride_tricks.sliding_window_view(wave, FRAME)[:: FRAME // 2] * np.hanning(FRAME)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    edges = (np.geomspace(60, RATE / 2, BANDS + 1) * FRAME / RATE).astype(int)  # FFT bins; a narrow band gets one
    bands = np.stack([power[:, a:max(b, a + 1)].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)
    bands = np.log(bands + 1e-10)
    return np.concatenate([bands.mean(0), bands.std(0), [len(wave) / RATE]]).astype(np.float32)


def _audio_features(paths, max_seconds: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    from hftl.data.speech import load_audio

    rows, ok = [], []
    for path in paths:
        try:
            rows.append(spectral_features(load_audio(path, RATE, max_seconds)))
            ok.append(True)
        except Exception as err:  # noqa: BLE001 - soundfile raises several types for broken files
            log.debug("baseline: audio not readable: %s", err)
            ok.append(False)
    return (np.stack(rows) if rows else np.zeros((0, 2 * BANDS + 1), np.float32)), np.asarray(ok)


def _features(kind: str, ds, **kwargs):
    """Inputs of a split as a classical model reads them, and which rows could be read."""
    if kind == "image" and type(ds.features["image"]).__name__ in ("Array2D", "Array3D"):  # embedded sets: no decoding
        return _shrink(ds.with_format("numpy", columns=["image"])[:]["image"]), np.ones(len(ds), bool)
    values = ds[kind]
    if kind == "text":
        return [str(v) for v in values], np.ones(len(values), bool)
    return _image_features(values) if kind == "image" else _audio_features(values, **kwargs)


def _first_stage(kind: str):
    """Features a logistic regression reads well: TF-IDF of words and word pairs, else standardised numbers."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1) if kind == "text" else StandardScaler()


def _scores(metrics: list[str], proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The run's metrics, and the cross-entropy ``loss`` as the run computes it, from class probabilities."""
    from hftl.metrics import compute_metrics

    scores = compute_metrics(metrics, proba.argmax(-1).tolist(), labels.tolist()) if len(labels) else {}
    picked = proba[np.arange(len(labels)), labels] if len(labels) else np.ones(1)
    scores["loss"] = float(-np.log(np.clip(picked, 1e-12, 1)).mean())
    return scores


def _subset(n: int, labels: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` row indices, stratified by label, in a fixed order."""
    if n <= limit:
        return np.arange(n)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(n), train_size=limit, stratify=labels, random_state=0)
    return np.sort(keep)


def classical(kind: str, splits, metrics: list[str], num_labels: int, **kwargs) -> dict:
    """The classical baseline of the modality: C picked on validation, then scored on validation and test."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, y = {}, {}
    train = splits["train"]
    rows = _subset(len(train), np.asarray(train["label"]), MAX_FIT)  # before decoding: only these are read
    for name, ds in (("train", train.select(rows) if len(rows) < len(train) else train),
                     ("validation", splits["validation"]), ("test", splits["test"])):
        feats, ok = _features(kind, ds, **kwargs)
        y[name] = np.asarray(ds["label"])[ok]
        x[name] = [f for f, good in zip(feats, ok, strict=True) if good] if kind == "text" else feats  # decoded only
    first = _first_stage(kind).fit(x["train"])
    z = {name: first.transform(x[name]) for name in x}  # fitted once, shared by every C
    best = None
    for c in C_GRID:
        with warnings.catch_warnings():  # not fully converged at MAX_ITER: a baseline, not a tuned model
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=0).fit(z["train"], y["train"])
        score = _scores(["accuracy"], _full_proba(model, z["validation"], num_labels), y["validation"])["accuracy"]
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    out = {name: _scores(metrics, _full_proba(model, z[name], num_labels), y[name]) for name in ("validation", "test")}
    out["C"], out["fit_examples"] = c, len(y["train"])
    return out


def _full_proba(model, x, num_labels: int) -> np.ndarray:
    """Probabilities over every class (a class absent from train gets 0)."""
    proba = np.zeros((x.shape[0], num_labels))
    if x.shape[0]:
        proba[:, model.classes_] = model.predict_proba(x)
    return proba


def majority(splits, metrics: list[str], num_labels: int) -> dict:
    """Always the most frequent train class; its loss uses the train class frequencies as probabilities."""
    counts = np.bincount(np.asarray(splits["train"]["label"]), minlength=num_labels)
    prior = counts / counts.sum()
    proba = np.zeros(num_labels)
    proba[counts.argmax()] = 1.0
    out = {}
    for name in ("validation", "test"):
        labels = np.asarray(splits[name]["label"])
        out[name] = _scores(metrics, np.tile(proba, (len(labels), 1)), labels)
        out[name]["loss"] = float(-np.log(np.clip(prior[labels], 1e-12, 1)).mean())
    return out


def score_baselines(splits, metrics: list[str], *, max_seconds: float = 10.0) -> dict:
    """``{"majority": {...}, "<kind>_logreg": {...}}``, each with ``validation`` and ``test`` scores (the run's
    ``metrics`` and ``loss``) and ``seconds``; from the raw ``load_splits`` splits (before encoding).

    Example:
        >>> score_baselines(load_splits(cfg.data), ["accuracy"])["majority"]["test"]  # doctest: +SKIP
        {'accuracy': 0.5, 'loss': 0.693}
    """
    kind = input_kind(splits["train"])
    num_labels = len(splits["train"].features["label"].names)
    out = {}
    start = time.perf_counter()
    out["majority"] = majority(splits, metrics, num_labels)
    out["majority"]["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    out[NAMES[kind]] = classical(kind, splits, metrics, num_labels, **({"max_seconds": max_seconds}
                                                                        if kind == "audio" else {}))
    out[NAMES[kind]]["seconds"] = time.perf_counter() - start
    return out


def _better(a: float, b: float, metric: str) -> bool:
    return a < b if metric == "loss" else a > b


def best_baseline(baselines: dict, metric: str, split: str) -> tuple[str, float] | None:
    """The name and score of the strongest baseline on ``split`` by ``metric``; None when none has the metric."""
    scored = [(name, b[split][metric]) for name, b in baselines.items() if metric in b.get(split, {})]
    if not scored:
        return None
    return min(scored, key=lambda s: s[1]) if metric == "loss" else max(scored, key=lambda s: s[1])


def guard_lines(scores: dict, baselines: dict, metric: str, split: str = "test") -> tuple[list[str], list[str]]:
    """Lines that print the run's score beside each baseline's, and warnings for each baseline it does not beat.

    Example:
        >>> lines, warnings = guard_lines(metrics["test"], metrics["baselines"], "accuracy")  # doctest: +SKIP
    """
    if metric not in scores:
        return [], []
    mine = scores[metric]
    lines = [f"{split} {metric}: this run {mine:.4f} | " + " | ".join(
        f"{name} {b[split][metric]:.4f}" for name, b in baselines.items() if metric in b.get(split, {}))]
    warnings = [f"this run's model does not beat the {name} baseline on {split} {metric} ({mine:.4f} vs "
                f"{b[split][metric]:.4f}): check the learning rate, the epochs and the strategy, or use the baseline"
                for name, b in baselines.items()
                if metric in b.get(split, {}) and not _better(mine, b[split][metric], metric)
                and not math.isnan(mine)]
    return lines, warnings


def run_baselines(splits, cfg, accelerator, task=None) -> dict:
    """``score_baselines`` for a run (``{}`` when ``eval.baselines`` is off, or the task (``hftl.tasks``) has no
    baselines: they predict one class per input): fitted on the main process and shared with the others
    (``train.stop_below_baseline`` stops every process at once); their validation scores printed.

    Raises ConfigError when ``train.stop_below_baseline`` is set for a task without baselines.

    Example:
        >>> baselines = run_baselines(splits, cfg, accelerator, task)  # doctest: +SKIP
    """
    if not cfg.eval.baselines:
        return {}
    if task is not None and not getattr(task, "baselines", False):
        if cfg.train.stop_below_baseline:
            from hftl.config import ConfigError

            raise ConfigError(f"train.stop_below_baseline={cfg.train.stop_below_baseline} needs baselines, which "
                              f"task.name={task.name} does not have (they are single-label classifiers): set it to 0")
        accelerator.print(f"baselines: none for task.name={task.name} (eval.baselines scores single-label "
                          "classifiers only)")
        return {}
    out = [score_baselines(splits, cfg.eval.metrics, max_seconds=cfg.data.max_seconds)
           if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(out)
    metric = cfg.train.metric_for_best
    accelerator.print(f"baselines, validation {metric}: " + ", ".join(
        f"{name} {b['validation'].get(metric, float('nan')):.4f}" for name, b in out[0].items())
        + f" ({sum(b['seconds'] for b in out[0].values()):.1f} s)")
    return out[0]


def report_guard(metrics: dict, cfg, accelerator) -> list[str]:
    """Print the run's test score beside the baselines' and a warning for each baseline it does not beat (main
    process); return the warnings."""
    if not metrics.get("baselines"):
        return []
    lines, warnings = guard_lines(metrics["test"], metrics["baselines"], cfg.train.metric_for_best)
    for line in lines:
        accelerator.print(line)
    for warning in warnings:
        accelerator.print(f"WARNING: {warning}")
    return warnings
