"""Frozen-backbone features, computed once and cached (in memory and on disk).

The cache key hashes the backbone's weights, its pooling, and the exact encoded inputs, so a changed model,
tokenizer, ``max_length`` or data never reuses a stale file. Every epoch of a linear probe, and every k and
seed of a few-shot ladder, then costs no backbone forward pass.

Example:
    >>> feats = cached_features(model, encoded["train"], collate, accelerator)  # doctest: +SKIP
    >>> feats["features"].shape  # doctest: +SKIP
    torch.Size([10200, 384])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import xxhash
from accelerate import Accelerator
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from hftl.data import LengthGroupedBatches
from hftl.train import progress

log = logging.getLogger(__name__)
_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("HFTL_CACHE", Path.home() / ".cache" / "hftl")) / "features"


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the backbone weights and the pooling: what determines the features."""
    from hftl import __version__

    settings = (__version__, getattr(model.config, "pooling", ""), model.backbone.config._attn_implementation)
    h = xxhash.xxh3_128(repr(settings).encode())  # fast (GB/s): a base model's weights are hashed every run
    for name, tensor in model.backbone.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:24]


def data_fingerprint(ds: Dataset) -> str:
    """Hash of the encoded inputs themselves (not of file names): any preprocessing change shows."""
    h = xxhash.xxh3_128()
    for column in sorted(c for c in ds.column_names if c != "length"):
        for row in ds.with_format("numpy")[column]:
            h.update(np.ascontiguousarray(row).tobytes())
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_features(model, loader, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Pooled backbone output and labels for every example, in loader order, gathered across processes."""
    model.eval()
    feats, labels = [], []
    for batch in progress(loader, accelerator, "features"):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "length")}
        with accelerator.autocast():
            f = model.features(**inputs)
        f, y = accelerator.gather_for_metrics((f.float().contiguous(), batch["labels"]))
        feats.append(f)  # kept on the device until the end: no synchronisation per batch
        labels.append(y)
    return {"features": torch.cat(feats).cpu(), "labels": torch.cat(labels).cpu()}


def cached_features(model, ds: Dataset, collate, accelerator: Accelerator, batch_size: int = 128, *,
                    disk: bool = True) -> dict[str, torch.Tensor]:
    """Features of ``ds`` (rows in dataset order) from memory, disk, or one backbone pass (then kept in both)."""
    key = f"{model_fingerprint(model)}-{data_fingerprint(ds)}"
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / f"{key}.safetensors"
    if disk and path.exists():
        log.info("features from cache %s", path)
        _MEMORY[key] = load_file(str(path))
        return _MEMORY[key]
    # One process: batches sorted by length (least padding), put back in order after. Several: plain order.
    group = accelerator.num_processes == 1 and "length" in ds.column_names
    batches = LengthGroupedBatches(ds["length"] if group else [0] * len(ds), batch_size, shuffle=False, group=group)
    loader = accelerator.prepare(DataLoader(ds, batch_sampler=batches, collate_fn=collate))
    out = compute_features(model, loader, accelerator)
    order = torch.as_tensor([i for batch in batches for i in batch])
    out = {k: v[order.argsort()] for k, v in out.items()}
    if disk and accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(out, str(tmp))
        tmp.rename(path)
    _MEMORY[key] = out
    return out


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features in memory; a batch is one slice (no per-row Python work in the training loop).

    On a GPU the features live on the device (up to ``DEVICE_BYTES``): a batch is then one gather there, its
    indices sent from pinned memory without waiting, and no features cross the bus each epoch.
    """

    column_names = ["features", "labels"]
    DEVICE_BYTES = 4 * 2**30

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu") -> None:
        if torch.device(device).type != "cpu" and features.nbytes > self.DEVICE_BYTES:
            device = "cpu"
        self.features, self.labels = features.to(device), labels.to(device)
        self.device = self.features.device

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i]}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        if self.device.type != "cpu":
            index = index.pin_memory().to(self.device, non_blocking=True)
        return {"features": self.features[index], "labels": self.labels[index]}


def as_feature_datasets(model, encoded, collate, accelerator: Accelerator, batch_size: int = 128) -> dict:
    """Replace each split's inputs by its cached backbone features: ``{features, labels}`` rows."""
    out = {}
    for name, ds in encoded.items():
        feats = cached_features(model, ds, collate, accelerator, batch_size)
        out[name] = FeatureDataset(feats["features"], feats["labels"], device=accelerator.device)
    return out


def stack_collate(rows) -> dict[str, torch.Tensor]:
    """Collate for FeatureDataset: its batches come already sliced."""
    if isinstance(rows, dict):
        return rows
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
