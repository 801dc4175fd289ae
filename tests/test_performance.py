"""The speed mechanisms keep results unchanged: a dropped full mask, the plain optimizer step, the settings' rules.

The speed itself is measured by bench/throughput.py (and bench/trainer_vs_hftl.py), not asserted here.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import AutoTokenizer

from hftl.config import TrainConfig, load_config
from hftl.data import collator_for
from hftl.features import FeatureDataset
from hftl.models import load_classifier
from hftl.strategies import apply_strategy
from hftl.train import _plain_steps, auto_workers, fit, make_accelerator, make_loader, should_compile

ROOT = Path(__file__).parent.parent


def test_a_mask_that_masks_nothing_is_left_out_and_predictions_do_not_change(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    collate = collator_for(tok)
    same = collate([tok("a b c"), tok("c b a")])
    ragged = collate([tok("a b c d e"), tok("a")])
    assert "attention_mask" not in same and "attention_mask" in ragged
    torch.manual_seed(0)
    model = load_classifier(tiny_model, 2).eval()
    with torch.no_grad():
        without = model(**same).logits
        with_mask = model(**same, attention_mask=torch.ones_like(same["input_ids"])).logits
    torch.testing.assert_close(without, with_mask)


def _train(tiny_model, accelerator: Accelerator, grad_accum: int) -> dict:
    torch.manual_seed(0)
    model = apply_strategy(load_classifier(tiny_model, 2), load_config(None, ["strategy.name=full"]).strategy).model
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 27, (7,), generator=g).tolist(), "label": i % 2} for i in range(32)]
    tok = AutoTokenizer.from_pretrained(tiny_model)

    class Rows(torch.utils.data.Dataset):
        column_names = ["input_ids", "label"]

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    cfg = TrainConfig(epochs=2, batch_size=8, grad_accum=grad_accum, lr=1e-3, mixed_precision="no")
    loader = make_loader(Rows(), 8 // grad_accum, collator_for(tok), shuffle=True)
    val = make_loader(Rows(), 16, collator_for(tok), shuffle=False)
    trained, _ = fit(model, loader, val, accelerator, cfg, ["accuracy"])
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(trained).state_dict().items()}


def test_plain_steps_train_exactly_as_accelerates_wrappers(tiny_model, monkeypatch):
    """Plain torch optimizer, scheduler and clipping (the fast path) give the wrappers' weights, accumulation too."""
    for accum in (1, 2):
        cfg = TrainConfig(grad_accum=accum, mixed_precision="no")
        assert _plain_steps(make_accelerator(cfg))
        fast = _train(tiny_model, make_accelerator(cfg), accum)
        monkeypatch.setattr("hftl.train._plain_steps", lambda accelerator: False)
        wrapped = _train(tiny_model, make_accelerator(cfg), accum)
        monkeypatch.undo()
        for k in fast:
            torch.testing.assert_close(fast[k], wrapped[k], msg=k)


def test_predict_evaluates_a_lora_model_with_merged_adapters_and_leaves_its_weights_alone(tiny_model):
    """``predict`` (validation and test) runs every adapted layer merged, gives the unmerged logits, and training
    goes on from bit-identical weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from hftl.train import predict

    torch.manual_seed(0)
    model = apply_strategy(load_classifier(tiny_model, 2), load_config(None, ["strategy.name=lora"]).strategy).model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # an adapter that changes the output (lora_B starts at zero)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{**tok(t), "label": i % 2} for i, t in enumerate(["a b c", "c b a d", "b", "d d a c b"] * 3)]
    accelerator = make_accelerator(TrainConfig(mixed_precision="no"))
    loader = make_loader(Dataset.from_list(rows), 4, collator_for(tok), shuffle=False, group=False)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(m.merged)) for m in layers]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged_logits, labels = predict(model, loader, accelerator)
    assert seen and all(seen)
    seen.clear()
    unmerged_logits, _ = predict(model, loader, accelerator, merge_adapters=False)
    assert seen and not any(seen)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-5, rtol=1e-4)
    assert labels.tolist() == [r["label"] for r in rows]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(m.merged for m in layers)


def test_settings_rules_on_the_cpu(tiny_model):
    model = load_classifier(tiny_model, 2)
    assert auto_workers(-1) == 0 and auto_workers(3) == 3  # the CPU's cores train; workers only when asked
    assert not should_compile(model, "auto") and should_compile(model, "true") and not should_compile(model, "false")
    assert load_config(None, ["train.compile=true"]).train.compile == "true"
    assert load_config(None, ["train.compile=auto"]).train.compile == "auto"
    feats = FeatureDataset(torch.randn(10, 4), torch.arange(10), device="cpu")
    batch = feats.__getitems__([3, 1])
    assert batch["features"].shape == (2, 4) and batch["labels"].tolist() == [3, 1]
    loader = make_loader(feats, 4, lambda b: b, shuffle=False)
    assert not loader.pin_memory and loader.num_workers == 0


def test_the_throughput_benchmark_runs_every_arm(tmp_path):
    """bench/throughput.py on tiny configs: each arm produces a figure (no arm errors); repeated arms keep their
    fastest run and list every run."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--steps", "2", "--frozen-steps", "2",
         "--models", "bert-base", "--arms", "trainer,hftl,frozen,lora", "--repeats", "2",
         "--out", str(tmp_path / "t.json")],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads((tmp_path / "t.json").read_text())["models"]["bert-base"]
    once = ("trainer_frozen", "hftl_lora_eval")
    for arm in ("trainer", "hftl", "trainer_lora", "hftl_lora", "hftl_lora_eval", *once):
        assert f"{arm}: " in out.stdout and "error" not in row[arm], out.stdout[-3000:]
        runs = row[arm]["repeats"]
        assert len(runs) == (1 if arm in once else 2) and row[arm]["samples_per_s"] == max(runs)
    assert row["hftl_lora_eval"]["unmerged_samples_per_s"] > 0
    assert "lora evaluation: merged / unmerged" in row["ratios"]


def test_layer_lr_decay_and_gradual_unfreezing(tiny_model):
    """Layer-wise rates fall by one factor per block downwards; gradual unfreezing opens blocks from the top."""
    from transformers import get_scheduler

    from hftl.train import gradual_unfreezing, layer_depths, param_groups

    model = apply_strategy(load_classifier(tiny_model, 2), load_config(None, ["strategy.name=full"]).strategy).model
    depths, n = layer_depths(model)
    assert n == 2 and set(depths.values()) == {0, 1, 2, 3}
    groups = param_groups(model, 1e-3, 1e-2, 0.01, layer_lr_decay=0.5)
    rate = {g["depth"]: g["lr"] for g in groups if g["weight_decay"]}  # decayed matrices: one per depth
    assert rate[0] == 1e-3 * 0.5**3 and rate[1] == 1e-3 * 0.5**2 and rate[2] == 1e-3 * 0.5
    head = {id(p) for p in model.head.parameters()}
    assert all(g["lr"] == 1e-2 for g in groups if {id(p) for p in g["params"]} <= head)  # the head at head_lr
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)

    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, 0.0, 0.0, by_depth=True))
    scheduler = gradual_unfreezing(get_scheduler("constant", optimizer), steps_per_epoch=4, every=1, layers=n)
    opened = []
    for _ in range(16):
        opened.append(sorted({g["depth"] for g in optimizer.param_groups if g["lr"] > 0}))
        optimizer.step()
        scheduler.step()
    assert opened[0] == [3] and opened[4] == [2, 3] and opened[8] == [1, 2, 3] and opened[12] == [0, 1, 2, 3]


def test_gradual_unfreezing_keeps_lower_blocks_still_in_a_run(tiny_model, tiny_csv, tmp_path):
    """A run with train.unfreeze_every: after epoch 1 only the head and the top moved; the embeddings moved last."""
    from hftl.recipes.finetune import main

    torch.manual_seed(0)
    before = load_classifier(tiny_model, 2).state_dict()
    main(load_config(None, [f"model.name={tiny_model}", f"data.name={tiny_csv}", "strategy.name=full",
                            "train.epochs=1", "train.unfreeze_every=1", "train.batch_size=8", "train.lr=1e-3",
                            "train.warmup_ratio=0", f"output_dir={tmp_path / 'run'}"]))
    from hftl.run import load

    after = load(str(tmp_path / "run" / "model"))[0].state_dict()
    moved = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert any(k.startswith("head.") for k in moved)
    assert all(k.startswith("head.") for k in moved), sorted(moved)  # the head-only epoch: no block, no embeddings
