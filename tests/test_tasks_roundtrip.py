"""Every task beyond one label per input (multi-label, regression, token classification, sentence pairs) round-trips
as the default task does: trained, saved, loaded back by ``hftl.load`` and by the plain transformers / peft loaders
in a process that never imports hftl (what someone without hftl does), pushed to a loopback Hub and loaded by id,
with the same predictions and the same test metrics; 2 processes end as 1 does; a run killed with SIGKILL and
resumed ends with the weights of the run never interrupted.

Tiny models (hftl.testing) and data told by their words (tests/test_tasks.py, tests/test_tasks_tokens.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hftl.recipes.finetune import main
from safetensors.torch import load_file
from same_run import assert_same_run
from test_tasks import _csv, _jsonl, _pair_rows, _rows
from test_tasks_tokens import _conll, _sentences

import hftl
from hftl.config import load_config
from hftl.tasks import get_task
from hftl.testing import tiny_text_model
from hftl.train import KILL_ENV

try:
    from tests.hub_server import HubServer
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
CASES = ["multi_label", "regression", "token_classification", "pairs"]
TOKEN = "hf_aliceTASKSsecret3c9d1e"
AUTO = {"token_classification": "AutoModelForTokenClassification"}  # else AutoModelForSequenceClassification


def _case(case: str, folder: Path, n: int = 120) -> list[str]:
    """Data written into ``folder`` and the overrides that read it, per case."""
    if case == "multi_label":
        return [f"data.name={_jsonl(folder / 'tags.jsonl', _rows(n))}", "task.name=multi_label",
                "data.label_column=tags"]
    if case == "regression":
        return [f"data.name={_csv(folder / 'scores.csv', _rows(n), ['text', 'score', 'size'])}",
                "task.name=regression", "data.label_columns=[score,size]"]
    if case == "token_classification":
        return [f"data.name={_conll(folder / 'ner.conll', _sentences(n))}", "task.name=token_classification",
                "data.text_column=tokens", "data.label_column=tags"]
    rows = _pair_rows(n)
    return [f"data.name={_csv(folder / 'pairs.csv', rows, ['first', 'second', 'label'])}", "data.text_column=first",
            "data.text_pair_column=second"]


def _overrides(model: str, case: str, folder: Path, strategy: str, *extra: str) -> list[str]:
    lr = {"lora": "3e-3", "full": "3e-3"}[strategy]
    return [f"model.name={model}", *_case(case, folder), "data.validation_size=0.2", "data.test_size=0.2",
            f"strategy.name={strategy}", "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=32",
            f"train.lr={lr}", "strategy.merge=true", f"output_dir={folder / 'run'}", *extra]


def _test_batch(cfg, tokenizer) -> tuple[dict, torch.Tensor]:
    """The run's test split as one padded batch (model inputs) and its labels, as the run's own evaluation saw it."""
    task = get_task(cfg.task.name)
    test = {"test": hftl.load_splits(cfg.data, task)["test"]}
    encoded = task.encode_labels(hftl.encode_text(test, tokenizer, "text", cfg.model.max_length))["test"]
    wanted = ("input_ids", "attention_mask", "token_type_ids", "labels", "label")
    keys = [k for k in wanted if k in encoded.column_names]
    batch = dict(task.collator(tokenizer)([{k: r[k] for k in keys} for r in encoded]))
    return batch, batch.pop("labels")


def _logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory) -> dict:
    """``(case, strategy) -> {cfg, metrics, run, batch, labels, logits}``: each case trained with full and lora,
    loaded back with hftl.load, and its test split as one batch with the reloaded model's logits."""
    out = {}
    for case in CASES:
        for strategy in ("full", "lora"):
            folder = tmp_path_factory.mktemp(f"{case}-{strategy}")
            cfg = load_config(None, _overrides(tiny_model, case, folder, strategy))
            metrics = main(cfg)
            model, tokenizer = hftl.load(folder / "run" / "model")
            batch, labels = _test_batch(cfg, tokenizer)
            torch.save(batch, folder / "batch.pt")
            out[case, strategy] = {"cfg": cfg, "metrics": metrics, "run": folder / "run", "labels": labels,
                                   "batch": folder / "batch.pt", "logits": _logits(model, batch)}
    return out


def _scores(entry: dict, logits, config) -> dict:
    cfg = entry["cfg"]
    return get_task(cfg.task.name).scores(torch.as_tensor(logits).float(), entry["labels"], cfg.eval.metrics, config)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_hftl_load_gives_the_runs_test_metrics(built, case, strategy):
    entry = built[case, strategy]
    config = hftl.load(entry["run"])[0].config
    assert config.auto_map["AutoConfig"] == "modeling_hftl.HftlConfig"  # saved loadable without hftl
    assert (entry["run"] / "model" / "modeling_hftl.py").is_file()
    assert _scores(entry, entry["logits"], config) == pytest.approx(entry["metrics"]["test"], abs=1e-4)


# -- outside hftl: plain transformers / peft, local and by Hub id -------------------------------------------------
PLAIN = r"""
import json, sys
import torch
from transformers import AutoConfig, AutoTokenizer
import transformers
from transformers.dynamic_module_utils import get_class_from_dynamic_module


def load(source, kind, auto):
    if kind == "adapter":  # hftl's class from the code saved beside the adapter, the backbone's own weights, peft
        from peft import PeftModel

        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
        model_class = get_class_from_dynamic_module(config.auto_map[auto], source)
        base = model_class.from_pretrained(config.backbone_name, config=config)
        return PeftModel.from_pretrained(base, source)
    return getattr(transformers, auto).from_pretrained(source, trust_remote_code=True)


out = {}
for job in json.load(open(sys.argv[1])):
    try:
        if job["kind"] == "untrusted":
            getattr(transformers, job["auto"]).from_pretrained(job["source"])
            out[job["name"]] = {"error": None}
            continue
        model = load(job["source"], job["kind"], job["auto"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(job["source"])
        with torch.no_grad():
            logits = model(**torch.load(job["batch"])).logits.float()
        config = getattr(model, "config", None)
        out[job["name"]] = {"logits": logits.tolist(), "class": type(model).__name__,
                            "tokenizer": type(tokenizer).__name__, "task": config.task,
                            "threshold": config.threshold, "target_mean": config.target_mean}
    except Exception as err:
        out[job["name"]] = {"error": f"{type(err).__name__}: {err}"}
out["hftl_imported"] = any(m == "hftl" or m.startswith("hftl.") for m in sys.modules)
json.dump(out, open(sys.argv[2], "w"))
"""

PUSH_AND_LOAD = r"""
import json, sys
import torch
import hftl
from hftl.hub import push

out = {}
for job in json.load(open(sys.argv[1])):
    push(job["run"], job["repo_id"], token=job["token"], what=job["what"])
    model, tokenizer = hftl.load(job["repo_id"])
    with torch.no_grad():
        out[job["repo_id"]] = model(**torch.load(job["batch"])).logits.float().tolist()
json.dump(out, open(sys.argv[2], "w"))
"""


def _child(script: str, jobs: list, workdir: Path, env: dict) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    out = subprocess.run([sys.executable, "-c", script, str(workdir / "jobs.json"), str(workdir / "out.json")],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return json.loads((workdir / "out.json").read_text())


def _repo(case: str, strategy: str) -> str:
    return f"alice/tiny-{case.replace('_', '-')}-{strategy}"


@pytest.fixture(scope="module")
def outside(built, tmp_path_factory) -> dict:
    """Runs pushed to a loopback Hub and loaded by id with hftl.load (one child); then every model loaded by the
    plain loaders, from the run directory and by Hub id, in a child that never imports hftl."""
    with HubServer(tokens={TOKEN: "alice"}) as hub:
        root = tmp_path_factory.mktemp("outside")
        # an adapter over a local base is pushed merged (hftl push refuses the adapter alone: its base is on no Hub;
        # an adapter over a Hub base, pushed and loaded by id, is tests/test_use.py's)
        pushes = [{"run": str(e["run"]), "repo_id": _repo(c, s), "token": TOKEN, "batch": str(e["batch"]),
                   "what": "merged" if s == "lora" else "auto"} for (c, s), e in built.items()]
        by_id = _child(PUSH_AND_LOAD, pushes, root / "push", hub.client_env(home=root / "push-home"))
        jobs = []
        for (case, strategy), e in built.items():
            auto = AUTO.get(case, "AutoModelForSequenceClassification")
            kind = "adapter" if strategy == "lora" else "full"
            model_dir, batch = str(e["run"] / "model"), str(e["batch"])
            jobs += [{"name": f"{case}/{strategy}/local", "source": model_dir, "kind": kind, "auto": auto,
                      "batch": batch},
                     {"name": f"{case}/{strategy}/hub", "source": _repo(case, strategy), "kind": "full",
                      "auto": auto, "batch": batch}]
            if strategy == "lora":
                jobs.append({"name": f"{case}/lora/merged", "source": str(e["run"] / "merged"), "kind": "full",
                             "auto": auto, "batch": batch})
            else:
                jobs.append({"name": f"{case}/full/untrusted", "source": model_dir, "kind": "untrusted",
                             "auto": auto, "batch": batch})
        # the refusals first: once a process has loaded hftl's code with consent, transformers keeps the class
        jobs.sort(key=lambda job: job["kind"] != "untrusted")
        plain = _child(PLAIN, jobs, root / "plain", hub.client_env(home=root / "plain-home"))
        files = {(c, s): hub.files(_repo(c, s)) for (c, s) in built}
    return {"by_id": by_id, "plain": plain, "files": files}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_pushed_and_loaded_by_id_gives_the_same_metrics(built, outside, case, strategy):
    entry = built[case, strategy]
    logits = torch.tensor(outside["by_id"][_repo(case, strategy)])
    tol = 1e-4 if strategy == "lora" else 1e-5  # lora: the merged model, pushed (rounding of the merge)
    torch.testing.assert_close(logits, entry["logits"], rtol=tol, atol=tol)
    config = hftl.load(entry["run"])[0].config
    assert _scores(entry, logits, config) == pytest.approx(entry["metrics"]["test"], abs=1e-4)
    assert {"modeling_hftl.py", "config.json", "metrics.json", "README.md"} <= set(outside["files"][case, strategy])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_plain_transformers_and_peft_load_without_hftl(built, outside, case, strategy):
    """AutoModelFor...from_pretrained(dir or id, trust_remote_code=True) for full and merged models; for an adapter,
    hftl's class from the saved code, the backbone's weights, then PeftModel.from_pretrained."""
    entry, plain = built[case, strategy], outside["plain"]
    assert plain["hftl_imported"] is False
    config = hftl.load(entry["run"])[0].config
    names = [f"{case}/{strategy}/local", f"{case}/{strategy}/hub"] + ([f"{case}/lora/merged"] if strategy == "lora"
                                                                       else [])
    for name in names:
        got = plain[name]
        assert "error" not in got, got.get("error")
        assert got["class"] == ("PeftModel" if strategy == "lora" and name.endswith("local") else
                                "HftlForTokenClassification" if case == "token_classification" else
                                "HftlForClassification"), name
        assert got["task"] == config.task and got["threshold"] == config.threshold
        assert got["target_mean"] == config.target_mean and got["tokenizer"].startswith("Bert")
        logits = torch.tensor(got["logits"])
        torch.testing.assert_close(logits, entry["logits"], rtol=1e-4, atol=1e-5, msg=name)  # merged: rounding
        assert _scores(entry, logits, config) == pytest.approx(entry["metrics"]["test"], abs=1e-4), name
    if strategy == "full":  # without trust_remote_code transformers refuses, naming the setting
        assert "trust_remote_code" in (plain[f"{case}/full/untrusted"]["error"] or "")


# -- 2 processes against 1; SIGKILL and resume -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> str:
    """The tiny BERT without dropout: runs on 1 and 2 processes draw no random numbers while training."""
    return tiny_text_model(tmp_path_factory.mktemp("still") / "bert", dropout=0.0)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one(still_model, tmp_path, case):
    overrides = [*_overrides(still_model, case, tmp_path, "full"), "model.head_dropout=0", "train.epochs=2"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(ROOT / "recipes" / "finetune.py"),
           *overrides, f"output_dir={tmp_path / 'two'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "2 processes" in out.stdout
    one = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # the rounding of gloo's all-reduce and of halves padded to their own length; a wrong split moves it by 1e-2
    rtol, atol = 1e-5, 1e-6
    assert two["test"] == pytest.approx(one["test"], rel=rtol, abs=atol)
    assert two["train"]["steps"] == one["train"]["steps"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=rtol, abs=atol)
        assert b["validation"] == pytest.approx(a["validation"], rel=rtol, abs=atol)
    assert two.get("tuned") == one.get("tuned")  # multi-label: the same threshold chosen on validation
    weights_one, weights_two = (load_file(tmp_path / r / "model" / "model.safetensors") for r in ("one", "two"))
    assert weights_one.keys() == weights_two.keys()
    for name, w in weights_one.items():
        torch.testing.assert_close(weights_two[name], w, rtol=rtol, atol=1e-5, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path, case):
    """Killed mid-epoch 2 (step 11: 72 training rows in batches of 8, a checkpoint every 4 steps), resumed with
    train.resume=true: the same test metrics, history and weights as the run never killed (dropout on: the RNG
    states must come back too)."""
    overrides = [*_overrides(tiny_model, case, tmp_path, "full"), "train.checkpoint_every=4"]
    reference = main(load_config(None, [*overrides, f"output_dir={tmp_path / 'reference'}"]))
    killed = [*overrides, f"output_dir={tmp_path / 'killed'}"]
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *killed],
                         env={**os.environ, KILL_ENV: "step-11"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = main(load_config(None, [*killed, "train.resume=true"]))
    assert reference["train"]["steps"] == 18
    assert_same_run(reference, resumed, tmp_path / "reference", tmp_path / "killed", rtol=1e-6, atol=1e-7)
    assert resumed.get("tuned") == reference.get("tuned")
