"""Speech recognition as tasks (issue 17): ``seq2seq_asr`` (Whisper) and ``ctc`` (wav2vec2) through the recipe, the
loop, the run directory and ``hftl.load``; strategies; normalised WER/CER; bad transcripts and clips; resume after
SIGKILL and 1 against 2 processes. Tiny models built from configs (``hftl.testing``), clips of tones (one per word).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from same_run import assert_same_run

from hftl.config import ConfigError, load_config
from hftl.data.sources import DataError
from hftl.tasks import get_task
from hftl.tasks.speech_text import error_rates, normalize
from hftl.testing import tiny_speech_csv, tiny_wav2vec2_model, tiny_whisper_model
from hftl.train import KILL_ENV, last_checkpoint
from recipes.finetune import main

ROOT = Path(__file__).resolve().parents[1]
# 1 against 2 processes: the same steps summed in another order (see tests/test_distributed.py); Adam carries the
# rounding through 12 steps (about 1e-7 seen). A wrong split or schedule moves these numbers by 1e-2 or more.
RTOL_PROCESSES = 1e-5


@pytest.fixture(scope="module")
def whisper(tmp_path_factory) -> str:
    return tiny_whisper_model(tmp_path_factory.mktemp("whisper") / "model")


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory) -> str:
    return tiny_wav2vec2_model(tmp_path_factory.mktemp("w2v") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> str:
    return tiny_speech_csv(tmp_path_factory.mktemp("clips"), n=30)


def overrides(model: str, data: str, task: str, out: Path, strategy: str = "full", *extra: str) -> list[str]:
    return [f"model.name={model}", f"task.name={task}", f"data.name={data}", "data.input_column=audio",
            "data.label_column=text", "data.validation_size=0.2", "data.test_size=0.2", f"strategy.name={strategy}",
            "strategy.freeze_layers=2", "train.epochs=2", "train.batch_size=4", "train.eval_batch_size=4",
            "train.lr=3e-3", "eval.report=false", f"output_dir={out}", *extra]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_normalisation_counts_words_not_spelling():
    assert normalize("Twenty-one milligrams, twice daily.") == normalize("21 milligrams twice daily")
    assert error_rates(["start 40 milligrams"], ["Start forty milligrams."]) == {"wer": 0.0, "cer": 0.0}
    assert error_rates(["yes no"], ["yes go"]) == {"wer": 0.5, "cer": 1 / 6}
    assert normalize("Blood pressure is 140/90!") == normalize("blood pressure is 140/90")


# strategy -> which parameters train: the tiny Whisper has 2 encoder blocks (freeze_layers=2: the whole encoder)
@pytest.mark.parametrize("strategy", ["full", "freeze_n", "lora"])
def test_whisper_run_saves_scores_and_loads_back(whisper, clips, tmp_path, strategy):
    import hftl

    metrics = main(load_config(None, overrides(whisper, clips, "seq2seq_asr", tmp_path / "run", strategy)))
    for split in ("test", "validation"):
        assert set(metrics[split]) == {"wer", "cer", "loss"} and all(np.isfinite(list(metrics[split].values())))
    assert all(set(h["validation"]) == {"wer", "cer", "loss"} for h in metrics["history"])
    assert "the best on the validation split by wer" in " ".join((tmp_path / "run" / "README.md").read_text().split())
    model, processor = hftl.load(tmp_path / "run" / "model")
    base = model.get_base_model() if strategy == "lora" else model
    encoder = sum(p.numel() for p in base.model.encoder.parameters())
    if strategy == "full":
        assert metrics["train"]["trainable_params"] == metrics["train"]["total_params"]
    elif strategy == "freeze_n":  # everything but the encoder trains
        assert metrics["train"]["trainable_params"] == metrics["train"]["total_params"] - encoder
    else:
        assert metrics["train"]["trainable_params"] < 0.2 * metrics["train"]["total_params"]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "automatic-speech-recognition" in card
    # what was saved transcribes the test clips as the run did (predictions.jsonl, in the test split's order)
    rows = _rows(tmp_path / "run" / "predictions.jsonl")
    task = get_task("seq2seq_asr")
    waves = [{"waveform": hftl.data.speech.load_audio(r["file"], 16000), "label": r["label"]} for r in rows]
    batch = task.collator(processor)(waves)
    assert task.outputs(task.eval_outputs(model.eval(), batch), model.config) == [r["predicted"] for r in rows]
    assert {"label", "predicted", "correct", "wer", "file"} <= set(rows[0])


def test_whisper_learns_the_tones(whisper, clips, tmp_path):
    """Enough steps on the tiny set: the loss falls well below the start and some words come out right."""
    metrics = main(load_config(None, overrides(whisper, clips, "seq2seq_asr", tmp_path / "run", "full",
                                               "train.epochs=12", "train.lr=5e-3")))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["test"]["wer"] < 1.0


@pytest.mark.parametrize("strategy", ["linear_probe", "freeze_n", "lora"])
def test_ctc_run_saves_scores_and_loads_back(wav2vec2, clips, tmp_path, strategy):
    import hftl

    metrics = main(load_config(None, overrides(wav2vec2, clips, "ctc", tmp_path / "run", strategy)))
    assert set(metrics["test"]) == {"wer", "cer", "loss"}
    model, processor = hftl.load(tmp_path / "run" / "model")
    base = model.get_base_model() if strategy == "lora" else model
    assert base.config.id2label[0] == "<pad>" and base.lm_head.out_features == len(base.config.id2label)
    if strategy == "linear_probe":  # the new character head alone
        assert metrics["train"]["trainable_params"] == sum(p.numel() for p in base.lm_head.parameters())
    rows = _rows(tmp_path / "run" / "predictions.jsonl")
    task = get_task("ctc")
    waves = [{"waveform": hftl.data.speech.load_audio(r["file"], 16000), "label": r["label"]} for r in rows]
    out = task.eval_outputs(model.eval(), task.collator(processor)(waves))
    assert task.outputs(out, base.config) == [r["predicted"] for r in rows]


def test_linear_probe_and_head_refused_for_whisper_before_compute(whisper, clips, tmp_path):
    for strategy in ("linear_probe", "head"):
        with pytest.raises(ConfigError, match=f"strategy.name={strategy} means nothing for task.name=seq2seq_asr"):
            main(load_config(None, overrides(whisper, clips, "seq2seq_asr", tmp_path / "run", strategy)))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train.metric_for_best='accuracy' is not reported"):
        main(load_config(None, overrides(whisper, clips, "seq2seq_asr", tmp_path / "run", "full",
                                         "train.metric_for_best=accuracy")))


def _write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _data_cfg(csv_path: str, *extra: str):
    return load_config(None, [f"data.name={csv_path}", "data.input_column=audio", "data.label_column=text",
                              "data.validation_size=0.2", "data.test_size=0.2", *extra])


@pytest.mark.parametrize("task", ["seq2seq_asr", "ctc"])
def test_missing_and_empty_transcripts_named_or_dropped(clips, tmp_path, task):
    import hftl

    rows = list(csv.DictReader(open(clips)))
    rows = [{"audio": str(Path(clips).parent / r["audio"]), "text": r["text"]} for r in rows]
    rows[3]["text"], rows[7]["text"] = "", "..."  # missing; empty once normalised
    data = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"2 missing or empty transcript\(s\) in split 'train' \(rows 4, 8 of .*"
                                        r"data.missing_labels=drop"):
        hftl.load_splits(_data_cfg(data).data, get_task(task))
    splits = hftl.load_splits(_data_cfg(data, "data.missing_labels=drop").data, get_task(task))
    assert sum(len(s) for s in splits.values()) == len(rows) - 2


def test_transcript_longer_than_the_decoder_refused_before_compute(whisper, clips, tmp_path):
    rows = list(csv.DictReader(open(clips)))
    rows = [{"audio": str(Path(clips).parent / r["audio"]), "text": r["text"]} for r in rows]
    rows[5]["text"] = " ".join(["yes"] * 30)  # 119 characters: 120 tokens for a decoder of 64 positions
    data = _write_csv(tmp_path / "long.csv", rows)
    with pytest.raises(DataError, match=r"1 transcript\(s\) in split '\w+' have more tokens than the 64 positions"):
        main(load_config(None, overrides(whisper, data, "seq2seq_asr", tmp_path / "run")))
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_clip_longer_than_the_model_reads_refused(whisper, clips, tmp_path):
    """The tiny Whisper reads 1 s: a 1.5 s clip would lose its end and keep its whole transcript."""
    rows = list(csv.DictReader(open(clips)))
    rows = [{"audio": str(Path(clips).parent / r["audio"]), "text": r["text"]} for r in rows]
    sf.write(tmp_path / "long.wav", 0.3 * np.sin(np.arange(24000) / 5).astype(np.float32), 16000)
    rows[2]["audio"] = str(tmp_path / "long.wav")
    data = _write_csv(tmp_path / "long.csv", rows)
    with pytest.raises(DataError, match=r"1 clip\(s\) in split '\w+' last longer than the 1 s .* reads"):
        main(load_config(None, overrides(whisper, data, "seq2seq_asr", tmp_path / "run")))


def test_corrupt_and_silent_clips_skipped_and_counted(wav2vec2, clips, tmp_path):
    rows = list(csv.DictReader(open(clips)))
    rows = [{"audio": str(Path(clips).parent / r["audio"]), "text": r["text"]} for r in rows]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not a wave file")
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    rows += [{"audio": str(tmp_path / "broken.wav"), "text": "yes"}, {"audio": str(tmp_path / "silent.wav"),
                                                                      "text": "no"}]
    data = _write_csv(tmp_path / "odd.csv", rows)
    metrics = main(load_config(None, overrides(wav2vec2, data, "ctc", tmp_path / "run", "full",
                                               "train.epochs=1")))
    assert sum(metrics["data"]["skipped"].values()) == 2


# Resume after SIGKILL: 18 train clips in batches of 4, 5 steps per epoch, 10 in all; checkpoints at steps 4, 8
# (train.checkpoint_every=4) and at the epoch ends 5 and 10. Killed at step 9: resumes from step 8, mid-epoch 2.
@pytest.mark.parametrize("task,strategy", [("seq2seq_asr", "lora"), ("ctc", "full")])
def test_resume_after_sigkill_matches_uninterrupted_run(whisper, wav2vec2, clips, tmp_path, task, strategy):
    model = whisper if task == "seq2seq_asr" else wav2vec2
    args = lambda out: overrides(model, clips, task, out, strategy, "train.checkpoint_every=4")  # noqa: E731
    reference = main(load_config(None, args(tmp_path / "reference")))
    assert reference["train"]["steps"] == 10
    killed = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *args(tmp_path / "killed")],
                            env={**os.environ, KILL_ENV: "step-9"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert last_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-00000008"
    resumed = main(load_config(None, [*args(tmp_path / "killed"), "train.resume=true"]))
    assert_same_run(reference, resumed, tmp_path / "reference", tmp_path / "killed", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["seq2seq_asr", "ctc"])
def test_two_processes_match_one(whisper, wav2vec2, clips, tmp_path, task):
    model = whisper if task == "seq2seq_asr" else wav2vec2
    data = tiny_speech_csv(tmp_path / "clips", n=40)  # 24 train clips: every step has 2 per process
    args = lambda out: overrides(model, data, task, out, "full", "train.lr=3e-4")  # noqa: E731
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(ROOT / "recipes" / "finetune.py"),
           *args(tmp_path / "two")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "effective batch 4 = 2 per process x 2 processes" in out.stdout
    one = main(load_config(None, args(tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # weights within 5e-5: the gradient all-reduce sums in another order, and Adam's normalisation lets that float
    # noise move an element with a near-zero gradient by a sliver of a step (seen: 1e-5 on 7 of 25k elements on
    # one CPU); a wrong batch, step or scale moves many elements by a whole step (lr 3e-4) and still fails
    assert_same_run(one, two, tmp_path / "one", tmp_path / "two", rtol=RTOL_PROCESSES, atol=1e-6, weight_atol=5e-5)
    assert [r["predicted"] for r in _rows(tmp_path / "one" / "predictions.jsonl")] == [
        r["predicted"] for r in _rows(tmp_path / "two" / "predictions.jsonl")]


PUSH = r"""
import json, sys
from hftl.hub import load, push
push(sys.argv[1], "alice/asr", token=sys.argv[2], what=sys.argv[3])
model, processor = load("alice/asr", token=sys.argv[2])
base = model.get_base_model() if hasattr(model, "get_base_model") else model
print(json.dumps({"model": type(base).__name__, "processor": type(processor).__name__, "task": base.config.task}))
"""


@pytest.mark.parametrize("task,strategy", [("seq2seq_asr", "lora"), ("ctc", "full")])
def test_run_pushed_and_loaded_back_by_repo_id(whisper, wav2vec2, clips, tmp_path, task, strategy):
    """Through a loopback Hub (tests/hub_server.py) and the unmodified huggingface_hub client, in a child process.
    An adapter over a local base is pushed merged (its base is on no Hub: hftl push refuses the adapter alone)."""
    from hub_server import HubServer

    model = whisper if task == "seq2seq_asr" else wav2vec2
    main(load_config(None, overrides(model, clips, task, tmp_path / "run", strategy, "train.epochs=1",
                                     "strategy.merge=true")))
    token = "hf_aliceWRITEsecret7f3a9c2e"
    with HubServer(tokens={token: "alice"}) as hub:
        what = "merged" if strategy == "lora" else "auto"
        out = subprocess.run([sys.executable, "-c", PUSH, str(tmp_path / "run"), token, what], capture_output=True,
                             text=True, timeout=300, env=hub.client_env(home=tmp_path / "home"), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    kinds = {"seq2seq_asr": ("WhisperForConditionalGeneration", "WhisperProcessor"),
             "ctc": ("Wav2Vec2ForCTC", "Wav2Vec2Processor")}
    assert (got["model"], got["processor"], got["task"]) == (*kinds[task], task)


def test_whisper_adapter_pushed_and_loaded_without_hftl_paths(whisper, clips, tmp_path):
    """The saved adapter run is an ordinary peft folder over the base: peft's own loader reads it."""
    from peft import PeftModel
    from transformers import AutoModelForSpeechSeq2Seq

    main(load_config(None, overrides(whisper, clips, "seq2seq_asr", tmp_path / "run", "lora", "train.epochs=1")))
    base = AutoModelForSpeechSeq2Seq.from_pretrained(whisper)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "model")
    assert any("lora_" in n for n, _ in model.named_parameters())
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["task"] == "seq2seq_asr" and torch.is_tensor(next(model.parameters()))


def _tone_classes(folder: Path, n: int = 12) -> str:
    """``n`` low and ``n`` high tones (0.3-0.6 s, pitch jittered) labelled low/high: ``folder/tones.csv``."""
    rng, rows = np.random.default_rng(0), []
    folder.mkdir(parents=True)
    for label, freq in (("low", 300.0), ("high", 2400.0)):
        for i in range(n):
            t = np.arange(int(rng.uniform(0.3, 0.6) * 16000)) / 16000
            wave = 0.5 * np.sin(2 * np.pi * freq * rng.uniform(0.9, 1.1) * t) + rng.normal(0, 0.01, t.size)
            sf.write(folder / f"{label}{i}.wav", wave.astype(np.float32), 16000)
            rows.append(f"{label}{i}.wav,{label}")
    (folder / "tones.csv").write_text("audio,label\n" + "\n".join(rows) + "\n")
    return str(folder / "tones.csv")


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_whisper_encoder_classifies_and_loads_back(whisper, tmp_path, strategy):
    """The Whisper encoder (alone: no decoder) as HftlForClassification's backbone reads log-mel features, trains,
    saves with its feature extractor (not its tokenizer), and hftl.load / hftl.predict give the run's predictions."""
    import hftl
    from hftl.data.speech import load_audio

    run = tmp_path / "run"
    metrics = main(load_config(None, [f"model.name={whisper}", f"data.name={_tone_classes(tmp_path / 'tones')}",
                                      "data.input_column=audio", "data.validation_size=0.25", "data.test_size=0.25",
                                      f"strategy.name={strategy}", "train.epochs=6", "train.batch_size=4",
                                      "train.lr=3e-3", "eval.report=false", f"output_dir={run}"]))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert all(np.isfinite(losses)) and (losses[-1] < losses[0] or strategy == "lora")  # LoRA: its B moved, below
    assert "pipeline_tag: audio-classification" in (run / "README.md").read_text()
    model, processor = hftl.load(run / "model")
    base = model.get_base_model() if strategy == "lora" else model
    assert type(base.backbone).__name__ == "WhisperEncoder" and base.main_input_name == "input_features"
    assert not any("decoder" in name for name, _ in model.named_parameters())
    if strategy == "lora":  # peft starts B at zero: trained adapters on the encoder's attention
        moved = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
        assert moved and all(n.startswith("base_model.model.backbone.layers.") for n in moved)
    assert type(processor).__name__ == "WhisperFeatureExtractor"  # the tokenizer beside it is not what reads clips
    rows = _rows(run / "predictions.jsonl")
    waves = [load_audio(r["file"], 16000) for r in rows]
    features = processor(waves, sampling_rate=16000, return_tensors="pt", padding="max_length")
    with torch.no_grad():
        probs = model(input_features=features["input_features"]).logits.softmax(-1)
    names = [base.config.id2label[i] for i in range(probs.shape[1])]
    saved = torch.tensor([[r["scores"][n] for n in names] for r in rows])
    torch.testing.assert_close(probs, saved, atol=1e-4, rtol=0)  # the run's scores, rounded to 5 decimals
    assert [p["label"] for p in hftl.predict(run, [r["file"] for r in rows])] == [r["predicted"] for r in rows]
