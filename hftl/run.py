"""The run directory, the contract every recipe keeps, and loading a trained model back from it.

``output_dir/config.yaml`` (resolved), ``metrics.json`` (numbers, nested by stage and split), ``model/``
(a full model or a peft adapter + head, with the processor), ``merged/`` on request, ``README.md`` (the model
card). Only the main process writes.

Example:
    >>> model, processor = load("runs/minilm-rt-lora/model")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hftl.card import model_card
from hftl.config import Config, save_config
from hftl.modeling import HftlConfig, save_code
from hftl.storage import names_disk_full

log = logging.getLogger(__name__)


@names_disk_full("free space on that disk and rerun with train.resume=true (the last checkpoint holds the trained "
                 "weights: no training is repeated), or set output_dir to another disk")
def save_run(run_dir: str | Path, cfg: Config, model, processor, metrics: dict, facts: dict, *,
             state_dict: dict | None = None, extra=None) -> Path:
    """Write config, metrics, model (+ merged export for adapters on request) and the model card.

    Atomically (``hftl.rundir``): into a staging folder inside ``run_dir``, moved into place, then the completion
    marker ``hftl_run.json``. A run directory this process holds (a recipe's claim) is written directly; any other is
    claimed first by ``cfg``'s rules (``overwrite``, ``train.resume``), else RunDirError.
    ``state_dict``: the model's full weights when they are sharded over processes (FSDP, ZeRO-3), from
    ``accelerator.get_state_dict``; the model's own ``state_dict()`` would hold only this process's shards.
    ``extra(stage)``: writes more of the run's files (predictions, the report) into the staging folder, after these.
    """
    from hftl.rundir import claim

    with claim(cfg, path=run_dir) as run, run.final_save() as stage:
        _write_run(stage, cfg, model, processor, metrics, facts, state_dict)
        if extra is not None:
            extra(stage)
    return Path(run_dir)


def _write_run(run_dir: Path, cfg: Config, model, processor, metrics: dict, facts: dict, state_dict: dict | None):
    """The run's files, into ``run_dir`` (the staging folder of the final save)."""
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    model_dir = run_dir / "model"
    # hftl never resizes embeddings (a new head is saved with the adapter); peft's "auto" takes a CTC head sized for a
    # new vocabulary for a resized embedding and fails on models without input embeddings (wav2vec2)
    adapter = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
    model.save_pretrained(model_dir, safe_serialization=True, state_dict=state_dict, **adapter)
    if hasattr(model, "peft_config"):  # the base's config (labels, pooling, head) travels with the adapter
        model.get_base_model().config.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    save_code(model_dir)  # loadable without hftl: AutoModelFor...from_pretrained(dir, trust_remote_code=True)
    if hasattr(model, "peft_config") and cfg.strategy.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(run_dir / "merged", safe_serialization=True)
        processor.save_pretrained(run_dir / "merged")
        save_code(run_dir / "merged")
    (run_dir / "README.md").write_text(model_card(cfg.to_dict(), metrics, facts))
    return run_dir


def _model_class(config: HftlConfig) -> type:
    """The model class of the task the run trained (``config.task``; hftl.tasks)."""
    from hftl.tasks import get_task

    return get_task(getattr(config, "task", None) or "classification").model_class()


def load(path: str | Path, *, device: str | None = None, **kwargs):
    """A trained model (full, or adapter + head on its base) and its processor, from a model directory.

    Raises RunDirError for the model of an hftl run that did not finish (no completion marker)."""
    from hftl.models import load_backbone, load_processor
    from hftl.rundir import require_complete

    path = Path(path)
    require_complete(path)  # a run that did not finish is not loaded as if it had
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        config = HftlConfig.from_pretrained(path)
        backbone, _ = load_backbone(config.backbone_name, config.backbone_revision or "main", **kwargs)
        base = _model_class(config)(config, backbone=backbone)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = _model_class(HftlConfig.from_pretrained(path)).from_pretrained(path)
    processor = load_processor(str(path))
    model.eval()
    return (model.to(device) if device else model), processor
