"""The report's figures, drawn with matplotlib's object API on an Agg canvas (no display, no pyplot state).

Example:
    >>> plot_curves(metrics["history"], "runs/x/report/curves.png", metric="accuracy")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_curves(history: list[dict], path: str | Path, *, metric: str = "accuracy", best_epoch: int | None = None,
                baselines: dict | None = None, title: str = "") -> Path:
    """Left: train and validation loss per epoch. Right: every validation score per epoch, with the baselines'
    validation ``metric`` as dotted lines. The best epoch is marked on both (a dashed line and a star)."""
    fig = _figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if all("loss" in h["validation"] for h in history):
        left.plot(epochs, [h["validation"]["loss"] for h in history], "s-", label="validation loss")
    scores = [k for k in history[0]["validation"] if k != "loss"] if history else []
    for i, key in enumerate(scores):
        style = "o-" if key == metric else "s--"
        right.plot(epochs, [h["validation"].get(key, np.nan) for h in history], style, color=f"C{i + 2}",
                   label=f"validation {key}", linewidth=2 if key == metric else 1)
    shown = metric if metric in scores else None
    for j, (name, b) in enumerate((baselines or {}).items()):
        value = b.get("validation", {}).get(shown) if shown else None
        if value is not None:
            right.axhline(value, linestyle=":", color=f"C{7 + j}", label=f"{name} ({value:.3f})")
    if best_epoch and best_epoch in epochs:
        h = history[epochs.index(best_epoch)]
        for ax, key, where in ((left, "loss", h["validation"]), (right, shown, h["validation"])):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=0.8)
            if key in where:
                ax.plot([best_epoch], [where[key]], "*", color="black", markersize=13,
                        label=f"best epoch {best_epoch}")
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel in ((left, "loss"), (right, "validation score")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "learning curves", fontsize=10)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Rows: true class, columns: predicted; colour by the row's share, the count written in each cell."""
    n = len(labels)
    size = min(2.4 + 0.4 * n, 14)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8 if n <= 12 else 6,
                        color="white" if shares[i, j] > 0.5 else "black")
    ticks = labels if n <= 40 else [""] * n
    ax.set_xticks(range(n), ticks, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(range(n), ticks, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (test)", fontsize=10)
    return _save(fig, path)


def _drift_axes(ax, history: list[dict], label: str = "", color=None, last_only: bool = False) -> None:
    rows = [h for h in history if h.get("drift")]
    if last_only:
        rows = rows[-1:]
    if not rows:
        return
    blocks = list(rows[-1]["drift"])
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, h in enumerate(rows):
        shade = color or cmap(0.15 + 0.7 * i / max(len(rows) - 1, 1))
        name = f"{label} epoch {h['epoch']}".strip()
        ax.plot(range(len(blocks)), [h["drift"].get(b, np.nan) for b in blocks], "o-", color=shade, label=name)
    ax.set_xticks(range(len(blocks)), [b.replace("block_", "") for b in blocks], fontsize=8)
    ax.set_xlabel("block (embeddings, then blocks from the input up)")


def plot_drift(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Relative drift ``||W - W0|| / ||W0||`` of each backbone block, one line per epoch (lighter: later)."""
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    _drift_axes(ax, history)
    ax.set_ylabel("||W - W0|| / ||W0||")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "how far each block moved from its pretrained weights", fontsize=10)
    return _save(fig, path)


def plot_drift_comparison(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Drift per block of several runs (``{label: history}``), each run's epochs in its own colour; left on a
    linear scale, right on a log scale (where small drifts show; a block that did not move has no point there)."""
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for ax, scale in zip(axes, ("linear", "log"), strict=True):
        for i, (label, history) in enumerate(runs.items()):
            rows = [h for h in history if h.get("drift")]
            for j, h in enumerate(rows):
                alpha = 0.35 + 0.65 * (j + 1) / len(rows)
                blocks = list(h["drift"])
                values = [h["drift"][b] if h["drift"][b] > 0 or scale == "linear" else np.nan for b in blocks]
                ax.plot(range(len(blocks)), values, "o-", color=f"C{i}", alpha=alpha,
                        label=f"{label}, epoch {h['epoch']}")
            if rows:
                blocks = list(rows[-1]["drift"])
                ax.set_xticks(range(len(blocks)), [b.replace("block_", "") for b in blocks], fontsize=8)
        ax.set_yscale(scale)
        ax.set_xlabel("block (embeddings, then blocks from the input up)")
        ax.set_ylabel("||W - W0|| / ||W0||" + (" (log)" if scale == "log" else ""))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "drift from the pretrained weights per block", fontsize=10)
    return _save(fig, path)


def thumbnail(value, path: str | Path, size: int = 96) -> Path:
    """A small PNG of a stored image (any form ``hftl.data.vision.to_pil`` reads), upscaled without blur."""
    from PIL import Image

    from hftl.data.vision import to_pil

    image = to_pil(value)
    scale = size / max(image.size)
    resample = Image.NEAREST if scale > 1 else Image.BILINEAR
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
