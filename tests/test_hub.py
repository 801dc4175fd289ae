"""hftl.hub against a loopback Hub (tests/hub_server.py) spoken to by the unmodified huggingface_hub client.

The client reads ``HF_ENDPOINT`` when it is imported, so every push and load runs in a fresh Python process
(a "child") pointed at the server; each child runs a list of steps (the ``step_*`` functions below) and writes
their outcomes as JSON. Models are tiny BERTs built from configs and trained for a few optimizer steps here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.hub_server import HubServer
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from hub_server import HubServer

ROOT, TESTS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
TOKENS = {  # name -> token; the strings must never show up in a file or an output
    "alice": "hf_aliceWRITEsecret7f3a9c2e",
    "bob": "hf_bobWRITEsecret0d41e8b7",
    "fine": "hf_aliceFINEGRAINEDsecret55c1",
    "read": "hf_aliceREADONLYsecret9e0b",
    "bogus": "hf_bogusUNKNOWNsecret1234",
}
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
] + "the a film movie plot was is good bad great awful fine ok".split()
SENTENCES = ["the film was good", "a bad plot", "the movie is ok", "great film", "awful awful movie", "fine"]
TARGETS = [2, 0, 1, 2, 0, 1]
CHILD = "import sys; sys.path[:0] = sys.argv[3:]; import test_hub; test_hub.child_main(sys.argv[1], sys.argv[2])"


# -- the child process ---------------------------------------------------------------------------------------------
def child_main(steps_path: str, out_path: str) -> None:
    """Run ``[(step, kwargs), ...]`` with all logging at DEBUG on stderr (so a logged token would be caught)."""
    os.nice(int(os.environ.get("HFTL_TEST_NICE", "0")))  # background children yield the CPU to the critical path
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True)
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_debug()
    results = []
    for name, kwargs in json.loads(Path(steps_path).read_text()):
        try:
            results.append({"ok": globals()[f"step_{name}"](**kwargs)})
        except Exception as err:  # the outcome is the test's to judge
            results.append(
                {"error": type(err).__name__, "message": str(err), "missing": getattr(err, "missing", None)}
            )
    Path(out_path).write_text(json.dumps(results))


def _commits(repo_id: str, revision: str = "main") -> int:
    from huggingface_hub import HfApi

    return len(HfApi().list_repo_commits(repo_id, revision=revision))


def step_push(run_dir: str, repo_id: str, token: str | None = None, env_token: str | None = None, **kwargs) -> dict:
    from hftl.hub import push

    os.environ.pop("HF_TOKEN", None)
    if env_token:
        os.environ["HF_TOKEN"] = TOKENS[env_token]
    url = push(run_dir, repo_id, token=TOKENS[token] if token else None, **kwargs)
    return {"url": url, "commits": _commits(repo_id, kwargs.get("revision") or "main")}


def step_commits(repo_id: str, revision: str = "main") -> int:
    return _commits(repo_id, revision)


def step_check_access(repo_id: str, token: str) -> str:
    from hftl.hub import check_push_access

    return check_push_access(repo_id, token=TOKENS[token])


def step_push_to_hub(model_dir: str, repo_id: str, token: str) -> str:
    """transformers' own push_to_hub (model + tokenizer) through the same server."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).push_to_hub(repo_id, token=TOKENS[token])
    return str(AutoModelForSequenceClassification.from_pretrained(model_dir).push_to_hub(repo_id, token=TOKENS[token]))


def step_predict(repo_id: str, how: str, revision: str | None = None, token: str | None = None) -> dict:
    """Logits on SENTENCES of a model loaded by repo id: ``plain`` transformers, ``plain_peft``, or ``hftl``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if how == "hftl":
        from hftl.hub import load

        model, tokenizer = load(repo_id, revision=revision, token=TOKENS[token] if token else None)
    elif how == "plain_peft":
        from peft import PeftConfig, PeftModel

        config = AutoConfig.from_pretrained(repo_id, revision=revision)  # the base config with the head's labels
        base_id = PeftConfig.from_pretrained(repo_id, revision=revision).base_model_name_or_path
        base = AutoModelForSequenceClassification.from_pretrained(base_id, config=config, ignore_mismatched_sizes=True)
        model = PeftModel.from_pretrained(base, repo_id, revision=revision).eval()
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(repo_id, revision=revision).eval()
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
    with torch.no_grad():
        logits = model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
    return {
        "logits": logits.tolist(),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "class": type(model).__name__,
    }


# -- the parent side -----------------------------------------------------------------------------------------------
class Child:
    """``steps`` running in a fresh process against ``hub`` (started at once); :meth:`result` waits for it."""

    def __init__(
        self, hub: HubServer, workdir: Path, steps: list[tuple[str, dict]], nice: int = 0, timeout: float = 240
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.timeout, self._result = workdir, timeout, None
        (workdir / "steps.json").write_text(json.dumps(steps))
        paths = (workdir / "steps.json", workdir / "out.json", ROOT, TESTS)  # CHILD's sys.argv[1:]
        argv = [sys.executable, "-c", CHILD, *map(str, paths)]
        env = {**hub.client_env(home=workdir / "hf_home"), "HFTL_TEST_NICE": str(nice)}
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=err)

    def result(self) -> dict:
        """``{"results": [outcome per step], "output": stdout + stderr}``."""
        if self._result is None:
            try:
                self.proc.wait(timeout=self.timeout)
            finally:
                self.stop()
            output = (self.workdir / "stdout").read_text() + (self.workdir / "stderr").read_text()
            assert self.proc.returncode == 0, output[-6000:]
            self._result = {"results": json.loads((self.workdir / "out.json").read_text()), "output": output}
        return self._result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ok(outcome: dict) -> Any:
    assert "ok" in outcome, f"{outcome.get('error')}: {outcome.get('message')}"
    return outcome["ok"]


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})


def _train(model, tokenizer, steps: int = 3) -> None:
    import torch

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(steps):
        model(**batch, labels=torch.tensor(TARGETS)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _logits(model, tokenizer) -> list:
    import torch

    with torch.no_grad():
        return model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits.tolist()


def _write_run(run_dir: Path, model, tokenizer, strategy: str, accuracy: float, plots: tuple[str, ...]) -> Path:
    from hftl.hub import save_model

    save_model(model, run_dir / "model", processor=tokenizer)
    (run_dir / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# tiny {strategy}\naccuracy {accuracy}\n")
    (run_dir / "config.yaml").write_text(f"strategy:\n  name: {strategy}\ntrain:\n  lr: 0.005\n")
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"accuracy": accuracy}}))
    for plot in plots:
        (run_dir / plot).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / plot).write_bytes(b"\x89PNG\r\n\x1a\n" + hashlib.sha256(plot.encode()).digest() * 8)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A base checkpoint (2 labels) and run directories trained from it with a new 3-label head."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    root, tokenizer = tmp_path_factory.mktemp("runs"), _tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    heads = {
        "num_labels": 3,
        "id2label": LABELS,
        "label2id": {v: k for k, v in LABELS.items()},
        "ignore_mismatched_sizes": True,
    }

    full = BertForSequenceClassification.from_pretrained(root / "base", **heads)
    _train(full, tokenizer)
    out = {"base": root / "base", "full_logits": _logits(full, tokenizer)}
    out["full"] = _write_run(root / "full", full, tokenizer, "full", 0.5, ("plots/loss.png",))
    _train(full, tokenizer, steps=2)
    out["full_v2_logits"] = _logits(full, tokenizer)
    out["full_v2"] = _write_run(root / "full_v2", full, tokenizer, "full", 0.75, ("plots/loss.png", "plots/cm.png"))

    lora_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    lora = get_peft_model(BertForSequenceClassification.from_pretrained(root / "base", **heads), lora_config)
    lora.peft_config["default"].base_model_name_or_path = "alice/tiny-base"  # pushed there by the push child
    _train(lora, tokenizer)
    out["lora_logits"] = _logits(lora, tokenizer)
    with warnings.catch_warnings():  # peft looks the base up (offline here) to see if its vocabulary grew
        warnings.filterwarnings("ignore", message="Could not find a config file")
        out["lora"] = _write_run(root / "lora", lora, tokenizer, "lora", 0.6, ())
    return out


@pytest.fixture(scope="module")
def hub():
    roles = {TOKENS["fine"]: "fineGrained", TOKENS["read"]: "read"}
    users = {TOKENS[name]: "bob" if name == "bob" else "alice" for name in ("alice", "bob", "fine", "read")}
    with HubServer(tokens=users, orgs={"acme": ["alice"]}, roles=roles, scopes={TOKENS["fine"]: ["alice"]}) as server:
        yield server


def _push(run: Path, repo_id: str, **kwargs) -> tuple[str, dict]:
    return ("push", {"run_dir": str(run), "repo_id": repo_id, **kwargs})


@pytest.fixture(scope="module")
def children(hub, runs, tmp_path_factory) -> dict[str, Child]:
    """The independent children, started together (two cores: imports overlap with the fault test's waits)."""
    full, full_v2, lora = runs["full"], runs["full_v2"], runs["lora"]
    pushes = [  # the base (transformers' push_to_hub), full, a re-push, a branch, a PR, the adapter, merged
        ("push_to_hub", {"model_dir": str(runs["base"]), "repo_id": "alice/tiny-base", "token": "alice"}),
        _push(full, "alice/tiny-full", env_token="alice"),
        _push(full, "alice/tiny-full", env_token="alice"),
        _push(full_v2, "alice/tiny-full", token="alice", revision="exp"),
        _push(full_v2, "alice/tiny-full", token="alice", create_pr=True),
        _push(lora, "alice/tiny-lora", token="alice"),
        _push(lora, "acme/tiny-merged", token="alice", what="merged"),
        _push(full, "alice/tiny-private", token="alice", private=True),
    ]
    denied = [
        _push(full, "alice/denied-none"),
        ("check_access", {"repo_id": "alice/denied-bob", "token": "bob"}),
        _push(full, "alice/denied-bob", token="bob"),
        _push(full, "acme/denied-fine", token="fine"),
        _push(full, "alice/denied-read", token="read"),
        _push(full, "alice/denied-bogus", token="bogus"),
        ("check_access", {"repo_id": "acme/anything", "token": "alice"}),
    ]
    # The LFS PUT of the new plot fails every time the client tries (1 + 5 retries); the next attempt then fails at
    # the commit (metrics.json is a regular file: the second commit carrying it gets a 500); the third succeeds.
    hub.fail_uploads("plots/cm.png", times=6, repo_id="alice/flaky")
    hub.fail_uploads("metrics.json", times=1, skip=1, repo_id="alice/flaky")
    flaky = [_push(full, "alice/flaky", token="alice")]
    flaky += [_push(full_v2, "alice/flaky", token="alice"), ("commits", {"repo_id": "alice/flaky"})] * 3
    flaky += [_push(full_v2, "alice/flaky", token="alice")]
    started = {
        name: Child(hub, tmp_path_factory.mktemp(name), steps, nice=nice)
        for name, steps, nice in (("push", pushes, 0), ("denied", denied, 10), ("flaky", flaky, 10))
    }
    yield started
    for child in started.values():
        child.stop()


@pytest.fixture(scope="module")
def pushed(children) -> dict:
    return children["push"].result()


@pytest.fixture(scope="module")
def loaded(hub, pushed, tmp_path_factory) -> dict:
    """A new child loads every pushed model by repo id, with plain transformers/peft and with hftl.hub.load."""
    cases = {  # name -> (repo id, how, revision, token)
        "full/plain": ("alice/tiny-full", "plain", None, None),
        "full/hftl": ("alice/tiny-full", "hftl", None, None),
        "full@exp/hftl": ("alice/tiny-full", "hftl", "exp", None),
        "lora/plain_peft": ("alice/tiny-lora", "plain_peft", None, None),
        "lora/hftl": ("alice/tiny-lora", "hftl", None, None),
        "merged/plain": ("acme/tiny-merged", "plain", None, None),
        "merged/hftl": ("acme/tiny-merged", "hftl", None, None),
        "private/hftl": ("alice/tiny-private", "hftl", None, None),
        "private/hftl+token": ("alice/tiny-private", "hftl", None, "alice"),
    }
    steps = [("predict", {"repo_id": r, "how": h, "revision": v, "token": t}) for r, h, v, t in cases.values()]
    child = Child(hub, tmp_path_factory.mktemp("load"), steps)
    result = child.result()
    return {"output": result["output"], "workdir": child.workdir, **dict(zip(cases, result["results"], strict=True))}


@pytest.fixture(scope="module")
def denied(children) -> dict:
    return children["denied"].result()


@pytest.fixture(scope="module")
def flaky(children) -> dict:
    return children["flaky"].result()


def _assert_same_predictions(outcome: dict, reference: list, model_class: str) -> None:
    import torch

    got = ok(outcome)
    assert got["class"] == model_class
    assert torch.allclose(torch.tensor(got["logits"]), torch.tensor(reference), atol=1e-5)
    assert got["id2label"] == {str(k): v for k, v in LABELS.items()}


# -- round trips ---------------------------------------------------------------------------------------------------
def test_full_model_round_trip(hub, runs, pushed, loaded):
    assert ok(pushed["results"][1])["url"].startswith(f"{hub.url}/alice/tiny-full/commit/")
    _assert_same_predictions(loaded["full/plain"], runs["full_logits"], "BertForSequenceClassification")
    _assert_same_predictions(loaded["full/hftl"], runs["full_logits"], "BertForSequenceClassification")
    files = hub.files("alice/tiny-full")
    expected = {
        ".gitattributes",
        "README.md",
        "config.yaml",
        "metrics.json",
        "plots/loss.png",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert set(files) == expected
    assert files["config.yaml"] == (runs["full"] / "config.yaml").read_bytes()
    assert hub.history("alice/tiny-full") == [
        "Upload full model from hftl run 'full' (strategy: full)",
        "initial commit",
    ]


def test_adapter_with_head_round_trip(hub, runs, loaded):
    _assert_same_predictions(loaded["lora/plain_peft"], runs["lora_logits"], "PeftModelForSequenceClassification")
    _assert_same_predictions(loaded["lora/hftl"], runs["lora_logits"], "PeftModelForSequenceClassification")
    files = hub.files("alice/tiny-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert "model.safetensors" not in files
    assert b"lora" in files["README.md"]  # the run's card, not the one peft wrote into model/
    assert hub.history("alice/tiny-lora")[0] == "Upload adapter + head from hftl run 'lora' (strategy: lora)"


def test_merged_model_round_trip(hub, runs, loaded):
    _assert_same_predictions(loaded["merged/plain"], runs["lora_logits"], "BertForSequenceClassification")
    _assert_same_predictions(loaded["merged/hftl"], runs["lora_logits"], "BertForSequenceClassification")
    files = hub.files("acme/tiny-merged")
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert files["tokenizer.json"] == (runs["lora"] / "model" / "tokenizer.json").read_bytes()


def test_private_repo_loads_with_a_token_only(hub, runs, loaded):
    assert hub.repos["model/alice/tiny-private"].private
    assert loaded["private/hftl"]["error"] == "RepositoryNotFoundError"
    _assert_same_predictions(loaded["private/hftl+token"], runs["full_logits"], "BertForSequenceClassification")


def test_base_pushed_with_transformers_push_to_hub(hub):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(hub.files("alice/tiny-base"))


def test_repush_of_unchanged_run_adds_no_commit(pushed, hub):
    first, again = ok(pushed["results"][1]), ok(pushed["results"][2])
    assert again == first  # same commit URL, same count: the client skipped every unchanged file
    assert first["commits"] == 2 and len(hub.history("alice/tiny-full")) == 2


def test_push_to_branch_and_pull_request(hub, runs, pushed, loaded):
    branch, pr = ok(pushed["results"][3]), ok(pushed["results"][4])
    assert branch["commits"] == 3 and pr["url"] == f"{hub.url}/alice/tiny-full/discussions/1"
    assert hub.files("alice/tiny-full", "exp")["metrics.json"] == (runs["full_v2"] / "metrics.json").read_bytes()
    assert hub.files("alice/tiny-full", "refs/pr/1")["plots/cm.png"] == (runs["full_v2"] / "plots/cm.png").read_bytes()
    assert "plots/cm.png" not in hub.files("alice/tiny-full")  # main is untouched
    _assert_same_predictions(loaded["full@exp/hftl"], runs["full_v2_logits"], "BertForSequenceClassification")


# -- access errors -------------------------------------------------------------------------------------------------
def _no_upload_reached(hub, repo_id: str) -> None:
    writes = ("/preupload/", "/commit/", ".git/info/lfs", "/branch/")
    assert not [path for _, path in hub.requests if repo_id in path and any(w in path for w in writes)]
    assert f"model/{repo_id}" not in hub.repos


def test_missing_token_fails_before_upload(hub, denied):
    outcome = denied["results"][0]
    assert outcome["error"] == "HubAccessError"
    assert "No Hugging Face token found" in outcome["message"] and "'alice/denied-none'" in outcome["message"]
    assert "HF_TOKEN" in outcome["message"] and "hf auth login" in outcome["message"]
    _no_upload_reached(hub, "alice/denied-none")


def test_token_of_another_user_is_refused_before_upload(hub, denied):
    for outcome in denied["results"][1:3]:
        assert outcome["error"] == "HubAccessError"
        assert "'bob'" in outcome["message"] and "'alice/denied-bob'" in outcome["message"]
        assert "403" in outcome["message"] and "bob/denied-bob" in outcome["message"]  # what to do instead
    _no_upload_reached(hub, "alice/denied-bob")


def test_hub_side_403_read_only_and_bad_tokens_are_clear(hub, denied):
    fine, read, bogus = denied["results"][3:6]
    assert fine["error"] == "HubAccessError" and "refused" in fine["message"] and "403" in fine["message"]
    assert read["error"] == "HubAccessError" and "read-only" in read["message"]
    assert bogus["error"] == "HubAccessError" and "401" in bogus["message"]
    for repo_id in ("acme/denied-fine", "alice/denied-read", "alice/denied-bogus"):
        _no_upload_reached(hub, repo_id)
    assert ok(denied["results"][6]) == "acme/anything"  # an org the user belongs to is writable


# -- a push that fails half-way ------------------------------------------------------------------------------------
def _differing(run_a: Path, run_b: Path) -> set[str]:
    from hftl.hub import collect_files

    a, b = collect_files(run_a, run_a / "model"), collect_files(run_b, run_b / "model")
    return {p for p in b if p not in a or a[p].read_bytes() != b[p].read_bytes()}


def test_failed_push_lists_missing_files_and_rerun_adds_one_commit(hub, runs, flaky):
    results = flaky["results"]
    assert ok(results[0])["commits"] == 2
    changed = _differing(runs["full"], runs["full_v2"])
    assert {"model.safetensors", "plots/cm.png", "metrics.json"} <= changed
    for failed in (results[1], results[3]):
        assert failed["error"] == "PushError", failed
        assert set(failed["missing"]) == changed and "Run push() again" in failed["message"]
    assert "plots/cm.png" in results[1]["message"] and ok(results[2]) == 2 and ok(results[4]) == 2
    assert ok(results[5])["commits"] == 3 and ok(results[6]) == 3  # exactly one more commit
    assert ok(results[7])["commits"] == 3  # and a re-run of a finished push adds none
    assert hub.files("alice/flaky")["plots/cm.png"] == (runs["full_v2"] / "plots/cm.png").read_bytes()
    puts = [(path, status) for repo, path, status in hub.lfs_uploads if repo == "alice/flaky"]
    assert puts.count(("model.safetensors", 200)) == 2  # v1, then v2 once: not sent again by the re-runs
    assert puts.count(("plots/cm.png", 500)) == 6 and puts.count(("plots/cm.png", 200)) == 1


# -- the token stays secret ------------------------------------------------------------------------------------
def test_token_never_written_nor_logged(runs, children, pushed, loaded, denied, flaky):
    outputs = "".join(child["output"] for child in (pushed, loaded, denied, flaky))
    assert "DEBUG" in outputs  # the children really logged at DEBUG
    # Run directories, and each child's folder: its HF_HOME (cache, no stored token), stdout and stderr.
    folders = [runs[run] for run in ("full", "full_v2", "lora")] + [child.workdir for child in children.values()]
    folders.append(loaded["workdir"])
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    for token in TOKENS.values():
        assert token not in outputs
        assert not [path for path in files if token.encode() in path.read_bytes()]


# -- in-process: no Hub needed -------------------------------------------------------------------------------------
def test_only_the_main_process_pushes(runs):
    from hftl.hub import push

    class NotMain:
        is_main_process = False

    assert push(runs["full"], "alice/never", accelerator=NotMain()) is None


def test_what_selects_the_model_directory(runs, tmp_path):
    from hftl.hub import _select_model, collect_files

    assert _select_model(runs["lora"], "auto")[:1] == ("adapter",)
    assert _select_model(runs["lora"], "merged") == ("merged", runs["lora"] / "model", True)
    with pytest.raises(ValueError, match="holds a peft adapter"):
        _select_model(runs["lora"], "model")
    with pytest.raises(ValueError, match="holds a full model"):
        _select_model(runs["full"], "adapter")
    with pytest.raises(ValueError, match="not one of"):
        _select_model(runs["full"], "everything")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    assert _select_model(tmp_path, "merged") == ("merged", tmp_path / "merged", False)
    files = collect_files(runs["lora"], runs["lora"] / "model")
    assert files["README.md"] == runs["lora"] / "README.md"  # the run's card wins over peft's


def test_load_a_local_run_directory(runs):
    import torch

    from hftl.hub import load

    model, tokenizer = load(runs["full"])
    assert model.config.id2label == LABELS and type(tokenizer).__name__.startswith("Bert")
    assert torch.allclose(torch.tensor(_logits(model, tokenizer)), torch.tensor(runs["full_logits"]), atol=1e-5)


def test_offline_mode_gives_a_clear_access_error(monkeypatch):
    from huggingface_hub import constants

    from hftl.hub import HubAccessError, check_push_access

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never reach out, however the suite was started
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE is set") as info:
        check_push_access("alice/x", token=TOKENS["alice"])
    assert TOKENS["alice"] not in str(info.value)


def test_load_hands_hftl_classifiers_to_their_own_loader(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from hftl.hub import load, save_model
    from hftl.modeling import HftlForClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    model = HftlForClassification.from_backbone(BertModel(config), 3, id2label=LABELS).eval()
    tokenizer = _tokenizer()
    save_model(model, tmp_path / "model", processor=tokenizer)
    loaded, processor = load(tmp_path)
    assert type(loaded).__name__ == "HftlForClassification" and loaded.config.id2label == LABELS
    # One sentence at a time: the freshly built wrapper's backbone has no attention implementation set
    # (transformers warns) and does not mask padding, while the reloaded one does.
    with torch.no_grad():
        for sentence in SENTENCES:
            before, after = (
                model(**tokenizer(sentence, return_tensors="pt")),
                loaded(**processor(sentence, return_tensors="pt")),
            )
            assert torch.allclose(before.logits, after.logits, atol=1e-5)
