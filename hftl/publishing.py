"""What is pushed loads anywhere and names nothing of this machine (used by ``hftl.hub.push``).

An adapter's ``base_model_name_or_path`` becomes the repo id it is pushed to (its ``config.json`` names the backbone
the base is rebuilt from); a full model's local ``backbone_name`` is dropped; any other absolute local path in a
pushed text file loses its folders. A Hub server without Xet storage gets the classic
upload protocol. An adapter trained on a local base cannot be loaded from the Hub: refused.

Example:
    >>> scrub_paths("data: /home/al/data/rt.csv")  # doctest: +SKIP
    'data: rt.csv'
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from hftl.hub import ADAPTER_CONFIG, _read_json

_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/(?:[\w.+@-]+/)*[\w.+@-]+")


def _is_local_path(text: str) -> bool:
    """An absolute path of this machine: it exists, or its top folder does (``/tmp/...``, ``/home/...``)."""
    parts = Path(text).parts
    return os.path.isabs(text) and len(parts) > 2 and (os.path.exists(text) or os.path.isdir(os.path.join(*parts[:2])))


def scrub_paths(text: str) -> str:
    """``text`` with every absolute local path replaced by its last component (``/home/al/data/rt.csv`` ->
    ``rt.csv``): what is pushed names no folder of this machine."""
    return _ABSOLUTE.sub(lambda m: Path(m.group(0)).name if _is_local_path(m.group(0)) else m.group(0), text)


def refuse_local_base(model_dir: Path, command: str) -> None:
    """An adapter is loaded onto its base: a base that is a folder of this machine cannot be loaded anywhere else."""
    from hftl.config import ConfigError

    config = _read_json(model_dir / "config.json")
    base = (config.get("backbone_name") if config.get("model_type") == "hftl"  # hftl's: rebuilt from its backbone
            else _read_json(model_dir / ADAPTER_CONFIG).get("base_model_name_or_path")) or ""
    if base and (os.path.isabs(base) or Path(base).exists()):
        raise ConfigError(
            f"hftl push: the adapter in {model_dir} was trained on the local model {base}, which nobody can load "
            f"from the Hub: push the merged model instead ({command} --what merged), or push the "
            f"base first (hf upload USER/BASE {base}) and train again with model.name=USER/BASE")


def publishable(files: dict[str, Path], repo_id: str, revision: str | None, tmp: Path) -> dict[str, Path]:
    """The files to push, the ones that name local paths rewritten into ``tmp``: an hftl adapter's
    ``base_model_name_or_path`` becomes ``repo_id`` itself (its ``config.json`` there names the backbone the base is
    rebuilt from), a local ``backbone_name`` of a full model is dropped, other absolute paths lose their folders."""
    out = dict(files)
    for name, path in files.items():
        if path.suffix not in (".json", ".yaml", ".md") or path.stat().st_size > 10 * 2**20:
            continue
        text = path.read_text(encoding="utf-8")
        new = text
        if name == ADAPTER_CONFIG and _read_json(files.get("config.json", tmp / "-")).get("model_type") == "hftl":
            config = json.loads(text)  # hftl's adapter: the repo itself rebuilds its base (other bases stay named)
            config.update(base_model_name_or_path=repo_id, revision=revision)
            new = json.dumps(config, indent=2, sort_keys=True) + "\n"
        elif name == "config.json" and ADAPTER_CONFIG not in files:
            config = json.loads(text)
            base = str(config.get("backbone_name") or "")
            if base and (os.path.isabs(base) or Path(base).exists()):
                config["backbone_name"] = None  # the full weights are here: the base is not needed to load them
            new = json.dumps(config, indent=2, sort_keys=True) + "\n"
        new = scrub_paths(new)
        if new != text:
            out[name] = tmp / name
            out[name].parent.mkdir(parents=True, exist_ok=True)
            out[name].write_text(new, encoding="utf-8")
    return out


def no_xet(err: BaseException) -> bool:
    """Whether the upload failed because the Hub server has no Xet storage (self-hosted or older servers answer 404
    for the Xet write token): huggingface_hub uses Xet whenever ``hf_xet`` is installed, without asking the server."""
    while err is not None:
        text = str(err).lower()
        if "xet" in text and ("404" in text or "not found" in text):
            return True
        err = err.__cause__ or err.__context__
    return False


class classic_protocol:
    """Uploads in this block use the classic LFS protocol (as ``HF_HUB_DISABLE_XET=1``), for a server without Xet."""

    def __enter__(self):
        from huggingface_hub import constants

        logging.getLogger("hftl.hub").warning("the Hub at %s has no Xet storage: uploading with the classic protocol",
                                              constants.ENDPOINT)
        self.before = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = True

    def __exit__(self, *exc) -> None:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_XET = self.before
