"""Length-grouped batches: less padding for text and speech, the same seeded order on every process.

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

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of 50 batches, sort each by length,
    then shuffle the batches. ``set_epoch`` makes the order reproducible for resume and across processes.
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool, seed: int = 0, group: bool = True) -> None:
        self.lengths = np.asarray(lengths if lengths is not None else [], dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.group, self.epoch = batch_size, shuffle, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group:
            mega = bs * 50
            chunks = [order[i : i + mega] for i in range(0, n, mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + bs].tolist() for i in range(0, n, bs)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)
