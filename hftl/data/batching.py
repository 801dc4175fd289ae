"""Length-grouped batches: less padding for text and speech, the same seeded order on every process, and optimizer
steps that hold the same examples whatever the gradient accumulation.

Example:
    >>> batches = LengthGroupedBatches([5, 9, 3, 7], batch_size=2, shuffle=True, seed=0)
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3]
"""

from __future__ import annotations

import numpy as np


def drop_full_mask(batch):
    """Leave out an attention mask that masks nothing (every example as long as the batch).

    Checked on the CPU before the batch moves: transformers otherwise checks it on the device in every forward
    (a host-device synchronisation), and under ``torch.compile`` keeps the mask, which rules out the flash kernel
    of scaled-dot-product attention. The models read a missing mask as "attend everywhere": the same result.
    """
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        del batch["attention_mask"]
    return batch


class LengthGroupedBatches:
    """Batches of similar length (less padding), shuffled per epoch with a fixed seed; ordered when not.

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of 50 steps, sort each by length, then
    shuffle the steps. A step is ``accum`` consecutive batches (one optimizer step under gradient accumulation):
    grouping, sorting and shuffling work on whole steps, then each step is cut into its batches, so the examples of
    every optimizer step, and their order, are those of one batch of ``batch_size x accum`` with ``accum=1``. A
    shorter last step (the dataset's remainder) stays last: accelerate's split over processes keeps only full
    batches until the last one. ``set_epoch`` makes the order reproducible for resume and across processes.

    Example:
        >>> batches = LengthGroupedBatches(range(10), batch_size=2, shuffle=True, seed=1, accum=2)
        >>> [len(s) for s in batches.steps()], [len(b) for b in batches]
        ([4, 4, 2], [2, 2, 2, 2, 2])
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool, seed: int = 0, group: bool = True,
                 accum: int = 1) -> None:
        self.lengths = np.asarray(lengths if lengths is not None else [], dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.group, self.epoch = batch_size, shuffle, seed, group, 0
        self.accum = accum

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        steps, rest = divmod(len(self.lengths), self.batch_size * self.accum)
        return steps * self.accum + -(-rest // self.batch_size)

    def steps(self) -> list[list[int]]:
        """The epoch's optimizer steps: lists of ``batch_size x accum`` indices (the last one may be shorter)."""
        n, size = len(self.lengths), self.batch_size * self.accum
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group and n:
            mega = size * 50
            chunks = [order[i : i + mega] for i in range(0, n, mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        steps = [order[i : i + size].tolist() for i in range(0, n, size)]
        if self.shuffle:
            steps = [steps[i] for i in rng.permutation(len(steps))]
            short = [s for s in steps if len(s) < size]  # at most one: the remainder
            steps = [s for s in steps if len(s) == size] + short
        return steps

    def __iter__(self):
        bs = self.batch_size
        return iter([step[i : i + bs] for step in self.steps() for i in range(0, len(step), bs)])
