"""The configs shipped with hftl (``recipes/configs/{text,vision,speech}/*.yaml``): what each runs and needs first.

Each config starts with comment lines: the command that launches it, what it does, and what it needs before it runs
(a script that makes its data or model, a Debian package, a checkpoint in the Hub cache). ``hftl configs`` lists them.

Example:
    >>> [c["name"] for c in shipped_configs()][:1]  # doctest: +SKIP
    ['speech/wav2vec2-tiny-digits-full.yaml']
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "configs"  # a source checkout
_ENV = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")  # OMP_NUM_THREADS=1 ... before a command
_RUNS = ("hftl ", "accelerate launch ", "python recipes/", "python -m hftl")
_TOOLS = ("python ", "bash ", "apt-get ", "pip ")
_INSTALL = re.compile(r"\b(?:apt-get|pip) install [^),;]+|\(pip ([\w.=<>-]+)\)")


def _configs_dir() -> Path:
    """The shipped configs: the installed package's, else the source checkout's."""
    import importlib.util

    spec = importlib.util.find_spec("hftl.recipes")
    for root in [*(Path(p) / "configs" for p in (spec.submodule_search_locations or []))] if spec else []:
        if root.is_dir():
            return root
    return CONFIGS


def _commands(line: str) -> list[str]:
    """The shell commands a comment line holds (``a && b``: both), its trailing ``  # note`` dropped; [] for prose."""
    parts = [part.strip() for part in line.split("  #")[0].split("&&")]
    return [part for part in parts if _ENV.sub("", part).startswith(_TOOLS + _RUNS)] if parts and \
        _ENV.sub("", parts[0]).startswith(_TOOLS + _RUNS) else []


def describe_config(path: Path) -> dict:
    """``{"name", "command", "about", "needs"}`` from a config's leading comment lines: ``command`` the first one
    that runs it (``hftl ...``, ``accelerate launch ...``, ``python recipes/...``, an environment prefix allowed),
    ``needs`` the commands before it and the installs and "Needs ..." the prose names, ``about`` the first prose line.

    Example:
        >>> _commands("python bench/task_data.py && OMP_NUM_THREADS=1 hftl finetune --config c.yaml  # note")
        ['python bench/task_data.py', 'OMP_NUM_THREADS=1 hftl finetune --config c.yaml']
    """
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    command, needs, about = "", [], ""
    for line in lines:
        commands = _commands(line)
        for cmd in commands:
            if not command and _ENV.sub("", cmd).startswith(_RUNS):
                command = cmd
            elif not _ENV.sub("", cmd).startswith(_RUNS):
                needs.append(cmd)
        if commands:
            continue
        about = about or line
        needs += [m.group(0).rstrip(" .") if not m.group(1) else f"pip install {m.group(1)}"
                  for m in _INSTALL.finditer(line)]
        if "Needs " in line:
            needs.append(line[line.index("Needs "):])
    return {"name": path.relative_to(path.parent.parent).as_posix(), "path": str(path), "command": command,
            "about": about, "needs": list(dict.fromkeys(needs))}


def shipped_configs() -> list[dict]:
    """Every shipped config, described (see :func:`describe_config`), by modality then name."""
    return [describe_config(p) for p in sorted(_configs_dir().glob("*/*.yaml"))]


def configs_text() -> str:
    """The listing ``hftl configs`` prints."""
    out = [f"Shipped configs ({_configs_dir()}); run one with its command, overrides as key=value:", ""]
    for c in shipped_configs():
        out.append(f"{c['name']}\n    {c['about']}\n    run:   {c['command']}")
        out.append("    first: " + ("; ".join(c["needs"]) if c["needs"] else
                                    "nothing (its model and data ship with hftl: runs offline here)"))
    return "\n".join(out)
