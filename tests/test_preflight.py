"""Bad inputs are named before compute (issue 20, kind 4), code runs only when allowed, and checkpoints are safe to
load and to write (kinds 5 and 6): one test per kind of fault, through the recipes where users meet it.

"Before compute" is shown by making the first compute step fail the test if it is reached: training (``fit``),
loading the model's weights, the ladder's feature pass or the masked stage.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

import hftl
from hftl.config import ConfigError, load_config
from hftl.metrics import check_metrics
from hftl.models import max_positions
from hftl.storage import DiskFullError, disk_space
from hftl.testing import tiny_text_model
from hftl.train import last_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_compute(monkeypatch):
    """Every compute step a recipe could reach first fails the test."""
    import hftl.recipes.ladder
    import hftl.recipes.pretrain_masked

    import hftl.models
    import hftl.train

    def fail(what):
        return lambda *a, **k: pytest.fail(f"{what} ran before the bad input was named")

    monkeypatch.setattr(hftl.train, "fit", fail("training"))
    monkeypatch.setattr(hftl.models, "load_classifier", fail("loading the model's weights"))
    monkeypatch.setattr(hftl.recipes.ladder, "frozen_features", fail("the ladder's feature pass"))
    monkeypatch.setattr(hftl.recipes.pretrain_masked, "load_masked_model", fail("the masked stage"))


def _finetune(overrides):
    from hftl.recipes.finetune import main

    return main(load_config(None, overrides))


# ------------------------------------------------------------------ 1. metrics and metric_for_best


@pytest.mark.parametrize(("override", "message"), [
    ("eval.metrics=[acuracy]", r"eval.metrics has 'acuracy' \(did you mean 'accuracy'\?\).*trust_remote_code"),
    ("train.metric_for_best=precision",
     r"train.metric_for_best='precision' is not computed: evaluation reports \['accuracy', 'f1', 'loss'\]"),
    ("train.metric_for_best=accuracy_score", r"metric_for_best='accuracy_score' is not computed"),
])
def test_metric_names_are_checked_before_compute(tiny_cfg, no_compute, override, message):
    with pytest.raises(ConfigError, match=message):
        _finetune([*tiny_cfg, override])


def test_metric_keys_and_always_computed_loss():
    assert check_metrics(["accuracy", "f1"], "f1") == ["accuracy", "f1", "loss"]
    assert check_metrics(["f1"], "loss") == ["f1", "loss"]  # the loss is always computed
    with pytest.raises(ConfigError, match="eval.metrics is empty"):
        load_config(None, ["eval.metrics=[]"])  # at parse time: no model, no data needed
    with pytest.raises(ConfigError, match="eval.metrics is empty"):
        check_metrics([], "accuracy")


def test_metric_for_best_of_the_ladder_and_the_chained_pretraining_before_their_first_stage(tiny_cfg, no_compute,
                                                                                            monkeypatch):
    import hftl.recipes.ladder as ladder
    import hftl.recipes.pretrain_masked as pretrain

    import hftl.data

    monkeypatch.setattr(hftl.data, "load_splits", lambda *a, **k: pytest.fail("data loaded before the check"))
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: pytest.fail("the masked stage ran before the check"))
    bad = [*tiny_cfg, "train.metric_for_best=precision"]
    with pytest.raises(ConfigError, match="metric_for_best='precision'"):
        ladder.main(load_config(None, bad))
    with pytest.raises(ConfigError, match="metric_for_best='precision'"):
        pretrain.main(load_config(None, [*bad, "pretrain.then_finetune=true"]))


def _metric_file(path: Path, marker: Path) -> Path:
    # one import per line: evaluate's dependency scanner misreads "import a, b"
    path.write_text(textwrap.dedent(f"""
        import pathlib
        import datasets
        import evaluate

        pathlib.Path({str(marker)!r}).write_text("this code ran")


        class Mine(evaluate.Metric):
            def _info(self):
                return evaluate.MetricInfo(description="", citation="", inputs_description="",
                                           features=datasets.Features({{"predictions": datasets.Value("int64"),
                                                                       "references": datasets.Value("int64")}}))

            def _compute(self, predictions, references):
                return {{"mine": 1.0}}
    """))
    return path


def test_metric_code_runs_only_with_trust_remote_code(tiny_cfg, tmp_path, no_compute, monkeypatch):
    marker = tmp_path / "ran"
    script = _metric_file(tmp_path / "my_metric.py", marker)
    with pytest.raises(ConfigError, match=r"my_metric.py.*set model.trust_remote_code=true"):
        _finetune([*tiny_cfg, f"eval.metrics=[accuracy, {script}]"])
    assert not marker.exists()  # refused before evaluate.load imported it
    assert check_metrics([str(script)], "mine", trust_remote_code=True) == ["loss", "mine"]
    assert marker.exists()
    # a Hub metric id downloads code: the same rule; allowed but unreachable, it is named before compute too
    with pytest.raises(ConfigError, match=r"'someone/some-metric'.*a Hub metric id.*model.trust_remote_code=true"):
        check_metrics(["someone/some-metric"], "loss")
    with pytest.raises(ConfigError, match=r"'someone/some-metric', which does not load"):
        check_metrics(["someone/some-metric"], "loss", trust_remote_code=True)
    # an installed module (package.module) is trusted like any installed code
    package = tmp_path / "site" / "pf_metrics"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _metric_file(package / "mine.py", tmp_path / "installed-ran")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert check_metrics(["accuracy", "pf_metrics.mine"], "mine") == ["accuracy", "loss", "mine"]


# ------------------------------------------------------------------ 2. model.max_length against the positions


def test_max_positions_read_from_the_model_and_tokenizer(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoTokenizer, DebertaV2Config, GPT2Config

    from hftl.assets import EMBEDDED_MODELS, package_file

    assert max_positions(AutoConfig.from_pretrained(tiny_model))[0] == 512
    roberta = tiny_text_model(tmp_path / "roberta", model_type="roberta")
    limit, why = max_positions(AutoConfig.from_pretrained(roberta))
    assert limit == 510 and "minus the padding offset 2" in why  # positions start after padding_idx=1
    assert max_positions(GPT2Config(n_positions=1024))[0] == 1024
    assert max_positions(DebertaV2Config(position_biased_input=False)) == (None, "")  # relative positions only
    minilm = package_file(*EMBEDDED_MODELS["sentence-transformers/all-MiniLM-L6-v2"])
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.model_max_length = 256
    assert max_positions(AutoConfig.from_pretrained(minilm), tok) == (256, "its tokenizer's model_max_length is 256")


def test_max_length_above_the_positions_is_refused_before_compute(tiny_cfg, no_compute):
    import hftl.recipes.ladder as ladder
    import hftl.recipes.pretrain_masked as pretrain

    message = (r"model.max_length=1024 is longer than .* takes: bert has 512 positions; set model.max_length=512 "
               r"or less")
    for run in (_finetune, lambda o: ladder.main(load_config(None, o)),
                lambda o: pretrain.main(load_config(None, o))):
        with pytest.raises(ConfigError, match=message):
            run([*tiny_cfg, "model.max_length=1024"])


# ------------------------------------------------------------------ 3. the ladder: k against the classes, and more


@pytest.mark.parametrize(("override", "message"), [
    ("shots.ks=[1,4,100]", r"shots.ks has k=\[100\] but class '(neg|pos)' has only 3\d examples in the train split"
                           r".*lower shots.ks to at most 3\d"),
    ("shots.label_descriptions={negative: bad}", r"shots.label_descriptions names classes that do not exist: "
                                                 r"\['negative'\]; the classes are \['neg', 'pos'\]"),
    ("shots.lora={r: 8, alpha: 16}", r"shots.lora=.* is refused by peft's LoraConfig"),
    ("shots.zero_shot=nli", r"shots.zero_shot=nli but .* has no entailment label"),
])
def test_ladder_refuses_before_any_rung(tiny_cfg, no_compute, override, message):
    import hftl.recipes.ladder as ladder

    overrides = [*tiny_cfg, "shots.methods=[prototype,lora]", override]
    with pytest.raises(ConfigError, match=message):
        ladder.main(load_config(None, overrides))


# ------------------------------------------------------------------ 5. checkpoints load tensors only


class Payload:
    """Unpickling this creates a folder: code a checkpoint file could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.makedirs, (str(self.path),)


def test_a_checkpoint_holding_more_than_tensors_is_refused(tiny_cfg, tmp_path):
    _finetune([*tiny_cfg, "train.epochs=1"])
    last = last_checkpoint(tmp_path / "run" / "checkpoints")
    best = torch.load(last / "best_trainable.pt", weights_only=True)
    torch.save({**best, "extra": Payload(tmp_path / "code-ran")}, last / "best_trainable.pt")
    with pytest.raises(ConfigError, match=r"best_trainable.pt holds more than tensors .* refused; delete"):
        _finetune([*tiny_cfg, "train.epochs=1", "train.resume=true"])  # same settings: the resume check passes
    assert not (tmp_path / "code-ran").exists()


def test_every_torch_load_says_weights_only_true():
    """The torch range in pyproject.toml includes versions whose default is weights_only=False."""
    calls = []
    for folder in ("hftl", "recipes", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), calls


# ------------------------------------------------------------------ 6. a full disk while checkpointing or saving


def test_full_disk_while_checkpointing_names_it_and_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):  # the second epoch's checkpoint (step 18) finds the disk full
        if "step-00000018" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    overrides = [*tiny_cfg, "train.epochs=2"]
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*step-00000018: free space on "
                                            r"that disk, lower train.keep_checkpoints \(now 2\), or set output_dir"):
        _finetune(overrides)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000009"]  # the half-written one is gone
    assert last_checkpoint(checkpoints).name == "step-00000009"
    monkeypatch.setattr(torch, "save", real)  # space freed: the run resumes from the checkpoint that was kept
    metrics = _finetune([*overrides, "train.resume=true"])
    assert metrics["train"]["steps"] == 18


def test_full_disk_shapes_become_one_error(tmp_path, monkeypatch):
    import hftl.storage

    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(hftl.storage, "_probe_full", lambda folder: True)  # the disk is full: a probe write fails
    for err in (torch_says, Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
                OSError(errno.EDQUOT, "Disk quota exceeded")):
        with pytest.raises(DiskFullError, match=f"no space left on device while writing {tmp_path}: fix it"):
            with disk_space(tmp_path, "fix it"):
                raise err
    monkeypatch.setattr(hftl.storage, "_probe_full", lambda folder: False)  # another failure passes unchanged
    with pytest.raises(RuntimeError, match="unexpected pos"), disk_space(tmp_path, "fix it"):
        raise torch_says


def test_full_disk_during_the_final_save_says_how_to_finish(tmp_path):
    class Model:
        def save_pretrained(self, path, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(path / "model.safetensors"))

    with pytest.raises(DiskFullError, match=r"while writing .*model.safetensors: free space on that disk and rerun "
                                            r"with train.resume=true"):
        hftl.save_run(tmp_path / "run", load_config(None, []), Model(), None, {}, {})


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_full_disk_is_recognised(tmp_path):
    """torch.save and safetensors on a 256 KiB tmpfs: their own errors name nothing; hftl's does."""
    from safetensors.torch import save_file

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mount is not allowed here")
    try:
        big = {"w": torch.zeros(200_000)}
        for write in (lambda: torch.save(big, disk / "a.pt"), lambda: save_file(big, disk / "a.safetensors")):
            with pytest.raises(DiskFullError, match="no space left on device while writing"):
                with disk_space(disk, "free space"):
                    write()
            for p in disk.iterdir():
                p.unlink()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
