"""Speech recognition by transfer with a CTC head: moved to the ``ctc`` task (``hftl.tasks.ctc``), which runs it
through the recipe, loop, run directory and ``hftl.load``; these names stay importable from here.

Example:
    >>> model, processor = load_ctc("facebook/wav2vec2-base", ["yes", "no", "stop"])  # doctest: +SKIP
"""

from __future__ import annotations

from hftl.tasks.ctc import SPECIAL, WORD_DELIMITER, build_vocab, error_rates, load_ctc, make_processor, transcribe

__all__ = ["SPECIAL", "WORD_DELIMITER", "build_vocab", "error_rates", "load_ctc", "make_processor", "transcribe"]
