"""The field machinery of hftl's config: documented fields with choices and ranges, their checks, and values
coerced from YAML or ``key=value`` text to each field's type, every error a ConfigError naming the key.

``hftl.config`` declares the sections with ``_f`` and builds them with ``_build``; the names are re-exported there.

Example:
    >>> in_range(0.5, "(0, 1]"), in_range(0.0, "(0, 1]")
    (True, False)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import field
from typing import Any, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and what is allowed."""


class RunDirError(ConfigError):
    """``output_dir`` cannot take this run (a file, unwritable, another's folder, in use, a resume with other
    settings) or a run there did not finish; the message names the folder and the fix (hftl.rundir)."""


def _f(default: Any, help: str, choices: tuple | None = None, range: str | None = None,
       item: type | None = None) -> Any:
    """A documented field. ``range``: the values allowed, stated once here and checked at parse time (``>= 0``,
    ``> 0``, ``[0, 1)``, ``(0, 1]``..., then an optional note such as ``(0: off)``); for a list, of each item.
    ``item``: the type of a list's items."""
    meta = {"help": help, "choices": choices, "range": range, "item": item}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


SEEDS = "[0, 4294967295]"  # numpy refuses seeds outside [0, 2**32)
_NUMBER = r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?"
_RANGE = re.compile(rf"(?:(>=|>)\s*({_NUMBER})|([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])]))\s*(.*)")
def in_range(value: float, spec: str) -> bool:
    """Whether ``value`` lies in ``spec``: ``>= a``, ``> a``, or an interval ``[a, b)``, ``(a, b]``... (a note after
    it, such as ``(0: off)``, is ignored). NaN lies in no range.

    Example:
        >>> in_range(0.0, "[0, 1)"), in_range(1.0, "[0, 1)"), in_range(-1.0, ">= 0 (0: off)")
        (True, False, False)
    """
    op, bound, left, low, high, right, _ = _RANGE.fullmatch(spec).groups()
    if op:
        return value >= float(bound) if op == ">=" else value > float(bound)
    above = value >= float(low) if left == "[" else value > float(low)
    return above and (value <= float(high) if right == "]" else value < float(high))


def _non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """The first (key path, value) under ``value`` that is NaN or infinite, looking inside lists and dicts."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (key, value)
    if isinstance(value, dict):
        items = [(f"{key}.{k}", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    return next((bad for sub, v in items if (bad := _non_finite(v, sub))), None)


def check_fields(section: Any, prefix: str) -> None:
    """Check each field of a config section against its own metadata: finite numbers (inside lists and dicts too),
    ``choices``, list ``item`` types and ``range``. Sections call it when built; ``validate`` again on the whole.

    Raises ConfigError naming the first bad key, e.g. ``train.max_grad_norm=-1.0 must be >= 0 (0: off)``.
    """
    for f in dataclasses.fields(section):
        key, value, meta = f"{prefix}{f.name}", getattr(section, f.name), f.metadata
        if dataclasses.is_dataclass(value):
            continue
        bad = _non_finite(value, key)
        if bad:
            raise ConfigError(f"{bad[0]}={bad[1]!r} must be a finite number: NaN and infinities are not allowed")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(meta['choices'])}")
        item, spec = meta.get("item"), meta.get("range")
        values = value if isinstance(value, list) else [value]
        if item and any(not isinstance(v, item) or isinstance(v, bool) for v in values):
            raise ConfigError(f"{key}={value!r} must be a list of {item.__name__} values")
        if not spec:
            continue
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            raise ConfigError(f"{key}={value!r} must be a number")
        words = f"must be {spec}" if spec[0] == ">" else f"must be in {spec}"
        outside = [v for v in values if not in_range(v, spec)]
        if outside:
            raise ConfigError(f"{key}={value!r} {words}" if value is not values else
                              f"{key}={value!r} holds {outside[0]!r}: each value {words}")


def _yaml_value(text: str, key: str) -> Any:
    """An override's text read as YAML (``[a, b]``, ``{r: 8}``, ``true``); ConfigError naming the key if it is not."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}={text!r} is not a valid YAML value ({problem}); quote it or fix the brackets, "
                          f"e.g. {key}=[a,b]") from None


def _scalar(value: Any, key: str = "") -> Any:
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    parsed = _yaml_value(value, key) if value else value
    return parsed if isinstance(parsed, (bool, list, dict)) or parsed is None else value


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = get_origin(typ) or typ
    if origin is str and isinstance(value, bool):  # a switch with more than two values: true/false/auto
        value = str(value).lower()
    if origin is bool and isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
    elif isinstance(value, str) and origin in (int, float):
        try:
            value = origin(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be of type {origin.__name__}") from None
    elif isinstance(value, str) and origin in (list, dict):
        value = _yaml_value(value, key) if value else origin()
    if origin is dict and isinstance(value, dict):  # overrides such as strategy.peft.r=16 arrive as text
        value = {k: _scalar(v, f"{key}.{k}") for k, v in value.items()}
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {getattr(origin, '__name__', origin)}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            key = str(key)  # YAML keys may be numbers or null
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix + key!r}{hint}; valid keys: {sorted(names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{prefix}{key} must be a mapping of {sorted(f.name for f in dataclasses.fields(typ))}"
                )
            kwargs[key] = _build(typ, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, typ, f"{prefix}{key}")
    return cls(**kwargs)
