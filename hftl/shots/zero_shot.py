"""Zero-shot classification: no labelled example, only the label names (or descriptions) put into prompts.

Three mechanisms, one prompt builder (templates x descriptions, ensembled by averaging):

* ``zero_shot_embedding``: any text encoder (sentence-transformers models included): cosine between the input's
  embedding and each class's mean of normalized prompt embeddings.
* ``zero_shot_nli``: an NLI model (``AutoModelForSequenceClassification`` with an entailment label) scores
  "premise = input, hypothesis = template(label)", as transformers' zero-shot-classification pipeline does.
* ``zero_shot_dual``: CLIP/SigLIP (images) and CLAP (audio): ``get_text_features`` against
  ``get_image_features`` / ``get_audio_features``.

Example:
    >>> prompts = class_prompts(["rotten", "fresh"], {"rotten": "negative", "fresh": "positive"},
    ...                         ["a {} movie review"])
    >>> prompts
    [['a negative movie review'], ['a positive movie review']]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Ensembled by default; configs override them (shots.templates).
DEFAULT_TEMPLATES = {
    "embedding": ["{}", "This example is {}."],
    "nli": ["This example is {}."],
    "image": [
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a close-up photo of a {}.",
        "a good photo of a {}.",
        "a photo of the large {}.",
        "a photo of the small {}.",
    ],
    "audio": ["This is a sound of {}.", "The sound of {}."],
}
# The tower that embeds the other modality, per modality (CLIP/SigLIP: image, CLAP: audio).
TOWERS = {"image": "get_image_features", "audio": "get_audio_features"}
# Text padding that the family was trained with (SigLIP: fixed-length padding, its pooling expects it).
TEXT_PADDING = {"siglip": "max_length", "siglip2": "max_length"}


def class_prompts(labels: Sequence[str], descriptions: dict | None, templates: Sequence[str]) -> list[list[str]]:
    """Every template filled with every description of each class (descriptions default to the label name)."""
    # keys as text: YAML reads `0: a bad review` as the int 0, and class names are the labels' text ("0")
    descriptions = {str(k): v for k, v in (descriptions or {}).items()}
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise ValueError(f"label_descriptions names unknown labels {unknown}; the labels are {list(labels)}")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"templates must be a non-empty list, each with {{}} for the label; got {list(templates)}")
    out = []
    for name in labels:
        descs = descriptions.get(name, name)
        descs = [descs] if isinstance(descs, str) else list(descs)
        out.append([t.format(d) for t in templates for d in descs])
    return out


def class_embeddings(encode: Callable[[list[str]], torch.Tensor], prompts: list[list[str]]) -> torch.Tensor:
    """(classes, width): each class's mean of normalized prompt embeddings, normalized again (CLIP's ensembling)."""
    flat = [p for group in prompts for p in group]
    emb = F.normalize(encode(flat).float(), dim=-1)
    out, start = [], 0
    for group in prompts:
        out.append(emb[start : start + len(group)].mean(0))
        start += len(group)
    return F.normalize(torch.stack(out), dim=-1)


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_encoder(model, tokenizer, *, max_length: int = 128, batch_size: int = 64) -> Callable:
    """Texts -> pooled embeddings with an ``HftlForClassification`` (its pooling: mean for sentence-transformers)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        model.eval()
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            chunks.append(model.features(**batch).float().cpu())
        return torch.cat(chunks)

    return encode


def zero_shot_embedding(
    encode: Callable,
    query_features: torch.Tensor,
    labels: Sequence[str],
    *,
    descriptions: dict | None = None,
    templates: Sequence[str] | None = None,
) -> torch.Tensor:
    """(N, classes) cosine similarities of each input to each class's prompt ensemble.

    ``query_features`` are the inputs' embeddings from the same encoder (e.g. the cached frozen features), so
    zero-shot costs one pass over the prompts only.

    Example:
        >>> enc = text_encoder(model, tokenizer)  # doctest: +SKIP
        >>> scores = zero_shot_embedding(enc, enc(texts), ["rotten", "fresh"],
        ...                              descriptions={"rotten": "negative", "fresh": "positive"})  # doctest: +SKIP
    """
    prompts = class_prompts(labels, descriptions, templates or DEFAULT_TEMPLATES["embedding"])
    classes = class_embeddings(encode, prompts)
    return F.normalize(query_features.float(), dim=-1) @ classes.T


def entailment_index(config) -> int:
    """Index of the entailment logit, read from the model's label map."""
    for idx, name in (config.id2label or {}).items():
        if str(name).lower().startswith("entail"):
            return int(idx)
    raise ValueError(f"not an NLI model: no 'entailment' label among {dict(config.id2label or {})}")


def is_nli_model(config) -> bool:
    try:
        entailment_index(config)
        return True
    except ValueError:
        return False


@torch.no_grad()
def zero_shot_nli(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    descriptions: dict | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
    max_length: int = 256,
) -> torch.Tensor:
    """(N, classes) entailment logits of "text => template(label)", averaged over each class's prompts.

    With one template and one description per class, the softmax over classes is what transformers'
    zero-shot-classification pipeline returns (``multi_label=False``).

    Example:
        >>> scores = zero_shot_nli(nli_model, tokenizer, ["a great film"], ["negative", "positive"])  # doctest: +SKIP
    """
    prompts = class_prompts(labels, descriptions, templates or DEFAULT_TEMPLATES["nli"])
    hypotheses = [h for group in prompts for h in group]
    entail, device = entailment_index(model.config), next(model.parameters()).device
    model.eval()
    per_text = max(1, batch_size // len(hypotheses))
    rows = []
    for i in range(0, len(texts), per_text):
        chunk = list(texts[i : i + per_text])
        premises = [t for t in chunk for _ in hypotheses]
        batch = tokenizer(
            premises,
            hypotheses * len(chunk),
            padding=True,
            truncation="only_first",
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        logits = model(**batch).logits[:, entail].float().cpu()
        rows.append(logits.view(len(chunk), len(hypotheses)))
    scores = torch.cat(rows)
    out, start = [], 0
    for group in prompts:
        out.append(scores[:, start : start + len(group)].mean(1))
        start += len(group)
    return torch.stack(out, dim=1)


@torch.no_grad()
def dual_text_weights(
    model,
    tokenizer,
    labels: Sequence[str],
    *,
    modality: str,
    descriptions: dict | None = None,
    templates: Sequence[str] | None = None,
) -> torch.Tensor:
    """(classes, width) unit class embeddings of a CLIP/SigLIP (``modality="image"``) or CLAP (``"audio"``) model's
    text tower: the prompt ensemble of each class, in the space of ``dual_features``."""
    if modality not in TOWERS:
        raise ValueError(f"modality={modality!r} is unknown; choose one of {sorted(TOWERS)}")
    device = next(model.parameters()).device
    model.eval()
    padding = TEXT_PADDING.get(model.config.model_type, True)

    def encode_text(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt").to(device)
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return _pooled(model.get_text_features(**batch)).cpu()

    return class_embeddings(encode_text, class_prompts(labels, descriptions, templates or DEFAULT_TEMPLATES[modality]))


@torch.no_grad()
def dual_features(model, inputs: dict, *, modality: str, batch_size: int = 32) -> torch.Tensor:
    """(N, width) embeddings of the other tower (``get_image_features`` / ``get_audio_features``), not normalized.

    ``inputs`` holds the processed images or audio as the model's processor returns them.
    """
    if modality not in TOWERS:
        raise ValueError(f"modality={modality!r} is unknown; choose one of {sorted(TOWERS)}")
    device = next(model.parameters()).device
    model.eval()
    tower = getattr(model, TOWERS[modality])
    n = len(next(iter(inputs.values())))
    feats = [
        _pooled(tower(**{k: v[i : i + batch_size].to(device) for k, v in inputs.items()})).float().cpu()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(feats)


def zero_shot_dual(
    model,
    tokenizer,
    inputs: dict,
    labels: Sequence[str],
    *,
    modality: str,
    descriptions: dict | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """(N, classes) cosine similarities for CLIP/SigLIP (``modality="image"``) and CLAP (``"audio"``) models.

    ``inputs`` holds the processed other modality (``pixel_values``; ``input_features`` and ``is_longer``), as the
    model's processor returns it. Times the model's logit scale (SigLIP: plus its bias): the model's own logits.

    Example:
        >>> pixels = processor(images=images, return_tensors="pt")  # doctest: +SKIP
        >>> labels = ["cat", "dog"]
        >>> scores = zero_shot_dual(model, processor.tokenizer, pixels, labels, modality="image")  # doctest: +SKIP
    """
    classes = dual_text_weights(
        model, tokenizer, labels, modality=modality, descriptions=descriptions, templates=templates
    )
    feats = dual_features(model, inputs, modality=modality, batch_size=batch_size)
    return F.normalize(feats, dim=-1) @ classes.T
