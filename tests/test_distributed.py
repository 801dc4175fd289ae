"""Across processes and devices: 2 real CPU processes (DDP over gloo) against 1, evaluation that counts each
example once, per-process seeding, the shipped launcher configs, gradient checkpointing, compile, precision.

The 2-process runs start through ``accelerate launch --config_file recipes/accelerate/cpu-ddp-2.yaml``, the
command users type; each costs about 15 s of process start-up on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from hftl.recipes.finetune import main
from safetensors.torch import load_file

import hftl
from hftl.config import StrategyConfig, TrainConfig, load_config
from hftl.testing import tiny_text_model
from hftl.train import enable_gradient_checkpointing, make_accelerator

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
# 2 processes against 1, float32 on CPU. Each step's gradient is the same mean over the same 8 examples, but
# summed in another order (two halves, then gloo's all-reduce) and over halves padded to their own longest
# sequence: rounding-level differences (about 1e-7 relative seen) that AdamW carries through 27 steps. A wrong
# split or schedule (each process drawing its own batches, the LR schedule run twice as fast) moves these
# numbers by 1e-2 or more.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> str:
    """The tiny BERT without dropout: runs on 1 and 2 processes draw no random numbers while training."""
    return tiny_text_model(tmp_path_factory.mktemp("still") / "bert", dropout=0.0)


def launch(args: list[str], config: str = "cpu-ddp-2.yaml") -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/<config> <args>``; fails the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / config), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_two_processes_match_one(still_model, tiny_csv, tmp_path):
    overrides = [f"model.name={still_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
                 "data.test_size=0.2", "model.head_dropout=0", "strategy.name=full", "train.epochs=3",
                 "train.batch_size=8", "train.eval_batch_size=10", "train.lr=3e-3", "train.checkpoint_every=4"]
    out = launch([str(ROOT / "recipes" / "finetune.py"), *overrides, f"output_dir={tmp_path / 'two'}"])
    assert "effective batch 8 = 4 per process x 2 processes x 1 accumulation steps" in out.stdout
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # test and validation sets of 24 in batches of 10: the last batch is padded on 2 processes, and dropped again
    assert two["test"]["accuracy"] == one["test"]["accuracy"] and two["test"]["f1"] == one["test"]["f1"]
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=RTOL, abs=ATOL)
    assert two["train"]["steps"] == one["train"]["steps"] == 27
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=RTOL, abs=ATOL)
        assert b["validation"] == pytest.approx(a["validation"], rel=RTOL, abs=ATOL)
    weights_one, weights_two = (load_file(tmp_path / r / "model" / "model.safetensors") for r in ("one", "two"))
    assert weights_one.keys() == weights_two.keys()
    for name, w in weights_one.items():
        torch.testing.assert_close(weights_two[name], w, rtol=RTOL, atol=1e-5, msg=name)
    # one writer: a whole run directory; checkpoints hold both processes' RNG states and nothing half written
    assert {p.name for p in (tmp_path / "two").iterdir()} >= {"config.yaml", "metrics.json", "model", "README.md"}
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000024", "step-00000027"]  # keep_checkpoints=2
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (tmp_path / "two" / "checkpoints" /
                                                                                checkpoints[-1]).iterdir()}


PROBE = r"""
import json, sys
import torch
import hftl
from hftl.config import load_config
from hftl.metrics import compute_metrics
from hftl.train import fit, make_accelerator, make_loader, predict, train_batch

cfg = load_config(None, sys.argv[2:])
accelerator = make_accelerator(cfg.train)
hftl.set_seed(cfg.train.seed)
tok = hftl.load_processor(cfg.model.name)
encoded = hftl.encode_text(hftl.load_splits(cfg.data), tok, "text", cfg.model.max_length)
test = encoded["test"].select(range(23))  # 23 = 10 + 10 + 3: divisible by neither the batch nor 2 processes
truth = list(test["label"])
model = hftl.load_classifier(cfg.model.name, 2, head_dropout=0.5)
collate = hftl.collator_for(tok)
init = torch.cat([p.detach().flatten() for p in model.parameters()])
masks = []
model.head[0].register_forward_hook(lambda m, i, o: masks.append((o == 0).float()) if m.training else None)
train = make_loader(encoded["train"], train_batch(cfg.train, accelerator), collate, shuffle=True)
loader = make_loader(test, cfg.train.eval_batch_size, collate, shuffle=False, group=False)
model, _ = fit(model, train, loader, accelerator, cfg.train, ["accuracy"])
logits, labels = predict(model, accelerator.prepare(loader), accelerator)
inits, first_masks = accelerator.gather((init[None], masks[0][None]))
if accelerator.is_main_process:
    with torch.no_grad():  # the reference: one process, one batch, no padding of the set
        batch = collate([{k: test[i][k] for k in ("input_ids", "attention_mask", "token_type_ids")}
                         for i in range(len(test))])
        reference = accelerator.unwrap_model(model).eval()(**batch).logits
    json.dump({"processes": accelerator.num_processes, "labels": labels.tolist(), "truth": truth,
               "accuracy": compute_metrics(["accuracy"], logits.argmax(-1).tolist(), labels.tolist()),
               "reference_accuracy": compute_metrics(["accuracy"], reference.argmax(-1).tolist(), truth),
               "max_logit_diff": float((logits - reference).abs().max()),
               "init_equal": bool((inits[0] == inits[1]).all()),
               "masks_equal": bool((first_masks[0] == first_masks[1]).all()),
               "masks_shape": list(first_masks.shape)}, open(sys.argv[1], "w"))
accelerator.end_training()
"""


def test_two_processes_seed_and_gather(still_model, tiny_csv, tmp_path):
    """Initial weights equal on both processes, dropout masks not; predict gathers each test example once."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    launch([str(script), str(tmp_path / "probe.json"), f"model.name={still_model}", f"data.name={tiny_csv}",
            "data.validation_size=0.2", "data.test_size=0.2", "train.epochs=1", "train.batch_size=8",
            "train.eval_batch_size=10"])
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["processes"] == 2
    assert probe["init_equal"], "both processes must start from the same weights (the caller's seed)"
    assert not probe["masks_equal"], "dropout must differ per process (seed + process index)"
    assert probe["masks_shape"] == [2, 4, 32]  # each process took 4 of each batch of 8
    assert probe["labels"] == probe["truth"]  # 23 labels, each once, in order: the padding was dropped
    assert probe["accuracy"] == probe["reference_accuracy"]
    assert probe["max_logit_diff"] < 1e-5  # float32, batches of 5 against one of 23 (other padding)


def _dry_run(path: Path) -> object:
    """What ``accelerate launch --config_file path`` does before it starts processes, and the plugin they build.

    accelerate has no dry-run flag: this calls the same functions its launcher calls (config class, argument
    merge, environment of the processes), then builds the FSDP or DeepSpeed plugin from that environment as
    each process would. DeepSpeed itself is not installed: DeepSpeedPlugin validates without it.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    load_config_from_file(str(path))  # ClusterConfig: unknown keys and distributed types raise
    args = launch_command_parser().parse_args(["--config_file", str(path), "recipes/finetune.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        plugin = DeepSpeedPlugin
    elif args.use_fsdp:
        env, plugin = prepare_multi_gpu_env(args), FullyShardedDataParallelPlugin
    elif args.multi_gpu:
        env, plugin = prepare_multi_gpu_env(args), dict
    else:
        env, plugin = prepare_simple_launcher_cmd_env(args)[1], dict
    with mock.patch.dict(os.environ, env):
        return args, plugin()


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_accelerates_checks(path):
    from accelerate.commands.launch import launch_command_parser

    command = f"accelerate launch --config_file recipes/accelerate/{path.name}"
    head = path.read_text().splitlines()[:3]
    assert any(line.startswith("#") and command in line and "recipes/finetune.py" in line for line in head), \
        "the launch command goes at the top"
    raw = yaml.safe_load(path.read_text())
    # the launcher copies nested keys onto its arguments without checking them: a typo would be ignored
    options = {a.dest for a in launch_command_parser()._actions}
    for section, prefix in (("fsdp_config", ""), ("deepspeed_config", ""), ("dynamo_config", "dynamo_")):
        unknown = {k for k in raw.get(section, {}) if (k if k.startswith(prefix) else prefix + k) not in options}
        assert not unknown, f"{path.name}: unknown {section} keys {unknown}"
    args, plugin = _dry_run(path)
    if raw["distributed_type"] == "FSDP":
        assert plugin.fsdp_version == raw["fsdp_config"]["fsdp_version"]
        assert plugin.fsdp_version == 2 or plugin.use_orig_params  # peft adapters + head need the originals
        assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    if raw["distributed_type"] == "DEEPSPEED":
        assert plugin.zero_stage == raw["deepspeed_config"]["zero_stage"] in (1, 2, 3)
        assert plugin.zero_stage < 3 or plugin.zero3_save_16bit_model  # else get_state_dict cannot gather
        assert plugin.gradient_accumulation_steps == "auto"  # filled from train.grad_accum
    if path.name == "cpu-ddp-2.yaml":
        assert args.multi_gpu and args.num_processes == 2 and args.use_cpu  # torchrun starts 2 processes


def test_cpu_precision_is_fp32():
    assert make_accelerator(TrainConfig()).mixed_precision == "no"  # auto: bf16 only on GPUs that have it


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_gradient_checkpointing_recomputes_with_same_gradients(still_model, strategy):
    tok = hftl.load_processor(still_model)
    batch = tok(["good film", "awful boring plot was very dull"], padding=True, return_tensors="pt")

    def step(checkpointing: bool) -> tuple[dict, int]:
        torch.manual_seed(0)
        model = hftl.load_classifier(still_model, 2, head_dropout=0.0)
        adapted = hftl.apply_strategy(model, StrategyConfig(name=strategy)).model
        calls = []  # the layer's attention runs again in backward when its activations were not kept
        model.backbone.encoder.layer[0].attention.register_forward_hook(lambda *_: calls.append(1))
        if checkpointing:
            enable_gradient_checkpointing(adapted)
        adapted.train()
        adapted(**batch, labels=torch.tensor([1, 0])).loss.backward()
        return {n: p.grad for n, p in adapted.named_parameters() if p.requires_grad}, len(calls)

    (plain, plain_calls), (checkpointed, checkpointed_calls) = step(False), step(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in checkpointed.values())
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in checkpointed.items()) or strategy == "full"
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_compile_and_checkpointing_in_a_run(still_model, tiny_csv, tmp_path, monkeypatch):
    """train.compile compiles in place (state-dict names unchanged, so checkpoints and model/ load as usual).

    The "eager" backend stands in for inductor: it still traces the model through dynamo, but inductor's C++
    code generation takes over a minute per shape on 2 cores.
    """
    compiled = []
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compiled.append(self) or real(self, backend="eager"))
    overrides = [f"model.name={still_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
                 "data.test_size=0.2", "data.max_train_samples=32", "strategy.name=lora", "train.epochs=2",
                 "train.batch_size=8", "train.lr=3e-3", "train.compile=true", "train.gradient_checkpointing=true",
                 f"output_dir={tmp_path / 'run'}"]
    metrics = main(load_config(None, overrides))
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is not None
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    model, _ = hftl.load(tmp_path / "run" / "model")  # adapter + head saved under their usual names
    assert any("lora_A" in n for n, _ in model.named_parameters())
