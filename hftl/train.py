"""One explicit Accelerate training loop for every strategy and modality.

Gradient accumulation and clipping, warmup + schedule, evaluation on validation each epoch, early stopping,
the best weights kept, checkpoints each epoch (written atomically) that ``resume`` continues from. The
``Accelerator`` is passed in, never global.

Example:
    >>> accelerator = make_accelerator(cfg.train)  # doctest: +SKIP
    >>> result = fit(model, train_loader, val_loader, accelerator, cfg.train, ["accuracy"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from hftl.config import TrainConfig
from hftl.data import LengthGroupedBatches
from hftl.metrics import compute_metrics

log = logging.getLogger(__name__)
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "layernorm.weight")


def make_accelerator(cfg: TrainConfig, **kwargs) -> Accelerator:
    """fp32 on CPU, bf16 on GPUs that have it (``mixed_precision: auto``)."""
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum, **kwargs)


def per_device_batch(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """Per-process micro-batch that keeps the effective batch (``train.batch_size``) whatever the process count."""
    size, rest = divmod(cfg.batch_size, cfg.grad_accum * accelerator.num_processes)
    if rest or size < 1:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by grad_accum={cfg.grad_accum} x "
                         f"{accelerator.num_processes} processes")
    return size


def make_loader(ds, batch_size: int, collate, *, shuffle: bool, seed: int = 0, group: bool = True,
                num_workers: int = 0) -> DataLoader:
    lengths = ds["length"] if "length" in ds.column_names else [0] * len(ds)
    batches = LengthGroupedBatches(lengths, batch_size, shuffle, seed, group and "length" in ds.column_names)
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


def param_groups(model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and norms; the new head at its own learning rate."""
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = ".head." in f".{name}" or "modules_to_save" in name and "head" in name
        decay = 0.0 if p.ndim < 2 or any(k in name for k in _NO_DECAY) else weight_decay
        groups.setdefault((head_lr if is_head and head_lr else lr, decay), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "length"}


@torch.no_grad()
def predict(model, loader: DataLoader, accelerator: Accelerator, desc: str = "eval") -> tuple[torch.Tensor, ...]:
    """Logits and labels over a loader, gathered across processes without duplicates."""
    model.eval()
    logits, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        out = model(**{k: v for k, v in _model_inputs(batch).items() if k != "labels"})
        lg, lb = accelerator.gather_for_metrics((out.logits.float().contiguous(), batch["labels"]))
        logits.append(lg.cpu())
        labels.append(lb.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate(model, loader: DataLoader, accelerator: Accelerator, metrics: list[str], desc: str = "eval") -> dict:
    logits, labels = predict(model, loader, accelerator, desc)
    scores = compute_metrics(metrics, logits.argmax(-1).tolist(), labels.tolist())
    scores["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
    return scores


@dataclass
class LoopState:
    """Where the loop is, saved with every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _trainable_state(model) -> dict:
    """A CPU copy of the tensors that training changes (trainable parameters and buffers)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in trainable | buffers}


def _save_checkpoint(accelerator: Accelerator, ckpt_dir: Path, state: LoopState, best: dict | None, keep: int) -> None:
    """Write to a temporary folder, then rename: a crash mid-write leaves the previous checkpoint whole."""
    final = ckpt_dir / f"epoch-{state.epoch:04d}"
    tmp = ckpt_dir / f".tmp-{final.name}"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "hftl_state.json").write_text(json.dumps(asdict(state)))
        if best is not None:
            torch.save(best, tmp / "best_trainable.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(ckpt_dir.glob("epoch-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in Path(ckpt_dir).glob("epoch-*") if (p / "hftl_state.json").exists())
    return done[-1] if done else None


def _train_epoch(model, loader, optimizer, scheduler, accelerator, cfg: TrainConfig, state: LoopState) -> float:
    model.train()
    total, count = torch.zeros((), device=accelerator.device), 0
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.accumulate(model):
            loss = model(**_model_inputs(batch)).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach()  # summed on device: no host sync per step
        count += 1
        state.step += int(accelerator.sync_gradients)
    return float(accelerator.reduce(total, "mean")) / max(count, 1)


def fit(model, train_loader: DataLoader, val_loader: DataLoader, accelerator: Accelerator, cfg: TrainConfig,
        metrics: list[str], *, checkpoint_dir: str | Path | None = None, resume: bool = False,
        keep_checkpoints: int = 1) -> tuple[object, LoopState]:
    """Train with evaluation each epoch; return the prepared model loaded with its best weights, and the state."""
    groups = param_groups(model, cfg.lr, cfg.head_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=torch.cuda.is_available() or None)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / cfg.grad_accum)
    epochs = math.ceil(cfg.epochs)
    total_steps = max(1, int(steps_per_epoch * cfg.epochs))
    scheduler = get_scheduler(cfg.scheduler, optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    batches = train_loader.batch_sampler  # ours, before accelerate wraps it for sharding
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    state, best = LoopState(), None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if resume and ckpt_dir and (last := last_checkpoint(ckpt_dir)):
        accelerator.load_state(str(last))
        state = LoopState(**json.loads((last / "hftl_state.json").read_text()))
        best = torch.load(last / "best_trainable.pt") if (last / "best_trainable.pt").exists() else None
        accelerator.print(f"resumed from {last} (epoch {state.epoch}, step {state.step})")
    while state.epoch < epochs and state.step < total_steps:
        start = time.perf_counter()
        batches.set_epoch(state.epoch)
        train_loss = _train_epoch(model, train_loader, optimizer, scheduler, accelerator, cfg, state)
        scores = evaluate(model, val_loader, accelerator, metrics, "validation")
        state.epoch += 1
        state.history.append({"epoch": state.epoch, "train_loss": train_loss, "validation": scores,
                              "seconds": time.perf_counter() - start})
        score = scores[cfg.metric_for_best] * (-1 if cfg.metric_for_best == "loss" else 1)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            best = _trainable_state(accelerator.unwrap_model(model))
        else:
            state.bad_epochs += 1
        accelerator.print(f"epoch {state.epoch}: train_loss {train_loss:.4f} " + " ".join(
            f"val_{k} {v:.4f}" for k, v in scores.items()) + f" ({state.history[-1]['seconds']:.1f} s)"
            + (" *best*" if improved else ""))
        if ckpt_dir:
            _save_checkpoint(accelerator, ckpt_dir, state, best, keep_checkpoints)
        if cfg.early_stopping_patience and state.bad_epochs >= cfg.early_stopping_patience:
            accelerator.print(f"early stopping: no improvement of {cfg.metric_for_best} for {state.bad_epochs} epochs")
            break
    if best is not None:
        accelerator.unwrap_model(model).load_state_dict(best, strict=False)
    return model, state
