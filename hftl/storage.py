"""Writes that fail for want of space say so: ``no space left on device while writing <path>``, with the fix.

A full disk reaches Python in three shapes: an ``OSError`` with errno ENOSPC or EDQUOT (Python's own writes),
safetensors' ``SafetensorError`` ("No space left on device (os error 28)"), and torch.save's internal
``RuntimeError`` ("[enforce fail at inline_container.cc...] unexpected pos ..."), which names nothing. For the last
two the folder is probed with a small write: if that fails with ENOSPC/EDQUOT too, the disk is full.

Example:
    >>> with disk_space(run_dir, "free space, or set output_dir to another disk"):  # doctest: +SKIP
    ...     model.save_pretrained(run_dir / "model")
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)
_PROBE_BYTES = 1 << 20


class DiskFullError(OSError):
    """The disk (or the user's quota) filled while hftl wrote; the message names the path and the fix."""


def _probe_full(folder: Path) -> bool:
    """Whether a small write into ``folder`` fails for want of space (the partial file of the failed write is
    still there: a full disk stays full until it is removed)."""
    probe = folder / f".hftl-space-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as err:
        return err.errno in FULL
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def is_disk_full(err: BaseException, folder: str | Path) -> bool:
    """Whether ``err`` (raised while writing into ``folder``) means the disk or the quota is full."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in FULL
    text = str(err)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    folder = Path(folder)
    while not folder.is_dir() and folder != folder.parent:  # the folder being written may be gone already
        folder = folder.parent
    shapes = isinstance(err, (RuntimeError, OSError)) or type(err).__name__ == "SafetensorError"
    return shapes and _probe_full(folder)


@contextlib.contextmanager
def disk_space(path: str | Path, fix: str, on_full: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn a full disk while writing under ``path`` into a DiskFullError naming it and ``fix``.

    ``on_full`` runs first (e.g. remove the half-written folder, which also gives the space back).
    Other errors pass through unchanged.
    """
    try:
        yield
    except Exception as err:  # safetensors' error is a bare Exception; the rest pass through unchanged
        if isinstance(err, DiskFullError) or not is_disk_full(err, path):
            raise
        target = getattr(err, "filename", None) or path
        if on_full is not None:
            on_full()
        raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {target}: {fix}") from err


def names_disk_full(fix: str) -> Callable:
    """Decorator: a full disk while the function writes under its first argument (a folder) raises DiskFullError.

    Example:
        >>> @names_disk_full("free space, or set output_dir to another disk")  # doctest: +SKIP
        ... def save_run(run_dir, ...): ...
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(path, *args, **kwargs):
            with disk_space(path, fix):
                return fn(path, *args, **kwargs)

        return inner

    return wrap
