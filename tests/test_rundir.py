"""The run directory is the user's data (issue 20, kind 1, and kind 6's hidden changes on resume).

Each test runs the real recipes on the tiny model: an empty output_dir, a file, a folder hftl did not make, a finished
run, a run in progress, a kill during the final save, a resume with other settings. Every refusal comes before any
model or data is loaded, and nothing that was there is changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hftl.recipes.finetune import main

import hftl
from hftl.config import ConfigError, RunDirError, load_config
from hftl.rundir import MARKER, claim, is_complete
from hftl.train import KILL_ENV, _start, remove_checkpoints

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.epochs=1", "strategy.name=head"]
HOLD = """
import sys, time
from hftl.config import load_config
from hftl.rundir import claim
run = claim(load_config(None, [f"output_dir={sys.argv[1]}"]))
print("held", flush=True)
time.sleep(300)
"""


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: what a refusal must leave as it was."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def no_compute(monkeypatch):
    """Loading data or a model fails the test: a refusal must come before either."""
    def fail(*args, **kwargs):
        pytest.fail("data or a model was loaded before the run directory was refused")

    for name in ("load_splits", "load_processor", "load_classifier"):
        monkeypatch.setattr(hftl, name, fail)


def _recipe(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_empty_output_dir_is_a_config_error_and_the_current_folder_is_untouched(tmp_path):
    for value in ("", "   "):
        with pytest.raises(ConfigError, match="output_dir=.* is empty .*set output_dir to a new folder"):
            load_config(None, [f"output_dir={value}"])
    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "config.yaml").write_text("mine: true\n")
    before = _tree(tmp_path)
    out = subprocess.run([sys.executable, "-m", "hftl.cli", "finetune", "output_dir="], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "output_dir='' is empty" in out.stderr
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.yaml"]


def test_output_dir_that_is_a_file_or_unwritable_is_refused_before_loading(tiny_cfg, tmp_path, no_compute):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(RunDirError, match=f"output_dir {re.escape(str(afile))} is a file: set output_dir to a"):
        main(load_config(None, [*tiny_cfg, f"output_dir={afile}"]))
    with pytest.raises(RunDirError, match=f"output_dir {re.escape(str(afile / 'run'))} cannot be written .*choose"):
        main(load_config(None, [*tiny_cfg, f"output_dir={afile / 'run'}"]))  # a path under a file
    assert afile.read_text() == "keep"


def test_read_only_output_dir_is_refused_before_loading(tiny_cfg, tmp_path, no_compute):
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anyway: the path under a file (test above) stands for this
            pytest.skip("this user may write into a read-only folder (root)")
        with pytest.raises(RunDirError, match="cannot be written"):
            main(load_config(None, [*tiny_cfg, f"output_dir={locked}"]))
    finally:
        locked.chmod(0o700)


def test_folder_hftl_did_not_make_is_refused_and_untouched(tiny_cfg, tmp_path, no_compute):
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    (mine / "README.md").write_text("my notes")
    before = _tree(mine)
    for extra in ([], ["overwrite=true"], ["train.resume=true"]):
        with pytest.raises(RunDirError, match="holds 2 entries hftl did not write .*choose a new or empty"):
            main(load_config(None, [*tiny_cfg, f"output_dir={mine}", *extra]))
    assert _tree(mine) == before and sorted(p.name for p in mine.iterdir()) == ["README.md", "photos"]


def test_second_run_into_a_finished_run_is_refused_and_the_first_kept(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    main(load_config(None, [*tiny_cfg, *FAST]))
    assert is_complete(run) and (run / "checkpoints").is_dir()
    before = _tree(run)
    with pytest.raises(RunDirError, match="holds a finished hftl run: set overwrite=true .* train.resume=true"):
        main(load_config(None, [*tiny_cfg, *FAST, "train.lr=1e-2"]))
    assert _tree(run) == before


def test_overwrite_replaces_only_hftl_files_and_leaves_no_stale_adapter(tiny_cfg, tmp_path):
    """lora (with merged/) then full into one folder: model/ holds the full model only, a user's files stay."""
    run = tmp_path / "run"
    main(load_config(None, [*tiny_cfg, "train.epochs=1", "strategy.name=lora", "strategy.merge=true"]))
    assert (run / "model" / "adapter_config.json").exists() and (run / "merged").is_dir()
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "keep.txt").write_text("mine too")
    metrics = main(load_config(None, [*tiny_cfg, "train.epochs=1", "strategy.name=full", "overwrite=true"]))
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "keep.txt").exists()
    assert not (run / "model" / "adapter_config.json").exists() and not (run / "merged").exists()
    model, _ = hftl.load(run)
    assert type(model).__name__ == "HftlForClassification"  # not a PeftModel holding the old adapter
    assert metrics["train"]["trainable_params"] == metrics["train"]["total_params"]
    assert is_complete(run)


def test_second_writer_is_refused_naming_the_holder_and_a_dead_one_leaves_no_lock(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=re.escape(f"output_dir {run} is in use by another hftl run (pid "
                                                        f"{holder.pid})")):
            main(load_config(None, [*tiny_cfg, *FAST]))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    main(load_config(None, [*tiny_cfg, *FAST]))  # the kernel let go of the dead holder's lock
    assert is_complete(run)


def test_kill_during_final_save_leaves_a_run_that_load_and_push_refuse(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    main(load_config(None, [*tiny_cfg, "train.epochs=1", "strategy.name=lora"]))
    killed = _recipe([*tiny_cfg, *FAST, "overwrite=true"], env={KILL_ENV: "final-save"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run / "README.md").exists() and not (run / MARKER).exists()  # half moved, and not marked complete
    with pytest.raises(RunDirError, match="did not finish .*train.resume=true .*overwrite=true"):
        hftl.load(run)
    with pytest.raises(RunDirError, match="did not finish"):
        hftl.push(run, "alice/tiny")  # before any token or network
    out = subprocess.run([sys.executable, "-m", "hftl.cli", "push", str(run), "alice/tiny"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "did not finish" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    main(load_config(None, [*tiny_cfg, *FAST, "train.resume=true"]))  # finishes from its last checkpoint
    model, _ = hftl.load(run / "model")
    assert is_complete(run) and type(model).__name__ == "HftlForClassification"
    again = claim(load_config(None, [*tiny_cfg, *FAST, "train.resume=true"]))  # a resume has begun: unfinished
    try:
        with pytest.raises(RunDirError, match="did not finish"):
            hftl.load(run / "model")
    finally:
        again.release()


def test_resume_with_other_settings_is_refused_naming_each(tiny_cfg, tmp_path, monkeypatch):
    killed = _recipe([*tiny_cfg, *FAST, "train.checkpoint_every=2"], env={KILL_ENV: "step-3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    monkeypatch.setattr(hftl, "load_splits", lambda *a, **k: pytest.fail("data loaded before the refusal"))
    with pytest.raises(RunDirError, match=r"train.resume=true, but output_dir .* was started with other settings: "
                                          r"strategy.name 'head' -> 'full'; train.lr 0.003 -> 0.01: resume with "
                                          r"the old values, or start over with overwrite=true"):
        main(load_config(None, [*tiny_cfg, *FAST, "train.checkpoint_every=2", "train.resume=true",
                                "train.lr=0.01", "strategy.name=full"]))
    monkeypatch.undo()
    # the same settings (and ones that do not change what is trained) resume, from the checkpoint of step 2
    metrics = main(load_config(None, [*tiny_cfg, *FAST, "train.resume=true", "train.checkpoint_every=3",
                                      "train.num_workers=0", "train.keep_checkpoints=1"]))
    assert metrics["train"]["steps"] == 9 and is_complete(tmp_path / "run")


def test_checkpoint_deletion_touches_only_hftl_checkpoints(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for name in ("step-00000001", "step-00000002", "step-00000003"):
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "hftl_state.json").write_text("{}")
    (ckpt / "step-00000009").mkdir()  # not hftl's: no hftl_state.json
    (ckpt / ".tmp-step-00000004").mkdir()
    (ckpt / "notes.txt").write_text("mine")
    remove_checkpoints(ckpt, keep=1, partial=False)  # the rotation of save_checkpoint
    assert sorted(p.name for p in ckpt.iterdir()) == [".tmp-step-00000004", "notes.txt", "step-00000003",
                                                      "step-00000009"]
    accelerator = SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True, print=print)
    _start(accelerator, ckpt, resume=False)  # a fresh run
    assert sorted(p.name for p in ckpt.iterdir()) == ["notes.txt", "step-00000009"]
    _start(accelerator, tmp_path, resume=False)  # a folder above: nothing of it goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_masked_stage_and_ladder_follow_the_same_rules(tiny_cfg, tmp_path):
    import hftl.recipes.ladder as ladder
    import hftl.recipes.pretrain_masked as pretrain

    stage = [*tiny_cfg, "model.max_length=16", "pretrain.epochs=1", "pretrain.batch_size=8"]
    pretrain.main(load_config(None, stage))
    run = tmp_path / "run"
    assert is_complete(run) and (run / "pretrained" / "pretrain_metrics.json").exists()
    with pytest.raises(RunDirError, match="holds a finished hftl run"):
        pretrain.main(load_config(None, stage))
    (run / "notes.txt").write_text("mine")
    pretrain.main(load_config(None, [*stage, "overwrite=true"]))
    assert (run / "notes.txt").read_text() == "mine" and is_complete(run)
    hftl.load(run / "pretrained")  # a stage is saved whole: it loads

    shots = [*tiny_cfg, "strategy.name=linear_probe", "train.epochs=1", "shots.ks=[1,2]", "shots.seeds=[0,1]",
             "shots.methods=[prototype]", "shots.zero_shot=none", f"output_dir={tmp_path / 'ladder'}"]
    ladder.main(load_config(None, shots))
    assert is_complete(tmp_path / "ladder") and is_complete(tmp_path / "ladder" / "full")
    with pytest.raises(RunDirError, match="holds a finished hftl run"):
        ladder.main(load_config(None, shots))
    (tmp_path / "ladder" / "full" / "notes.txt").write_text("mine")
    started = time.time()
    ladder.main(load_config(None, [*shots, "overwrite=true"]))
    assert (tmp_path / "ladder" / "full" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "ladder" / "full" / "metrics.json").stat().st_mtime >= started


def test_two_processes_refuse_together(tiny_cfg, tmp_path):
    """Under DDP the main process decides and tells the other: both stop at once with the same message."""
    main(load_config(None, [*tiny_cfg, *FAST]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(ROOT / "recipes" / "finetune.py"),
           *tiny_cfg, *FAST]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    assert out.stderr.count("holds a finished hftl run") >= 2, out.stderr[-3000:]  # rank 0 and rank 1
