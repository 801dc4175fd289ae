"""Load pretrained backbones and their processors by Hub id or local path, offline-aware.

An id that is neither a local path, nor in the Hub cache, nor reachable fails at once with a message that
says so (instead of half a minute of retries). Embedded models (``hftl.assets``) are laid into the cache first.

Example:
    >>> model, processor = load_classifier("sentence-transformers/all-MiniLM-L6-v2", num_labels=2)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PreTrainedModel

from hftl import assets
from hftl.config import ConfigError
from hftl.modeling import HftlForClassification, default_pooling, encoder_of

log = logging.getLogger(__name__)


class ModelNotFoundError(OSError):
    """The model is neither a local path, nor cached, nor reachable on the Hub."""


@functools.cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hub endpoint (``HF_ENDPOINT``) answers a TCP connection; False offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _cached(name: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)


def go_offline() -> None:
    """Hub unreachable: the rest of this process reads the cache only, as with ``HF_HUB_OFFLINE=1``.

    ``local_files_only`` alone is not enough: transformers' ``AutoModel.from_pretrained`` still asks the Hub for an
    ``adapter_config.json`` without it (5.24), and each such request retries for about 20 s before it gives up.
    """
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        log.warning("the Hub at %s cannot be reached: loading from the cache only (as HF_HUB_OFFLINE=1)",
                    constants.ENDPOINT)
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # processes started from this one (DataLoader workers, launchers)


def resolve(name: str, revision: str = "main", trust_remote_code: bool = False) -> dict:
    """Keyword arguments for ``from_pretrained(name, **kwargs)`` that load without network waits.

    Raises ModelNotFoundError at once for an unknown id when the Hub cannot be reached.
    """
    kwargs = {"trust_remote_code": trust_remote_code}
    if Path(name).exists():
        return kwargs
    kwargs["revision"] = revision
    if name in assets.EMBEDDED_MODELS and not _cached(name, revision):
        assets.lay_into_hub_cache(name)
    if hub_reachable():
        return kwargs
    from huggingface_hub import constants

    go_offline()
    if _cached(name, revision):
        return {**kwargs, "local_files_only": True}

    raise ModelNotFoundError(
        f"model {name!r} (revision {revision!r}) is not a local path, not in the Hub cache "
        f"({constants.HF_HUB_CACHE}), and the Hub at {constants.ENDPOINT} cannot be reached "
        f"(offline: HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}). "
        f"Pass a local directory, download it on a connected machine, or use one of the embedded models: "
        f"{sorted(assets.EMBEDDED_MODELS)}"
    )


def sentence_pooling(name: str, kwargs: dict) -> str | None:
    """The pooling a sentence-transformers model was trained with (its 1_Pooling/config.json), if any."""
    from huggingface_hub import hf_hub_download

    try:
        path = name if Path(name).exists() else None
        if path is None:
            path = str(
                Path(
                    hf_hub_download(
                        name,
                        "1_Pooling/config.json",
                        revision=kwargs.get("revision"),
                        local_files_only=kwargs.get("local_files_only", False),
                    )
                ).parent.parent
            )
        modes = json.loads((Path(path) / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError, Exception):  # noqa: BLE001 - absent in most repos; any failure means "no"
        return None
    for mode, flag in (
        ("mean", "pooling_mode_mean_tokens"),
        ("cls", "pooling_mode_cls_token"),
        ("max", "pooling_mode_max_tokens"),
    ):
        if modes.get(flag):
            return mode
    return None


def _config_json(name: str, kwargs: dict) -> dict:
    """The model's config.json as a dict, from its folder or the Hub cache; {} when it cannot be read."""
    path = Path(name) / "config.json"
    if not Path(name).exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=kwargs.get("revision"))
        path = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def custom_code_problem(name: str, kwargs: dict) -> Exception | None:
    """Why transformers cannot load this model with its own code, named with the key that fixes it; else None.

    A config with ``auto_map`` ships its own modeling code (runs only with ``model.trust_remote_code=true``); a
    ``model_type`` that transformers does not know needs a newer transformers or that code.
    """
    from transformers import CONFIG_MAPPING, __version__

    config = _config_json(name, kwargs)
    model_type = config.get("model_type")
    if config.get("auto_map") and not kwargs.get("trust_remote_code"):
        return ConfigError(
            f"model {name!r} ships its own code (config.json auto_map: {sorted(config['auto_map'])}), which hftl "
            f"runs only when told: set model.trust_remote_code=true if you trust that repository"
        )
    if model_type and model_type not in CONFIG_MAPPING and model_type != "hftl":
        return ModelNotFoundError(
            f"model {name!r} has model_type {model_type!r}, which transformers {__version__} does not know: "
            f"upgrade it (pip install -U transformers), or set model.trust_remote_code=true if the repository "
            f"ships its own code"
        )
    return None


def ensure_pad_token(processor, name: str = "the model", quiet: bool = False):
    """A tokenizer without a pad token (GPT-2 style) pads with its eos token (else unk); logged. Returns it.

    The attention mask keeps padding out of attention and pooling; ``load_backbone`` gives the model's config the
    same ``pad_token_id``. Raises ModelNotFoundError when the tokenizer has no pad, eos or unk token.
    """
    from transformers import PreTrainedTokenizerBase

    tokenizer = processor if isinstance(processor, PreTrainedTokenizerBase) else getattr(processor, "tokenizer", None)
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or tokenizer.pad_token is not None:
        return processor
    for attr in ("eos_token", "unk_token"):
        token = getattr(tokenizer, attr, None)
        if token is not None:
            tokenizer.pad_token = token
            if not quiet:
                log.warning("the tokenizer of %s has no pad token: padding with its %s %r (id %d)", name,
                            attr.removesuffix("_token"), token, tokenizer.pad_token_id)
            return processor
    raise ModelNotFoundError(f"the tokenizer of {name!r} has no pad, eos or unk token to pad batches with: "
                             f"give model.name a model whose tokenizer has one")


def _reads_tokens(name: str, kwargs: dict) -> bool:
    """Whether the model (a run of ours: its backbone) reads token ids, by its base class's ``main_input_name``;
    True when that cannot be told (the tokenizer is then tried first, as for any text model)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        if config.model_type == "hftl":
            config = config.backbone_config
        return MODEL_MAPPING[type(config)].main_input_name == "input_ids"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


def load_processor(name: str, revision: str = "main", trust_remote_code: bool = False):
    """The tokenizer, image processor or feature extractor that goes with a model: for a model that reads pixels or
    audio, its image processor or feature extractor even where the repository also ships a tokenizer (Whisper).

    A tokenizer without a pad token pads with its eos token (``ensure_pad_token``). Raises ModelNotFoundError
    (or ConfigError for code that needs ``model.trust_remote_code=true``) when none loads.
    """
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor, AutoTokenizer

    kwargs = resolve(name, revision, trust_remote_code)
    order = (AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor, AutoProcessor)
    if not _reads_tokens(name, kwargs):  # Whisper's repo ships a tokenizer too, but its encoder reads log-mel features
        order = (AutoImageProcessor, AutoFeatureExtractor, AutoTokenizer, AutoProcessor)
    for auto in order:
        try:
            processor = auto.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return ensure_pad_token(processor, name)
    raise custom_code_problem(name, kwargs) or ModelNotFoundError(f"no tokenizer or processor found for {name!r}")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_config(name: str, kwargs: dict):
    """``AutoConfig.from_pretrained(name, **kwargs)`` (kwargs from ``resolve``), whose failure for custom code or an
    unknown model type names the fix: ConfigError (``model.trust_remote_code=true``) or ModelNotFoundError."""
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except (ValueError, KeyError) as err:
        problem = custom_code_problem(name, kwargs)
        if problem is None:
            raise
        raise problem from err


def load_backbone(name: str, revision: str = "main", trust_remote_code: bool = False, dtype: str = "float32"):
    """The bare pretrained encoder (no task head) and the loading kwargs used.

    A text model without a pad token id gets its tokenizer's (see ``ensure_pad_token``). Raises ConfigError when
    the model needs ``model.trust_remote_code=true``, ModelNotFoundError when transformers does not know it.
    """
    kwargs = resolve(name, revision, trust_remote_code)
    config = model_config(name, kwargs)
    if getattr(config, "model_type", None) == "hftl":  # a run of ours: its backbone is what transfers on
        return HftlForClassification.from_pretrained(name, dtype=_DTYPES[dtype], **kwargs).backbone, kwargs
    backbone = encoder_of(AutoModel.from_pretrained(name, dtype=_DTYPES[dtype], **kwargs))
    _match_pad_token(backbone.config, name, kwargs)
    return backbone, kwargs


def _match_pad_token(config, name: str, kwargs: dict) -> None:
    """A text model without ``pad_token_id`` takes the one its tokenizer pads with (eos for GPT-2 style models)."""
    if getattr(config, "pad_token_id", 0) is not None or not getattr(config, "vocab_size", None):
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        return  # no tokenizer here: whoever pads the inputs decides
    ensure_pad_token(tokenizer, name, quiet=True)
    if tokenizer.pad_token_id is None:
        return
    config.pad_token_id = tokenizer.pad_token_id
    log.info("model %s: pad_token_id set to %d, the id its tokenizer pads with", name, config.pad_token_id)


def load_classifier(
    name: str,
    num_labels: int,
    *,
    id2label: dict | None = None,
    revision: str = "main",
    pooling: str = "auto",
    head_hidden=(),
    head_dropout: float = 0.1,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    **task_config,
) -> HftlForClassification:
    """A pretrained backbone with a new classification head (its old head, if any, is dropped).

    ``task_config``: recorded in the model's config by the task (``hftl.tasks``), e.g. ``problem_type``."""
    backbone, kwargs = load_backbone(name, revision, trust_remote_code, dtype)
    if pooling == "auto":
        pooling = default_pooling(backbone.config, sentence_pooling(name, kwargs))
    log.info("new head on %s: pooling=%s, %d labels", name, pooling, num_labels)
    return HftlForClassification.from_backbone(
        backbone,
        num_labels,
        pooling=pooling,
        head_hidden=head_hidden,
        head_dropout=head_dropout,
        id2label=id2label,
        name=str(Path(name).resolve()) if Path(name).exists() else name,  # a relative path resolves from anywhere
        revision=revision,
        **task_config,
    )


# Families whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 fewer positions.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "ibert",
                           "data2vec-text", "xmod", "roberta-prelayernorm")
_NO_LIMIT = 1_000_000  # tokenizers without a limit say int(1e30)


def max_positions(config, tokenizer=None) -> tuple[int | None, str]:
    """The longest token sequence a text model takes, and what sets it (for the error message); (None, "") if unknown.

    The smaller of the model's learned positions (``max_position_embeddings``, ``n_positions`` for GPT-2; minus the
    padding offset for RoBERTa-style families; none for DeBERTa without absolute positions) and the tokenizer's
    ``model_max_length``. A run of ours (``model_type: hftl``) is judged by its backbone's config.

    Example:
        >>> max_positions(AutoConfig.from_pretrained("roberta-base"))  # doctest: +SKIP
        (512, 'roberta has 512 positions (max_position_embeddings=514 minus the padding offset 2)')
    """
    config = getattr(config, "backbone_config", None) or config
    limits = []
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    kind = getattr(config, "model_type", "the model")
    absolute = getattr(config, "position_biased_input", True) is not False  # DeBERTa-v2/v3: relative positions only
    if isinstance(n, int) and 0 < n < _NO_LIMIT and absolute:
        if kind in POSITIONS_AFTER_PADDING:
            offset = (getattr(config, "pad_token_id", None) or 0) + 1
            limits.append((n - offset, f"{kind} has {n - offset} positions (max_position_embeddings={n} minus the "
                                       f"padding offset {offset})"))
        else:
            limits.append((n, f"{kind} has {n} positions"))
    t = getattr(tokenizer, "model_max_length", None)
    if isinstance(t, int) and 0 < t < _NO_LIMIT:
        limits.append((t, f"its tokenizer's model_max_length is {t}"))
    return min(limits) if limits else (None, "")


def check_max_length(model_cfg, processor, config=None) -> None:
    """Refuse ``model.max_length`` above what a text model takes, before compute (longer inputs would crash the
    position embeddings mid-epoch, at the first long enough text). Image and audio processors are not checked.

    ``model_cfg``: the config's ``model`` section; ``config``: the model's config when already loaded (else read).
    Raises ConfigError naming the key, the limit and where it comes from.
    """
    from transformers import PreTrainedTokenizerBase

    if not isinstance(processor, PreTrainedTokenizerBase):
        return
    if config is None:
        config = model_config(model_cfg.name, resolve(model_cfg.name, model_cfg.revision, model_cfg.trust_remote_code))
    limit, why = max_positions(config, processor)
    if limit is not None and model_cfg.max_length > limit:
        from hftl.config import ConfigError

        raise ConfigError(f"model.max_length={model_cfg.max_length} is longer than {model_cfg.name} takes: {why}; "
                          f"set model.max_length={limit} or less (longer texts are truncated)")


def load_masked_lm(name: str, revision: str = "main", trust_remote_code: bool = False) -> PreTrainedModel:
    """A masked-LM model; a checkpoint without an MLM head gets a new one (logged by transformers)."""
    return AutoModelForMaskedLM.from_pretrained(name, **resolve(name, revision, trust_remote_code))
