"""The ``hftl`` command: every recipe, and the run-directory tools.

    hftl finetune --config recipes/configs/text/minilm-rt-lora.yaml train.epochs=1
    hftl config                      # every config key with its default, allowed values and help
    hftl push RUN_DIR USER/REPO      # push a trained run to the Hub

Heavy libraries are imported only by the command that needs them, so ``hftl --help`` and a config error answer in
well under a second. Every error reaches the terminal as one line that names the problem and the fix; ``--debug``
(anywhere on the line) or ``HFTL_DEBUG=1`` shows the traceback instead. Exit codes: 0 success; 2 bad input or
config found before compute; 1 a failure during compute; 3 training diverged (a non-finite loss).
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import sys
import traceback

RECIPES = {"finetune": "Fine-tune with any transfer strategy (recipes/finetune.py).",
           "ladder": "Zero-shot, few-shot curve and full fine-tuning on one plot (recipes/ladder.py).",
           "pretrain": "Masked-modeling pretraining, then fine-tuning if asked (recipes/pretrain_masked.py)."}
MODULES = {"pretrain": "pretrain_masked"}  # command -> recipe module, where they differ
USAGE = ("usage: hftl {finetune,ladder,pretrain,select,predict,evaluate,configs,config,push,report} ... [--debug] | "
         "hftl --version\n(hftl COMMAND --help: what it does, what it writes, an example)\n\n") + "\n".join(
    f"  {name:<10} {text}" for name, text in {
        **RECIPES,
        "select": "Rank candidate backbones for the data before fine-tuning: hftl select --candidates A,B "
                  "[--finetune STRATEGY] (hftl/selection.py).",
        "predict": "What a trained model predicts for new inputs (labels, scores, values, tags, transcripts, boxes): "
                   "hftl predict RUN_DIR_OR_REPO_ID INPUTS...",
        "evaluate": "The run's metrics on a labelled file: hftl evaluate RUN_DIR_OR_REPO_ID FILE",
        "configs": "List the shipped configs and what each needs first.",
        "config": "List every config key with its help.",
        "push": "Push RUN_DIR to the Hub: hftl push RUN_DIR REPO_ID [--what auto|model|adapter|merged] "
                "[--private] [--revision BRANCH]",
        "report": "Rebuild RUN_DIR/report.html from the run directory: hftl report RUN_DIR"}.items())
# What each recipe command does and writes, with one example: its --help, before the keys.
ABOUT = {
    "finetune": "Fine-tune model.name on data.name with the transfer strategy strategy.name (linear_probe, head, "
                "full, freeze_n, or any peft method).\nWrites output_dir/: config.yaml, metrics.json, model/ "
                "(loadable with hftl.load), README.md (the model card), checkpoints/ (for train.resume=true).\n\n"
                "example: hftl finetune --config recipes/configs/text/minilm-rt-lora.yaml train.epochs=1 "
                "output_dir=runs/lora\n",
    "ladder": "Measure the transfer ladder on one task: zero-shot, few-shot at each shots.ks (several seeds), and "
              "full fine-tuning with strategy.name.\nWrites output_dir/: config.yaml, metrics.json, ladder.png, and "
              "full/ (the fine-tuning run directory) when shots.full=true.\n\n"
              "example: hftl ladder --config recipes/configs/text/minilm-rt-ladder.yaml \"shots.ks=[4,16]\"\n",
    "pretrain": "Continue pretraining model.name with its masked-modeling objective on unlabelled inputs, then "
                "fine-tune with strategy.name when pretrain.then_finetune=true.\nWrites output_dir/pretrained/ (the "
                "model in Hub format), config.yaml, metrics.json, and the fine-tuning run directory if asked.\n\n"
                "example: hftl pretrain --config recipes/configs/text/minilm-rt-pretrain.yaml\n",
}
ABOUT["select"] = (
    "Rank the backbones select.candidates (--candidates A,B,...) for data.name from one frozen pass each over the "
    "train split (data.max_train_samples is the sample): LogME, leave-one-out kNN accuracy, LEEP where a candidate "
    "has a source classification head, each with its cost. The features go through linear_probe's cache.\n"
    "--finetune STRATEGY (select.finetune) then fine-tunes each candidate and reports Kendall's tau of each score "
    "with its test train.metric_for_best.\nWrites output_dir/: config.yaml, selection.json, and with --finetune "
    "selection.png and finetune/ (one run directory per candidate).\n\n"
    "example: hftl select --config recipes/configs/text/minilm-rt-linear_probe.yaml --candidates "
    "sentence-transformers/all-MiniLM-L6-v2,runs/minilm-2l data.max_train_samples=2000 "
    "output_dir=runs/select\n")
SELECT_FLAGS = {"--candidates": "select.candidates", "--finetune": "select.finetune"}
# hftl's errors that mean bad input or config found before compute (exit 2), by the name of a class of hftl in their
# MRO (subclasses such as RunDirError included): the CLI does not import the heavy modules that define most of them.
BAD_INPUT = {"ConfigError", "DataError", "ModelNotFoundError", "HubAccessError", "AssetMissingError"}
DIVERGED = {"TrainingDiverged"}
DEBUG_HINT = "(run again with --debug for the traceback)"


def _parser(prog: str, about: str, writes: str, example: str):
    """An argparse parser whose help says what the command does, what it writes, and one example."""
    import argparse

    return argparse.ArgumentParser(prog=prog, description=f"{about}\n\nWrites: {writes}",
                                   epilog=f"example: {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _predict(argv: list[str], evaluate: bool = False) -> int:
    import json

    if evaluate:
        parser = _parser("hftl evaluate", "Measure a trained model on a labelled file with the metrics its run "
                         "reports (its task's: eval.metrics for classification; f1_micro...; rmse...; seqeval F1; "
                         "WER; COCO mAP from a COCO JSON file), its inputs converted as in training.",
                         "the metrics as one JSON object on stdout; nothing on disk.",
                         "hftl evaluate runs/demo test.csv")
    else:
        parser = _parser("hftl predict", "What a trained model (a run directory, its model/ folder, or a Hub repo "
                         "id) predicts for new inputs, read by its task as its run read it, the inputs converted as "
                         "in training.",
                         "one JSON line per input on stdout (classification {input, label, score, scores}; "
                         "multi_label labels, scores; regression value; token_classification words, tags, entities;"
                         " ctc/seq2seq_asr text; detection objects), or a table with --format table; nothing on "
                         "disk.",
                         'hftl predict runs/demo "a gripping film" "a dull mess"   |   hftl predict runs/demo '
                         'new.csv --format table   |   cat texts.txt | hftl predict runs/demo -')
    parser.add_argument("model", metavar="RUN_DIR_OR_REPO_ID")
    if evaluate:
        parser.add_argument("labelled", help="CSV/TSV/JSON/JSONL/parquet file with inputs and labels, or a folder "
                                             "with one subfolder of images or audio per class")
        parser.add_argument("--label-column", default=None, help="the label column (default: the run's "
                                                                  "data.label_column, else 'label')")
    else:
        parser.add_argument("inputs", nargs="+", help="texts, a CSV/TSV/JSON/JSONL/parquet file, image or audio "
                                                      "files, a folder of them, or - for stdin (one per line)")
        parser.add_argument("--format", choices=["jsonl", "table"], default="jsonl")
        parser.add_argument("--threshold", type=float, default=None,
                            help="detection: the lowest score of an object shown (default 0.5); multi_label: the "
                                 "decision threshold (default: the one the run tuned and saved)")
    parser.add_argument("--column", default=None, help="the input column of a file (default: the run's "
                                                      "data.input_column / text_column, else text, image, audio...)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from hftl.inference import evaluate_file, format_jsonl, format_table, load_predictor, predict

    predictor = load_predictor(args.model)
    if evaluate:
        print(json.dumps(evaluate_file(predictor, args.labelled, batch_size=args.batch_size, column=args.column,
                                       label_column=args.label_column), allow_nan=False))
        return 0
    inputs = args.inputs[0] if len(args.inputs) == 1 and _is_source(args.inputs[0]) else args.inputs
    rows = predict(predictor, inputs, batch_size=args.batch_size, column=args.column, threshold=args.threshold)
    print(format_table(rows) if args.format == "table" else format_jsonl(rows))
    return 0


def _is_source(arg: str) -> bool:
    """One argument that names many inputs: stdin, a folder, or a table file."""
    from pathlib import Path

    return arg == "-" or Path(arg).is_dir() or (Path(arg).is_file() and Path(arg).suffix.lower() in
                                                  (".csv", ".tsv", ".json", ".jsonl", ".parquet"))


def _configs(argv: list[str]) -> int:
    parser = _parser("hftl configs", "List the configs shipped with hftl: what each runs, its command, and what "
                     "it needs first (a script that makes its data, a package, a checkpoint).", "nothing.",
                     "hftl configs")
    parser.parse_args(argv)
    from hftl.shipped import configs_text

    print(configs_text())
    return 0


def _push(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hftl push", description="Push a finished run directory to the Hub: the "
                                     "model (or adapter + head), processor, card and metrics.\n\nWrites: one commit "
                                     "to REPO_ID (created if new); nothing local. Local paths are left out of what is "
                                     "pushed; an adapter trained on a local base is refused (push --what merged).",
                                     epilog="example: hftl push runs/lora alice/minilm-rt-lora --private",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    parser = argparse.ArgumentParser(prog="hftl report", description="Rebuild RUN_DIR/report.html and its figures."
                                     "\n\nWrites: RUN_DIR/report.html and RUN_DIR/report/ (figures).",
                                     epilog="example: hftl report runs/demo",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from pathlib import Path

    from hftl.config import ConfigError

    if not (Path(args.run_dir) / "metrics.json").is_file():
        raise ConfigError(f"{args.run_dir} has no metrics.json: give the output_dir of a finished run")
    from hftl.reporting import write_report

    print(write_report(args.run_dir))
    return 0


def select_overrides(argv: list[str]) -> list[str]:
    """``hftl select``'s flags as config overrides: ``--candidates a,b`` (or ``--candidates=a,b``) is
    ``select.candidates=["a", "b"]``, ``--finetune lora`` is ``select.finetune=lora``; the rest passes through."""
    import json

    out, argv = [], list(argv)
    while argv:
        arg = argv.pop(0)
        flag, _, value = arg.partition("=")
        if flag in SELECT_FLAGS:
            if not value:
                if not argv:
                    from hftl.config import ConfigError

                    raise ConfigError(f"hftl select: {flag} needs a value, e.g. {flag} "
                                      f"{'model_a,model_b' if flag == '--candidates' else 'linear_probe'}")
                value = argv.pop(0)
            if flag == "--candidates":
                value = json.dumps([c.strip() for c in value.split(",") if c.strip()])
            out.append(f"{SELECT_FLAGS[flag]}={value}")
        else:
            out.append(arg)
    return out


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__ if cls.__module__.split(".")[0] == "hftl"}


def _chain(err: BaseException):
    """The error and those it was raised from or during (``__cause__``, ``__context__``), once each."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


def disk_full(err: BaseException, output_dir: str | None) -> str | None:
    """The path being written if ``err`` is a full disk (ENOSPC, or a writer that hides it: safetensors says
    "os error 28", torch's zip writer only "unexpected pos" / "file write failed"), else None."""
    for e in _chain(err):
        text = str(e)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in text \
                or "os error 28" in text:
            return str(getattr(e, "filename", None) or output_dir or ".")
        if output_dir and ("inline_container" in text or "file write failed" in text):
            probe = next((p for p in (output_dir, *map(str, _parents(output_dir))) if os.path.exists(p)), ".")
            if shutil.disk_usage(probe).free < 64 * 2**20:  # torch's writer failed on a (nearly) full disk
                return output_dir
    return None


def _parents(path: str):
    from pathlib import Path

    return Path(path).absolute().parents


def explain(err: BaseException, command: str, output_dir: str | None = None) -> tuple[str, int]:
    """The one line printed for ``err`` and the exit code: 2 bad input or config (before compute), 3 diverged,
    1 any other failure. hftl's own errors already name the problem and the fix; others get their type and a hint."""
    full = None if "DiskFullError" in _names(err) else disk_full(err, output_dir)  # that one names its own fix
    if full is not None:
        return (f"hftl {command}: no space left on device while writing {full}: free space or set output_dir "
                f"elsewhere", 1)
    names = _names(err)
    code = 2 if names & BAD_INPUT else 3 if names & DIVERGED else 1
    if names:  # hftl's errors (and their subclasses) are written to be read whole
        return f"hftl {command}: {_one_line(err, limit=10**6)}", code
    return f"hftl {command}: {type(err).__name__}: {_one_line(err)} {DEBUG_HINT}", code


def _run(command: str, rest: list[str], state: dict) -> int:
    if command in RECIPES:
        from hftl.config import parse_args

        cfg = parse_args(rest, prog=f"hftl {command}", about=ABOUT.get(command, ""))
        state["output_dir"] = cfg.output_dir
        importlib.import_module(f"hftl.recipes.{MODULES.get(command, command)}").main(cfg)
        return 0
    if command == "select":
        from hftl.config import parse_args

        cfg = parse_args(select_overrides(rest), prog="hftl select", about=ABOUT["select"])
        state["output_dir"] = cfg.output_dir
        importlib.import_module("hftl.selection").main(cfg)
        return 0
    if command in ("predict", "evaluate"):
        return _predict(rest, evaluate=command == "evaluate")
    if command == "configs":
        return _configs(rest)
    if command == "config" and rest and rest[0] in ("-h", "--help"):
        print("usage: hftl config\n\nList every config key with its default, allowed values and help.\n\nWrites: "
              "nothing.\n\nexample: hftl config | grep train.")
        return 0
    if command == "config":
        from hftl.config import describe

        print(describe())
        return 0
    if command == "push":
        return _push(rest)
    if command == "report":
        return _report(rest)
    print(f"hftl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HFTL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from hftl import __version__

        print(f"hftl {__version__}")
        return 0
    command, rest, state = argv[0], argv[1:], {}
    try:
        return _run(command, rest, state)
    except KeyboardInterrupt:
        print(f"hftl {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line, code = explain(err, command, state.get("output_dir"))
        if debug:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
