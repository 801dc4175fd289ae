"""Watching a run: experiment trackers through accelerate, the loss and learning rates of every optimizer step, the
validation scores and weight drift of every epoch, and the baseline guard's early stop.

``train.report_to`` names the trackers (``tensorboard`` by default, written to ``output_dir/tensorboard``; any
tracker accelerate supports and that is installed: ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``trackio``,
``clearml``, ``dvclive``, ``swanlab``; ``all`` for every installed one; ``none`` for none), one run per stage
(``output_dir/tensorboard/finetune``, ``.../pretrain``). Only the main process
logs. The per-step losses stay on the device and cross to the host every ``FLUSH_EVERY`` steps and at each epoch's
end, so watching a run adds no host-device synchronisation per step.

Example:
    >>> accelerator = make_accelerator(cfg.train, **tracker_kwargs(cfg))  # doctest: +SKIP
    >>> start_trackers(accelerator, cfg)  # doctest: +SKIP
    >>> monitor = RunMonitor(accelerator, cfg, adapted.model, baselines=baselines)  # doctest: +SKIP
    >>> fit(model, loader, val_loader, accelerator, cfg.train, metrics, monitor=monitor)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hftl.config import Config, ConfigError

log = logging.getLogger(__name__)
TRACKER_DIR = "tensorboard"  # under output_dir; accelerate's TensorBoard tracker adds the project name below it
FLUSH_EVERY = 50  # optimizer steps between transfers of the per-step losses to the host


def tracker_names(report_to: str) -> list[str]:
    """``train.report_to`` as a list of tracker names: ``"tensorboard,wandb"`` -> two; ``none`` or empty -> none."""
    names = [n.strip().lower() for n in str(report_to).replace(";", ",").split(",") if n.strip()]
    return [] if names in ([], ["none"], ["no"], ["false"]) else names


def check_report_to(report_to: str) -> None:
    """Raise ConfigError for a tracker accelerate does not know, or one that is not installed."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = LoggerType.list()
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in tracker_names(report_to):
        if name not in known:
            raise ConfigError(f"train.report_to has {name!r}, not a tracker accelerate knows: choose from "
                              f"{sorted(set(known) - {'all'})}, all (every installed one) or none")
        if name != "all" and name not in available:
            rest = ",".join(n for n in tracker_names(report_to) if n != name) or "none"
            raise ConfigError(f"train.report_to has {name!r} but it is not installed: pip install {name}, or set "
                              f"train.report_to={rest}")


def tracker_kwargs(cfg: Config) -> dict:
    """Keyword arguments of ``make_accelerator`` (``Accelerator``) that log to ``cfg.train.report_to``.

    Raises ConfigError for an unknown or uninstalled tracker: call it first, before any compute.
    """
    check_report_to(cfg.train.report_to)
    names = tracker_names(cfg.train.report_to)
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    logs = Path(cfg.output_dir) / TRACKER_DIR
    return {"log_with": names, "project_config": ProjectConfiguration(project_dir=str(logs), logging_dir=str(logs))}


def flat_config(tree: dict, prefix: str = "") -> dict:
    """The config as ``{"train.lr": 0.01, ...}`` with values trackers accept (lists and dicts as text)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def start_trackers(accelerator, cfg: Config, stage: str = "finetune") -> None:
    """Open the trackers' run with the resolved config as hyper-parameters (no-op without trackers); ``stage``
    names it (TensorBoard: ``output_dir/tensorboard/<stage>``), so the stages of one run stay apart."""
    if getattr(accelerator, "log_with", None):
        accelerator.init_trackers(stage, config=flat_config(cfg.to_dict()))


def quiet_unless_terminal() -> None:
    """Progress bars of datasets and the Hub only on a terminal: in a log file each redraw is noise (the loop's
    own bars follow the same rule, ``hftl.train.progress``). For recipes: it sets the libraries' process-wide
    switches."""
    import sys

    if not sys.stderr.isatty():
        import datasets
        import transformers
        from huggingface_hub.utils import disable_progress_bars

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        disable_progress_bars()


def _lr_labels(optimizer) -> list[str]:
    """A tag per parameter group, one per distinct schedule: ``train/lr`` alone when every group shares one."""
    keys = [(g.get("initial_lr", g["lr"]), g.get("depth")) for g in optimizer.param_groups]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        return ["train/lr"] + [""] * (len(keys) - 1)
    seen, labels = set(), []
    for key in keys:
        labels.append("" if key in seen else f"train/lr/group_{distinct.index(key)}")
        seen.add(key)
    return labels


class RunMonitor:
    """The loop's observer (``fit(..., monitor=...)``): logs each optimizer step and each epoch to the trackers,
    records each backbone block's drift in the epoch's history, and stops a run that stays below its baseline.

    ``baselines``: ``hftl.baselines.score_baselines``'s scores; with ``train.stop_below_baseline`` = n, training
    stops after n epochs in a row whose validation ``train.metric_for_best`` does not beat the best baseline's.
    The drift tracker copies the trainable backbone weights here: make the monitor before training.
    """

    def __init__(self, accelerator, cfg: Config, model: torch.nn.Module | None = None, *,
                 baselines: dict | None = None) -> None:
        from hftl.train import sharded

        self.accelerator, self.metric = accelerator, cfg.train.metric_for_best
        self.patience, self.below = cfg.train.stop_below_baseline, 0
        self.tracking = bool(getattr(accelerator, "log_with", None))
        self.drift = None
        if model is not None and cfg.eval.drift and not sharded(accelerator) and accelerator.is_main_process:
            from hftl.drift import DriftTracker

            self.drift = DriftTracker(model)
            self.drift = self.drift if self.drift.active else None
        from hftl.baselines import best_baseline

        self.baseline = best_baseline(baselines or {}, self.metric, "validation")
        self._micro: list[torch.Tensor] = []
        self._steps: list[tuple[int, torch.Tensor, list[float]]] = []
        self._labels: list[str] | None = None

    def batch(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss (kept on the device)."""
        if self.tracking:
            self._micro.append(loss.detach().float())

    def step(self, step: int, optimizer) -> None:
        """An optimizer step ended: its mean micro-batch loss and the learning rate of each group."""
        if not self.tracking or not self._micro:
            return
        if self._labels is None:
            self._labels = _lr_labels(optimizer)
        loss = torch.stack(self._micro).mean() if len(self._micro) > 1 else self._micro[0]
        self._steps.append((step, loss, [g["lr"] for g in optimizer.param_groups]))
        self._micro = []
        if len(self._steps) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Send the recorded steps to the trackers: one transfer, losses averaged over the processes.

        Every process calls it at the same steps (the reduction is collective)."""
        if not self._steps:
            return
        losses = self.accelerator.reduce(torch.stack([loss for _, loss, _ in self._steps]), "mean").tolist()
        for (step, _, lrs), loss in zip(self._steps, losses, strict=True):
            values = {"train/loss": loss} | {tag: lr for tag, lr in zip(self._labels, lrs, strict=True) if tag}
            self.accelerator.log(values, step=step)
        self._steps = []

    def epoch(self, state) -> bool:
        """The epoch in ``state.history[-1]`` ended: add its drift, log it; whether to stop below the baseline."""
        self.flush()
        record = state.history[-1]
        if self.drift is not None:
            record["drift"] = self.drift.measure()
        if self.tracking:
            values = {"epoch": record["epoch"], "train/epoch_loss": record["train_loss"],
                      "train/epoch_seconds": record["seconds"]}
            values |= {f"validation/{k}": v for k, v in record["validation"].items()}
            values |= {f"drift/{k}": v for k, v in record.get("drift", {}).items()}
            self.accelerator.log(values, step=state.step)
        return self._below_baseline(record["validation"])

    def _below_baseline(self, scores: dict) -> bool:
        if not self.patience or self.baseline is None or self.metric not in scores:
            return False
        name, target = self.baseline
        mine = scores[self.metric]
        beaten = mine < target if self.metric == "loss" else mine > target
        self.below = 0 if beaten else self.below + 1
        if self.below >= self.patience:
            self.accelerator.print(f"stopping: validation {self.metric} {mine:.4f} has not beaten the {name} baseline "
                                   f"({target:.4f}) for {self.below} epochs (train.stop_below_baseline)")
            return True
        return False
