"""One ladder plot and table from several ``bench/fewshot_prior.py`` results of the same task (same config, model,
split, zero-shot classifier), each run over its own ks and methods: e.g. the encoder-tuning methods and the setfit
package at k = 8 and 16, the frozen-feature methods at the other ks.

    python bench/fewshot_prior_plot.py bench/results/fewshot_prior_rt.json \\
        bench/results/fewshot_prior_rt_frozen.json \\
        --figure docs/figures/fewshot-prior-rt.png

A (method, k) measured in two files is refused: each cell has one run of 5 support sets behind it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fewshot_prior import PLOTTED, table  # noqa: E402

from hftl.report import plot_ladder  # noqa: E402

MERGED = ("few_shot", "few_shot_transductive", "seconds_per_support_set", "paired")


def combine(results: list[dict]) -> dict:
    """The first result with the per-method, per-k cells of the others added; ValueError when the files disagree on
    the task (config, test rows, zero-shot accuracy) or measure one cell twice."""
    out = json.loads(json.dumps(results[0]))
    for other in results[1:]:
        for key in ("config", "test_rows"):
            if other["settings"][key] != out["settings"][key]:
                raise ValueError(f"results of different tasks: settings.{key} {other['settings'][key]!r}")
        if abs(other["zero_shot"]["accuracy"] - out["zero_shot"]["accuracy"]) > 1e-9:
            raise ValueError("results with different zero-shot classifiers")
        for part in MERGED:
            for method, per_k in other.get(part, {}).items():
                mine = out.setdefault(part, {}).setdefault(method, {})
                twice = set(mine) & set(per_k)
                if twice:
                    raise ValueError(f"{part}.{method} measured twice at k={sorted(twice, key=int)}")
                mine.update(per_k)
    for part in MERGED:
        for method in out.get(part, {}):
            out[part][method] = dict(sorted(out[part][method].items(), key=lambda kv: int(kv[0])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--figure", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    out = combine([json.loads(Path(p).read_text()) for p in args.results])
    table(out)
    shown = dict(
        out,
        few_shot={m: v for m, v in out["few_shot"].items() if m in PLOTTED},
        few_shot_transductive={m: v for m, v in out["few_shot_transductive"].items() if m == "zs_setfit"},
    )
    s = out["settings"]
    title = args.title or f"{s['model'].split('/')[-1]} on {Path(s['data']).name} (test, {s['test_rows']} rows)"
    plot_ladder(shown, args.figure, title=title, full_label="all data, logistic regression")
    print(f"written to {args.figure}")


if __name__ == "__main__":
    main()
