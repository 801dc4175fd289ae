"""The model card: what was transferred from where, how, on what data, with what result.

Valid Hub metadata (``base_model``, ``library_name``, ``pipeline_tag``, ``model-index``) so the Hub shows it.

Example:
    >>> text = model_card(cfg.to_dict(), metrics, facts)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata as md

import yaml

PIPELINE_TAGS = {"text": "text-classification", "vision": "image-classification", "speech": "audio-classification"}
_LIBRARIES = ("hftl", "torch", "transformers", "peft", "accelerate", "datasets")


def _versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _metadata(cfg: dict, metrics: dict, facts: dict) -> dict:
    results = [
        {"type": name, "value": round(value, 4), "name": f"test {name}"}
        for name, value in metrics.get("test", {}).items()
        if name != "loss"
    ]
    tag = facts.get("pipeline_tag") or PIPELINE_TAGS.get(facts.get("modality", "text"), "text-classification")
    meta = {
        "base_model": cfg["model"]["name"],
        "library_name": "peft" if facts.get("peft_config") else "transformers",
        "pipeline_tag": tag,
        "tags": ["hftl", "transfer-learning", cfg["strategy"]["name"]],
        "model-index": [
            {
                "name": facts.get("name", "hftl-model"),
                "results": [
                    {
                        "task": {"type": tag},
                        "dataset": {"name": cfg["data"]["name"], "type": cfg["data"]["name"], "split": "test"},
                        "metrics": results,
                    }
                ],
            }
        ],
    }
    if "/" in cfg["data"]["name"] and not cfg["data"]["name"].endswith((".csv", ".json", ".jsonl", ".parquet")):
        meta["datasets"] = [cfg["data"]["name"]]
    return meta


def _table(rows: dict) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def model_card(cfg: dict, metrics: dict, facts: dict) -> str:
    """Markdown with YAML front matter, filled from the run's config, metrics and strategy facts."""
    trainable, total = facts.get("trainable_params", 0), facts.get("total_params", 1)
    strategy = {
        "task": cfg.get("task", {}).get("name", "classification"),
        "strategy": cfg["strategy"]["name"],
        "trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        "frozen": ", ".join(facts.get("frozen", [])) or "nothing",
        "pooling": facts.get("pooling", ""),
        "new head": f"{facts.get('head', '')}",
    }
    if facts.get("peft_config"):
        pc = facts["peft_config"]
        strategy["adapter"] = ", ".join(
            f"{k}={pc[k]}"
            for k in ("peft_type", "r", "lora_alpha", "target_modules", "modules_to_save")
            if pc.get(k) is not None
        )
    test = metrics.get("test", {})
    results = _table(
        {f"test {k}": f"{v:.4f}" for k, v in test.items()}
        | {f"validation {k}": f"{v:.4f}" for k, v in metrics.get("validation", {}).items()}
    )
    front = yaml.safe_dump(_metadata(cfg, metrics, facts), sort_keys=False)
    return f"""---
{front}---

# {facts.get("name", "hftl model")}

`{cfg["model"]["name"]}` (revision `{cfg["model"]["revision"]}`) adapted to **{cfg["data"]["name"]}** with
[hftl](https://pypi.org/project/hftl/) by the **{cfg["strategy"]["name"]}** transfer strategy.

## Transfer
{_table(strategy)}

## Task and data
Labels: {", ".join(facts.get("labels", []))}. Splits (examples): {facts.get("splits", {})}, stratified with seed
{cfg["data"]["split_seed"]}.

## Results
{results}

Training: {metrics.get("train", {}).get("epochs", 0):g} epochs, {metrics.get("train", {}).get("seconds", 0):.0f} s,
best validation epoch {metrics.get("train", {}).get("best_epoch", 0):g}.

## Use
```python
import hftl
model, processor = hftl.load("PATH_OR_REPO_ID")
```
With plain transformers (after `import hftl`, which registers the model class): `AutoModelForSequenceClassification
.from_pretrained(...)`; an adapter loads with `peft.PeftModel.from_pretrained` on the base built by `hftl.load`.

## Intended use and limits
A classifier for the labels above, on inputs like the training data. It inherits the biases of the base model
and of the data; measure it on your own data before relying on it.

## Configuration
```yaml
{yaml.safe_dump(cfg, sort_keys=False).strip()}
```

## Libraries
{", ".join(f"{k} {v}" for k, v in _versions().items())}
"""
