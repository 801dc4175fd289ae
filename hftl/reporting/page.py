"""HTML pieces of the run report: one self-contained page (inline style, no script, no network), its PNGs in
``report/`` beside it, so it opens from a copied folder, an archive or a browser with no internet.

Example:
    >>> html = page("minilm-rt-lora", "", [section("Learning curves", image("report/curves.png"))])
"""

from __future__ import annotations

import html
import math

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:3px;
margin-top:28px}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right;vertical-align:top}th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.best td{background:#eef7ee}tr.me td{font-weight:600}
img.fig{max-width:100%;border:1px solid #eee}img.thumb{image-rendering:pixelated;border:1px solid #ccc}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:4px;margin:8px 0}
.ok{background:#e8f4ea;border:1px solid #9ccaa5;padding:8px 12px;border-radius:4px;margin:8px 0}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:.85em;max-height:420px}
.note{color:#666;font-size:.9em}td.text{max-width:560px;text-align:left;white-space:normal}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}summary{cursor:pointer;color:#345}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """Numbers to 4 significant places, counts with separators, the rest as text."""
    if isinstance(value, bool) or value is None:
        return esc(value if value is not None else "")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return esc(value)


def table(header: list[str], rows: list[list], *, left: int = 1, classes: list[str] | None = None,
          raw: bool = False) -> str:
    """A table; the first ``left`` columns left-aligned; ``classes`` per row (``best``, ``me``); ``raw`` cells
    are HTML already (else escaped and formatted)."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c if raw else fmt(c)}</td>'
                        for i, c in enumerate(row))
        body.append(f'<tr class="{(classes or [""] * len(rows))[r]}">{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def image(src: str, alt: str = "", width: int | None = None, css: str = "fig") -> str:
    size = f' width="{width}"' if width else ""
    return f'<img class="{css}" src="{esc(src)}" alt="{esc(alt)}"{size}>'


def section(title: str, *parts: str) -> tuple[str, str]:
    """A titled part of the page: ``(title, body)``; ``page`` adds the heading, the anchor and the contents line."""
    return title, "".join(parts)


def details(summary: str, body: str) -> str:
    """A part the reader opens (no script: HTML's own disclosure element)."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def row(*parts: str) -> str:
    """Parts side by side, wrapping on a narrow window."""
    return '<div class="row">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def para(text: str, css: str = "") -> str:
    return f'<p class="{css}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


def box(lines: list[str], css: str) -> str:
    return f'<div class="{css}">' + "<br>".join(esc(line) for line in lines) + "</div>"


def page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    """The whole document: heading, a line of links to the sections, the sections."""
    anchors = [t.lower().replace(" ", "-") for t, _ in sections]
    toc = " · ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, (t, _) in zip(anchors, sections, strict=True))
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(t)}</h2>{b}</section>'
                   for a, (t, b) in zip(anchors, sections, strict=True))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>'
            f'<p class="note">{toc}</p>{body}</body></html>\n')
