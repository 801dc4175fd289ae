"""Use what you trained (issue 15): small run directories, outputs that load anywhere without hftl, pushes that carry
nothing local and work without Xet, one input conversion for training and prediction, ``hftl predict``/``evaluate``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hftl.recipes.finetune import main
from safetensors import safe_open

from hftl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["good great movie", "awful boring film", "the actor was fine"]
# Loads a saved output with the ecosystem's own loader, in a process where hftl is never imported; prints the
# class probabilities of TEXTS (label order) as JSON.
NO_HFTL = """
import json, sys
loader, path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import torch
from transformers import AutoTokenizer
if loader == "pipeline":
    from transformers import pipeline
    classify = pipeline("text-classification", model=path, trust_remote_code=True, top_k=None)
    labels = classify.model.config.id2label
    probs = [[{d["label"]: d["score"] for d in row}[labels[i]] for i in range(len(labels))] for row in classify(texts)]
else:
    if loader == "transformers":
        from transformers import AutoModelForSequenceClassification as Auto
    else:
        from peft import AutoPeftModelForSequenceClassification as Auto
    model = Auto.from_pretrained(path, trust_remote_code=True).eval()
    batch = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1).tolist()
assert not [m for m in sys.modules if m.split(".")[0] == "hftl"], "hftl was imported"
print(json.dumps(probs))
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(tiny_cfg, tmp_path, strategy: str, *extra: str) -> Path:
    overrides = [*tiny_cfg, f"strategy.name={strategy}", "train.epochs=2", "eval.report=false",
                 "train.report_to=none", *extra]
    main(load_config(None, overrides))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_csv, tmp_path_factory) -> dict[str, Path]:
    """A full run, a LoRA run (merged export too) and LP-FT runs (probe, then full or LoRA) of the tiny model, made
    once."""
    out = {}
    for name, strategy, extra in (("full", "full", ()), ("lora", "lora", ()),
                                  ("lp_ft", "lp_ft", ("strategy.probe_epochs=3",)),
                                  ("lp_ft_lora", "lp_ft", ("strategy.probe_epochs=3", "strategy.after_probe=lora"))):
        root = tmp_path_factory.mktemp(name)
        cfg = [f"model.name={tiny_model}", f"data.name={tiny_csv}", "data.validation_size=0.2",
               "data.test_size=0.2", "train.batch_size=8", "train.lr=3e-3", f"output_dir={root / 'run'}"]
        out[name] = _run(cfg, root, strategy, "strategy.merge=true", *extra)
    return out


def _hftl_probs(model_dir: Path) -> torch.Tensor:
    import hftl

    model, tokenizer = hftl.load(model_dir)
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)


# -- small run directories ------------------------------------------------------------------------------------------
def _weights(path: Path) -> dict[str, tuple]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("strategy", ["linear_probe", "lora"])
def test_checkpoints_of_frozen_strategies_hold_only_what_trains(tiny_cfg, tmp_path, strategy):
    run = _run(tiny_cfg, tmp_path, strategy, "strategy.merge=false")
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints
    trained = {k.removeprefix("base_model.model.") for k in _weights(checkpoints[-1] / "model.safetensors")}
    assert trained and all("head" in k or "lora_" in k or "position_ids" in k or "buffer" in k for k in trained), \
        sorted(trained)
    assert (checkpoints[-1] / "trainable_only.json").is_file()
    # the backbone is not copied again: the checkpoint's weights are a small part of the model's
    backbone = Path(tiny_cfg[0].split("=", 1)[1]) / "model.safetensors"
    size = (checkpoints[-1] / "model.safetensors").stat().st_size
    assert size < backbone.stat().st_size / 8, (size, backbone.stat().st_size)


def test_full_strategy_checkpoints_stay_whole(tiny_cfg, tmp_path):
    run = _run(tiny_cfg, tmp_path, "full", "train.epochs=1")
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert not (last / "trainable_only.json").exists()
    assert any("embeddings" in k for k in _weights(last / "model.safetensors"))


# -- outputs that load anywhere -------------------------------------------------------------------------------------
CASES = {  # (run, folder) -> loaders that must load it
    ("full", "model"): ("transformers", "pipeline"),
    ("lora", "model"): ("transformers", "peft", "pipeline"),
    ("lora", "merged"): ("transformers", "pipeline"),
    ("lp_ft", "model"): ("transformers", "pipeline"),  # LP-FT saves as what followed its probe
    ("lp_ft_lora", "model"): ("transformers", "peft", "pipeline"),
    ("lp_ft_lora", "merged"): ("transformers", "pipeline"),
}


@pytest.mark.parametrize(("kind", "loader"), [(k, loader) for k, loaders in CASES.items() for loader in loaders],
                         ids=lambda v: "/".join(v) if isinstance(v, tuple) else v)
def test_saved_outputs_load_without_hftl(runs, tmp_path, kind, loader):
    model_dir = runs[kind[0]] / kind[1]
    out = subprocess.run([sys.executable, "-c", NO_HFTL, loader, str(model_dir), json.dumps(TEXTS)], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probs = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(probs, _hftl_probs(model_dir), rtol=1e-4, atol=1e-5)


def test_adapter_names_a_base_that_resolves_and_has_one_card(runs):
    model_dir = runs["lora"] / "model"
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute() and Path(config["base_model_name_or_path"]).is_dir()
    assert config["auto_mapping"]["parent_library"] == "transformers"  # not hftl: loads without it
    backbone = json.loads((model_dir / "config.json").read_text())["backbone_name"]
    assert Path(backbone).is_absolute() and Path(backbone).is_dir()  # a relative model.name resolves from anywhere
    assert not (model_dir / "README.md").exists() and (runs["lora"] / "README.md").is_file()  # one card per run
    assert (model_dir / "modeling_hftl.py").is_file() and (runs["lora"] / "merged" / "modeling_hftl.py").is_file()


def test_card_is_plain_words_with_how_to_load_and_predict(runs):
    card = (runs["lora"] / "README.md").read_text()
    assert "hftl predict" in card and "pipeline(" in card and "trust_remote_code=True" in card
    assert "AutoPeftModelForSequenceClassification" in card
    body = card.split("## Configuration")[0]
    assert not any(s in body for s in ("{'", "['", "PeftType.", "set()")), body  # no raw Python values


# -- what trained is what predicts ----------------------------------------------------------------------------------
def _predictor(backbone, processor, modality: str):
    from hftl.inference import Predictor
    from hftl.modeling import HftlForClassification

    torch.manual_seed(0)
    model = HftlForClassification.from_backbone(backbone, 2, id2label={0: "dark", 1: "light"}).eval()
    return Predictor(model=model, processor=processor, modality=modality, labels=["dark", "light"], max_seconds=2.0)


def test_grayscale_16bit_palette_and_rgba_images_predict_as_in_training(tmp_path):
    from PIL import Image
    from transformers import AutoConfig, AutoModel, ViTImageProcessorPil

    from hftl.data.vision import ImageTransform
    from hftl.inference import _batch, predict

    backbone = AutoModel.from_config(AutoConfig.for_model(
        "vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
        patch_size=8))
    predictor = _predictor(backbone, ViTImageProcessorPil(size={"height": 32, "width": 32}), "vision")
    gray = np.random.default_rng(0).integers(0, 256, (20, 24)).astype(np.uint8)
    images = {"rgb": Image.fromarray(np.stack([gray] * 3, -1)), "gray": Image.fromarray(gray),
              "16bit": Image.fromarray(gray.astype(np.uint16) * 257), "palette": Image.fromarray(gray).convert("P"),
              "rgba": Image.fromarray(gray).convert("RGBA")}
    files = {}
    for name, image in images.items():
        image.save(tmp_path / f"{name}.png")
        files[name] = str(tmp_path / f"{name}.png")
    assert Image.open(files["16bit"]).mode.startswith("I")  # a real 16-bit file, as scanners and microscopes write
    rows = {r["input"]: r["scores"] for r in predict(predictor, list(files.values()))}
    for name, path in files.items():  # the same picture in every mode: the same scores as its RGB form
        assert rows[path] == pytest.approx(rows[files["rgb"]], abs=1e-6), name
    # prediction's pixels are training's pixels (no augmentation), file by file
    trained = ImageTransform(predictor.processor, augment=False)({"image": list(files.values()), "label": [0] * 5})
    np.testing.assert_array_equal(np.stack(trained["pixel_values"]), _batch(predictor, list(files.values()))[
        "pixel_values"].numpy())


def test_audio_at_other_rates_is_resampled_as_in_training(tmp_path):
    import soundfile as sf
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    from hftl.data.speech import AudioTransform
    from hftl.inference import predict

    backbone = AutoModel.from_config(AutoConfig.for_model(
        "wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2))
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    predictor = _predictor(backbone, extractor, "speech")
    files = {}
    for rate in (16000, 8000, 44100):
        t = np.arange(rate) / rate
        wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        files[rate] = str(tmp_path / f"tone-{rate}.wav")
        sf.write(files[rate], np.stack([wave, wave], -1) if rate == 44100 else wave, rate)  # one stereo
    rows = {r["input"]: r["scores"] for r in predict(predictor, list(files.values()))}
    for rate, path in files.items():
        assert rows[path] == pytest.approx(rows[files[16000]], abs=2e-3), rate
    waves = AudioTransform(16000, 2.0)({"audio": [files[8000]], "label": [0]})["waveform"]
    assert len(waves[0]) == 16000  # 1 s at 8 kHz -> 16,000 samples at the model's rate, as in training


# -- hftl predict / evaluate ----------------------------------------------------------------------------------------
def _hftl(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hftl.cli", *args], input=stdin, capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=300)


def _test_split(run: Path, path: Path) -> Path:
    """The run's test split (inputs and true labels) as a CSV, from its predictions.jsonl."""
    import csv

    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([r["input"], r["label"]] for r in rows)
    return path


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_predict_on_the_test_split_reproduces_the_test_accuracy(runs, tmp_path, strategy):
    run = runs[strategy]
    test = _test_split(run, tmp_path / "test.csv")
    expected = json.loads((run / "metrics.json").read_text())["test"]
    out = _hftl("evaluate", str(run), str(test))
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert scores["accuracy"] == pytest.approx(expected["accuracy"]) and scores["examples"] == 24
    out = _hftl("predict", str(run / "model"), str(test))  # the model folder, fed the file: JSON lines
    assert out.returncode == 0, out.stderr[-2000:]
    labels = [json.loads(line)["label"] for line in out.stdout.strip().splitlines()]
    truth = [json.loads(line)["label"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) / len(truth) == pytest.approx(expected["accuracy"])


def test_predict_texts_stdin_and_table(runs):
    run = runs["full"]
    args = _hftl("predict", str(run), *TEXTS)
    stdin = _hftl("predict", str(run), "-", stdin="\n".join(TEXTS) + "\n")
    assert args.returncode == 0 and stdin.returncode == 0, args.stderr[-2000:] + stdin.stderr[-2000:]
    rows = [json.loads(line) for line in args.stdout.strip().splitlines()]
    assert [r["input"] for r in rows] == TEXTS and all(set(r) == {"input", "label", "score", "scores"} for r in rows)
    assert args.stdout == stdin.stdout
    table = _hftl("predict", str(run), *TEXTS, "--format", "table")
    assert table.stdout.splitlines()[0].split() == ["input", "label", "score"] and len(table.stdout.splitlines()) == 4
    import hftl

    from_script = hftl.predict(run, TEXTS)
    assert [r["label"] for r in from_script] == [r["label"] for r in rows]


def test_predict_bad_inputs_are_one_line_errors(runs, tmp_path):
    (tmp_path / "x.csv").write_text("review,stars\nfine,1\n")
    for args, needle in ((["predict", str(runs["full"]), str(tmp_path / "x.csv")], "--column"),
                         (["predict", str(tmp_path / "nothing-here"), "hi"], "Hub repo id"),
                         (["evaluate", str(runs["full"]), str(tmp_path / "x.csv"), "--column", "review"], "labels")):
        out = _hftl(*args)
        assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# -- the README's snippet ---------------------------------------------------------------------------------------------
def _snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From a script", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_snippet_names_only_what_exists():
    import hftl

    code = _snippet()
    compile(code, "README.md", "exec")
    names = {word.split("(")[0] for word in code.replace("hftl.", " hftl.").split() if word.startswith("hftl.")}
    assert names and all(hasattr(hftl, n.removeprefix("hftl.")) for n in names if n.count(".") == 1), names


@pytest.mark.integration
def test_readme_snippet_runs_as_pasted(tmp_path):
    """The real MiniLM and Rotten Tomatoes (packaged): the snippet, run from a copy of the repository's layout."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    out = subprocess.run([sys.executable, "-c", _snippet()], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout and (tmp_path / "runs" / "from-script" / "hftl_run.json").is_file()


# -- pushed, then loaded elsewhere ----------------------------------------------------------------------------------
PUSH = """
import sys
from huggingface_hub import HfApi, constants
from hftl.hub import push
base, runs = sys.argv[1], sys.argv[2:]
constants.HF_HUB_DISABLE_XET = True  # the base, with the plain client (HfApi uses Xet whenever hf_xet is installed)
HfApi().create_repo("alice/tiny-base", exist_ok=True)
HfApi().upload_folder(folder_path=base, repo_id="alice/tiny-base")
constants.HF_HUB_DISABLE_XET = False  # hftl's push must find by itself that this server has no Xet
for run in runs:
    name, what = run.split("=")[0], run.split("=")[1]
    print(push(run.split("=")[2], "alice/" + name, what=what))
"""


def _lay_into_cache(model_dir: str, repo_id: str) -> None:
    """A local model resolvable by its Hub id offline (the Hub cache's layout), as a download would leave it."""
    import shutil

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / ("0" * 40), dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_pushed_lora_run_reloads_elsewhere_and_reproduces_its_accuracy(tiny_model, tiny_csv, runs, tmp_path):
    from hub_server import HubServer

    _lay_into_cache(tiny_model, "alice/tiny-base")
    lora = _run(["model.name=alice/tiny-base", f"data.name={tiny_csv}", "data.validation_size=0.2",
                 "data.test_size=0.2", "train.batch_size=8", "train.lr=3e-3", f"output_dir={tmp_path / 'run'}"],
                tmp_path, "lora")
    test = _test_split(lora, tmp_path / "test.csv")
    with HubServer(tokens={"tok": "alice"}) as hub:
        env = {k: v for k, v in hub.client_env(home=tmp_path / "pusher", token="tok").items()
               if k != "HF_HUB_DISABLE_XET"}
        pushes = [f"tiny-lora=adapter={lora}", f"tiny-full=model={runs['full']}",
                  f"tiny-merged=merged={runs['lora']}"]
        out = subprocess.run([sys.executable, "-c", PUSH, tiny_model, *pushes], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "no Xet storage" in out.stderr  # found by itself, said once per push
        # nothing pushed names a folder of this machine
        for repo in ("alice/tiny-lora", "alice/tiny-full", "alice/tiny-merged"):
            for name, data in hub.files(repo).items():
                for local in (str(tmp_path.parent.parent), str(ROOT), str(Path(tiny_model).parent)):
                    assert local.encode() not in data, (repo, name, local)
        adapter = json.loads(hub.files("alice/tiny-lora")["adapter_config.json"])
        assert adapter["base_model_name_or_path"] == "alice/tiny-lora"
        card = hub.files("alice/tiny-lora")["README.md"].decode()
        assert "base_model: alice/tiny-base" in card and card.count("\n---") >= 1
        # elsewhere: a fresh Hub cache, online against the server, hftl's evaluate and peft without hftl
        loader = hub.client_env(home=tmp_path / "elsewhere")
        out = subprocess.run([sys.executable, "-m", "hftl.cli", "evaluate", "alice/tiny-lora", str(test)],
                             env={**loader, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        expected = json.loads((lora / "metrics.json").read_text())["test"]["accuracy"]
        assert json.loads(out.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(expected)
        out = subprocess.run([sys.executable, "-c", NO_HFTL, "peft", "alice/tiny-lora", json.dumps(TEXTS)],
                             env={**loader, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])),
                                   _hftl_probs(lora / "model"), rtol=1e-4, atol=1e-5)


def test_adapter_on_a_local_base_is_refused_before_upload(runs):
    out = _hftl("push", str(runs["lora"]), "alice/never")
    assert out.returncode == 2 and "--what merged" in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
        out.stderr


# -- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["predict", "evaluate", "configs", "config", "push", "report"])
def test_each_subcommand_help_says_what_it_does_writes_and_an_example(command):
    import time

    start = time.perf_counter()
    out = _hftl(command, "--help")
    assert out.returncode == 0 and time.perf_counter() - start < 5  # nothing heavy imported (wide margin)
    assert "Writes:" in out.stdout and "example: hftl " + command in out.stdout, out.stdout


def test_configs_lists_every_shipped_config_and_what_it_needs_first():
    out = _hftl("configs")
    assert out.returncode == 0, out.stderr
    shipped = sorted(ROOT.glob("recipes/configs/*/*.yaml"))
    blocks = out.stdout.split("\n")
    for path in shipped:
        name = f"{path.parent.name}/{path.name}"
        at = blocks.index(name)
        first = next(line for line in blocks[at:] if line.strip().startswith("first:"))
        if "python scripts/" in path.read_text().split("\n\n")[0]:  # made by a script: said before anything else
            assert "python scripts/" in first, (name, first)
        run = next(line for line in blocks[at:] if line.strip().startswith("run:"))
        assert re.search(r"(hftl|accelerate launch|python recipes/)\S* ", run), (name, run)  # every config runs
    from hftl.shipped import shipped_configs

    for config in shipped_configs():  # what comes first: commands, installs and "Needs ..." only, never prose
        for need in config["needs"]:
            assert re.match(r"([A-Z_]+=\S+ )*(python|bash|apt-get install|pip install) |Needs ", need), \
                (config["name"], need)
    at = blocks.index("text/minilm-rt-linear_probe.yaml")  # the demo's config needs nothing first
    assert blocks[at + 3].strip().startswith("first: nothing"), blocks[at:at + 4]


def test_local_run_never_touches_the_network(runs):
    from hub_server import HubServer

    with HubServer() as hub:  # online, an endpoint that answers: any request would be recorded
        env = {**hub.client_env(), "OMP_NUM_THREADS": "1"}
        for run in (runs["lora"], runs["full"] / "model"):
            out = subprocess.run([sys.executable, "-m", "hftl.cli", "predict", str(run), "a good film"], env=env,
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
        assert hub.requests == [], hub.requests
