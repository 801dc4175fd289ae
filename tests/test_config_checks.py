"""Every numeric setting is range-checked when the config is parsed, NaN and infinities nowhere, the schema a leaf
(issue 20, kinds 2 and 5): property-based tests over every field and the override syntax, and the fixed cases."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path
from typing import get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftl import config as schema
from hftl.config import Config, ConfigError, check_strategy_name, load_config, peft_methods, save_config

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_BOUNDS = re.compile(r"(?:(>=|>)\s*(\S+)|([\[(])\s*([^,]+),\s*([^\])]+)([\])]))")


def _fields():
    """(key, python type, field) of every leaf field of the schema."""
    out = []
    for section in dataclasses.fields(Config):
        cls = get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        hints = get_type_hints(cls)
        out += [(f"{section.name}.{f.name}", hints[f.name], f) for f in dataclasses.fields(cls)]
    return out


FIELDS = _fields()
RANGED = [(key, typ, f) for key, typ, f in FIELDS if f.metadata.get("range")]


def _bounds(spec: str) -> tuple[float | None, bool, float | None, bool]:
    """(low, low included, high, high included) of a range spec."""
    op, bound, left, low, high, right = _BOUNDS.match(spec).groups()
    if op:
        return float(bound), op == ">=", None, False
    return float(low), left == "[", float(high), right == "]"


def _values(typ, spec: str, inside: bool):
    """Values of a field's scalar type inside (or outside) its range."""
    low, low_in, high, high_in = _bounds(spec)
    if typ is int or typ is list:
        lo, hi = int(low) + (not low_in), None if high is None else int(high) - (not high_in)
        if inside:
            return st.integers(lo, 10**12 if hi is None else hi)
        below = st.integers(max_value=lo - 1)
        return below if hi is None else st.one_of(below, st.integers(min_value=hi + 1))
    if inside:
        return st.floats(low, 1e300 if high is None else high, exclude_min=not low_in,
                         exclude_max=high is not None and not high_in)
    below = st.floats(max_value=low, exclude_max=low_in, allow_nan=False, allow_infinity=False)
    if high is None:
        return below
    return st.one_of(below, st.floats(min_value=high, exclude_min=high_in, allow_nan=False, allow_infinity=False))


def _override(key: str, value) -> list[str]:
    extra = [f"train.batch_size={value * 4}"] if key == "train.grad_accum" and value >= 1 else []  # divisible
    return [f"{key}={value!r}", *extra]


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_every_numeric_field_declares_its_range():
    """The kind, not the examples: a new int or float field without a range fails here."""
    numeric = [key for key, typ, f in FIELDS if typ in (int, float) or f.metadata.get("item") in (int, float)]
    assert numeric and all(dict((k, f) for k, _, f in FIELDS)[k].metadata.get("range") for k in numeric), [
        k for k in numeric if not dict((k, f) for k, _, f in FIELDS)[k].metadata.get("range")]


@pytest.mark.parametrize("key,typ,f", RANGED, ids=[k for k, _, _ in RANGED])
def test_valid_values_round_trip(key, typ, f, tmp_path):
    spec = f.metadata["range"]

    @SETTINGS
    @given(st.data())
    def check(data):
        if typ is list:
            unique = key == "shots.seeds"
            value = data.draw(st.lists(_values(int, spec, True), min_size=2 if unique else 1, max_size=4,
                                       unique=unique))
        else:
            value = data.draw(_values(typ, spec, True))
        cfg = load_config(None, _override(key, value))
        assert _get(cfg, key) == value
        save_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == cfg

    check()


@pytest.mark.parametrize("key,typ,f", RANGED, ids=[k for k, _, _ in RANGED])
def test_out_of_range_values_name_the_key(key, typ, f):
    spec = f.metadata["range"]

    @SETTINGS
    @given(st.data())
    def check(data):
        bad = data.draw(_values(int if typ is list else typ, spec, False))
        value = [bad] if typ is list and key != "shots.seeds" else [0, bad] if typ is list else bad
        with pytest.raises(ConfigError) as err:
            load_config(None, _override(key, value))
        assert str(err.value).startswith(f"{key}="), str(err.value)

    check()


@pytest.mark.parametrize("key", [k for k, typ, _ in FIELDS if typ is float] + ["strategy.peft.lora_dropout",
                                                                               "shots.lora.r"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400"])
def test_nan_and_infinity_refused_anywhere(key, text):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=(nan|inf|-inf) must be a finite number"):
        load_config(None, [f"{key}={text}"])


def test_nan_in_yaml_lists_and_dicts(tmp_path):
    for body, key in [("strategy:\n  peft: {r: 8, lora_alpha: .inf}\n", "strategy.peft.lora_alpha"),
                      ("model:\n  head_hidden: [64, .nan]\n", r"model.head_hidden\[1\]"),
                      ("train:\n  lr: .NaN\n", "train.lr"),
                      ("shots:\n  lora: {r: 8, nested: [1, -.inf]}\n", r"shots.lora.nested\[1\]")]:
        path = tmp_path / "c.yaml"
        path.write_text(body)
        with pytest.raises(ConfigError, match=rf"^{key}=.* must be a finite number"):
            load_config(path)


def test_the_messages_say_range_and_meaning():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.max_grad_norm=-1"])
    assert str(err.value) == "train.max_grad_norm=-1.0 must be >= 0 (0: off)"
    with pytest.raises(ConfigError, match=r"^train.warmup_ratio=1.0 must be in \[0, 1\)$"):
        load_config(None, ["train.warmup_ratio=1"])
    with pytest.raises(ConfigError, match=r"^model.head_hidden=\[64, 0\] holds 0: each value must be >= 1$"):
        load_config(None, ["model.head_hidden=[64,0]"])
    with pytest.raises(ConfigError, match=r"^model.head_hidden=\[64.5\] must be a list of int values$"):
        load_config(None, ["model.head_hidden=[64.5]"])


def test_sections_check_themselves_when_built_directly():
    with pytest.raises(ConfigError, match="train.max_grad_norm"):
        schema.TrainConfig(max_grad_norm=-1.0)
    with pytest.raises(ConfigError, match="shots.ks"):
        schema.ShotsConfig(ks=[])
    with pytest.raises(ConfigError, match="pretrain.mask_rate"):
        schema.PretrainConfig(mask_rate=1.0)


def test_hftl_config_lists_ranges():
    text = schema.describe()
    assert "train.max_grad_norm = 1.0  (>= 0 (0: off))" in text
    assert "model.head_hidden = []  (each >= 1)" in text


KEYS = [k for k, _, _ in FIELDS] + ["output_dir", "strategy.peft.r", "shots.lora.target_modules"]
ODD = st.one_of(st.text(max_size=30), st.sampled_from(
    ["yes", "no", "null", "~", "true", "'quoted'", '"x"', "a=b", " spaced out ", "[1,", "{a: 1", "- x", "&a *a",
     "!!python/object:os.system", "1e400", "nan", ".inf", "0x10", "1_000", "[[[]]]", "{r: [1, {a: .nan}]}", ""]))


@settings(max_examples=400, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=ODD)
def test_odd_overrides_raise_config_error_or_parse(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=None)
@given(item=st.text(max_size=40))
def test_any_argument_text_raises_config_error_or_parses(item):
    try:
        load_config(None, [item])
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=20).filter(lambda s: s == s.strip() and s not in ("",)))
def test_text_values_round_trip(value, tmp_path_factory):
    cfg = load_config(None, [f"model.name={value}", f"output_dir={value}"])
    assert cfg.model.name == value
    path = tmp_path_factory.mktemp("rt") / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1e-4\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "line 3, column 9" in message and "line 2" in message
    assert "\n" not in message
    path.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("module", ["config", "fields"])
def test_config_module_is_a_leaf(module):
    """The schema (hftl.config and its field machinery, hftl.fields) imports nothing else of hftl and no torch: a
    config error costs no heavy import."""
    path = Path(schema.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    heavy = {m for m in imported if m.split(".")[0] in ("hftl", "torch", "transformers", "peft")} - {"hftl.fields"}
    assert not heavy, imported


def test_strategy_names_without_peft_match_the_registry():
    from hftl.strategies import STRATEGIES, _peft_methods

    assert set(peft_methods()) == set(_peft_methods())
    assert set(schema.BUILTIN_STRATEGIES) == set(STRATEGIES)
    check_strategy_name("lora")
    with pytest.raises(ConfigError, match=r"strategy.name='lorra' is unknown \(did you mean lora\?\)"):
        load_config(None, ["strategy.name=lorra"])


def test_registered_names_are_known_once_registered():
    from hftl.shots import register_method
    from hftl.strategies import STRATEGIES, register

    with pytest.raises(ConfigError):
        load_config(None, ["strategy.name=my_probe"])
    register("my_probe")(lambda model, cfg: None)
    register_method("my_shot")(lambda *a: None)
    try:
        assert load_config(None, ["strategy.name=my_probe", "shots.methods=[my_shot]"]).strategy.name == "my_probe"
    finally:
        STRATEGIES.pop("my_probe")
        from hftl.shots import METHODS

        METHODS.pop("my_shot")


def test_cross_field_checks_still_hold():
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["train.batch_size=30", "train.grad_accum=4"])
    with pytest.raises(ConfigError, match="shots.seeds"):
        load_config(None, ["shots.seeds=[1,1]"])
    with pytest.raises(ConfigError, match="pretrain.strategy='linear_probe'"):
        load_config(None, ["pretrain.strategy=linear_probe"])
    assert math.isclose(load_config(None, ["train.lr=1e9"]).train.lr, 1e9)  # large but legal: divergence is caught
