"""FSDP2 for real: 2 CPU processes over gloo (``recipes/accelerate/cpu-fsdp-2.yaml``), sharded for real.

accelerate runs DDP when FSDP is asked on CPUs; hftl's ``make_accelerator`` turns FSDP on there, so these runs
go through the same ``fully_shard`` units, gathered state dicts and sharded checkpoints as on GPUs. Each launch
costs about 10 s of process start-up on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from hftl.recipes.finetune import main
from safetensors.torch import load_file
from same_run import assert_same_run

from hftl.config import load_config
from hftl.testing import tiny_text_model
from hftl.train import KILL_ENV, _fsdp_on_cpu, fsdp_units, restore_aliases

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "recipes" / "accelerate"
# as in test_distributed.py: the same float32 sums in another order and over other padding, through AdamW
RTOL, ATOL = 1e-5, 1e-6


def launch(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "cpu-fsdp-2.yaml"),
           str(ROOT / "recipes" / script), *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> str:
    """The tiny BERT without dropout: 1 and 2 processes draw no random numbers while training."""
    return tiny_text_model(tmp_path_factory.mktemp("still") / "bert", dropout=0.0)


def _overrides(model: str, data: str, strategy: str, out: Path) -> list[str]:
    return [f"model.name={model}", f"data.name={data}", "data.validation_size=0.2", "data.test_size=0.2",
            "model.head_dropout=0", f"strategy.name={strategy}", "strategy.freeze_layers=1", "train.epochs=3",
            "train.batch_size=8", "train.eval_batch_size=10", "train.lr=3e-3", "train.checkpoint_every=4",
            f"output_dir={out}"]


def _assert_same(expected: dict, got: dict, expected_dir: Path, got_dir: Path) -> None:
    assert got["train"]["steps"] == 27
    assert_same_run(expected, got, expected_dir, got_dir, rtol=RTOL, atol=ATOL, weight_atol=1e-5)


@pytest.fixture(scope="module")
def fsdp_run(still_model, tiny_csv, tmp_path_factory):
    """strategy -> (run directory, metrics) of an uninterrupted 2-process FSDP run, made once per strategy."""
    runs = {}

    def run(strategy: str) -> tuple[Path, dict]:
        if strategy not in runs:
            out = tmp_path_factory.mktemp(f"fsdp-{strategy}")
            log = ok(launch("finetune.py", _overrides(still_model, tiny_csv, strategy, out)))
            assert "effective batch 8 = 4 per process x 2 processes" in log.stdout
            runs[strategy] = out, json.loads((out / "metrics.json").read_text())
        return runs[strategy]

    return run


@pytest.mark.parametrize("strategy", ["full", "lora", "freeze_n"])
def test_fsdp_on_two_processes_matches_one(still_model, tiny_csv, tmp_path, fsdp_run, strategy):
    """Same losses, scores and saved weights as one process (frozen and trainable weights share units for lora
    and freeze_n); the checkpoints hold one shard per process."""
    two_dir, two = fsdp_run(strategy)
    one = main(load_config(None, _overrides(still_model, tiny_csv, strategy, tmp_path / "one")))
    _assert_same(one, two, tmp_path / "one", two_dir)
    checkpoint = two_dir / "checkpoints" / "step-00000027"
    for sharded in ("pytorch_model_fsdp_0", "optimizer_0"):  # DDP would have written model.safetensors
        assert sorted(p.name for p in (checkpoint / sharded).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()


def test_fsdp_layer_rates_unfreezing_and_checkpointing_match_one(still_model, tiny_csv, tmp_path):
    """Per-block learning rates, gradual unfreezing (one LR schedule per group) and gradient checkpointing work
    unchanged on sharded parameters."""
    overrides = [*_overrides(still_model, tiny_csv, "full", tmp_path / "two"), "train.layer_lr_decay=0.8",
                 "train.head_lr=1e-2", "train.unfreeze_every=1", "train.gradient_checkpointing=true"]
    ok(launch("finetune.py", overrides))
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    _assert_same(one, json.loads((tmp_path / "two" / "metrics.json").read_text()), tmp_path / "one", tmp_path / "two")


def test_fsdp_resume_after_sigkill_matches_uninterrupted_run(still_model, tiny_csv, tmp_path, fsdp_run):
    """Killed after step 14 (mid-epoch 2), resumed from the sharded checkpoint of step 12, on 2 processes again."""
    overrides = _overrides(still_model, tiny_csv, "full", tmp_path)
    killed = launch("finetune.py", overrides, env={KILL_ENV: "step-14"})
    assert killed.returncode != 0 and not (tmp_path / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000009", "step-00000012"]
    ok(launch("finetune.py", [*overrides, "train.resume=true"]))
    reference_dir, reference = fsdp_run("full")
    _assert_same(reference, json.loads((tmp_path / "metrics.json").read_text()), reference_dir, tmp_path)


def test_fsdp_masked_stage_then_finetune(tiny_model, tiny_csv, tmp_path):
    """BERT's masked-LM head (tied decoder, its bias registered twice) shards, trains and is saved whole."""
    from transformers import AutoModelForMaskedLM

    ok(launch("pretrain_masked.py", [
        f"model.name={tiny_model}", f"data.name={tiny_csv}", "data.validation_size=0.2", "data.test_size=0.2",
        "model.max_length=16", "pretrain.epochs=2", "pretrain.batch_size=8", "pretrain.lr=3e-3",
        "pretrain.then_finetune=true", "train.epochs=2", "train.batch_size=8", f"output_dir={tmp_path}"]))
    saved = load_file(tmp_path / "pretrained" / "model.safetensors")
    assert saved["cls.predictions.bias"].abs().max() > 0, "the head's bias trained and was saved"
    before = AutoModelForMaskedLM.from_pretrained(tiny_model)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "pretrained")
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert not torch.equal(model.bert.encoder.layer[0].output.dense.weight,
                           before.bert.encoder.layer[0].output.dense.weight)
    assert 0 <= json.loads((tmp_path / "metrics.json").read_text())["test"]["accuracy"] <= 1


def test_fsdp_vision_matches_one(tmp_path):
    """A ViT (its embeddings module is in _no_split_modules) fine-tuned fully under FSDP, as on one process."""
    from test_vision import _VIT, SIZE, _image_folder
    from transformers import AutoConfig, AutoModel, ViTImageProcessorPil

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model("vit", **_VIT)).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(tmp_path / "vit")
    overrides = [f"model.name={tmp_path / 'vit'}", f"data.name={_image_folder(tmp_path / 'imgs')}",
                 "data.validation_size=0.2", "data.test_size=0.2", "data.augment=false", "model.head_dropout=0",
                 "strategy.name=full", "train.epochs=3", "train.batch_size=8", "train.eval_batch_size=10"]
    ok(launch("finetune.py", [*overrides, f"output_dir={tmp_path / 'two'}"]))
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert_same_run(one, two, tmp_path / "one", tmp_path / "two", rtol=RTOL, atol=ATOL, weight_atol=1e-5)


def _fsdp_accelerator(names=None) -> SimpleNamespace:
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=names)
    return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))


def test_units_are_blocks_and_aliases_come_back(tiny_model):
    """Units: the repeated blocks, never an embeddings module; a head's alias of its decoder's bias is taken off
    for FSDP and registered again on the trained parameter."""
    from transformers import AutoModelForMaskedLM

    from hftl.models import load_classifier

    accelerator = _fsdp_accelerator()
    assert fsdp_units(accelerator, load_classifier(tiny_model, 2)) == []
    assert accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    named = _fsdp_accelerator(["BertEmbeddings", "BertLayer"])  # the launcher config's choice stands
    fsdp_units(named, load_classifier(tiny_model, 2))
    assert named.state.fsdp_plugin.transformer_cls_names_to_wrap == ["BertEmbeddings", "BertLayer"]

    model = AutoModelForMaskedLM.from_pretrained(tiny_model)
    head = model.cls.predictions
    aliases = fsdp_units(_fsdp_accelerator(), model)
    assert [(parent, name, owner) for parent, name, owner in aliases] == [(head, "bias", "decoder.bias")]
    assert "bias" not in head._parameters and "cls.predictions.bias" not in dict(model.named_parameters())
    head.decoder.bias = torch.nn.Parameter(torch.ones_like(head.decoder.bias))  # as FSDP2 replaces parameters
    restore_aliases(aliases)
    assert head.bias is head.decoder.bias and model.state_dict()["cls.predictions.bias"].eq(1).all()
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=SimpleNamespace())
    assert fsdp_units(ddp, model) == [] and head.bias is head.decoder.bias  # nothing touched without FSDP


def test_cpu_fsdp_config_mirrors_the_gpu_one(monkeypatch):
    """The CPU rehearsal shards as fsdp.yaml does; FSDP1 on CPU processes is refused with the fix named."""
    cpu, gpu = (yaml.safe_load((ACCELERATE / name).read_text()) for name in ("cpu-fsdp-2.yaml", "fsdp.yaml"))
    assert cpu["fsdp_config"] == gpu["fsdp_config"]
    assert cpu["use_cpu"] and cpu["mixed_precision"] == "no"
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        _fsdp_on_cpu(None)


def test_fsdp_adapter_masked_stage_is_refused_by_name(tiny_model, tiny_csv, tmp_path):
    out = launch("pretrain_masked.py", [f"model.name={tiny_model}", f"data.name={tiny_csv}", "pretrain.strategy=lora",
                                        f"output_dir={tmp_path}"])
    assert out.returncode != 0
    assert "pretrain.strategy=lora does not run under FSDP; use pretrain.strategy=full" in out.stderr
