"""Speech recognition by a sequence-to-sequence model (Whisper): the pretrained encoder-decoder fine-tuned on clips
and their transcripts, evaluated by decoding with ``generate`` (greedy), scored by WER and CER on normalised text.

Input: a dataset with an audio column (file paths; ``data.input_column``) and a transcript column
(``data.label_column``). Labels are the transcript's tokens after the start-of-transcript token (the model shifts
them right itself), padded with -100; a transcript longer than the decoder's positions, or a clip longer than the
model reads (``data.max_seconds``, Whisper's 30 s), is refused before compute, naming the rows. There is no new head:
``linear_probe`` and ``head`` are refused; ``full``, ``freeze_n`` (``strategy.freeze_layers`` counts encoder
blocks; all of them freezes the whole encoder) and the peft methods train.

Example:
    hftl finetune task.name=seq2seq_asr model.name=openai/whisper-tiny.en data.splits.train=train.csv \\
        data.splits.validation=validation.csv data.splits.test=test.csv data.input_column=audio \\
        data.label_column=text strategy.name=lora
"""

from __future__ import annotations

import functools

import torch

from hftl.tasks import register, resolve_best
from hftl.tasks import speech_text as st

MAX_NEW_TOKENS = 128  # the most tokens generate writes per clip at evaluation (a looping model stops there)
_NO_HEAD = ("a sequence-to-sequence model has no new head to train alone: its pretrained decoder writes the words")


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str, revision: str):
    from transformers import AutoTokenizer

    from hftl.models import resolve

    return AutoTokenizer.from_pretrained(name, **resolve(name, revision))


def tokenizer_of(config):
    """The tokenizer that decodes the model's ids: from where the model was loaded (a run's model folder holds its
    processor), else its base model."""
    name = getattr(config, "_name_or_path", "") or config.backbone_name
    revision = getattr(config, "backbone_revision", None) or "main" if name == config.backbone_name else "main"
    return _tokenizer(name, revision)


def _texts(ids: list[list[int]], tokenizer, end: int) -> list[str]:
    out = []
    for row in ids:
        row = [i for i in row if i >= 0]
        if end in row[1:]:  # a row may start with the end token's twin (bos = eos in Whisper)
            row = row[: row.index(end, 1)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


class Seq2SeqCollator:
    """Log-mel features (padded to the model's fixed window) and tokenized transcripts without their leading
    decoder-start token, padded with -100."""

    def __init__(self, processor) -> None:
        self.extractor, self.tokenizer = processor.feature_extractor, processor.tokenizer
        self.start = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")

    def __call__(self, rows: list[dict]) -> dict:
        import numpy as np

        waves = [np.asarray(r["waveform"], dtype=np.float32) for r in rows]
        batch = self.extractor(waves, sampling_rate=self.extractor.sampling_rate, return_tensors="pt",
                               padding="max_length")
        ids = [self.tokenizer(r["label"]).input_ids for r in rows]
        ids = [row[1:] if row and row[0] == self.start else row for row in ids]
        labels = torch.full((len(ids), max(map(len, ids))), st.IGNORE, dtype=torch.long)
        for i, row in enumerate(ids):
            labels[i, : len(row)] = torch.as_tensor(row)
        return {"input_features": batch["input_features"], "labels": labels}


@register("seq2seq_asr")
class Seq2SeqASR:
    tunes = False
    stratify = False
    caches_features = False
    baselines = False  # a majority class or TF-IDF cannot transcribe
    refused_strategies = {"linear_probe": _NO_HEAD, "head": _NO_HEAD}
    prepare_labels = staticmethod(st.prepare_transcripts)
    check_best = staticmethod(st.check_best)

    def model_class(self):
        from transformers import AutoModelForSpeechSeq2Seq

        return AutoModelForSpeechSeq2Seq

    def label_names(self, splits, cfg=None) -> list[str]:
        return []  # the tokenizer's vocabulary is the output space

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
        model = self.model_class().from_pretrained(m.name, dtype=_DTYPES[m.dtype],
                                                   **resolve(m.name, m.revision, m.trust_remote_code))
        return self._record(model, splits, cfg)

    def processor(self, name: str, revision: str = "main", trust_remote_code: bool = False, splits=None, cfg=None):
        """The model's processor (feature extractor and tokenizer); with ``splits``, every transcript and clip
        checked against what the model takes (DataError naming the rows)."""
        from transformers import AutoProcessor

        from hftl.models import ensure_pad_token, model_config, resolve

        kwargs = resolve(name, revision, trust_remote_code)
        processor = ensure_pad_token(AutoProcessor.from_pretrained(name, **kwargs), name, quiet=True)
        if splits is not None:
            config = model_config(name, kwargs)
            st.check_clips(splits, min(cfg.data.max_seconds, processor.feature_extractor.chunk_length),
                           "data.max_seconds" if cfg.data.max_seconds <= processor.feature_extractor.chunk_length
                           else f"the {processor.feature_extractor.chunk_length} s {name} reads")
            self.check_lengths(processor, splits, config.max_target_positions, name)
        return processor

    def check_lengths(self, processor, splits, limit: int, name: str) -> None:
        """DataError when a transcript has more tokens than the decoder has positions (it would crash mid-epoch)."""
        from hftl.data.sources import DataError

        for split, ds in splits.items():
            lengths = [len(ids) - 1 for ids in processor.tokenizer(ds["label"][:]).input_ids]  # less the start
            long = [i for i, n in enumerate(lengths) if n > limit]
            if long:
                rows = ", ".join(str(i + 1) for i in long[:5])
                raise DataError(f"{len(long)} transcript(s) in split {split!r} have more tokens than the "
                                f"{limit} positions of {name}'s decoder (rows {rows}, longest {max(lengths)} "
                                f"tokens): cut those clips and their transcripts into shorter ones, or drop those "
                                f"rows")

    def collator(self, processor):
        return Seq2SeqCollator(processor)

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
        """Per clip (``speech_text.pack``): the teacher-forced loss and the greedy transcript's ids from ``generate``,
        one encoder pass serving both."""
        base = st.unwrap(model)
        labels = batch["labels"]
        encoded = base.get_encoder()(batch["input_features"])
        logits = base(encoder_outputs=encoded, labels=labels).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=st.IGNORE,
                                                reduction="none").sum(1)
        return st.pack(nll, (labels != st.IGNORE).sum(1), _greedy(base, encoded))

    def _both(self, outputs: torch.Tensor, labels: torch.Tensor, config) -> tuple[list[str], list[str]]:
        tokenizer = tokenizer_of(config)
        hyps = _texts(st.unpack(outputs)[2], tokenizer, config.eos_token_id)
        return hyps, _texts(labels.tolist(), tokenizer, config.eos_token_id)

    def scores(self, outputs: torch.Tensor, labels: torch.Tensor, metrics=None, config=None) -> dict:
        return st.scores_of(*self._both(outputs, labels, config), outputs)

    def tune(self, config, logits, labels, cfg=None) -> dict:
        return {}

    def prediction_rows(self, outputs: torch.Tensor, labels: torch.Tensor, config) -> list[dict]:
        return st.rows_of(*self._both(outputs, labels, config))

    def outputs(self, outputs: torch.Tensor, config, labels=None) -> list[str]:
        return _texts(st.unpack(outputs)[2], tokenizer_of(config), config.eos_token_id)

    targets = staticmethod(st.targets)

    @torch.no_grad()
    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per clip: ``text``, its transcript by greedy ``generate`` (as evaluation decodes it)."""
        base = st.unwrap(model)
        ids = _greedy(base, base.get_encoder()(batch["input_features"]))
        return [{"text": t} for t in _texts(ids.tolist(), tokenizer_of(config), config.eos_token_id)]

    def pipeline_tag(self, modality: str) -> str:
        return "automatic-speech-recognition"


def _greedy(base, encoded) -> torch.Tensor:
    """Token ids of each clip's greedy transcript from its encoder outputs, each row ended by the end token (a row
    that stopped at ``MAX_NEW_TOKENS`` gets one)."""
    limit = min(MAX_NEW_TOKENS, base.config.max_target_positions - 4)  # room for the decoder's prompt
    ids = base.generate(encoder_outputs=encoded, max_new_tokens=limit, do_sample=False, num_beams=1)
    end = torch.full((len(ids), 1), base.config.eos_token_id, dtype=ids.dtype, device=ids.device)
    return torch.cat([ids, end], 1)
