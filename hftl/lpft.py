"""LP-FT's first stage: the new head learns on cached frozen features before anything else trains.

Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution") show that
fine-tuning a pretrained backbone under a random head distorts its features while the head's gradients are large;
a linear probe first (LP), then fine-tuning from the probed head (FT), keeps them. ``strategy.name: lp_ft`` does both
in one run: :func:`probe_head` trains ``model.head`` with ``linear_probe``'s loop (``hftl.fit`` on the features that
``hftl.features`` caches: the same model, data and settings reuse its file, so the probe costs one backbone pass or
none), then
``strategy.after_probe`` (full, freeze_n or a peft method) trains from there with ``train.*``.

Example:
    >>> facts = probe_head(model, encoded, collate, cfg, accelerator)  # doctest: +SKIP
    >>> adapted = apply_strategy(model, cfg.strategy)  # lp_ft: then strategy.after_probe  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time


def probe_cfg(cfg):
    """The probe's TrainConfig: ``train.*`` with ``strategy.probe_lr`` and ``strategy.probe_epochs``, the head alone
    at one rate (no head_lr, layer-wise rates or unfreezing), no checkpoints of its own."""
    return dataclasses.replace(cfg.train, lr=cfg.strategy.probe_lr, epochs=cfg.strategy.probe_epochs, head_lr=0.0,
                               layer_lr_decay=1.0, unfreeze_every=0.0, gradient_checkpointing=False, resume=False,
                               checkpoint_every=0)


def probe_head(model, encoded, collate, cfg, accelerator, metrics: list[str] | None = None) -> dict:
    """LP-FT's probe: ``model.head`` trained alone, as ``linear_probe`` trains it (``hftl.fit`` over cached features
    with :func:`probe_cfg`), from ``encoded``'s ``train`` and ``validation`` (the recipe's encoded splits, train
    unaugmented: cached features are) through ``collate``. The backbone's ``requires_grad`` is restored after, for
    ``strategy.after_probe`` to set. Every process fits the same head from the same gathered features and seed.
    Returns what metrics.json records under ``probe``: seconds, feature seconds, whether the features came from the
    cache, epochs, steps, the best epoch and its validation scores. Raises TrainingDiverged naming
    ``strategy.probe_lr`` for a non-finite loss."""
    import hftl
    from hftl.features import cache_dir
    from hftl.train import TrainingDiverged, eval_batch, fit, make_loader, train_batch

    start = time.perf_counter()
    model.to(accelerator.device)
    before = set(cache_dir().glob("*.safetensors"))
    eval_size = eval_batch(cfg.train, accelerator)
    feats = hftl.as_feature_datasets(model, {s: encoded[s] for s in ("train", "validation")}, collate, accelerator,
                                     eval_size)
    feature_seconds = time.perf_counter() - start
    train_cfg = probe_cfg(cfg)
    loader = make_loader(feats["train"], train_batch(train_cfg, accelerator), hftl.stack_collate, shuffle=True,
                         seed=train_cfg.seed, group=False)
    val_loader = make_loader(feats["validation"], eval_size, hftl.stack_collate, shuffle=False)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():  # the head alone, as linear_probe's strategy leaves it
        p.requires_grad_(name.startswith("head."))
    try:
        _, state = fit(model, loader, val_loader, accelerator, train_cfg, metrics or cfg.eval.metrics)
    except TrainingDiverged as err:
        raise TrainingDiverged(f"lp_ft's linear probe diverged ({err}); lower strategy.probe_lr (now "
                               f"{train_cfg.lr:g}) or check the inputs for NaN or infinite values") from err
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
        accelerator.free_memory()  # the probe's prepared model and optimizer: the fine-tuning prepares its own
    best = state.history[state.best_epoch - 1]["validation"]
    accelerator.print(f"lp_ft probe: validation {train_cfg.metric_for_best} "
                      f"{best.get(train_cfg.metric_for_best, float('nan')):.4f} after {state.epoch:g} epochs on "
                      f"cached features; then {cfg.strategy.after_probe}")
    return {"epochs": state.epoch, "steps": state.step, "best_epoch": state.best_epoch,
            "validation_accuracy": best.get("accuracy", float("nan")), "validation": best,
            "seconds": time.perf_counter() - start, "feature_seconds": feature_seconds,
            "features_from_cache": not (set(cache_dir().glob("*.safetensors")) - before)}
