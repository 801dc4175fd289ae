"""LP-FT's first stage: the new head learns on cached frozen features before anything else trains.

Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution") show that
fine-tuning a pretrained backbone under a random head distorts its features while the head's gradients are large;
a linear probe first (LP), then fine-tuning from the probed head (FT), keeps them. ``strategy.name: lp_ft`` does both
in one run: :func:`probe_head` trains ``model.head`` on the features that ``linear_probe`` caches (``hftl.features``:
the same model, data and settings reuse its file, so the probe costs one backbone pass or none), then
``strategy.after_probe`` (full, freeze_n or a peft method) trains from there with ``train.*``.

Example:
    >>> facts = probe_head(model, splits, processor, cfg, accelerator)  # doctest: +SKIP
    >>> adapted = apply_strategy(model, cfg.strategy)  # lp_ft: then strategy.after_probe  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time

import torch


def fit_head(head: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor],
             validation: tuple[torch.Tensor, torch.Tensor], *, epochs: float, lr: float, batch_size: int,
             weight_decay: float = 0.0, seed: int = 0) -> dict:
    """Train ``head`` (features -> logits) with AdamW and cross-entropy on ``train`` = (features (n, d), labels
    (n,)) for ``epochs`` passes (a fraction counts in steps), keep the weights of the epoch best on ``validation``'s
    accuracy (the first on ties). Returns {epochs, steps, validation_accuracy, history}. Raises TrainingDiverged for a
    non-finite loss (the head is then left as it was at the start)."""
    from hftl.train import TrainingDiverged

    x, y = train
    xv, yv = validation
    device = next(head.parameters()).device
    x, y, xv, yv = x.to(device), y.to(device), xv.to(device), yv.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(y) / batch_size)
    total = max(1, int(per_epoch * epochs))
    start_state = copy.deepcopy(head.state_dict())
    best, best_state, history, step = -1.0, start_state, [], 0
    while step < total:
        head.train()
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(0, len(y), batch_size):
            if step == total:
                break
            idx = order[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(head(x[idx]).float(), y[idx])
            if not torch.isfinite(loss):
                head.load_state_dict(start_state)
                raise TrainingDiverged(f"lp_ft's linear probe diverged: loss {loss.item()} at step {step + 1}; "
                                       f"lower strategy.probe_lr (now {lr:g}) or check the inputs for NaN or "
                                       "infinite values")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        head.eval()
        with torch.no_grad():
            accuracy = float((head(xv).argmax(-1) == yv).float().mean())
        history.append({"epoch": len(history) + 1, "validation_accuracy": accuracy,
                        "train_loss": float(loss.detach())})
        if accuracy > best:
            best, best_state = accuracy, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return {"epochs": len(history), "steps": step, "validation_accuracy": best, "history": history}


def probe_head(model, splits, processor, cfg, accelerator) -> dict:
    """LP-FT's probe: encode the train and validation splits as ``linear_probe`` does (no augmentation), take their
    features from the cache (one backbone pass if absent), and fit ``model.head`` on them (``strategy.probe_epochs``,
    ``strategy.probe_lr``, ``train.batch_size``, ``train.weight_decay``, ``train.seed``). Every process fits the same
    head from the same gathered features and seed. Returns what metrics.json records under ``probe``: seconds,
    feature seconds, whether the features came from the cache, epochs, steps and validation accuracy."""
    from datasets import DatasetDict

    import hftl
    from hftl.data import encode
    from hftl.features import cache_dir
    from hftl.train import eval_batch

    start = time.perf_counter()
    encoded, _ = encode(DatasetDict(train=splits["train"], validation=splits["validation"]), processor, cfg.data,
                        max_length=cfg.model.max_length, augment=False, seed=cfg.train.seed)
    model.to(accelerator.device)
    collate = hftl.collator_for(processor)
    before = set(cache_dir().glob("*.safetensors"))
    feats = {s: hftl.cached_features(model, encoded[s], collate, accelerator, eval_batch(cfg.train, accelerator))
             for s in ("train", "validation")}
    feature_seconds = time.perf_counter() - start
    facts = fit_head(model.head, (feats["train"]["features"], feats["train"]["labels"]),
                     (feats["validation"]["features"], feats["validation"]["labels"]),
                     epochs=cfg.strategy.probe_epochs, lr=cfg.strategy.probe_lr, batch_size=cfg.train.batch_size,
                     weight_decay=cfg.train.weight_decay, seed=cfg.train.seed)
    accelerator.print(f"lp_ft probe: validation accuracy {facts['validation_accuracy']:.4f} after "
                      f"{facts['epochs']} epochs on cached features; then {cfg.strategy.after_probe}")
    return {**facts, "seconds": time.perf_counter() - start, "feature_seconds": feature_seconds,
            "features_from_cache": not (set(cache_dir().glob("*.safetensors")) - before)}
