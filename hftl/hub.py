"""Push a run directory to the Hugging Face Hub and load what was pushed, adapter or full model.

A run directory holds ``model/`` (a full transformers model, or a peft adapter whose ``adapter_model.safetensors``
already carries the new head through ``modules_to_save``), the processor files beside it, ``README.md`` (the
model card), ``config.yaml``, ``metrics.json``, optionally ``merged/`` and plots (``*.png``). :func:`push` uploads
the model files to the repo root with the card, config, metrics and plots in one commit; :func:`load` gives back
``(model, processor)`` from a repo id or a local directory.

Labels of an adapter: an adapter directory keeps no model config, so the new head's labels would be lost.
hftl saves the base model's config (with ``num_labels``, ``id2label``, ``label2id`` and the backbone it was built
on) as ``config.json`` beside the adapter (:func:`save_model`, as ``hftl.run.save_run`` does), with hftl's model code
(``modeling_hftl.py``, named in its ``auto_map``); :func:`load` rebuilds the base model with that config before
loading the adapter and its head. Without hftl: ``AutoModelForSequenceClassification.from_pretrained(repo,
trust_remote_code=True)``, ``pipeline(..., trust_remote_code=True)`` or peft's
``AutoPeftModelForSequenceClassification`` (its ``base_model_name_or_path`` is the repo itself: the base is the
backbone named in ``config.json`` with a new head). Without ``config.json`` the number of labels is read from the
saved head's shape (labels are then ``LABEL_i``).

The token is never written or logged: not in messages, the card, the config or the run directory.

Example:
    >>> check_push_access("alice/tiny-bert-sst2")  # before training: fail early  # doctest: +SKIP
    >>> push("runs/sst2-lora", "alice/tiny-bert-sst2")  # doctest: +SKIP
    >>> model, processor = load("alice/tiny-bert-sst2")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
RUN_FILES = ("README.md", "config.yaml", "metrics.json")  # uploaded beside the model files, in the same commit
WHATS = ("auto", "model", "adapter", "merged")
KIND_NAMES = {"model": "full model", "adapter": "adapter + head", "merged": "merged model"}
PLOT_SUFFIXES = (".png",)
SKIP_DIRS = ("model", "merged")  # run_dir subfolders never searched for plots (checkpoint* too)
ADAPTER_ONLY_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin", "config.json", "README.md",
                      "modeling_hftl.py")

# How an adapter's base model is rebuilt when no config.json names the head's class: peft's task type first,
# then the saved head module with the base config's modality (first mapping whose table holds the model type).
TASK_TYPE_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "FEATURE_EXTRACTION": "AutoModel",
}
HEAD_AUTO_CLASSES = {  # head module -> (Auto class, the modeling_auto table of model types it serves)
    "classifier": (
        ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForAudioClassification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
        ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ),
    "score": (("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),),
    "lm_head": (
        ("AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES"),
        ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
        ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ),
}
AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForImageClassification",
    "AutoModelForAudioClassification",
    "AutoModelForTokenClassification",
    "AutoModelForCTC",
    "AutoModelForMaskedLM",
    "AutoModelForCausalLM",
    "AutoModel",
)  # searched for a class registered by a library (e.g. hftl's own classifier)
PROCESSOR_CLASSES = ("AutoProcessor", "AutoTokenizer", "AutoImageProcessor", "AutoFeatureExtractor")


class HubAccessError(PermissionError):
    """The Hub will not take the push: no token, a rejected token, or no write access to the namespace."""


class PushError(RuntimeError):
    """A push failed part-way. ``missing`` lists the files whose remote copy is absent or differs.

    Re-running :func:`push` uploads only those: files already up to date are skipped, so it adds one commit.
    """

    def __init__(self, message: str, repo_id: str, missing: list[str], uploaded: list[str]):
        super().__init__(message)
        self.repo_id, self.missing, self.uploaded = repo_id, missing, uploaded


# -- access ---------------------------------------------------------------------------------------------------------
def _resolve_token(token: str | None) -> str | None:
    """The token argument, else ``HF_TOKEN``, else the stored login (``hf auth login``)."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def _http_status(err: BaseException) -> int | None:
    """HTTP status of the first Hub HTTP error in ``err``'s cause chain."""
    while err is not None:
        response = getattr(err, "response", None)
        if response is not None and getattr(response, "status_code", None):
            return int(response.status_code)
        err = err.__cause__ or err.__context__
    return None


def _summary(err: BaseException) -> str:
    """First line of an error and of its root cause: enough to act on, never a header or a token."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}" for e in (err, root)]
    return lines[0] if root is err else f"{lines[0]} (caused by {lines[1]})"


def _whoami(repo_id: str, token: str) -> dict:
    from huggingface_hub import HfApi, constants

    try:
        return HfApi().whoami(token=token)
    except Exception as err:
        status, endpoint = _http_status(err), constants.ENDPOINT
        if status == 401:
            raise HubAccessError(
                f"The Hugging Face token was rejected (401 Unauthorized) by {endpoint}, so '{repo_id}' cannot be "
                "pushed to. It may be revoked or mistyped: create a token with write access at "
                "https://huggingface.co/settings/tokens and pass it as token=..., set HF_TOKEN, or run "
                "`hf auth login --force`."
            ) from None
        hint = " HF_HUB_OFFLINE is set: unset it to push." if constants.is_offline_mode() else ""
        raise HubAccessError(
            f"Could not check the Hugging Face token against {endpoint} before pushing to '{repo_id}': "
            f"{_summary(err)}.{hint} Check the connection and HF_ENDPOINT."
        ) from None


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Check, before any upload (or any training), that a push to ``repo_id`` can succeed.

    Verifies that a token exists (argument, ``HF_TOKEN``, or ``hf auth login``), that the Hub accepts it, that it
    is not read-only, and that its user may write to the repo's namespace (the user's own or one of its orgs).
    Fine-grained tokens are checked by the Hub itself at upload time. Returns the full repo id (a bare name gets
    the user's namespace). Raises :class:`HubAccessError`, whose message names the repo and what to do.

    Example:
        >>> check_push_access("alice/tiny-bert")  # doctest: +SKIP
        'alice/tiny-bert'
    """
    token = _resolve_token(token)
    if not token:
        raise HubAccessError(
            f"No Hugging Face token found, so '{repo_id}' cannot be pushed to. Pass token=..., set the HF_TOKEN "
            "environment variable, or run `hf auth login`; the token needs write access "
            "(https://huggingface.co/settings/tokens)."
        )
    me = _whoami(repo_id, token)
    user = me.get("name", "?")
    orgs = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs", []) or []}
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    namespace, _, name = repo_id.rpartition("/")
    namespace = namespace or user
    full_id = f"{namespace}/{name}"
    if role == "read":
        raise HubAccessError(
            f"The token of '{user}' is read-only, so '{full_id}' cannot be pushed to (403 Forbidden). Create a "
            "token with write access at https://huggingface.co/settings/tokens and pass it as token=... or HF_TOKEN."
        )
    if namespace != user and (namespace not in orgs or orgs[namespace] == "read"):
        member = f"(organizations: {', '.join(sorted(orgs)) or 'none'})"
        raise HubAccessError(
            f"The token belongs to '{user}' {member}, who may not write to the namespace '{namespace}', so "
            f"'{full_id}' cannot be pushed to (403 Forbidden). Push to '{user}/{name}', ask an admin of "
            f"'{namespace}' for write access, or use a token of an account that may write there."
        )
    return full_id


# -- what to upload -------------------------------------------------------------------------------------------------
def _select_model(run_dir: Path, what: str) -> tuple[str, Path, bool]:
    """(kind, directory, needs_merge) for ``what``; a merge is deferred until access has been checked."""
    if what not in WHATS:
        raise ValueError(f"what={what!r} is not one of {', '.join(WHATS)}")
    model_dir = run_dir / "model"
    is_adapter = (model_dir / ADAPTER_CONFIG).is_file()
    if what == "merged":
        if (run_dir / "merged" / "config.json").is_file():
            return "merged", run_dir / "merged", False
        if not is_adapter:
            raise ValueError(f"what='merged' needs {run_dir / 'merged'} or a peft adapter in {model_dir}")
        return "merged", model_dir, True
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist: is {run_dir} a finished hftl run directory?")
    kind = ("adapter" if is_adapter else "model") if what == "auto" else what
    if kind == "adapter" and not is_adapter:
        raise ValueError(f"{model_dir} holds a full model (no {ADAPTER_CONFIG}): push it with what='model'")
    if kind == "model" and is_adapter:
        raise ValueError(f"{model_dir} holds a peft adapter: push it with what='adapter' or what='merged'")
    if kind == "adapter" and not (model_dir / "config.json").is_file():
        logger.warning(
            "%s has no config.json (the base config with the labels): labels will load as LABEL_i", model_dir
        )
    return kind, model_dir, False


def collect_files(run_dir: str | os.PathLike, model_dir: str | os.PathLike) -> dict[str, Path]:
    """Map path-in-repo -> local file: the model files at the root, then the card, config, metrics and plots.

    The run's ``README.md`` replaces one that peft or transformers wrote into the model directory.

    Example:
        >>> sorted(collect_files("runs/sst2", "runs/sst2/model"))  # doctest: +SKIP
        ['README.md', 'config.json', 'config.yaml', 'metrics.json', 'model.safetensors', 'tokenizer.json', ...]
    """
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    files: dict[str, Path] = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            files[name] = run_dir / name
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        top = rel.parts[0]
        if path.suffix.lower() in PLOT_SUFFIXES and path.is_file() and top not in SKIP_DIRS:
            if not top.startswith(("checkpoint", ".")):
                files[rel.as_posix()] = path
    return files


def _strategy(run_dir: Path) -> str | None:
    """The transfer strategy recorded in ``config.yaml`` (``strategy: lora`` or ``strategy: {name: lora}``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        value = (yaml.safe_load(path.read_text()) or {}).get("strategy")
    except (yaml.YAMLError, AttributeError):
        return None
    if isinstance(value, dict):
        value = value.get("name") or value.get("method") or value.get("strategy")
    return str(value) if value else None


def _default_message(run_dir: Path, kind: str) -> str:
    strategy = _strategy(run_dir)
    return f"Upload {KIND_NAMES[kind]} from hftl run '{run_dir.resolve().name}'" + (
        f" (strategy: {strategy})" if strategy else ""
    )


# -- push -----------------------------------------------------------------------------------------------------------
def push(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    what: str = "auto",
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    accelerator: Accelerator | None = None,
) -> str | None:
    """Push a run directory to ``repo_id`` in one commit and return the commit's URL (it ends with the oid).

    ``what``: ``"auto"`` (whatever ``model/`` holds), ``"model"``, ``"adapter"`` (adapter + head), or
    ``"merged"`` (``merged/``, else the adapter merged into its base on the fly). Access is checked first
    (:func:`check_push_access`). Files whose remote copy is already identical are skipped, so a re-run after a
    failure adds one commit, and a re-run with nothing new adds none. A failure raises :class:`PushError` listing
    the files not on the Hub; a refused token raises :class:`HubAccessError`. ``revision`` names a branch, made
    from ``main`` if new. Only the main process pushes: others return ``None`` at once (no barrier is taken).
    An hftl run that did not finish (no ``hftl_run.json``) is refused with RunDirError before anything else.

    Example:
        >>> url = push("runs/sst2-lora", "alice/bert-sst2-lora", what="adapter")  # doctest: +SKIP
        >>> url.rsplit("/", 1)[-1]  # the commit oid  # doctest: +SKIP
    """
    if accelerator is not None and not accelerator.is_main_process:
        return None
    from hftl.publishing import publishable, refuse_local_base
    from hftl.rundir import require_complete

    run_dir = Path(run_dir)
    require_complete(run_dir)  # a run that did not finish is never pushed as if it had
    kind, model_dir, needs_merge = _select_model(run_dir, what)
    if kind == "adapter":
        refuse_local_base(model_dir, f"hftl push {run_dir} {repo_id}")
    token = _resolve_token(token)
    repo_id = check_push_access(repo_id, token=token)
    with ExitStack() as stack:
        if needs_merge:
            model_dir = merge_adapter(model_dir, stack.enter_context(tempfile.TemporaryDirectory()), token=token)
        files = collect_files(run_dir, model_dir)
        files = publishable(files, repo_id, revision, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        message = commit_message or _default_message(run_dir, kind)
        return _upload(files, repo_id, token, private, revision, message, create_pr)


def _upload(
    files: dict[str, Path],
    repo_id: str,
    token: str,
    private: bool,
    revision: str | None,
    message: str,
    create_pr: bool,
) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    target = revision or "main"
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        def commit():
            operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in files.items()]
            return api.create_commit(
                repo_id, operations, commit_message=message, token=token, revision=revision, create_pr=create_pr
            )

        try:
            info = commit()
        except Exception as err:
            from hftl.publishing import classic_protocol, no_xet

            if not no_xet(err):
                raise
            with classic_protocol():  # nothing was committed: the same commit again, without Xet
                info = commit()
    except Exception as err:
        if _is_access_refusal(err):
            raise HubAccessError(
                f"The Hub refused the push to '{repo_id}' ({_http_status(err)}): the token may not write there "
                f"(a fine-grained token without write permission on this repo or namespace?). {_summary(err)}. "
                "Use a token with write access to it (https://huggingface.co/settings/tokens)."
            ) from None
        raise _push_error(api, repo_id, target, files, token, err) from err
    logger.info("Pushed %d files to %s@%s: %s", len(files), repo_id, target, info.commit_url)
    return (info.pr_url or info.commit_url) if create_pr else info.commit_url


def _is_access_refusal(err: BaseException) -> bool:
    """401/403 from the Hub API itself (not from LFS storage, where a 403 means an expired upload URL)."""
    while err is not None:
        response = getattr(err, "response", None)
        if response is not None and getattr(response, "status_code", None) in (401, 403):
            url = str(getattr(getattr(response, "request", None), "url", ""))
            return "/api/" in url or ".git/info/lfs" in url
        err = err.__cause__ or err.__context__
    return False


def _push_error(
    api: HfApi, repo_id: str, revision: str, files: dict[str, Path], token: str, err: BaseException
) -> PushError:
    try:
        remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=revision, recursive=True, token=token)}
        note = ""
    except Exception as listing_err:
        remote, note = {}, f" (the remote tree could not be listed: {_summary(listing_err)})"
    missing = [path for path, local in files.items() if not _same_file(local, remote.get(path))]
    uploaded = [path for path in files if path not in missing]
    state = (
        f"{len(missing)} of {len(files)} files are not on the Hub{note}: {', '.join(missing)}"
        if missing
        else f"all {len(files)} files are on the Hub already"
    )
    message = (
        f"Push to '{repo_id}' (revision '{revision}') failed: {_summary(err)}. {state}. Run push() again: files "
        f"already up to date ({len(uploaded)}) are skipped, so the re-run adds at most one commit."
    )
    return PushError(message, repo_id, missing, uploaded)


def _same_file(local: Path, remote: Any) -> bool:
    """Whether a remote ``RepoFile`` holds the local content: sha256 for LFS files, git blob sha1 otherwise."""
    if remote is None or getattr(remote, "blob_id", None) is None:
        return False
    data = local.read_bytes()
    if getattr(remote, "lfs", None) is not None:
        return remote.lfs.sha256 == hashlib.sha256(data).hexdigest()
    return remote.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# -- save and merge -------------------------------------------------------------------------------------------------
def save_model(model: Any, directory: str | os.PathLike, processor: Any = None) -> Path:
    """Save a model, or a peft adapter with its base config (labels, head class) as ``config.json``, and the
    processor: a ``model/`` directory ready for :func:`push` and :func:`load`.

    Example:
        >>> save_model(peft_model, "runs/sst2-lora/model", processor=tokenizer)  # doctest: +SKIP
    """
    directory = Path(directory)
    model.save_pretrained(directory)
    if hasattr(model, "peft_config"):
        model.get_base_model().config.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    from hftl.run import finish_model_dir

    finish_model_dir(directory, directory.resolve())
    return directory


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *, token: str | None = None) -> Path:
    """Merge a peft adapter (and its head) into its base model; save it with the adapter's processor files.

    Example:
        >>> merge_adapter("runs/sst2-lora/model", "runs/sst2-lora/merged")  # doctest: +SKIP
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{adapter_dir} holds no peft adapter ({ADAPTER_CONFIG}): there is nothing to merge")
    merged = _load_local(adapter_dir, token)[0].merge_and_unload()
    merged.save_pretrained(out_dir)
    from hftl.modeling import add_remote_code

    add_remote_code(out_dir)
    for path in adapter_dir.iterdir():  # processor files, copied byte for byte
        if path.is_file() and path.name not in ADAPTER_ONLY_FILES and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
    return out_dir


# -- load -----------------------------------------------------------------------------------------------------------
def load(
    repo_id_or_path: str | os.PathLike, *, revision: str | None = None, token: str | None = None, device: Any = None
) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a Hub repo id, a model/adapter directory, or a run directory.

    A full model comes back through its own class (``config.architectures``); an adapter comes back as a
    ``PeftModel`` on its base model, rebuilt with the head's class and labels (see the module docstring). hftl's
    own classifier (``model_type: hftl``) is loaded by ``hftl.run.load``. The processor is whichever of
    AutoProcessor, AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor loads (``None`` if none does). The
    model is in eval mode, on ``device`` if given. The model of a local hftl run that did not finish (no
    ``hftl_run.json``) is refused with RunDirError.

    Example:
        >>> model, tokenizer = load("alice/bert-sst2-lora")  # doctest: +SKIP
        >>> model.config.id2label  # doctest: +SKIP
        {0: 'negative', 1: 'positive'}
    """
    model, processor = _load_local(_local_dir(repo_id_or_path, revision, token), token)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


def _load_local(local: Path, token: str | None) -> tuple[Any, Any]:
    """``(model, processor)`` from a local model or adapter directory."""
    if _read_json(local / "config.json").get("model_type") == "hftl":  # hftl's classifier: its own loader
        from hftl.run import load as load_run

        return load_run(local)
    if (local / ADAPTER_CONFIG).is_file():
        model = _load_adapter(local, token=token)
        base_id = _read_json(local / ADAPTER_CONFIG).get("base_model_name_or_path")
        return model, _load_processor(local) or (_load_processor(base_id, token=token) if base_id else None)
    return _load_full(local), _load_processor(local)


def _local_dir(repo_id_or_path: str | os.PathLike, revision: str | None, token: str | None) -> Path:
    """A local model directory: the path itself, a run directory's ``model/``, or a snapshot of the repo."""
    path = Path(repo_id_or_path)
    if path.is_dir():
        from hftl.rundir import require_complete

        has_model = (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()
        local = path / "model" if not has_model and (path / "model").is_dir() else path
        require_complete(local)  # the model of a run that did not finish is not loaded as if it had
        return local
    from huggingface_hub import snapshot_download

    ignore = [f"*{suffix}" for suffix in PLOT_SUFFIXES]  # plots are for the card, not the model
    return Path(snapshot_download(str(repo_id_or_path), revision=revision, token=token, ignore_patterns=ignore))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_class(config: Any) -> Any:
    """The class named by ``config.architectures``: a transformers class, or one registered with an Auto class."""
    import transformers

    name = (getattr(config, "architectures", None) or [""])[0]
    if hasattr(transformers, name):
        return getattr(transformers, name)
    for auto_name in AUTO_CLASSES:
        found = getattr(transformers, auto_name)._model_mapping.get(type(config), None)
        for model_class in found if isinstance(found, (tuple, list)) else (found,):
            if model_class is not None and (not name or model_class.__name__ == name):
                return model_class
    return transformers.AutoModel


def _load_full(model_dir: Path) -> Any:
    from transformers import AutoConfig

    return _model_class(AutoConfig.from_pretrained(model_dir)).from_pretrained(model_dir)


def _head_rows(adapter_dir: Path, heads: list[str]) -> int | None:
    """Output size of the saved head (the last 2-D weight under a ``modules_to_save`` module)."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not heads or not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = sorted(k for k in f.keys() if k.endswith(".weight") and any(f".{h}." in f".{k}" for h in heads))
        shapes = [f.get_slice(k).get_shape() for k in keys]
    rows = [shape[0] for shape in shapes if len(shape) == 2]
    return rows[-1] if rows else None


def _guess_base_class(adapter_cfg: dict, base_id: str, token: str | None) -> Any:
    """Without a saved config: peft's task type, else the saved head module with the base's model type."""
    import transformers
    from transformers.models.auto import modeling_auto

    name = TASK_TYPE_AUTO_CLASS.get(str(adapter_cfg.get("task_type")))
    if name:
        return getattr(transformers, name)
    model_type = transformers.AutoConfig.from_pretrained(base_id, token=token).model_type
    for head in adapter_cfg.get("modules_to_save") or []:
        for auto_name, table in HEAD_AUTO_CLASSES.get(head, ()):
            if model_type in getattr(modeling_auto, table, {}):
                return getattr(transformers, auto_name)
    return transformers.AutoModel


def _load_adapter(adapter_dir: Path, token: str | None = None) -> Any:
    """Rebuild the base model with the head's class and labels, then load the adapter (and head) onto it."""
    from peft import PeftModel
    from transformers import AutoConfig

    adapter_cfg = _read_json(adapter_dir / ADAPTER_CONFIG)
    base_id = adapter_cfg["base_model_name_or_path"]
    # The base's own head (if any) may differ in size: the adapter's saved head replaces it.
    kwargs: dict[str, Any] = {"revision": adapter_cfg.get("revision"), "token": token, "ignore_mismatched_sizes": True}
    if (adapter_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(adapter_dir)
        base = _model_class(config).from_pretrained(base_id, config=config, **kwargs)
    else:
        rows = _head_rows(adapter_dir, list(adapter_cfg.get("modules_to_save") or []))
        extra = {"num_labels": rows} if rows else {}
        base = _guess_base_class(adapter_cfg, base_id, token).from_pretrained(base_id, **kwargs, **extra)
    return PeftModel.from_pretrained(base, str(adapter_dir), token=token)


def _load_processor(source: str | os.PathLike, token: str | None = None) -> Any:
    """The first of AutoProcessor, AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor that loads."""
    import transformers

    for name in PROCESSOR_CLASSES:
        try:
            return getattr(transformers, name).from_pretrained(str(source), token=token)
        except Exception as err:  # each class fails in its own way on files that are not its own
            logger.debug("%s found nothing in %s: %s", name, source, type(err).__name__)
    return None
