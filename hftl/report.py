"""Plots of a run: the transfer ladder (accuracy versus labelled examples per class).

Drawn with matplotlib's object API on an Agg canvas: no pyplot state, no display needed, safe in threads and
on servers.

Example:
    >>> plot_ladder(json.load(open("runs/ladder/metrics.json")), "runs/ladder/ladder.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

_STYLE = {"inductive": "-", "transductive": "--"}


def _draw_curves(ax, few_shot: dict, kind: str, colors: dict) -> None:
    """One curve per method (its colour shared by both kinds), nudged sideways so that error bars stay apart."""
    for method, per_k in few_shot.items():
        ks = sorted(per_k, key=int)
        nudge = 2 ** (0.03 * (list(colors).index(method) - (len(colors) - 1) / 2))
        x = [int(k) * nudge for k in ks]
        mean = [per_k[k]["mean"] for k in ks]
        lower = [per_k[k]["mean"] - per_k[k]["ci95"][0] for k in ks]
        upper = [per_k[k]["ci95"][1] - per_k[k]["mean"] for k in ks]
        label = method if kind == "inductive" else f"{method} (transductive)"
        ax.errorbar(
            x,
            mean,
            yerr=[lower, upper],
            fmt="o" + _STYLE[kind],
            capsize=3,
            markersize=4,
            label=label,
            color=colors[method],
            alpha=1.0 if kind == "inductive" else 0.6,
        )


def plot_ladder(
    metrics: dict, path: str | Path, *, title: str = "", metric: str = "accuracy", full_label: str = "full fine-tuning"
) -> Path:
    """Few-shot curves (mean with 95% CI error bars, log-x), zero-shot and full fine-tuning as horizontal lines.

    ``metrics`` is the ladder's ``metrics.json``: ``few_shot`` (and ``few_shot_transductive``) as
    ``{method: {k: {"mean", "ci95"}}}``, ``zero_shot[metric]``, ``full["test"][metric]``, ``majority``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = list(metrics.get("few_shot", {}))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    _draw_curves(ax, metrics.get("few_shot", {}), "inductive", colors)
    _draw_curves(ax, metrics.get("few_shot_transductive", {}), "transductive", colors)
    lines = [
        ("zero_shot", metrics.get("zero_shot", {}).get(metric), "tab:gray", "-."),
        (full_label, metrics.get("full", {}).get("test", {}).get(metric), "black", "-"),
        ("majority class", metrics.get("majority"), "tab:red", ":"),
    ]
    for label, value, color, style in lines:
        if value is not None:
            ax.axhline(value, color=color, linestyle=style, linewidth=1.2, label=f"{label} ({value:.3f})")
    ax.set_xscale("log", base=2)
    ks = sorted({int(k) for per_k in metrics.get("few_shot", {}).values() for k in per_k})
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_title(title or "transfer ladder")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
