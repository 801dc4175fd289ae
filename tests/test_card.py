"""The model card says what each task's model does and how to load it: no task is called a classifier, and only
hftl's own models (loaded through ``modeling_hftl.py``) ask for ``trust_remote_code``."""

from __future__ import annotations

import pytest
import yaml

from hftl.card import model_card
from hftl.config import load_config
from hftl.publishing import scrub_paths
from hftl.tasks import get_task

CASES = {  # task: (labels, modality, a phrase the card must say, whether the loader needs hftl's code)
    "classification": (["neg", "pos"], "text", "classify texts of **reviews.csv (a local file)** into 2 labels", True),
    "multi_label": (["a", "b", "c"], "text", "tag texts of **reviews.csv (a local file)** with any number of 3", True),
    "regression": (["valence", "arousal"], "text", "predict 2 number(s) per input (valence, arousal)", True),
    "token_classification": (["O", "B-PER", "I-PER"], "text", "tag each word of texts", True),
    "ctc": (list("abc "), "speech", "transcribe audio clips of **reviews.csv (a local file)** into characters", False),
    "seq2seq_asr": ([], "speech", "transcribe audio clips of", False),
    "detection": (["cat", "dog"], "vision", "find objects of 2 classes, with their boxes, in images", False),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_card_says_what_the_task_does_and_how_to_load_it(task, tmp_path):
    labels, modality, phrase, remote = CASES[task]
    cfg = load_config(None, [f"task.name={task}", f"data.name={tmp_path / 'reviews.csv'}",
                             "model.name=openai/whisper-tiny.en"]).to_dict()
    facts = {"labels": labels, "modality": modality, "task": task, "splits": {"train": 10, "test": 4},
             "pipeline_tag": get_task(task).pipeline_tag(modality), "trainable_params": 1, "total_params": 2}
    card = model_card(cfg, {"test": {"loss": 0.5}, "train": {}}, facts)
    text = " ".join(card.split())
    assert phrase in text, text[:600]
    assert ("trust_remote_code=True" in card) == remote  # hftl's own model class travels as modeling_hftl.py
    assert "classifier" not in text.lower() and (task in ("classification", "multi_label")) == ("stratified" in text)
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == facts["pipeline_tag"] == meta["model-index"][0]["results"][0]["task"]["type"]
    if task in ("multi_label", "regression"):  # what hftl does that a plain loader's user must do
        assert {"multi_label": "config.threshold", "regression": "config.target_std"}[task] in card
    assert str(tmp_path) not in scrub_paths(card)  # a local path is never written into what is pushed
