"""Multitask learning: several tasks on one shared backbone, each with its own head (and optionally its own adapter).

A multitask model is "a task made of tasks": every head is the ``head`` that the task's own ``build_model`` made
(classification, multi_label, regression: any number of outputs each), on one backbone. A batch holds examples of
one task and says which (``task``: its index); ``MultitaskModel.forward`` pools the backbone's output, applies that
task's head and loss (the task's own, from its config's ``problem_type``) times the task's weight. So ``hftl.fit``
trains it as it trains one task: the same loop, accumulation, checkpoints, resume and processes.

- ``TaskBatches``: the train batch sampler, each batch from one task, tasks drawn ``proportional`` (every task's
  full batches once per epoch, shuffled together), ``temperature`` (p_i ~ n_i^(1/T), Arivazhagan et al. 2019,
  mT5) or ``round_robin``; deterministic given the seed and the epoch, and the same on any number of processes.
- ``apply_multitask_strategy``: hftl's strategies on the shared backbone; peft methods inject one adapter (or one
  per task, switched per batch) into the backbone, the heads always train.
- ``evaluate_tasks``: each task's own ``scores`` on its own split; ``flat_scores`` adds ``multitask_mean``, the mean
  of each task's ``metric_for_best`` (loss-like ones negated), which picks the best epoch.
- ``task_model``: one task alone, as hftl's single-task classifier (the backbone with that task's adapter merged,
  and its head): what ``hftl.load``, ``hftl predict`` and ``hftl push`` take; ``load_multitask``: the whole model.

Example:
    >>> model = MultitaskModel(backbone, {"sentiment": head_a, "topic": head_b}, configs, weights)  # doctest: +SKIP
    >>> model(task=torch.zeros(8, dtype=torch.long), input_ids=ids, attention_mask=mask).logits.shape  # doctest: +SKIP
    torch.Size([8, 2])
"""

from __future__ import annotations

import bisect
import copy
import json
import warnings

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from hftl.config import ConfigError, StrategyConfig
from hftl.modeling import HftlForClassification, pool

MEAN = "multitask_mean"  # the validation score that picks the best epoch
SHARED_ADAPTER = "default"


class MultitaskModel(nn.Module):
    """The shared ``backbone``, one head per task in ``head`` (a ModuleDict: every strategy trains ``head.*`` and
    ``train.head_lr`` applies), each task's ``HftlConfig`` (labels, ``problem_type``, scaling) and loss weight.

    ``config`` is the first task's config: what the loop and strategies read of a model (``pooling``, the
    backbone's settings) is shared by all tasks."""

    def __init__(self, backbone: nn.Module, heads: dict, configs: dict, weights: dict) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.ModuleDict(heads)
        self.names = list(heads)
        self.task_configs = dict(configs)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.config = self.task_configs[self.names[0]]
        self.main_input_name = getattr(backbone, "main_input_name", "input_ids")
        self.adapters: list[str] = []  # peft adapters injected in the backbone: one shared, or one per task
        self._active: str | None = None

    def features(self, **inputs) -> torch.Tensor:
        """The pooled backbone output, (batch, width): every head's input."""
        out = self.backbone(**inputs, return_dict=True)
        hidden = out.last_hidden_state
        mask = HftlForClassification._feature_mask(self, hidden, inputs.get("attention_mask"))
        return pool(hidden, mask, getattr(out, "pooler_output", None), self.config.pooling)

    def activate(self, name: str) -> None:
        """Make task ``name``'s adapter the one the backbone runs (with one adapter per task). Set on peft's layers
        directly: peft's ``set_adapter`` would also switch ``requires_grad``, and the optimizer (built once) would
        then never see the other tasks' adapters."""
        adapter = name if name in self.adapters else None
        if adapter is None or self._active == adapter:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.backbone.modules():
            if isinstance(module, BaseTunerLayer):
                module._active_adapter = [adapter]
        self._active = adapter

    def forward(self, task: torch.Tensor, labels: torch.Tensor | None = None, **inputs):
        """``task``: (batch,) the index of the batch's task in ``names`` (one task per batch); the loss is that
        task's own times its weight."""
        name = self.names[int(task.reshape(-1)[0])]
        self.activate(name)
        inputs = {k: v for k, v in inputs.items() if v is not None and k not in ("length", "return_dict")}
        logits = self.head[name](self.features(**inputs))
        loss = None
        if labels is not None:
            view = _ConfigView(self.task_configs[name])
            loss = HftlForClassification.loss(view, logits, labels) * self.weights[name]
        return SequenceClassifierOutput(loss=loss, logits=logits)


class _ConfigView:
    """What ``HftlForClassification.loss`` reads of a model: its config."""

    def __init__(self, config) -> None:
        self.config = config


def build_multitask(models: dict, weights: dict) -> MultitaskModel:
    """A ``MultitaskModel`` from one single-task model per task (each task's ``build_model``): the first one's
    backbone is shared, each keeps its own head and config. The backbones must be the same pretrained weights."""
    first = next(iter(models.values()))
    return MultitaskModel(first.backbone, {k: m.head for k, m in models.items()},
                          {k: m.config for k, m in models.items()}, weights)


def apply_multitask_strategy(model: MultitaskModel, cfg: StrategyConfig, adapter_per_task: bool = False):
    """``strategy.name`` on the shared backbone; every head trains. ``linear_probe`` runs the frozen backbone each
    step (features are not cached across tasks). peft methods: one adapter named ``default``, or one per task
    (``adapter_per_task``). Returns ``hftl.strategies.Adapted``."""
    from hftl.strategies import STRATEGIES, Adapted, apply_strategy, freeze_norm_statistics, set_trainable

    if cfg.name == "lp_ft":
        raise ConfigError("strategy.name=lp_ft is not available with multitask.tasks: use linear_probe, head, full, "
                          "freeze_n or a peft method")
    if cfg.name in STRATEGIES:
        if adapter_per_task:
            raise ConfigError(f"multitask.adapter_per_task=true needs a peft strategy (lora, ...), not "
                              f"strategy.name={cfg.name}: set strategy.name=lora or adapter_per_task=false")
        adapted = apply_strategy(model, cfg)
        adapted.frozen_backbone = False
        return adapted
    peft_config = _peft_config(model, cfg)
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    freeze_norm_statistics(model.backbone)
    model.adapters = list(model.names) if adapter_per_task else [SHARED_ADAPTER]
    for name in model.adapters:
        with warnings.catch_warnings():  # "Already found a peft_config ... multiple adapters": what is meant here
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(peft_config, model.backbone, adapter_name=name)
    set_trainable(model, False)
    for module in model.backbone.modules():
        if isinstance(module, BaseTunerLayer):
            for layer in module.adapter_layer_names:
                set_trainable(getattr(module, layer), True)
            module._active_adapter = [model.adapters[0]]
    set_trainable(model.head, True)
    model._active = model.adapters[0]
    return Adapted(model, cfg.name, frozen=["backbone (except adapters)"],
                   peft_config={**peft_config.to_dict(), "adapters": model.adapters})


def _peft_config(model: MultitaskModel, cfg: StrategyConfig):
    """The peft method's config as ``hftl.strategies.peft_strategy`` makes it (its default target modules), without
    ``modules_to_save``: the heads are the multitask model's, outside the backbone."""
    from hftl.strategies import default_target_modules, make_peft_config, peft_config_args

    config_cls, _, args = peft_config_args(cfg, lambda method: default_target_modules(model, method))
    return make_peft_config(config_cls, args)


class TaskDatasets(torch.utils.data.Dataset):
    """The tasks' train sets end to end: global index -> (task index, row); each row gets its ``task``."""

    def __init__(self, datasets: list) -> None:
        self.datasets = datasets
        self.offsets = np.cumsum([0] + [len(d) for d in datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        task = bisect.bisect_right(self.offsets, index) - 1
        return {**self.datasets[task][index - self.offsets[task]], "task": task}


class TaskCollate:
    """Each task's own collator for its batch (rows of one task), with ``task`` (batch,) added."""

    def __init__(self, collates: list, task: int | None = None) -> None:
        self.collates, self.task = collates, task

    def __call__(self, rows: list[dict]) -> dict:
        task = rows[0].get("task", self.task)
        batch = dict(self.collates[task]([{k: v for k, v in r.items() if k != "task"} for r in rows]))
        batch["task"] = torch.full((len(rows),), task, dtype=torch.long)
        return batch


class TaskBatches:
    """Train batches of ``batch_size`` indices into ``TaskDatasets``, each batch from one task.

    An epoch has ``sum(n_i // batch_size)`` batches (full ones only: an even split over processes). Which task each
    batch comes from: ``proportional``: every task's full batches once, in a shuffled order; ``temperature``: drawn
    with p_i ~ n_i^(1/T) (T=1 proportional to the sizes, large T uniform); ``round_robin``: tasks in turn. Within a
    task its batches are those of ``hftl.data.LengthGroupedBatches`` over its examples (``lengths``: examples of
    similar length together, as a single-task run batches them: less padding), started again with a new draw when
    used up (temperature and round-robin can take a small task more than once per epoch). Deterministic given
    ``seed`` and the epoch (``set_epoch``).

    Example:
        >>> [len(b) for b in TaskBatches([20, 8], 4, "round_robin")]
        [4, 4, 4, 4, 4, 4, 4]
    """

    def __init__(self, sizes: list[int], batch_size: int, sampling: str = "proportional", temperature: float = 2.0,
                 seed: int = 0, lengths: list | None = None) -> None:
        self.sizes, self.batch_size, self.sampling = list(sizes), batch_size, sampling
        self.lengths = lengths or [None] * len(self.sizes)  # per task: each example's length, or None
        self.temperature, self.seed, self.epoch = temperature, seed, 0
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.counts = [n // batch_size for n in self.sizes]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts)

    def probabilities(self) -> np.ndarray:
        """Each task's chance of drawing a batch under ``temperature``: n_i^(1/T), normalised."""
        p = np.asarray(self.sizes, dtype=np.float64) ** (1.0 / self.temperature)
        return p / p.sum()

    def task_order(self) -> list[int]:
        """The epoch's task index per batch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        k, total = len(self.sizes), len(self)
        if self.sampling == "round_robin":
            return [i % k for i in range(total)]
        if self.sampling == "temperature":
            return rng.choice(k, size=total, p=self.probabilities()).tolist()
        return rng.permutation(np.repeat(np.arange(k), self.counts)).tolist()

    def _task_batches(self, task: int, draw: int) -> list[list[int]]:
        """Task ``task``'s full batches for its ``draw``-th pass this epoch, length-grouped when lengths are known."""
        from hftl.data import LengthGroupedBatches

        lengths = self.lengths[task]
        grouped = LengthGroupedBatches(lengths if lengths is not None else [0] * self.sizes[task], self.batch_size,
                                       shuffle=True, seed=self.seed + 7919 * task, group=lengths is not None)
        grouped.set_epoch(self.epoch * 1000 + draw)
        return [[i + self.offsets[task] for i in b] for b in grouped if len(b) == self.batch_size]

    def __iter__(self):
        passes = [0] * len(self.sizes)
        queues = [self._task_batches(t, 0) for t in range(len(self.sizes))]
        for task in self.task_order():
            if not queues[task]:
                passes[task] += 1
                queues[task] = self._task_batches(task, passes[task])
            yield queues[task].pop(0)


def train_loader(datasets: list, collates: list, batch_size: int, sampling: str, temperature: float, seed: int):
    """The multitask train DataLoader (``TaskBatches`` over ``TaskDatasets``); DataError-free: sizes are checked by
    the caller (a task with fewer train rows than ``batch_size`` would have no batch)."""
    lengths = [d["length"][:] if "length" in d.column_names else None for d in datasets]
    batches = TaskBatches([len(d) for d in datasets], batch_size, sampling, temperature, seed, lengths)
    return torch.utils.data.DataLoader(TaskDatasets(datasets), batch_sampler=batches, collate_fn=TaskCollate(collates),
                                       generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate_tasks(model, loaders: dict, accelerator, tasks: dict, metrics: dict, logits_out: dict | None = None):
    """Each task's ``scores`` on its own (prepared) loader: ``{task name: {metric: float}}``. The loaders' batches
    carry ``task``; logits and labels are gathered over processes. ``logits_out`` receives (logits, labels) per
    task when given."""
    from hftl.train import progress

    model.eval()
    configs = accelerator.unwrap_model(model).task_configs
    scores = {}
    for name, loader in loaders.items():
        logits, labels = [], []
        for batch in progress(loader, accelerator, f"eval {name}"):
            out = model(**{k: v for k, v in batch.items() if k not in ("labels", "length")})
            lg, lb = accelerator.gather_for_metrics((out.logits.float().contiguous(), batch["labels"]))
            logits.append(lg)
            labels.append(lb)
        lg, lb = torch.cat(logits).cpu(), torch.cat(labels).cpu()
        if logits_out is not None:
            logits_out[name] = (lg, lb)
        scores[name] = tasks[name].scores(lg, lb, metrics[name], configs[name])
    return scores


def flat_scores(scores: dict, best: dict) -> dict:
    """``{"task/metric": value}`` for the loop's log and history, and ``multitask_mean``: the mean over tasks of
    each task's ``metric_for_best`` (``best``: name -> metric), negated for loss-like (lower-is-better) metrics."""
    from hftl.train import LOWER_IS_BETTER

    flat = {f"{name}/{k}": v for name, s in scores.items() for k, v in s.items()}
    signed = [scores[n][m] * (-1 if m in LOWER_IS_BETTER else 1) for n, m in best.items()]
    flat[MEAN] = float(np.mean(signed))
    return flat


def nested(flat: dict) -> dict:
    """``flat_scores`` back as ``{task: {metric: value}, "multitask_mean": value}`` (metrics.json nests by task)."""
    out: dict = {}
    for key, value in flat.items():
        if "/" in key:
            name, metric = key.split("/", 1)
            out.setdefault(name, {})[metric] = value
        else:
            out[key] = value
    return out


def task_model(model: MultitaskModel, name: str) -> HftlForClassification:
    """Task ``name`` alone as hftl's single-task classifier: a copy of the backbone with the task's adapter (or the
    shared one) merged into its weights and the peft layers taken out, and a copy of its head and config."""
    backbone = copy.deepcopy(model.backbone)
    if model.adapters:
        _merge_adapter(backbone, name if name in model.adapters else model.adapters[0])
    config = copy.deepcopy(model.task_configs[name])
    alone = HftlForClassification(config, backbone=backbone)
    alone.head.load_state_dict(model.head[name].state_dict())
    return alone.eval()


def _merge_adapter(backbone: nn.Module, adapter: str) -> None:
    """Merge peft adapter ``adapter`` into the base weights of ``backbone`` and put the plain layers back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)]
    for path, module in layers:
        module.merge(adapter_names=[adapter])
        parent, _, attr = path.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, attr, module.get_base_layer())


def model_card(cfg, metrics: dict, about: dict, adapted) -> str:
    """The multitask run's card: what is shared (the backbone, and the adapter unless one per task), what each task
    has of its own (head, labels, loss weight, data), and each task's test scores."""
    shared = "the backbone" + (" and one LoRA-style adapter" if about["adapters"] == [SHARED_ADAPTER] else "")
    own = "its head" + (" and its own adapter" if len(about["adapters"]) > 1 else "")
    rows = "\n".join(f"| {n} | {metrics['tasks'][n]['classes']} | {about['weights'][n]:g} | "
                     f"{', '.join(f'{k} {v:.4f}' for k, v in metrics['test'][n].items())} |"
                     for n in about["tasks"])
    return f"""---
base_model: {cfg.model.name}
library_name: transformers
tags: [hftl, multitask, {adapted.strategy}]
---
# Multitask: {', '.join(about['tasks'])} on {cfg.model.name}

{len(about['tasks'])} tasks share {shared} (`strategy.name={adapted.strategy}`, {adapted.trainable:,} of
{adapted.total:,} parameters trained); each task has {own}. Batches are drawn one task at a time
(`multitask.sampling={cfg.multitask.sampling}`), each task's loss times its weight. The best epoch is the one with the
highest mean over tasks of each task's own `metric_for_best` on validation (loss-like metrics negated).

| task | classes | loss weight | test |
|---|---|---|---|
{rows}

`model/` holds the whole multitask model (`multitask.safetensors`, `multitask.json`); `tasks/<name>/` holds each
task alone (the backbone{' with its adapter merged' if about['adapters'] else ''} and its head), a normal hftl run
directory: `hftl.load("tasks/<name>")`, `hftl predict tasks/<name> ...`, `hftl push tasks/<name> user/repo`.
"""


def load_multitask(path) -> MultitaskModel:
    """The whole multitask model of a run (its folder or its ``model/``), in eval mode: the backbone built from the
    saved config (no download), its adapters injected again, every weight from ``multitask.safetensors``.

    Example:
        >>> model = load_multitask("runs/rt-fortunes")  # doctest: +SKIP
        >>> model(task=torch.tensor([1]), **tokenizer(["a quote"], return_tensors="pt")).logits  # doctest: +SKIP
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from hftl.modeling import HftlConfig

    folder = Path(path)
    folder = folder / "model" if (folder / "model" / "multitask.json").is_file() else folder
    about = json.loads((folder / "multitask.json").read_text())
    configs = {n: HftlConfig.from_dict(c) for n, c in about["configs"].items()}
    first = HftlForClassification(configs[about["tasks"][0]])
    heads = {n: HftlForClassification(configs[n], backbone=first.backbone).head for n in about["tasks"]}
    model = MultitaskModel(first.backbone, heads, configs, about["weights"])
    if about["adapters"]:
        from peft import PeftConfig, inject_adapter_in_model

        settings = {k: v for k, v in about["peft_config"].items() if k != "adapters"}
        for name in about["adapters"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                inject_adapter_in_model(PeftConfig.from_peft_type(**settings), model.backbone, adapter_name=name)
        model.adapters = list(about["adapters"])
        model.activate(model.adapters[0])
    model.load_state_dict(load_file(folder / "multitask.safetensors"))
    return model.eval()
