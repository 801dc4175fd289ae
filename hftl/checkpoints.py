"""Checkpoints and resume: what the loop saves, where it starts again, and what it never deletes.

A checkpoint (``output_dir/checkpoints/step-NNNNNNNN``) holds model, optimizer, scheduler and RNG of every process
(accelerate's ``save_state``), the loop state (``hftl_state.json``) and the best trainable weights so far. When part of
the model is frozen (linear probe, head, peft adapters) its ``model.safetensors`` holds only what training changes
(trainable parameters and buffers, marked by ``trainable_only.json``): the frozen rest is the pretrained model, loaded
again at resume, so a checkpoint is not a second full copy of a model already saved. It is
written to ``.tmp-step-*`` and renamed, so a crash mid-write leaves the previous ones whole; every file loads with
``weights_only=True``; deletion touches only hftl's own ``step-*`` / ``.tmp-step-*`` folders.

Example:
    >>> state, best = start(accelerator, Path("runs/x/checkpoints"), resume=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from hftl.config import ConfigError
from hftl.storage import disk_space

KILL_ENV = "HFTL_TEST_KILL_AT"


@dataclass
class LoopState:
    """Where the loop is, saved with every checkpoint."""

    epoch: int = 0
    step: int = 0
    batch: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint resumes after them)
    epoch_loss: float = 0.0  # their summed loss, averaged over processes
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _kill_point(name: str) -> None:
    """Crash tests: ``HFTL_TEST_KILL_AT=step-N`` (after optimizer step N) or ``checkpoint-N`` (checkpoint N half
    written) SIGKILLs the process there. Unset in real runs, where this is one dictionary lookup."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _saved_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of what training changes (trainable parameters, buffers), read before any wrapping."""
    return {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}


def _trainable_state(accelerator: Accelerator, model, names: set[str]) -> dict:
    """A CPU copy of the tensors that training changes, gathered whole (FSDP, ZeRO-3) on the main process.

    Every process must call it: gathering sharded weights is collective.
    """
    state = accelerator.get_state_dict(model)
    return {k: v.detach().cpu().clone() for k, v in state.items() if k in names}


def _load_trainable(accelerator: Accelerator, model, state: dict) -> None:
    """Put tensors from ``_trainable_state`` back; sharded models take them from the main process."""
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, state, options=options)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.deepspeed_config.get(
            "zero_optimization", {}).get("stage") == 3:
        import deepspeed

        module = accelerator.unwrap_model(model)
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            if accelerator.is_main_process:
                module.load_state_dict(state, strict=False)
    else:
        accelerator.unwrap_model(model).load_state_dict(state, strict=False)


TRAINABLE_ONLY = "trainable_only.json"  # in a checkpoint whose model file holds only what trains


def _frozen_part(accelerator: Accelerator, model, names: set[str] | None) -> bool:
    """Whether a checkpoint may hold only ``names``: some of the model is frozen, and the model is not sharded (FSDP
    and DeepSpeed save their own shards)."""
    if names is None or accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return False
    return any(n not in names for n in accelerator.unwrap_model(model).state_dict())


def _keep_only(names: set[str]):
    """A save_state hook that drops the frozen tensors from the weights accelerate is about to write (in place)."""
    def hook(models, weights, output_dir) -> None:
        for state in weights:
            for key in [k for k in state if k.removeprefix("module.") not in names]:  # DDP prefixes "module."
                del state[key]
    return hook


def save_checkpoint(accelerator: Accelerator, ckpt_dir: Path, state: LoopState, best: dict | None, keep: int,
                    names: set[str] | None = None, model=None) -> Path:
    """Model, optimizer, scheduler, RNG of every process (accelerate's save_state), loop state and best weights.

    ``names`` (with ``model``): the state-dict names training changes (``_saved_names``); when the model has others
    (frozen), only these are saved and ``trainable_only.json`` says so: resume loads them over the pretrained rest.

    Written to a temporary folder then renamed: a crash mid-write leaves the previous checkpoints whole, and the
    temporary folder is never taken for a checkpoint. Only the ``keep`` newest are kept.
    """
    final = ckpt_dir / f"step-{state.step:08d}"
    tmp = ckpt_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    previous = last_checkpoint(ckpt_dir)
    fix = (f"free space on that disk, lower train.keep_checkpoints (now {keep}), or set output_dir to another disk; "
           f"the last complete checkpoint ({previous or 'none yet'}) is kept whole")
    partial = model is not None and _frozen_part(accelerator, model, names)
    handle = accelerator.register_save_state_pre_hook(_keep_only(names)) if partial else None
    with disk_space(tmp, fix, on_full=lambda: shutil.rmtree(tmp, ignore_errors=True)):  # gives the space back
        try:
            accelerator.save_state(str(tmp))
        finally:
            if handle is not None:
                handle.remove()
        _kill_point(f"checkpoint-{state.step}")
        accelerator.wait_for_everyone()  # each process has written its RNG state before the folder moves
        if accelerator.is_main_process:
            if best is not None:
                torch.save(best, tmp / "best_trainable.pt")
            if partial:
                (tmp / TRAINABLE_ONLY).write_text(json.dumps({"saved": sorted(names)}))
            (tmp / "hftl_state.json").write_text(json.dumps(asdict(state)))
    if accelerator.is_main_process:
        tmp.rename(final)
        remove_checkpoints(ckpt_dir, keep=max(keep, 1), partial=False)  # hftl's checkpoints only
    accelerator.wait_for_everyone()
    return final


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder this loop wrote: ``step-*`` with ``hftl_state.json``, or ``.tmp-step-*``."""
    path, name = Path(path), Path(path).name
    return path.is_dir() and (name.startswith(".tmp-step-") or name.startswith("step-")
                              and (path / "hftl_state.json").is_file())


def remove_checkpoints(ckpt_dir: str | Path, *, keep: int | None = 0, partial: bool = True) -> None:
    """Delete hftl's checkpoints in ``ckpt_dir`` and nothing else (never the folder, nor what a user put there): the
    complete ones but the ``keep`` newest (None: keep all), and the half-written ones when ``partial``."""
    ckpt_dir = Path(ckpt_dir)
    done = sorted(p for p in ckpt_dir.glob("step-*") if is_checkpoint(p))
    doomed = [] if keep is None else done[:max(len(done) - keep, 0)]
    for path in doomed + ([p for p in ckpt_dir.glob(".tmp-step-*") if is_checkpoint(p)] if partial else []):
        shutil.rmtree(path, ignore_errors=True)


def last_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir`` (a folder a crash left half written is not one)."""
    done = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "hftl_state.json").exists())
    return done[-1] if done else None


def _load_tensors(path: Path) -> dict:
    """A checkpoint file of tensors, loaded with ``weights_only=True`` whatever torch's default (it changed in 2.6):
    a pickle holding anything else would run code when loaded, and is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"train.resume: {path} holds more than tensors (unpickling it could run code) and is "
                          f"refused; delete {path.parent} to resume from the checkpoint before it, or set "
                          f"train.resume=false. ({str(err).splitlines()[0]})") from err


def _start(accelerator: Accelerator, ckpt_dir: Path | None, resume: bool) -> tuple[LoopState, dict | None]:
    """Load the last complete checkpoint when resuming; a fresh run deletes the folder's old checkpoints (hftl's
    ``step-*`` and half-written ``.tmp-step-*`` folders only: anything else there stays)."""
    last = last_checkpoint(ckpt_dir) if ckpt_dir and resume else None
    accelerator.wait_for_everyone()  # every process has chosen before the main one cleans up
    if ckpt_dir and accelerator.is_main_process:
        remove_checkpoints(ckpt_dir, keep=None if resume else 0)
    if last is None:
        if resume:
            accelerator.print(f"train.resume: no complete checkpoint in {ckpt_dir}, starting from the beginning")
        return LoopState(), None
    # optimizer, scheduler: tensors only; a checkpoint of only what trains loads over the pretrained frozen rest
    strict = {"strict": False} if (last / TRAINABLE_ONLY).is_file() else {}
    accelerator.load_state(str(last), load_kwargs={"weights_only": True}, **strict)
    state = LoopState(**json.loads((last / "hftl_state.json").read_text()))
    best = _load_tensors(last / "best_trainable.pt") if (last / "best_trainable.pt").exists() else None
    accelerator.print(f"resumed from {last} (epoch {state.epoch}, batch {state.batch}, step {state.step})")
    return state, best
