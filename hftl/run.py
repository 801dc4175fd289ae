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
from hftl.modeling import HftlConfig
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
        finish_model_dir(stage / "model", Path(run_dir).resolve() / "model")
        finish_model_dir(stage / "merged")
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
    if hasattr(model, "peft_config") and cfg.strategy.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(run_dir / "merged", safe_serialization=True)
        processor.save_pretrained(run_dir / "merged")
    (run_dir / "README.md").write_text(model_card(cfg.to_dict(), metrics, facts))
    return run_dir


def _model_class(config: HftlConfig) -> type:
    """The model class of the task the run trained (``config.task``; hftl.tasks)."""
    from hftl.tasks import get_task

    return get_task(getattr(config, "task", None) or "classification").model_class()


def finish_model_dir(directory: Path, home: Path | None = None) -> None:
    """Make a saved model folder load anywhere: hftl's model code beside it (``modeling_hftl.py``, named in
    ``config.json``), and an adapter's ``base_model_name_or_path`` set to ``home``, the folder's final absolute path
    (peft's ``AutoPeftModelFor*`` rebuilds the base from there: the backbone named in ``config.json`` + new head).
    Its README.md, peft's empty template, is removed: the run has one model card, the run's own."""
    from hftl.modeling import add_remote_code

    if not directory.is_dir():
        return
    add_remote_code(directory)
    adapter = directory / "adapter_config.json"
    hftl_model = _read(directory / "config.json").get("model_type") == "hftl"
    if adapter.is_file() and hftl_model:  # another model's adapter names its own base: left as peft wrote it
        config = json.loads(adapter.read_text())
        if home is not None:
            config["base_model_name_or_path"] = str(home)
        # peft named hftl.modeling, which AutoPeftModel may not import (and needs hftl): transformers' Auto class of
        # the modality instead, which finds modeling_hftl.py through config.json
        config["auto_mapping"] = {"base_model_class": _auto_class(directory), "parent_library": "transformers"}
        adapter.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    template = directory / "README.md"
    if template.is_file() and adapter.is_file():
        template.unlink()


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _auto_class(directory: Path) -> str:
    """The transformers Auto class of a saved hftl model: by its task (config.json), else by its processor files
    (tokenizer, image, audio)."""
    if _read(directory / "config.json").get("task") == "token_classification":
        return "AutoModelForTokenClassification"
    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        return "AutoModelForSequenceClassification"
    processor = directory / "preprocessor_config.json"
    text = processor.read_text() if processor.is_file() else ""
    return "AutoModelForImageClassification" if "image_processor" in text else "AutoModelForAudioClassification"


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
