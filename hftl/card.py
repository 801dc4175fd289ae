"""The model card: what was transferred from where, how, on what data, with what result.

Valid Hub metadata (``base_model``, ``library_name``, ``pipeline_tag``, ``model-index``) so the Hub shows it.

Example:
    >>> text = model_card(cfg.to_dict(), metrics, facts)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import yaml

DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".tsv", ".txt")
MODALITY_WORDS = {"text": "texts", "vision": "images", "speech": "audio clips"}
AUTO_CLASSES = {"text": "AutoModelForSequenceClassification", "vision": "AutoModelForImageClassification",
                "speech": "AutoModelForAudioClassification"}
EXAMPLES = {  # one input per modality, for the command line and for Python
    "text": {"cli": '"a first text" "a second text"', "py": '["a first text", "a second text"]'},
    "vision": {"cli": "photos/", "py": '["photo.png"]'},
    "speech": {"cli": "clips/", "py": '["clip.wav"]'},
}
PIPELINE_TAGS = {"text": "text-classification", "vision": "image-classification", "speech": "audio-classification"}
# what the model was adapted to do, per task (hftl.tasks): "was adapted to ..." in the card's first sentence
TASK_WORDS = {
    "classification": "classify {inputs} of {data} into {n} labels",
    "multi_label": "tag {inputs} of {data} with any number of {n} labels",
    "regression": "predict {n} number(s) per input ({labels}) from {inputs} of {data}",
    "token_classification": "tag each word of {inputs} of {data} with one of {n} tags",
    "ctc": "transcribe audio clips of {data} into characters (a new CTC head)",
    "seq2seq_asr": "transcribe audio clips of {data}",
    "detection": "find objects of {n} classes, with their boxes, in images of {data}",
}
CLASS_TASKS = ("classification", "multi_label")  # their splits are stratified by label
# transformers' Auto class per task where it is not the modality's sequence/image/audio classification; the tasks
# below the line save a transformers model of their own (no hftl code needed)
AUTO_BY_TASK = {"token_classification": "AutoModelForTokenClassification", "ctc": "AutoModelForCTC",
                "seq2seq_asr": "AutoModelForSpeechSeq2Seq", "detection": "AutoModelForObjectDetection"}
PLAIN_TASKS = ("ctc", "seq2seq_asr", "detection")
PRINTS = {  # what hftl predict prints per input, per task (hftl.inference)
    "classification": "the label, its score and every label's score",
    "multi_label": "the labels at the tuned threshold and every label's probability",
    "regression": "the predicted value(s), in the targets' units",
    "token_classification": "the words, a tag per word and the entities",
    "ctc": "the transcript", "seq2seq_asr": "the transcript",
    "detection": "the objects: label, score and box in pixels",
}
CAVEATS = {  # what a user of the plain loaders must do that hftl does for them
    "multi_label": "The logits are per label: apply a sigmoid and keep the labels at or above `config.threshold`.",
    "regression": "The outputs are standardised: multiply by `config.target_std` and add `config.target_mean` (the "
                  "pipeline does not).",
}
_LIBRARIES = ("hftl", "torch", "transformers", "peft", "accelerate", "datasets")


def _versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _is_hub_id(name: str) -> bool:
    """A Hub id (``org/name`` or ``name``), not a local file or folder."""
    return bool(name) and not Path(name).exists() and not Path(name).is_absolute() and name.count("/") <= 1 \
        and not name.endswith(DATA_SUFFIXES)


def _shown(name: str) -> str:
    """How a model or data name appears in the card: a Hub id as is, a local path by its last part only."""
    return name if _is_hub_id(name) else f"{Path(name).name} (a local {'file' if Path(name).suffix else 'folder'})"


def _metadata(cfg: dict, metrics: dict, facts: dict) -> dict:
    results = [
        {"type": name, "value": round(value, 4), "name": f"test {name}"}
        for name, value in metrics.get("test", {}).items()
        if name != "loss"
    ]
    tag = facts.get("pipeline_tag") or PIPELINE_TAGS.get(facts.get("modality", "text"), "text-classification")
    data = cfg["data"]["name"]
    meta = {"base_model": cfg["model"]["name"]} if _is_hub_id(cfg["model"]["name"]) else {}
    meta |= {
        "library_name": "peft" if facts.get("peft_config") else "transformers",
        "pipeline_tag": tag,
        "tags": ["hftl", "transfer-learning", cfg["strategy"]["name"]],
        "model-index": [
            {
                "name": facts.get("name", "hftl-model"),
                "results": [
                    {
                        "task": {"type": tag},
                        "dataset": {"name": _shown(data), "type": data if _is_hub_id(data) else "local",
                                    "split": "test"},
                        "metrics": results,
                    }
                ],
            }
        ],
    }
    if _is_hub_id(data) and "/" in data:
        meta["datasets"] = [data]
    return meta


def _table(rows: dict) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def _words(value) -> str:
    """A value in plain words: lists and sets joined, enums by name, no Python brackets or quotes."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_words(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(sorted(_words(v) for v in value)) or "none"
    return str(getattr(value, "value", value))


def _use(modality: str, adapter: bool, task: str = "classification", tag: str | None = None) -> str:
    """How to load and predict: hftl, plain transformers (pipeline and Auto class), peft for an adapter."""
    auto = AUTO_BY_TASK.get(task) or AUTO_CLASSES.get(modality, AUTO_CLASSES["text"])
    tag = tag or PIPELINE_TAGS.get(modality, "text-classification")
    example = EXAMPLES.get(modality, EXAMPLES["text"])
    if task in PLAIN_TASKS:  # a transformers model of its own kind: its own code, no trust_remote_code
        peft_note = (" An adapter loads onto its base with peft's `PeftModel.from_pretrained(base, PATH_OR_REPO_ID)`."
                     if adapter else "")
        return f"""From the command line ({PRINTS.get(task, "the prediction")}, one JSON line per input;
`--format table` for a table):
```bash
hftl predict PATH_OR_REPO_ID {example["cli"]}
```
From Python, with hftl (the same input conversion as in training): `hftl.predict("PATH_OR_REPO_ID", {example["py"]})`.
Without hftl, with transformers alone:
```python
from transformers import pipeline
run = pipeline("{tag}", model="PATH_OR_REPO_ID")
print(run({example["py"]}))
```
or `transformers.{auto}.from_pretrained("PATH_OR_REPO_ID")`.{peft_note}
"""
    peft = (f"""
The adapter with peft's own loader (it rebuilds the base from the backbone named in `config.json`):
```python
from peft import AutoPeft{auto.removeprefix("Auto")}
model = AutoPeft{auto.removeprefix("Auto")}.from_pretrained("PATH_OR_REPO_ID", trust_remote_code=True)
```
""" if adapter and auto == "AutoModelForSequenceClassification" else "")
    return f"""From the command line ({PRINTS.get(task, PRINTS["classification"])}, one JSON line per input;
`--format table` for a table):
```bash
hftl predict PATH_OR_REPO_ID {example["cli"]}
```
From Python, with hftl (the same input conversion as in training):
```python
import hftl
print(hftl.predict("PATH_OR_REPO_ID", {example["py"]}))
```
Without hftl, with transformers alone: the model's code (`modeling_hftl.py`) comes with it, so pass
`trust_remote_code=True`{" (the adapter is loaded onto its base for you)" if adapter else ""}:
```python
from transformers import pipeline
run = pipeline("{tag}", model="PATH_OR_REPO_ID", trust_remote_code=True)
print(run({example["py"]}))
```
or `transformers.{auto}.from_pretrained("PATH_OR_REPO_ID", trust_remote_code=True)`. {CAVEATS.get(task, "")}
{peft}"""


def model_card(cfg: dict, metrics: dict, facts: dict) -> str:
    """Markdown with YAML front matter, filled from the run's config, metrics and strategy facts: what was transferred
    from where, how, on what data, with what result, and how to load and predict, in plain words."""
    trainable, total = facts.get("trainable_params", 0), facts.get("total_params", 1)
    modality = facts.get("modality", "text")
    task = cfg.get("task", {}).get("name") or facts.get("task") or "classification"
    labels = list(map(str, facts.get("labels", [])))
    purpose = TASK_WORDS.get(task, TASK_WORDS["classification"]).format(
        inputs=MODALITY_WORDS.get(modality, "inputs"), data=f"**{_shown(cfg['data']['name'])}**", n=len(labels),
        labels=", ".join(labels))
    if task in ("ctc", "seq2seq_asr"):
        vocabulary = f"Output: text ({len(labels)} characters in the new head's vocabulary)." if task == "ctc" else \
            "Output: text, in the base model's own tokens."
    else:
        vocabulary = f"{'Targets' if task == 'regression' else 'Labels'}: {', '.join(labels)}."
    by = f" by {facts['metric_for_best']}" if facts.get("metric_for_best") else ""
    stratified = (f"; the splits are stratified by label (seed {cfg['data']['split_seed']})" if task in CLASS_TASKS
                  else f" (split seed {cfg['data']['split_seed']})")
    strategy = {
        "task": task,
        "strategy": cfg["strategy"]["name"],
        "trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        "frozen": _words(facts.get("frozen", [])) if facts.get("frozen") else "nothing",
        "pooling of the backbone's outputs": facts.get("pooling", ""),
        "new head": f"{facts.get('head', '')}",
    }
    if facts.get("peft_config"):
        pc = facts["peft_config"]
        names = {"peft_type": "method", "r": "rank", "lora_alpha": "alpha", "target_modules": "on the modules",
                 "modules_to_save": "trained whole"}
        strategy["adapter"] = "; ".join(f"{names[k]} {_words(pc[k])}" for k in names if pc.get(k) is not None)
    test = metrics.get("test", {})
    results = _table(
        {f"test {k}": f"{v:.4f}" for k, v in test.items()}
        | {f"validation {k}": f"{v:.4f}" for k, v in metrics.get("validation", {}).items()}
    )
    splits = ", ".join(f"{v:,} {k}" for k, v in facts.get("splits", {}).items())
    train = metrics.get("train", {})
    front = yaml.safe_dump(_metadata(cfg, metrics, facts), sort_keys=False)
    return f"""---
{front}---

# {facts.get("name", "hftl model")}

The pretrained model `{_shown(cfg["model"]["name"])}` (revision `{cfg["model"]["revision"]}`) was adapted to {purpose},
with [hftl](https://pypi.org/project/hftl/) and the **{cfg["strategy"]["name"]}** transfer strategy.

## Transfer
{_table(strategy)}

## Task and data
{vocabulary} Examples: {splits}{stratified}.

## Results
{results}

Trained for {train.get("epochs", 0):g} epochs ({train.get("seconds", 0):.0f} s); the weights kept are those of epoch
{train.get("best_epoch", 0):g}, the best on the validation split{by}.

## Use
{_use(modality, bool(facts.get("peft_config")), task, facts.get("pipeline_tag"))}
## Intended use and limits
A model for this task ({task}), on inputs like the training data. It inherits the biases of the base model
and of the data; measure it on your own data before relying on it.

## Configuration
```yaml
{yaml.safe_dump(cfg, sort_keys=False).strip()}
```

## Libraries
{", ".join(f"{k} {v}" for k, v in _versions().items())}
"""
