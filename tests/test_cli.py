"""The ``hftl`` command (issue 20, kind 5 and the fast CLI): one line per error naming the problem and the fix,
the traceback only with --debug, exit codes scripts can trust, and answers in well under a second."""

from __future__ import annotations

import errno
import importlib
import subprocess
import sys
import time

import pytest

from hftl import cli

LIGHT = "import sys, hftl, hftl.cli, hftl.config; print(sorted(m for m in {} if m in sys.modules))"
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy")


def _hftl(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hftl.cli", *args], capture_output=True, text=True, env=env)
    return out, time.perf_counter() - start


def test_import_hftl_loads_no_heavy_library():
    out = subprocess.run([sys.executable, "-c", LIGHT.format(HEAVY)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("args,code,says", [
    (["--help"], 0, "usage: hftl"),
    (["--version"], 0, "hftl 0."),
    (["finetune", "strategy.name=lorra"], 2, "hftl finetune: strategy.name='lorra' is unknown (did you mean lora?)"),
    (["finetune", "train.lr=-1"], 2, "hftl finetune: train.lr=-1.0 must be > 0"),
    (["finetune", "train.max_grad_norm=-1"], 2, "hftl finetune: train.max_grad_norm=-1.0 must be >= 0 (0: off)"),
    (["finetune", "train.lr=nan"], 2, "hftl finetune: train.lr=nan must be a finite number"),
    (["finetune", "train.epochz=1"], 2, "did you mean train.epochs?"),
])
def test_fast_answers_and_exit_codes(args, code, says):
    """Sub-second here (0.1-0.3 s measured); the bound leaves a wide margin for a loaded machine."""
    out, seconds = _hftl(*args)
    assert out.returncode == code, out.stderr
    text = out.stdout if code == 0 else out.stderr
    assert says in text
    if code:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert seconds < 3, seconds


def test_yaml_syntax_error_is_one_fast_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1e-4\n  epochs: 2\n")
    out, seconds = _hftl("finetune", "--config", str(path))
    assert out.returncode == 2 and seconds < 3
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert f"config file {path} is not valid YAML at line 3, column 9" in out.stderr


def test_debug_flag_and_variable_show_the_traceback():
    out, _ = _hftl("finetune", "train.lr=-1", "--debug")
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "hftl finetune: train.lr=-1.0 must be > 0"
    out, _ = _hftl("--debug", "finetune", "train.lr=-1", env={**__import__("os").environ, "HFTL_DEBUG": "1"})
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_subcommand_help_says_what_it_does_and_writes(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["finetune", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    about, keys = text.index("Fine-tune model.name"), text.index("model.name = ")
    assert text.startswith("usage: hftl finetune") and about < text.index("Writes output_dir/") < keys
    assert about < text.index("example: hftl finetune --config") < keys


def _raising(monkeypatch, err: BaseException, command: str = "finetune"):
    module = importlib.import_module(f"hftl.recipes.{cli.MODULES.get(command, command)}")

    def main(cfg):
        raise err

    monkeypatch.setattr(module, "main", main)


def _errors():
    from hftl.config import ConfigError
    from hftl.data import DataError
    from hftl.hub import HubAccessError, PushError
    from hftl.models import ModelNotFoundError
    from hftl.train import TrainingDiverged

    class RunDirError(ConfigError):  # stands for the run-directory helper's subclass
        pass

    return [(ConfigError("x.y=1 is wrong: set x.y=2"), 2), (RunDirError("output_dir holds files: set overwrite"), 2),
            (DataError("data.label_column 'label' is missing: set data.label_column"), 2),
            (ModelNotFoundError("model.name 'a/b' is not in the Hub cache"), 2),
            (HubAccessError("no token: run huggingface-cli login"), 2),
            (PushError("push failed: run hftl push again", "a/b", ["x"], []), 1),
            (TrainingDiverged("training diverged: lower train.lr"), 3)]


@pytest.mark.parametrize("index", range(7))
def test_known_errors_are_one_line_with_their_exit_code(monkeypatch, capsys, index):
    err, code = _errors()[index]
    _raising(monkeypatch, err)
    assert cli.main(["finetune"]) == code
    assert capsys.readouterr().err == f"hftl finetune: {err}\n"


def test_unexpected_error_names_its_type_and_the_debug_flag(monkeypatch, capsys):
    _raising(monkeypatch, ZeroDivisionError("division by zero\nsecond line"))
    assert cli.main(["finetune"]) == 1
    assert capsys.readouterr().err == ("hftl finetune: ZeroDivisionError: division by zero second line "
                                       "(run again with --debug for the traceback)\n")


@pytest.mark.parametrize("err,where", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/model/model.safetensors"),
     "/data/run/model/model.safetensors"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "OUT"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534"), "OUT"),
])
def test_full_disk_is_named_with_the_fix(monkeypatch, capsys, tmp_path, err, where):
    """As seen on a full 256 KiB tmpfs: Python's OSError, safetensors' 'os error 28', torch's zip writer."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1, 1, 0))
    _raising(monkeypatch, err)
    out = str(tmp_path / "run")
    assert cli.main(["finetune", f"output_dir={out}"]) == 1
    assert capsys.readouterr().err == (f"hftl finetune: no space left on device while writing "
                                       f"{where.replace('OUT', out)}: free space or set output_dir elsewhere\n")


def test_auto_classes_load_a_run_after_import_hftl(tiny_model, tmp_path):
    """README: ``import hftl`` then ``AutoModelForSequenceClassification.from_pretrained(<run>/model)``, though
    ``import hftl`` no longer imports transformers; also when transformers' Auto classes were imported first."""
    from hftl.models import load_classifier

    load_classifier(tiny_model, 2).save_pretrained(tmp_path / "model")
    load = ("from transformers import AutoModelForSequenceClassification as A; "
            f"print(type(A.from_pretrained({str(tmp_path / 'model')!r})).__name__)")
    for code in (f"import hftl; {load}", f"import transformers.models.auto.modeling_auto; import hftl; {load}",
                 f"import hftl; import transformers; from transformers import BertModel; {load}"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip().splitlines()[-1:] == ["HftlForClassification"], out.stderr[-2000:]


def test_disk_full_error_of_hftl_keeps_its_own_fix():
    from hftl.cli import explain
    from hftl.storage import DiskFullError

    err = DiskFullError(28, "no space left on device while writing runs/x/checkpoints: free space, lower "
                            "train.keep_checkpoints (now 2), or set output_dir to another disk")
    line, code = explain(err, "finetune", "runs/x")
    assert "train.keep_checkpoints" in line and code == 1
