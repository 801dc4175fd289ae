"""The ``hftl`` command: every recipe, and the run-directory tools.

    hftl finetune --config recipes/configs/text/minilm-rt-lora.yaml train.epochs=1
    hftl config                      # every config key with its default and help
    hftl push RUN_DIR USER/REPO      # push a trained run to the Hub

Heavy libraries are imported only by the command that needs them, so ``hftl --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

RECIPES = {"finetune": "Fine-tune with any transfer strategy (recipes/finetune.py).",
           "ladder": "Zero-shot, few-shot curve and full fine-tuning on one plot (recipes/ladder.py).",
           "pretrain": "Masked-modeling pretraining, then fine-tuning if asked (recipes/pretrain_masked.py)."}
MODULES = {"pretrain": "pretrain_masked"}  # command -> recipe module, where they differ
USAGE = "usage: hftl {finetune,ladder,pretrain,config,push,report} ...\n\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in {**RECIPES, "config": "List every config key with its help.",
                                               "push": "Push RUN_DIR to the Hub: hftl push RUN_DIR REPO_ID [--what "
                                                       "auto|model|adapter|merged] [--private] [--revision BRANCH]",
                                               "report": "Rebuild RUN_DIR/report.html from the run directory: hftl "
                                                         "report RUN_DIR"}.items())


def _push(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hftl push")
    parser.add_argument("run_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--what", default="auto", choices=["auto", "model", "adapter", "merged"])
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--message", default=None)
    args = parser.parse_args(argv)
    from hftl.hub import push

    url = push(args.run_dir, args.repo_id, what=args.what, private=args.private, revision=args.revision,
               commit_message=args.message)
    print(url)
    return 0


def _report(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hftl report", description="Rebuild RUN_DIR/report.html and its figures.")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from pathlib import Path

    from hftl.config import ConfigError

    if not (Path(args.run_dir) / "metrics.json").is_file():
        raise ConfigError(f"{args.run_dir} has no metrics.json: give the output_dir of a finished run")
    from hftl.reporting import write_report

    print(write_report(args.run_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    from hftl.config import ConfigError

    try:
        if command in RECIPES:
            from hftl.config import parse_args

            cfg = parse_args(rest, prog=f"hftl {command}")
            importlib.import_module(f"hftl.recipes.{MODULES.get(command, command)}").main(cfg)
            return 0
        if command == "config":
            from hftl.config import describe

            print(describe())
            return 0
        if command == "push":
            return _push(rest)
        if command == "report":
            return _report(rest)
    except ConfigError as err:
        print(f"hftl {command}: config error: {err}", file=sys.stderr)
        return 2
    print(f"hftl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
