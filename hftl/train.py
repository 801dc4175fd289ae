"""One explicit Accelerate training loop for every strategy and modality.

Gradient accumulation and clipping, warmup + schedule, evaluation on validation each epoch, early stopping,
the best weights kept, checkpoints every ``train.checkpoint_every`` optimizer steps and at each epoch's end
(written atomically) that ``train.resume`` continues from, mid-epoch included. The ``Accelerator`` is passed
in, never global. A run takes the same optimizer steps on 1 or N processes: each train-loader batch holds one
accumulation step of all processes together, and accelerate splits it (``split_batches``); and with or without
accumulation: a step's micro-batches are one ``train.batch_size`` batch cut in order, weighted to its gradient
(``hftl.accumulation``).

Example:
    >>> accelerator = make_accelerator(cfg.train)  # doctest: +SKIP
    >>> loader = make_loader(ds, train_batch(cfg.train, accelerator), collate, shuffle=True)  # doctest: +SKIP
    >>> model, state = fit(model, loader, val_loader, accelerator, cfg.train, ["accuracy"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from hftl.accumulation import loss_terms, step_groups, step_weights
from hftl.checkpoints import (  # noqa: F401 - public here too
    KILL_ENV,
    LoopState,
    _kill_point,
    _load_trainable,
    _saved_names,
    _start,
    _trainable_state,
    is_checkpoint,
    last_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from hftl.config import TrainConfig
from hftl.data import LengthGroupedBatches
from hftl.strategies import adapters_merged, find_layers

log = logging.getLogger(__name__)
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "layernorm.weight")
LOWER_IS_BETTER = ("loss", "rmse", "mae", "mse", "wer", "cer")  # metrics whose best epoch has the lowest value


class TrainingDiverged(RuntimeError):
    """The training loss, the weights or a validation score became NaN or infinite. The message names the step,
    the likely fix and the last good checkpoint, which is kept: none is written once the loss is non-finite, and
    the recipe stops before it saves the run. ``hftl`` exits with code 3."""


def _finite_every(accelerator: Accelerator) -> int:
    """Optimizer steps between checks of the loss summed on the device. Each check waits for the device (and, with
    several processes, is one all-reduce), so it runs every step only on one CPU process, where that costs nothing.
    The loss is also checked before every checkpoint and at each epoch's end, the weights before every checkpoint."""
    return 1 if accelerator.device.type == "cpu" and accelerator.num_processes == 1 else 25


def _diverged(what: str, state: LoopState, cfg: TrainConfig, ckpt_dir: Path | None) -> TrainingDiverged:
    last = last_checkpoint(ckpt_dir) if ckpt_dir else None
    kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint had been written yet"
    rates = f"train.lr (now {cfg.lr:g})" + (f" or train.head_lr (now {cfg.head_lr:g})" if cfg.head_lr else "")
    return TrainingDiverged(
        f"training diverged: {what} by optimizer step {state.step} (epoch {state.epoch + 1}); lower {rates}, "
        f"or check the inputs for NaN or infinite values; {kept}; the run was not saved")


def _check_loss(total: torch.Tensor, state: LoopState, cfg: TrainConfig, accelerator: Accelerator,
                ckpt_dir: Path | None) -> float:
    """The summed loss over processes; TrainingDiverged if it is NaN or infinite. Every process must call it."""
    value = float(accelerator.reduce(total, "sum"))
    if not math.isfinite(value):
        raise _diverged(f"the training loss became {value}", state, cfg, ckpt_dir)
    return value


def _check_weights(model, state: LoopState, cfg: TrainConfig, accelerator: Accelerator,
                   ckpt_dir: Path | None) -> None:
    """TrainingDiverged if a trainable weight is NaN or infinite (a finite loss can still step into them): checked
    before each checkpoint, so none holds them. Every process must call it (sharded weights: one all-reduce)."""
    flags = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()
             for p in model.parameters() if p.requires_grad]
    bad = (~torch.stack(flags)).sum().float() if flags else torch.zeros(())
    if float(accelerator.reduce(bad.to(accelerator.device), "sum")):
        raise _diverged("the weights became non-finite", state, cfg, ckpt_dir)


def make_accelerator(cfg: TrainConfig, **kwargs) -> Accelerator:
    """The run's Accelerator: precision, accumulation, and train batches split over the processes.

    Each train batch is split over the processes (``split_batches``): an optimizer step sees the same examples on
    1 or N processes, and accelerate steps the LR schedule once per optimizer step (without it, it steps it once
    per process, for schedules counted in single-process steps).
    ``mixed_precision: auto`` is bf16 on GPUs that have it, fp32 elsewhere. A launch of several processes on a
    machine with no accelerator runs DDP over gloo on the CPU: ``accelerate launch --multi_gpu`` and ``torchrun``
    do not pass ``use_cpu`` on, and without ``cpu=True`` each process would silently train alone. An FSDP launcher
    config shards there too (``_fsdp_on_cpu``), where accelerate alone would fall back to DDP.

    Example:
        >>> accelerator = make_accelerator(TrainConfig(mixed_precision="no"))  # doctest: +SKIP
    """
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    kwargs.setdefault("cpu", launched and not (device.is_available() if device else torch.cuda.is_available()))
    # pinned host memory (make_loader) and asynchronous copies: no host-device synchronisation per batch
    kwargs.setdefault("dataloader_config", DataLoaderConfiguration(split_batches=True,
                                                                   non_blocking=torch.cuda.is_available()))
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum, **kwargs)
    if kwargs["cpu"] and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        _fsdp_on_cpu(accelerator)
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Keep an FSDP launcher config's word on CPU processes.

    accelerate enables FSDP on accelerators only: launched on CPUs with an FSDP config, it runs DDP and says
    nothing. hftl sets the same plugin (read from the launcher's ``FSDP_*`` variables) on the gloo processes, so an
    FSDP recipe runs sharded on a laptop first (``recipes/accelerate/cpu-fsdp-2.yaml``), and is tested here.
    FSDP2 only: FSDP1 on CPU fails inside torch (its compute device and ``device_id`` disagree).
    """
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP on CPU processes needs fsdp_version: 2 in the launcher config (got "
                         f"{plugin.fsdp_version}); FSDP1 runs on GPUs only")
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def fsdp_units(accelerator: Accelerator, model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, str]]:
    """Get a model ready for accelerate's FSDP2: one unit per backbone block, one owner per parameter.

    accelerate's default units are the model's ``_no_split_modules``, which for BERT or ViT include the embeddings
    module; accelerate then also makes the word or patch embedding inside it a unit of its own, and FSDP2 fails on
    its already sharded weight (accelerate 1.15). The blocks hftl finds for ``freeze_n`` are the units instead
    (unless the launcher config names classes); accelerate still gives the input embedding and the output layer
    with the final norm units of their own.
    FSDP2 refuses a parameter registered by two modules in different units. Masked-LM heads register their
    decoder's bias again on the head (BERT's ``cls.predictions.bias``, for old checkpoints; forward never reads
    it): such aliases are taken off here and returned, for ``restore_aliases`` to put back once trained.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type != DistributedType.FSDP or plugin is None:
        return []
    blocks = find_layers(model)[1]
    if len(blocks) and not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = sorted({type(block).__name__ for block in blocks})
    aliases = []
    for parent in model.modules():
        for name, param in list(parent._parameters.items()):
            owner = param is not None and next((path for path, p in parent.named_parameters(remove_duplicate=False)
                                                if p is param and "." in path), None)  # a descendant's name for it
            if owner:
                del parent._parameters[name]
                aliases.append((parent, name, owner))
    return aliases


def restore_aliases(aliases: list[tuple[torch.nn.Module, str, str]]) -> None:
    """Register again the aliases ``fsdp_units`` took off, on the trained parameters: the saved model is whole."""
    for parent, name, owner in aliases:
        parent.register_parameter(name, parent.get_parameter(owner))


def per_device_batch(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """Per-process micro-batch that keeps the effective batch (``train.batch_size``) whatever the process count."""
    size, rest = divmod(cfg.batch_size, cfg.grad_accum * accelerator.num_processes)
    if rest or size < 1:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by grad_accum={cfg.grad_accum} x "
                         f"{accelerator.num_processes} processes")
    return size


def train_batch(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """Size of the train loader's batches: one accumulation step of all processes, which accelerate splits.

    The examples of each optimizer step are then the same on 1 or N processes (with 4, each gets 4 of the 16 here).

    Example:
        >>> train_batch(TrainConfig(batch_size=32, grad_accum=2), accelerator)  # doctest: +SKIP
        16
    """
    return per_device_batch(cfg, accelerator) * accelerator.num_processes


def eval_batch(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """``train.eval_batch_size`` rounded down to a multiple of the process count (accelerate splits it evenly)."""
    n = accelerator.num_processes
    return max(n, cfg.eval_batch_size // n * n)


def auto_workers(num_workers: int = -1) -> int:
    """``train.num_workers``; -1 (auto): none on the CPU, where the cores train, and up to 8 beside a GPU, where
    decoding and augmenting images or audio in the main process would leave it waiting."""
    if num_workers >= 0:
        return num_workers
    return min(8, (os.cpu_count() or 1) // 2) if torch.cuda.is_available() else 0


def make_loader(ds, batch_size: int, collate, *, shuffle: bool, seed: int = 0, group: bool = True,
                num_workers: int = 0) -> DataLoader:
    """Length-grouped batches, reshuffled per epoch by ``set_epoch``; pinned memory beside a GPU.

    The loader has its own generator: making an iterator draws a seed from it, and from the global RNG otherwise,
    which would shift the dropout of a run resumed mid-epoch.
    """
    lengths = ds["length"] if "length" in ds.column_names else [0] * len(ds)
    batches = LengthGroupedBatches(lengths, batch_size, shuffle, seed, group and "length" in ds.column_names)
    on_device = getattr(ds, "device", torch.device("cpu")).type != "cpu"  # cached features on the GPU
    workers = 0 if on_device else auto_workers(num_workers)
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      pin_memory=torch.cuda.is_available() and not on_device,
                      persistent_workers=workers > 0 and shuffle,  # the train loader's workers stay between epochs
                      generator=torch.Generator().manual_seed(seed))


def layer_depths(model: torch.nn.Module) -> tuple[dict[int, int], int]:
    """Depth of each parameter (by id) in the backbone's stack: 0 the embeddings, i + 1 block i, n + 1 the rest
    (final norm, pooler, head); and n. Adapters inside a block share its depth. Empty when no stack is found."""
    from hftl.strategies import find_embeddings, find_layers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "backbone", None)
    _, layers = find_layers(backbone) if backbone is not None else ("", [])
    if not len(layers):
        return {}, 0
    n = len(layers)
    depth = {id(p): n + 1 for p in model.parameters()}
    for _, module in find_embeddings(backbone):
        depth.update((id(p), 0) for p in module.parameters())
    for i, layer in enumerate(layers):
        depth.update((id(p), i + 1) for p in layer.parameters())
    return depth, n


def param_groups(model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float,
                 layer_lr_decay: float = 1.0, by_depth: bool = False) -> list[dict]:
    """AdamW groups: no decay on biases and norms; the new head at its own learning rate; with ``layer_lr_decay``
    < 1 each block below the top one more factor lower (the embeddings lowest). Each group records the ``depth``
    of its parameters (see ``layer_depths``) when rates or a schedule depend on it."""
    depths, n = layer_depths(model) if layer_lr_decay != 1 or by_depth else ({}, 0)
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = ".head." in f".{name}" or "modules_to_save" in name and "head" in name
        decay = 0.0 if p.ndim < 2 or any(k in name for k in _NO_DECAY) else weight_decay
        depth = depths.get(id(p), n + 1)
        if is_head and head_lr:
            p_lr = head_lr
        elif depth > n:  # above the blocks: final norm, pooler, head
            p_lr = lr
        else:
            p_lr = lr * layer_lr_decay ** (n + 1 - depth)
        groups.setdefault((p_lr, decay, depth), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd, "depth": d} for (g_lr, wd, d), ps in groups.items()]


def gradual_unfreezing(scheduler, steps_per_epoch: int, every: float, layers: int):
    """The schedule, gated per group: depth n + 1 (head, final norm) trains from the start, block i joins after
    ``(n - i) * every`` epochs, the embeddings after ``(n + 1) * every``. Before that a group's learning rate is 0:
    it does not move (AdamW's decay scales with the rate too), and the same optimizer works under DDP and FSDP.
    Its gradients are still computed and AdamW's moments gather them, so an opened block starts with warm moments
    (freezing with requires_grad would save that compute, but DDP cannot change its parameter set mid-run)."""
    from torch.optim.lr_scheduler import LambdaLR

    base = scheduler.lr_lambdas[0]
    optimizer = scheduler.optimizer

    def gate(depth: int):
        start = round(max(layers + 1 - depth, 0) * every * steps_per_epoch)
        return lambda step: base(step) * (step >= start)

    return LambdaLR(optimizer, [gate(g.get("depth", layers + 1)) for g in optimizer.param_groups])


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute the backbone's activations during backward, through a peft wrapper too.

    Non-reentrant checkpointing: the reentrant kind gives adapters no gradient when a block's inputs come from
    frozen embeddings.

    Example:
        >>> enable_gradient_checkpointing(adapted.model)  # doctest: +SKIP
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5.x's name; the old one warns
        base.activation_checkpointing_enable({"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def should_compile(model: torch.nn.Module, setting: str | bool) -> bool:
    """``train.compile``: ``auto`` compiles text models on a GPU, where it measured faster, and nothing else.

    Measured on an H200 (the figures of issue 8): compiling a bf16 loop sped BERT-base up 1.5x and slowed ViT-base
    down 17%; Wav2Vec2-base gained in a hand loop but lost under the Trainer, and audio of varying length
    recompiles. On the CPU the compile time is not won back in a fine-tuning run. ``bench/throughput.py`` times
    both settings for each model on a GPU (its ``compile`` arm).
    """
    if str(setting).lower() in ("true", "on"):
        return True
    if str(setting).lower() != "auto" or not torch.cuda.is_available():
        return False
    return input_name(model) == "input_ids"


def input_name(model: torch.nn.Module) -> str:
    """The backbone's main input (``input_ids``, ``pixel_values``, ``input_values``...): its modality."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "backbone", base), "main_input_name", "")


def progress(iterable, accelerator: Accelerator, desc: str) -> tqdm:
    """A progress bar on the main process only, and only on a terminal: a log file gets the one line per epoch of
    ``_end_epoch`` instead of a bar's every redraw. ``TQDM_DISABLE=1`` silences it (an explicit ``disable=False``
    would override that variable)."""
    quiet = {"disable": True} if not accelerator.is_local_main_process or not sys.stderr.isatty() else {}
    return tqdm(iterable, desc=desc, leave=False, **quiet)


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "length"}


@torch.no_grad()
def predict(model, loader: DataLoader, accelerator: Accelerator, desc: str = "eval",
            merge_adapters: bool = True) -> tuple[torch.Tensor, ...]:
    """Logits and labels over a loader, gathered across processes without duplicates; peft adapters merged.
    Per-token outputs (batch, length, classes) are padded to the longest batch (labels with -100)."""
    from hftl.tasks import task_of

    model.eval()
    logits, labels = [], []
    step = getattr(task_of(accelerator.unwrap_model(model)), "eval_outputs", None)  # e.g. generate's ids
    with adapters_merged(accelerator.unwrap_model(model), sharded(accelerator) or not merge_adapters):
        for batch in progress(loader, accelerator, desc):
            if step is not None:
                lg, lb = step(model, _model_inputs(batch)).float().contiguous(), batch["labels"]
            else:
                out = model(**{k: v for k, v in _model_inputs(batch).items() if k != "labels"})
                lg, lb = out.logits.float().contiguous(), batch["labels"]
            if lg.dim() == 3 or step is not None:  # one output per token: batches (and processes) differ in length
                lg, lb = accelerator.pad_across_processes(lg, dim=1), accelerator.pad_across_processes(lb, 1, -100)
            lg, lb = accelerator.gather_for_metrics((lg, lb))
            logits.append(lg)  # on the device until the end: no synchronisation per batch
            labels.append(lb)
    if logits and (logits[0].dim() == 3 or step is not None):
        return _cat_padded(logits, 0.0), _cat_padded(labels, -100)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


def _cat_padded(parts: list[torch.Tensor], value: float) -> torch.Tensor:
    """Concatenate per-token batches of different lengths along the batch, padded with ``value`` (-100: unscored)."""
    length = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, length - p.shape[1]), value=value)
                      for p in parts]).cpu()


def sharded(accelerator: Accelerator) -> bool:
    """Whether the weights are split over processes (FSDP, DeepSpeed): no merging, no plain steps."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def evaluate(model, loader: DataLoader, accelerator: Accelerator, metrics: list[str], desc: str = "eval") -> dict:
    """Scores of the model's task (``hftl.tasks``, recorded in its config) on a loader: flat floats, ``loss`` too."""
    from hftl.tasks import task_of

    logits, labels = predict(model, loader, accelerator, desc)
    config = accelerator.unwrap_model(model).config
    return task_of(accelerator.unwrap_model(model)).scores(logits, labels, metrics, config)


def _plain_steps(accelerator: Accelerator) -> bool:
    """Whether the optimizer, scheduler and clipping can be the plain PyTorch objects: no loss scaler, no sharding.

    Then accelerate's wrappers add nothing to a step but their Python overhead (a package lookup per optimizer step,
    a walk over every parameter to clip), which is what a small head trained on cached features mostly pays.
    The loop steps them only on the last micro-batch of each accumulation step, as the wrappers would.
    """
    return accelerator.scaler is None and accelerator.distributed_type in (
        DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)


def _train_epoch(model, loader, optimizer, scheduler, accelerator: Accelerator, cfg: TrainConfig,
                 state: LoopState, checkpoint: Callable[[], None] | None, count_terms: Callable = loss_terms,
                 ckpt_dir: Path | None = None, monitor=None) -> float:
    """The epoch ``state.epoch`` (its remaining steps when resumed mid-epoch); its mean train loss per step.

    Each optimizer step is a group of ``grad_accum`` loader batches, the examples of one ``train.batch_size`` batch
    (see ``LengthGroupedBatches``), weighted by ``step_weights``: the step's gradient is the whole batch's, with
    uneven last steps and token-level losses too. Gradients are synchronised on the group's last batch only.
    TrainingDiverged once the loss is non-finite (checked every ``_finite_every`` steps, before each checkpoint).
    ``monitor`` (``hftl.tracking``) gets each step's loss, kept on the device.
    """
    model.train()
    loader.set_epoch(state.epoch)  # accelerate's loader re-sets our sampler's epoch from its own count
    if state.batch:
        loader = accelerator.skip_first_batches(loader, state.batch)
    total = torch.tensor(state.epoch_loss, device=accelerator.device)
    plain = _plain_steps(accelerator)
    opt, sched = (optimizer.optimizer, scheduler.scheduler) if plain else (optimizer, scheduler)
    params = [p for p in model.parameters() if p.requires_grad]
    every = _finite_every(accelerator)
    bar = progress(loader, accelerator, f"epoch {state.epoch + 1}")
    for group in step_groups(bar, cfg.grad_accum):
        weights = step_weights(group, accelerator, count_terms)
        step_loss = 0.0
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            accelerator.sync_gradients = last  # accelerate's optimizer, scheduler and DeepSpeed step on the last
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                loss = model(**_model_inputs(batch)).loss * weights[i]
                accelerator.backward(loss)
            step_loss = step_loss + loss.detach() / accelerator.gradient_accumulation_steps  # on device: no sync
        total += step_loss
        if monitor:
            monitor.batch(step_loss)
        if cfg.max_grad_norm and plain:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
        elif cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.batch += len(group)
        state.step += 1
        if monitor:
            monitor.step(state.step, opt)
        _kill_point(f"step-{state.step}")
        if state.step % every == 0:
            _check_loss(total, state, cfg, accelerator, ckpt_dir)
        end = accelerator.gradient_state.end_of_dataloader  # the epoch's own checkpoint follows evaluation
        if checkpoint and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not end:
            _check_loss(total, state, cfg, accelerator, ckpt_dir)
            state.epoch_loss = float(accelerator.reduce(total, "mean"))
            checkpoint()
    _check_loss(total, state, cfg, accelerator, ckpt_dir)
    steps = -(-state.batch // cfg.grad_accum)  # only the last step of an epoch can have fewer batches
    loss = float(accelerator.reduce(total, "mean")) / max(steps, 1)
    state.batch, state.epoch_loss = 0, 0.0
    return loss


def _end_epoch(state: LoopState, cfg: TrainConfig, train_loss: float, scores: dict, seconds: float,
               accelerator: Accelerator) -> bool:
    """Record the epoch in the loop state and the log; whether validation improved."""
    state.epoch += 1
    state.history.append({"epoch": state.epoch, "train_loss": train_loss, "validation": scores, "seconds": seconds})
    score = scores[cfg.metric_for_best] * (-1 if cfg.metric_for_best in LOWER_IS_BETTER else 1)
    improved = score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    else:
        state.bad_epochs += 1
    accelerator.print(f"epoch {state.epoch}: train_loss {train_loss:.4f} " + " ".join(
        f"val_{k} {v:.4f}" for k, v in scores.items()) + f" ({seconds:.1f} s)" + (" *best*" if improved else ""))
    return improved


def fit(model, train_loader: DataLoader, val_loader: DataLoader, accelerator: Accelerator, cfg: TrainConfig,
        metrics: list[str], *, checkpoint_dir: str | Path | None = None,
        resume: bool = False, evaluate_fn: Callable | None = None,
        count_terms: Callable = loss_terms, monitor=None) -> tuple[object, LoopState]:
    """Train with evaluation each epoch; return the prepared model loaded with its best weights, and the state.

    ``train_loader`` (``make_loader``) yields batches of ``train_batch(cfg, accelerator)`` examples (split over the
    processes); fit groups its batches into optimizer steps of ``train.grad_accum`` (the sampler's ``accum``), so
    that accumulation trains on the examples, in the order, of ``train.batch_size`` batches without it.
    Dropout differs per process (seed + process index); initial weights are the caller's, the same everywhere.
    ``evaluate_fn(model, val_loader, accelerator) -> scores`` replaces the classification ``evaluate`` (whose
    ``metrics`` and ``cfg.metric_for_best`` are checked before the first step: ConfigError).
    ``count_terms(batch)``: how many terms the model's loss averages over (``hftl.accumulation.loss_terms``).
    ``monitor`` (``hftl.tracking.RunMonitor``) logs steps and epochs to trackers, adds drift to the history, and
    may stop the run (below its baseline).

    Example:
        >>> model, state = fit(model, loader, val_loader, accelerator, cfg.train, ["accuracy"],  # doctest: +SKIP
        ...                    checkpoint_dir="runs/x/checkpoints", resume=True)
    """
    if evaluate_fn is None:  # names of metrics and metric_for_best, before the first step (the caller's choice)
        from hftl.tasks import task_of

        task = task_of(model)
        task.check_best(metrics, cfg.metric_for_best, trust_remote_code=True)
        if cfg.metric_for_best == "auto":  # the task's default; a recipe that read the data resolved it already
            cfg = dataclasses.replace(cfg, metric_for_best=task.auto_best(metrics))
    if isinstance(train_loader.batch_sampler, LengthGroupedBatches):  # one optimizer step = one group of batches
        train_loader.batch_sampler.accum = cfg.grad_accum
    groups = param_groups(model, cfg.lr, cfg.head_lr, cfg.weight_decay, cfg.layer_lr_decay,
                          by_depth=bool(cfg.unfreeze_every))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)  # one kernel per step, CPU included
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    epochs, total_steps = math.ceil(cfg.epochs), max(1, int(steps_per_epoch * cfg.epochs))
    scheduler = get_scheduler(cfg.scheduler, optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if cfg.unfreeze_every:
        scheduler = gradual_unfreezing(scheduler, steps_per_epoch, cfg.unfreeze_every, layer_depths(model)[1])
    aliases = fsdp_units(accelerator, model)
    names = _saved_names(model)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if should_compile(model, cfg.compile):
        model.compile()  # in place: parameter names stay (a torch.compile wrapper would prefix them)
    if torch.cuda.is_available() and input_name(model) == "pixel_values":
        torch.backends.cudnn.benchmark = True  # images of one size: the fastest convolution kernels, found once
    batches = train_loader.batch_sampler  # ours, before accelerate wraps it for sharding
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    accelerator.print(f"effective batch {cfg.batch_size} = {per_device_batch(cfg, accelerator)} per process x "
                      f"{accelerator.num_processes} processes x {cfg.grad_accum} accumulation steps; "
                      f"{steps_per_epoch} steps per epoch, {total_steps} in all")
    set_seed(cfg.seed, device_specific=True)  # dropout differs per process; a resumed run restores RNG next
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    state, best = _start(accelerator, ckpt_dir, resume)

    def checkpoint() -> None:  # reads state and best as they are when called
        _check_weights(model, state, cfg, accelerator, ckpt_dir)  # a checkpoint never holds non-finite weights
        save_checkpoint(accelerator, ckpt_dir, state, best, cfg.keep_checkpoints, names, model)  # frozen: not saved

    while state.epoch < epochs and state.step < total_steps:
        start = time.perf_counter()
        batches.set_epoch(state.epoch)
        train_loss = _train_epoch(model, train_loader, optimizer, scheduler, accelerator, cfg, state,
                                  checkpoint if ckpt_dir else None, count_terms, ckpt_dir, monitor)
        train_seconds = time.perf_counter() - start  # the epoch's loss was reduced: the device has finished
        scores = (evaluate_fn(model, val_loader, accelerator) if evaluate_fn  # e.g. masked-modeling scores
                  else evaluate(model, val_loader, accelerator, metrics, "validation"))
        bad = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not math.isfinite(v)}
        if bad:  # the same on every process: scores are computed from gathered predictions
            raise _diverged(f"the validation scores became {bad}", state, cfg, ckpt_dir)
        improved = _end_epoch(state, cfg, train_loss, scores, time.perf_counter() - start, accelerator)
        state.history[-1]["train_seconds"] = train_seconds
        if improved:
            best = _trainable_state(accelerator, model, names)
        stop = monitor.epoch(state) if monitor else False  # before the checkpoint: it saves the epoch's drift
        if ckpt_dir:
            checkpoint()
        if stop:
            break
        if cfg.early_stopping_patience and state.bad_epochs >= cfg.early_stopping_patience:
            accelerator.print(f"early stopping: no improvement of {cfg.metric_for_best} for {state.bad_epochs} epochs")
            break
    if best is not None:
        _load_trainable(accelerator, model, best)
    restore_aliases(aliases)
    return model, state
