"""The run report: ``output_dir/report.html`` with its figures in ``output_dir/report/``, built from the files of
the run directory alone (``config.yaml``, ``metrics.json``, ``predictions.jsonl``), so ``hftl report RUN_DIR``
rebuilds it any time.

It shows the test scores beside the baselines (and says when the run does not beat them), the learning curves
with the best epoch, the confusion matrix and per-class precision, recall and F1, the worst misclassified test
examples (texts, image thumbnails, audio file names), how far each backbone block moved from its pretrained
weights, the trainable and frozen parameters per block, the ladder and the masked stage where the run has them,
and the resolved config. Sections whose data a run does not have are left out.

Example:
    >>> write_report("runs/minilm-rt-lora")  # doctest: +SKIP
    PosixPath('runs/minilm-rt-lora/report.html')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hftl.reporting import page as H
from hftl.reporting.predictions import FILE as PREDICTIONS
from hftl.reporting.predictions import evaluate_with_predictions, read_predictions, write_predictions

__all__ = ["evaluate_with_predictions", "read_predictions", "write_predictions", "write_report", "REPORT"]
log = logging.getLogger(__name__)
REPORT, FIGURES = "report.html", "report"
WORST = 12  # misclassified test examples shown


def _summary(metrics: dict, metric: str) -> list[tuple[str, str]]:
    """Test scores of the run and its baselines, and the guard's verdict."""
    from hftl.baselines import guard_lines

    test, baselines = metrics.get("test"), metrics.get("baselines") or {}
    if not isinstance(test, dict):
        return []
    keys = [k for k, v in test.items() if isinstance(v, (int, float))]
    rows = [["this run", *[test[k] for k in keys]]]
    rows += [[name, *[b.get("test", {}).get(k, float("nan")) for k in keys]] for name, b in baselines.items()]
    parts = [H.table(["test", *keys], rows, classes=["me"] + [""] * len(baselines))]
    if baselines:
        lines, warnings = guard_lines(test, baselines, metric)
        parts.insert(0, H.box(warnings, "warn") if warnings else H.box(
            [f"The run beats every baseline on test {metric}."], "ok"))
    train = metrics.get("train", {})
    if train:
        facts = {k: train[k] for k in ("epochs", "steps", "best_epoch", "examples", "seconds", "trainable_params",
                                       "total_params") if k in train}
        parts.append(H.table(list(facts), [list(facts.values())], left=0))
    return [H.section("Summary", *parts)]


def _curves(run_dir: Path, metrics: dict, metric: str, title: str) -> list[tuple[str, str]]:
    from hftl.reporting.plots import plot_curves

    history = metrics.get("history") or []
    if not history:
        return []
    best = metrics.get("train", {}).get("best_epoch")
    plot_curves(history, run_dir / FIGURES / "curves.png", metric=metric, best_epoch=best,
                baselines=metrics.get("baselines"), title=title)
    keys = list(history[0]["validation"])
    rows = [[h["epoch"], h["train_loss"], *[h["validation"].get(k) for k in keys], h.get("seconds")] for h in history]
    classes = ["best" if h["epoch"] == best else "" for h in history]
    numbers = H.table(["epoch", "train loss", *[f"validation {k}" for k in keys], "seconds"], rows, left=0,
                      classes=classes)
    return [H.section("Learning curves", H.image(f"{FIGURES}/curves.png", "learning curves"),
                      H.para(f"Best epoch (by validation {metric}, kept as the final weights): {best}.", "note"),
                      H.details(f"The {len(rows)} epochs in numbers", numbers))]


def _per_class(rows: list[dict], labels: list[str]) -> tuple[np.ndarray, list[list]]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    index = {name: i for i, name in enumerate(labels)}
    y = [index[r["label"]] for r in rows]
    p = [index[r["predicted"]] for r in rows]
    ids = list(range(len(labels)))
    matrix = confusion_matrix(y, p, labels=ids)
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=ids, zero_division=0)
    table = [[name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i])]
             for i, name in enumerate(labels)]
    return matrix, table


def _test(run_dir: Path, rows: list[dict]) -> list[tuple[str, str]]:
    from hftl.reporting.plots import plot_confusion

    if not rows or "scores" not in rows[0]:  # class probabilities: single-label classification
        return []
    labels = list(rows[0]["scores"])
    matrix, table = _per_class(rows, labels)
    plot_confusion(matrix, labels, run_dir / FIGURES / "confusion.png")
    per_class = H.table(["class", "precision", "recall", "F1", "support"], table)
    return [H.section("Test: confusion and per-class scores",
                      H.row(H.image(f"{FIGURES}/confusion.png", "confusion"), per_class),
                      H.para(f"From {PREDICTIONS} ({len(rows):,} test examples: id, label, predicted, scores).",
                             "note"))]


def _example_cell(run_dir: Path, row: dict, image_of) -> str:
    """The input as the report shows it: the text, a thumbnail, or the file's name."""
    from hftl.reporting.plots import thumbnail

    if image_of is not None:
        path = run_dir / FIGURES / "examples" / f"test-{row['id']}.png"
        try:
            if not path.exists():
                thumbnail(image_of(row), path)
            return H.image(f"{FIGURES}/examples/{path.name}", f"test example {row['id']}", css="thumb")
        except Exception as err:  # noqa: BLE001 - a thumbnail is worth a try, not a failed report
            log.warning("report: no thumbnail for test example %s: %s", row["id"], err)
    if "input" in row:  # a text, cut where it is long
        text = str(row["input"])
        return f'<span class="text">{H.esc(text if len(text) <= 500 else text[:500] + " ...")}</span>'
    if "file" in row:
        return f'<span title="{H.esc(row["file"])}">{H.esc(Path(str(row["file"])).name)}</span>'
    return ""


def _examples(run_dir: Path, rows: list[dict], image_of) -> list[tuple[str, str]]:
    if not rows or "scores" not in rows[0]:
        return []
    wrong = sorted((r for r in rows if not r["correct"] and r.get("id") is not None), key=lambda r: -r["loss"])
    if not wrong:
        return []
    out = []
    for r in wrong[:WORST]:
        out.append([str(r["id"]), H.esc(r["label"]), H.esc(r["predicted"]), H.fmt(r["scores"][r["predicted"]]),
                    H.fmt(r["scores"][r["label"]]), _example_cell(run_dir, r, image_of)])
    body = H.table(["id", "true", "predicted", "p(predicted)", "p(true)", "input"], out, left=6, raw=True)
    body = body.replace('<td class=""><span class="text">', '<td class="text"><span>')
    return [H.section("Worst misclassified", H.para(
        f"The {len(out)} test examples of {len(wrong):,} misclassified whose true class got the lowest probability.",
        "note"), body)]


def _transfer(run_dir: Path, metrics: dict) -> list[tuple[str, str]]:
    from hftl.reporting.plots import plot_drift

    history, parts = metrics.get("history") or [], []
    drifted = [h for h in history if h.get("drift")]
    if drifted:
        plot_drift(history, run_dir / FIGURES / "drift.png")
        blocks = list(drifted[-1]["drift"])
        rows = [[b, *[h["drift"].get(b) for h in drifted]] for b in blocks]
        parts += [H.image(f"{FIGURES}/drift.png", "drift per block"),
                  H.para("Relative change ||W - W0|| / ||W0|| of each block's weights from the pretrained ones after "
                         "each epoch (adapters: the weight update they add when merged).", "note"),
                  H.table(["block", *[f"epoch {h['epoch']}" for h in drifted]], rows)]
    params = metrics.get("parameters") or {}
    if params:
        rows = [[b, c["trainable"], c["frozen"], 100 * c["trainable"] / max(c["trainable"] + c["frozen"], 1)]
                for b, c in params.items()]
        total = [sum(r[1] for r in rows), sum(r[2] for r in rows)]
        rows.append(["all", *total, 100 * total[0] / max(sum(total), 1)])
        parts += [H.para("Trainable and frozen parameters per block (adapters count in their block).", "note"),
                  H.table(["block", "trainable", "frozen", "% trainable"], rows)]
    return [H.section("Transfer: which weights trained and how far they moved", *parts)] if parts else []


def _extras(*dirs: Path) -> list[tuple[str, str]]:
    """Plots other stages drew: the ladder, the masked-modeling stage; a ladder's full rung has its own report.
    ``dirs``: where they may be (a staging folder, and the run directory it is moved into)."""
    out = []

    def there(rel: str) -> bool:
        return any((d / rel).is_file() for d in dirs)

    if there("ladder.png"):
        out.append(H.section("Transfer ladder", H.image("ladder.png", "ladder")))
    if there("pretrained/history.png"):
        out.append(H.section("Masked-modeling stage", H.image("pretrained/history.png", "masked stage")))
    if there(f"full/{REPORT}"):
        out.append(H.section("Full fine-tuning rung", f'<p><a href="full/{REPORT}">its own report</a></p>'))
    return out


def _image_loader(run_dir: Path, rows: list[dict], splits):
    """``row -> stored image`` for thumbnails: the row's image file, else the test split's image (the given splits,
    or the same seeded splits loaded again from the config); None for text and audio."""
    from hftl.data.sources import IMAGE_SUFFIXES

    if not rows or "input" in rows[0]:
        return None
    if "file" in rows[0]:
        return (lambda row: row["file"]) if str(rows[0]["file"]).lower().endswith(IMAGE_SUFFIXES) else None
    if splits is not None and "image" not in splits["test"].column_names:
        return None
    cache = {"test": splits["test"] if splits is not None else None}

    def image_of(row: dict):
        if cache["test"] is None:  # once, and only when a thumbnail is missing
            from hftl.config import load_config
            from hftl.data import load_splits

            cache["test"] = "unavailable"
            cache["test"] = load_splits(load_config(run_dir / "config.yaml").data)["test"]
        if isinstance(cache["test"], str) or "image" not in cache["test"].column_names:
            raise ValueError("the test split has no images, or could not be loaded again from config.yaml")
        return cache["test"][int(row["id"])]["image"]

    return image_of


def _metric_for_best(cfg: dict, metrics: dict) -> str:
    """config.yaml's train.metric_for_best; ``auto``: the task's choice among eval.metrics (for classification on
    imbalanced data the run chose f1, which the recipe passes to write_report; a report built later says accuracy)."""
    metric = cfg.get("train", {}).get("metric_for_best", "auto")
    if metric != "auto":
        return metric
    from hftl.tasks import get_task

    task = get_task(cfg.get("task", {}).get("name", "classification"))
    try:
        return task.auto_best(cfg.get("eval", {}).get("metrics") or list(metrics.get("validation", {})))
    except Exception:  # noqa: BLE001 - a report of an older or partial run still renders
        return "accuracy"


def write_report(run_dir: str | Path, *, splits=None, home: str | Path | None = None,
                 metric_for_best: str | None = None) -> Path:
    """Build ``run_dir/report.html`` and its figures in ``run_dir/report/`` from the run directory's files.

    ``splits``: the run's raw splits (``hftl.load_splits``), for image thumbnails; without them the test split is
    loaded again from ``config.yaml`` when the report shows images. Works on a staging directory too: ``home`` is
    then the run directory it is moved into (its name, its other stages, its TensorBoard folder).
    ``metric_for_best``: the metric the run chose checkpoints by (the recipe passes what ``auto`` resolved to); by
    default config.yaml's, with ``auto`` read as the task's first metric that the run reports.

    Example:
        >>> write_report("runs/minilm-rt-lora")  # doctest: +SKIP
    """
    import yaml

    run_dir = Path(run_dir)
    home = Path(home) if home is not None else run_dir
    cfg_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    cfg = yaml.safe_load(cfg_text) or {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    metric = metric_for_best or _metric_for_best(cfg, metrics)
    model, strategy = cfg.get("model", {}).get("name", "?"), cfg.get("strategy", {}).get("name", "?")
    data = cfg.get("data", {}).get("name", "?")
    rows = read_predictions(run_dir)
    image_of = _image_loader(run_dir, rows, splits)
    sections = [*_summary(metrics, metric), *_curves(run_dir, metrics, metric, f"{Path(model).name} · {strategy}"),
                *_test(run_dir, rows), *_examples(run_dir, rows, image_of), *_transfer(run_dir, metrics),
                *_extras(run_dir, home)]
    if (home / "tensorboard").is_dir():
        sections.append(H.section("Logs", H.para(f"Per-step loss and learning rates, per-epoch scores and drift: "
                                                 f"tensorboard --logdir {home / 'tensorboard'}")))
    sections.append(H.section("Config", H.para("The resolved config (config.yaml):", "note"),
                              f"<pre>{H.esc(cfg_text)}</pre>"))
    html = H.page(f"hftl run: {home.name}", f"{model} · strategy {strategy} · data {data}", sections)
    path = run_dir / REPORT
    path.write_text(html, encoding="utf-8")
    return path
