"""Speech recognition by CTC: a pretrained speech encoder (wav2vec2, HuBERT, WavLM...) with a new character head
for the vocabulary of the training transcripts, greedy decoding, WER and CER on normalised text.

The vocabulary is built from train's transcripts (lower-cased characters, ``|`` for the space, ``<pad>`` = the CTC
blank at id 0, ``<unk>``), saved as the model's ``id2label`` and as the processor's tokenizer. The head is the model's
``lm_head``: every strategy trains it and peft methods save it. Labels are character ids padded with -100.

Example:
    hftl finetune task.name=ctc model.name=facebook/wav2vec2-base data.name=clips.csv data.input_column=audio \\
        data.label_column=text strategy.name=freeze_n
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import torch

from hftl.tasks import register, resolve_best
from hftl.tasks import speech_text as st

SPECIAL = ["<pad>", "<unk>"]
WORD_DELIMITER = "|"


def build_vocab(texts: list[str]) -> dict[str, int]:
    """Character vocabulary of the transcripts: pad (the CTC blank) and unk first, the space written as ``|``.

    Example:
        >>> build_vocab(["no go"])
        {'<pad>': 0, '<unk>': 1, 'g': 2, 'n': 3, 'o': 4, '|': 5}
    """
    chars = sorted({c for t in texts for c in t.lower() if c != " "} | {WORD_DELIMITER})
    return {token: i for i, token in enumerate(SPECIAL + chars)}


def make_processor(name: str, vocab: dict[str, int], **kwargs):
    """The model's feature extractor with a character CTC tokenizer over ``vocab`` (lower-case text: its
    ``do_lower_case`` would upper-case, for wav2vec2's upper-case vocabularies)."""
    from transformers import AutoFeatureExtractor, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>",
                                         word_delimiter_token=WORD_DELIMITER, bos_token=None, eos_token=None)
    return Wav2Vec2Processor(feature_extractor=AutoFeatureExtractor.from_pretrained(name, **kwargs),
                             tokenizer=tokenizer)


def ctc_text(ids: list[int], id2label: dict, blank: int = 0) -> str:
    """Greedy CTC decoding of one clip's frame ids: repeats collapsed, blanks and unknowns dropped, ``|`` a space."""
    chars = [id2label.get(i, "") for i, _ in itertools.groupby(ids) if i != blank]
    return " ".join("".join(c for c in chars if c not in SPECIAL).replace(WORD_DELIMITER, " ").split())


def label_text(ids: list[int], id2label: dict) -> str:
    """A transcript back from its character ids (-100 padding dropped; no collapsing: "ll" stays)."""
    return " ".join("".join(id2label.get(i, "") for i in ids if i >= 0).replace(WORD_DELIMITER, " ").split())


def _id2label(config) -> dict[int, str]:
    return {int(k): v for k, v in config.id2label.items()}


def load_ctc(name: str, texts: list[str], *, freeze_feature_encoder: bool = True, revision: str = "main"):
    """A pretrained speech encoder with a new CTC head sized for the transcripts' characters, and its processor
    (the library entry point; the ``ctc`` task builds the same through the recipe)."""
    from transformers import AutoModelForCTC

    from hftl.models import resolve

    kwargs = resolve(name, revision)
    processor = make_processor(name, build_vocab(texts), **kwargs)
    tokenizer = processor.tokenizer
    model = AutoModelForCTC.from_pretrained(name, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                            ctc_loss_reduction="mean", ignore_mismatched_sizes=True, **kwargs)
    if freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    return model, processor


@torch.no_grad()
def transcribe(model, processor, waves: list, sampling_rate: int) -> list[str]:
    """Greedy CTC decoding of a batch of waveforms."""
    batch = processor(audio=waves, sampling_rate=sampling_rate, padding=True, return_tensors="pt")
    logits = model(**{k: v for k, v in batch.items() if k in ("input_values", "attention_mask")}).logits
    return processor.batch_decode(logits.argmax(-1))


error_rates = st.error_rates


class CTCCollator:
    """Waveforms padded to the longest (with the attention mask) and character ids padded with -100."""

    def __init__(self, processor) -> None:
        self.extractor, self.tokenizer = processor.feature_extractor, processor.tokenizer

    def __call__(self, rows: list[dict]) -> dict:
        import numpy as np

        from hftl.data.batching import drop_full_mask

        waves = [np.asarray(r["waveform"], dtype=np.float32) for r in rows]
        batch = dict(self.extractor(waves, sampling_rate=self.extractor.sampling_rate, return_tensors="pt",
                                    padding=True, return_attention_mask=True))
        ids = [self.tokenizer(r["label"].lower()).input_ids for r in rows]  # the vocabulary is lower case
        labels = torch.full((len(ids), max(map(len, ids))), st.IGNORE, dtype=torch.long)
        for i, row in enumerate(ids):
            labels[i, : len(row)] = torch.as_tensor(row)
        batch["labels"] = labels
        return drop_full_mask(batch)


@register("ctc")
class CTC:
    tunes = False
    stratify = False
    caches_features = False  # per-frame outputs: frozen strategies run the encoder every step
    baselines = False
    refused_strategies: dict = {}  # linear_probe: a linear CTC head on frozen features, a real baseline
    prepare_labels = staticmethod(st.prepare_transcripts)
    check_best = staticmethod(st.check_best)

    def model_class(self):
        from transformers import AutoModelForCTC

        return AutoModelForCTC

    def label_names(self, splits, cfg=None) -> list[str]:
        """The character vocabulary of train's transcripts, in id order."""
        return list(build_vocab(splits["train"]["label"][:]))

    def model_config(self, splits, cfg) -> dict:
        return {"task": self.name, "backbone_name": cfg.model.name, "backbone_revision": cfg.model.revision}

    def _record(self, model, splits, cfg):
        """The task's settings in the model's config, and the model's own class as its architecture: the saved
        base config of an adapter then rebuilds this class (``hftl.load``, transformers' Auto classes)."""
        for key, value in self.model_config(splits, cfg).items():
            setattr(model.config, key, value)
        model.config.architectures = [type(model).__name__]
        return model

    def build_model(self, cfg, labels: list[str], splits):
        from hftl.models import _DTYPES, resolve

        m = cfg.model
        model = self.model_class().from_pretrained(
            m.name, vocab_size=len(labels), pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
            id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
            ignore_mismatched_sizes=True, dtype=_DTYPES[m.dtype], **resolve(m.name, m.revision, m.trust_remote_code))
        return self._record(model, splits, cfg)

    def processor(self, name: str, revision: str = "main", trust_remote_code: bool = False, splits=None, cfg=None):
        """With ``splits`` (training): the model's feature extractor and a character tokenizer over train's
        vocabulary, clips checked against ``data.max_seconds``; without (a trained model's folder): the saved one."""
        from hftl.models import resolve

        kwargs = resolve(name, revision, trust_remote_code)
        if splits is None:
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(name, **kwargs)
        st.check_clips(splits, cfg.data.max_seconds, "data.max_seconds")
        return make_processor(name, build_vocab(splits["train"]["label"][:]), **kwargs)

    def collator(self, processor):
        return CTCCollator(processor)

    @staticmethod
    def loss_terms(batch: dict) -> torch.Tensor:
        """What the model's CTC loss averages over (``ctc_loss_reduction="mean"``: each clip's loss over its
        transcript's length, then the mean over clips): the clips, for ``fit``'s step weights."""
        return torch.tensor(len(batch["labels"]))

    def encode_labels(self, encoded, cfg=None):
        return encoded  # transcripts are tokenized per batch by the collator

    def check(self, cfg) -> None:
        st.check(self, cfg)

    def best_metric(self, cfg, splits=None, log=print) -> str:
        return resolve_best(cfg, list(st.KEYS), "wer")

    def auto_best(self, metrics) -> str:
        return "wer"

    @torch.no_grad()
    def eval_outputs(self, model, batch: dict) -> torch.Tensor:
        """Per clip (``speech_text.pack``): its CTC loss summed and the argmax id of each of its frames (frames past
        its end, from padding, set to the blank)."""
        logits, frames, ids = self._frames(model, batch)
        labels = batch["labels"]
        scored = labels >= 0
        nll = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), labels[scored], frames,
                                           scored.sum(1), blank=st.unwrap(model).config.pad_token_id,
                                           reduction="none", zero_infinity=True)
        return st.pack(nll, scored.sum(1), ids)

    @staticmethod
    def _frames(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The clips' logits, their frame counts and the argmax id of each frame (frames past a clip's end, from
        padding, set to the blank): what evaluation and ``predict_rows`` decode."""
        base = st.unwrap(model)
        inputs = {k: batch[k] for k in ("input_values", "attention_mask") if k in batch}
        logits = model(**inputs).logits.float()
        frames = torch.full((len(logits),), logits.shape[1], dtype=torch.long, device=logits.device)
        if "attention_mask" in batch:
            frames = base._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).long()
        ids = logits.argmax(-1)
        ids[torch.arange(ids.shape[1], device=ids.device)[None] >= frames[:, None]] = base.config.pad_token_id
        return logits, frames, ids

    def _both(self, outputs: torch.Tensor, labels: torch.Tensor, config) -> tuple[list[str], list[str]]:
        names = _id2label(config)
        hyps = [ctc_text(row, names, config.pad_token_id) for row in st.unpack(outputs)[2]]
        return hyps, [label_text(row, names) for row in labels.tolist()]

    def scores(self, outputs: torch.Tensor, labels: torch.Tensor, metrics=None, config=None) -> dict:
        return st.scores_of(*self._both(outputs, labels, config), outputs)

    def tune(self, config, logits, labels, cfg=None) -> dict:
        return {}

    def prediction_rows(self, outputs: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        return st.rows_of(*self._both(outputs, labels, config))

    def outputs(self, outputs: torch.Tensor, config, labels=None) -> list[str]:
        names = _id2label(config)
        return [ctc_text(row, names, config.pad_token_id) for row in st.unpack(outputs)[2]]

    targets = staticmethod(st.targets)

    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per clip: ``text``, its greedy CTC transcript (as evaluation decodes it)."""
        names = _id2label(config)
        return [{"text": ctc_text(row, names, config.pad_token_id)} for row in self._frames(model, batch)[2].tolist()]

    def pipeline_tag(self, modality: str) -> str:
        return "automatic-speech-recognition"
