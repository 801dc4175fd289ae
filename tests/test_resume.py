"""Checkpoints and resume: a run killed with SIGKILL, in the middle of an epoch or while it writes a checkpoint,
then resumed with ``train.resume=true``, ends with the weights and metrics of the same run never interrupted.

The kill is real (``HFTL_TEST_KILL_AT`` makes the recipe SIGKILL itself at a named point, in a subprocess); the
tiny model keeps its dropout, so the resumed run only matches if the RNG states came back too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hftl.recipes.finetune import main
from same_run import assert_same_run

from hftl.config import load_config
from hftl.train import KILL_ENV, last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Same process type, same CPU kernels, same data order, same RNG: the resumed run redoes exactly the same float32
# operations, and was seen equal to the bit. The margin is for kernels that could pick another code path in
# another process (e.g. by memory alignment); a lost batch, a replayed one or a restarted schedule or RNG moves
# the weights by 1e-3 or more.
RTOL, ATOL = 1e-6, 1e-7
# 72 training examples in batches of 8: 9 steps per epoch, 18 in all; checkpoints at steps 4, 8, 12, 16
# (train.checkpoint_every=4) and 9, 18 (epoch ends); the 2 newest are kept.
KILLS = {
    "step-11": "step-00000009",  # mid-epoch 2: resumes from the end of epoch 1
    "checkpoint-16": "step-00000012",  # checkpoint 16 half written: resumes mid-epoch 2, after 3 of its batches
}


def _overrides(model: str, data: str, strategy: str, out: Path) -> list[str]:
    return [f"model.name={model}", f"data.name={data}", "data.validation_size=0.2", "data.test_size=0.2",
            f"strategy.name={strategy}", "train.epochs=2", "train.batch_size=8", "train.lr=3e-3",
            "train.checkpoint_every=4", f"output_dir={out}"]


def _run_killed(overrides: list[str], point: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *overrides],
                         env={**os.environ, KILL_ENV: point}, capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]


@pytest.fixture(scope="module")
def references() -> dict:
    """Uninterrupted runs, one per strategy, made by the first test that needs one."""
    return {}


@pytest.mark.parametrize("point", KILLS)
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tiny_csv, tmp_path_factory, references, strategy,
                                                        point):
    if strategy not in references:
        run = tmp_path_factory.mktemp(f"reference-{strategy}")
        references[strategy] = run, main(load_config(None, _overrides(tiny_model, tiny_csv, strategy, run)))
    reference_dir, reference = references[strategy]
    assert reference["train"]["steps"] == 18
    out_dir = tmp_path_factory.mktemp(f"killed-{strategy}-{point}")
    overrides = _overrides(tiny_model, tiny_csv, strategy, out_dir)
    _run_killed(overrides, point)
    checkpoints = out_dir / "checkpoints"
    assert not (out_dir / "metrics.json").exists()
    assert last_checkpoint(checkpoints).name == KILLS[point]
    if point.startswith("checkpoint-"):  # the half-written one is there, and is not taken for a checkpoint
        assert (checkpoints / ".tmp-step-00000016" / "model.safetensors").exists()
        assert not (checkpoints / "step-00000016").exists()
    resumed = main(load_config(None, [*overrides, "train.resume=true"]))
    assert_same_run(reference, resumed, reference_dir, out_dir, rtol=RTOL, atol=ATOL)
    assert not list(checkpoints.glob(".tmp-*"))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000016", "step-00000018"]


def test_fresh_run_replaces_old_checkpoints(tiny_model, tiny_csv, tmp_path):
    """overwrite=true starts over: checkpoints of an earlier run in the same output_dir are not mixed in, and what
    hftl did not write in the checkpoint folder stays."""
    overrides = [*_overrides(tiny_model, tiny_csv, "head", tmp_path / "run"), "train.epochs=1"]
    main(load_config(None, overrides))
    checkpoints = tmp_path / "run" / "checkpoints"
    stale = checkpoints / "step-00000099"  # as a longer earlier run would have left
    stale.mkdir()
    (stale / "hftl_state.json").write_text("{}")
    (checkpoints / "notes.txt").write_text("mine")
    main(load_config(None, [*overrides, "overwrite=true"]))
    assert last_checkpoint(checkpoints).name == "step-00000009"
    assert not stale.exists() and (checkpoints / "notes.txt").read_text() == "mine"
