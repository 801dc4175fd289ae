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
_NEEDS = re.compile(r"^python |\bNeeds\b|apt-get install|pip install|\(pip ", re.IGNORECASE)


def _configs_dir() -> Path:
    """The shipped configs: the installed package's, else the source checkout's."""
    import importlib.util

    spec = importlib.util.find_spec("hftl.recipes")
    for root in [*(Path(p) / "configs" for p in (spec.submodule_search_locations or []))] if spec else []:
        if root.is_dir():
            return root
    return CONFIGS


def describe_config(path: Path) -> dict:
    """``{"name", "command", "about", "needs"}`` from a config's leading comment lines."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    command = next((line.split("#")[0].strip() for line in lines if line.startswith("hftl ")), "")
    needs = [line.split("  #")[0].strip() if line.startswith("python ") else line
             for line in lines if _NEEDS.search(line) and not line.startswith("hftl ")]
    about = next((line for line in lines if not line.startswith(("hftl ", "python "))), "")
    return {"name": path.relative_to(path.parent.parent).as_posix(), "path": str(path), "command": command,
            "about": about, "needs": needs}


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
