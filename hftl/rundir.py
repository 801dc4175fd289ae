"""The run directory is the user's data: who may write there, what hftl wrote, and when a run has finished.

:func:`claim` applies the rules before any model or data is loaded. A new or empty ``output_dir`` starts a run; a
file, an unwritable path, or a folder that holds anything and is not an hftl run is refused. An hftl run there is
replaced only with ``overwrite=true`` (only what hftl wrote, listed in ``.hftl/manifest.json``, is removed) or
continued with ``train.resume=true`` (the settings that change what is trained must be equal). One writer: the main
process holds ``fcntl.flock`` on ``.hftl/lock`` for the whole run; the kernel lets go when it dies (no stale lock).
The final save is staged in ``.hftl/staging``, moved into place, and the completion marker ``hftl_run.json`` comes
last (removed before a run writes again): ``hftl.load`` and ``hftl push`` refuse a run without it.

Example:
    >>> with claim(cfg, accelerator) as run, run.final_save() as stage:  # doctest: +SKIP
    ...     (stage / "metrics.json").write_text("{}")  # in place, and the run marked complete, on leaving
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hftl import __version__
from hftl.config import Config, RunDirError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per folder is then the user's care
    fcntl = None

MARKER = "hftl_run.json"
HIDDEN = ".hftl"  # hftl's own bookkeeping: lock, manifest, staging
KILL_ENV = "HFTL_TEST_KILL_AT"
# What recipes write at the top of a run: one of these that hftl did not write would be replaced, so it is refused.
OUTPUT_NAMES = ("config.yaml", "metrics.json", "README.md", "model", "merged", "pretrained", "full", "ladder.png",
                "selection.json", "selection.png", "tasks")
RESUME_SECTIONS = ("model", "data", "strategy", "train", "eval", "pretrain", "shots", "multitask")
RESUME_FREE = {"train.resume", "train.num_workers", "train.keep_checkpoints", "train.checkpoint_every"}
_HELD: dict[Path, RunDir] = {}  # folders this process holds: a recipe run by a recipe shares its claim


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a folder hftl made for a run (finished or not)."""
    return (Path(path) / HIDDEN).is_dir() or (Path(path) / MARKER).is_file()


def is_complete(path: str | Path) -> bool:
    """Whether the run at ``path`` finished: its completion marker is there."""
    return _read(Path(path) / MARKER).get("complete") is True


def require_complete(path: str | Path) -> None:
    """Refuse a run directory, or its ``model``/``merged`` folder, when the run did not finish. Folders outside hftl
    runs (a Hub snapshot, a model saved by hand) and folders saved whole (a masked stage) pass. Raises RunDirError."""
    path = Path(os.path.abspath(path))
    root = path if is_run(path) else path.parent
    if is_run(root) and not is_complete(root) and (root == path or path.name in ("model", "merged")):
        raise RunDirError(f"{root} holds an hftl run that did not finish (no {MARKER}): resume it with "
                          f"train.resume=true output_dir={root}, or run it again with overwrite=true")


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key old -> new"`` for each setting that changes what is trained (``RESUME_SECTIONS`` less
    ``RESUME_FREE``). Keys missing from ``old`` (added by a later hftl) are not compared."""
    return [f"{section}.{key} {(old.get(section) or {})[key]!r} -> {value!r}"
            for section in RESUME_SECTIONS for key, value in (new.get(section) or {}).items()
            if f"{section}.{key}" not in RESUME_FREE and (old.get(section) or {}).get(key, value) != value]


class RunDir(contextlib.AbstractContextManager):
    """A claimed run directory, released on leaving a ``with``. Only the main process (``writer``) writes."""

    def __init__(self, path: Path, writer: bool, lock: int | None = None, made: dict | None = None):
        self.path, self.writer, self._lock, self._made, self._depth = path, writer, lock, made or {}, 1

    def __exit__(self, *exc) -> None:
        self.release()

    def checkpoints(self, name: str = "checkpoints") -> str:
        """The path of a checkpoint folder of this run, recorded: ``overwrite`` removes hftl's checkpoints there."""
        if self.writer and name not in self._made["checkpoints"]:
            self._made["checkpoints"].append(name)
            self._save()
        return str(self.path / name)

    def logs(self, name: str = "tensorboard") -> str:
        """The path of a log folder of this run (TensorBoard's), recorded: ``overwrite`` removes its event files."""
        if self.writer and name not in self._made.setdefault("logs", []):
            self._made["logs"].append(name)
            self._save()
        return str(self.path / name)

    @contextlib.contextmanager
    def final_save(self, *, marker: bool = True) -> Iterator[Path]:
        """An empty staging folder in the run for its outputs; on success they replace what an earlier save of this run
        wrote under the same names, then the completion marker comes last (``marker``: not for a stage's folder)."""
        if not self.writer:
            raise RuntimeError("only the main process writes the run directory")
        (self.path / MARKER).unlink(missing_ok=True)
        staging = self.path / HIDDEN / "staging"
        shutil.rmtree(staging, ignore_errors=True)  # hftl's own folder, left by a save that was killed
        staging.mkdir(parents=True)
        yield staging
        new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir())
        old = [f for f in self._made["files"] if f.split("/")[0] in {n.split("/")[0] for n in new}]
        self._made["files"] = sorted((set(self._made["files"]) - set(old)) | set(new))
        self._save()  # before anything moves: a kill from here on leaves every file known to overwrite
        _remove_files(self.path, old)
        for i, entry in enumerate(sorted(staging.iterdir())):
            if i == 1 and os.environ.get(KILL_ENV) == "final-save":  # crash tests, as in hftl.checkpoints
                os.kill(os.getpid(), signal.SIGKILL)
            _place(entry, self.path / entry.name)
        staging.rmdir()
        if marker:
            _write_json(self.path / MARKER, {"complete": True, "hftl_version": __version__,  # and the manifest
                                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self._made})

    def release(self) -> None:
        """End this claim; the lock is let go when the outermost claim of this process ends."""
        self._depth -= 1
        if self._depth == 0 and self.writer:
            _HELD.pop(self.path, None)
            os.close(self._lock)  # closing the file's last descriptor lets go of the flock

    def _save(self) -> None:
        _write_json(self.path / HIDDEN / "manifest.json", self._made)


def claim(cfg: Config, accelerator: Any = None, *, path: str | Path | None = None) -> RunDir:
    """Take ``output_dir`` (or ``path``) for this run by the module's rules, before any compute (RunDirError naming
    the folder and the fix); with ``overwrite`` the earlier run's files are removed here. Every process calls it: the
    main one decides and tells the others. A folder this process holds is shared (a recipe run by a recipe)."""
    path = Path(os.path.abspath(path if path is not None else cfg.output_dir))
    run, error = None, None
    if accelerator is None or accelerator.is_main_process:
        try:
            run = _claim(path, cfg)
        except Exception as err:  # noqa: BLE001 - told to the other processes, then raised
            error = err
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([None if error is None else str(error)])[0]
        error = error or (RunDirError(message) if message is not None else None)
    if error is not None:
        raise error
    return run or RunDir(path, writer=False)


@contextlib.contextmanager
def whole_folder(path: str | Path) -> Iterator[Path]:
    """An empty folder to fill that becomes ``path`` as a whole on success. Inside a run this process holds it is
    staged and recorded there; elsewhere ``path`` must be missing or empty (RunDirError)."""
    path = Path(os.path.abspath(path))
    if path.parent in _HELD:
        with _HELD[path.parent].final_save(marker=False) as staging:
            (staging / path.name).mkdir()
            yield staging / path.name
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(f"{path} exists and is not empty: hftl writes it only as a new folder; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _rmdir(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this call; gone once renamed


def _claim(path: Path, cfg: Config) -> RunDir:
    if path in _HELD:
        _HELD[path]._depth += 1
        return _HELD[path]
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir {path} is a file: set output_dir to a folder (a new or empty one)")
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() and not is_run(path) else []
    if names:
        raise RunDirError(f"output_dir {path} holds {len(names)} entries hftl did not write ({', '.join(names[:3])}"
                          f"{', ...' * (len(names) > 3)}): hftl never writes there; choose a new or empty output_dir")
    try:  # the probe: the folder, hftl's subfolder and a file in it can be made
        (path / HIDDEN).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path / HIDDEN).close()
    except OSError as err:
        raise RunDirError(f"output_dir {path} cannot be written ({err.strerror or err}): choose a folder you may "
                          "write to") from None
    lock = _lock(path)
    try:
        run = RunDir(path, True, lock, _decide(path, cfg))
    except BaseException:
        os.close(lock)
        raise
    run._save()
    _HELD[path] = run
    return run


def _lock(folder: Path) -> int:
    """``flock`` on ``folder/.hftl/lock`` (its file descriptor), the holder's pid written in it for a second run."""
    path = folder / HIDDEN / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirError(f"output_dir {folder} is in use by another hftl run (pid {path.read_text().strip() or '?'})"
                          ": wait for it to end, or choose another output_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _decide(path: Path, cfg: Config) -> dict:
    """The manifest this run starts with: the earlier run's files removed (overwrite) or its settings compared."""
    config = json.loads(json.dumps(cfg.to_dict()))
    # files (relative paths) and checkpoint folders hftl wrote, the settings it began with (the marker holds a copy)
    made = {"files": [], "checkpoints": [], **(_read(path / HIDDEN / "manifest.json") or _read(path / MARKER))}
    fresh = {"files": [], "checkpoints": [], "config": config}
    ours = {f.split("/")[0] for f in made["files"]} | set(made["checkpoints"])
    if not any(p.name != HIDDEN for p in path.iterdir()):
        return fresh
    if cfg.train.resume:
        differ = config_differences(made.get("config", {}), config)
        if differ:
            raise RunDirError(f"train.resume=true, but output_dir {path} was started with other settings: "
                              f"{'; '.join(differ)}: resume with the old values, or start over with overwrite=true "
                              "or a new output_dir")
        (path / MARKER).unlink(missing_ok=True)
        made.setdefault("config", config)
    elif cfg.overwrite:
        _clean(path, made)
        made = fresh
    else:
        raise RunDirError(f"output_dir {path} holds {'a finished' if is_complete(path) else 'an unfinished'} hftl "
                          "run: set overwrite=true to replace it (only the files hftl wrote there are removed), "
                          "train.resume=true to continue it, or choose a new output_dir")
    for name in OUTPUT_NAMES:  # hftl's own ones (a user's file left inside after overwrite) are merged into;
        if (path / name).exists() and name not in ours and not is_run(path / name):  # a run inside decides itself
            raise RunDirError(f"output_dir {path} holds {name}, which hftl did not write and this run would "
                              "replace: move it away, or choose a new output_dir")
    return made


def _clean(path: Path, made: dict) -> None:
    """Remove what an earlier run wrote at ``path`` (its files and checkpoints) and nothing else. A run folder inside
    (the ladder's ``full``) is cleaned by its own claim, with the same ``overwrite``."""
    from hftl.checkpoints import remove_checkpoints  # where checkpoints are written (late: it imports torch)

    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path / HIDDEN / "staging", ignore_errors=True)  # hftl's own folder
    _remove_files(path, made["files"])
    for name in filter(_inside, made["checkpoints"]):
        remove_checkpoints(path / name)
        _rmdir(path / name)
    for name in filter(_inside, made.get("logs", [])):  # trackers' event files, and the folders they leave empty
        _remove_files(path, [p.relative_to(path).as_posix() for p in (path / name).rglob("events.out.tfevents.*")])
        _rmdir(path / name)


def _inside(rel: str) -> bool:
    """Whether a recorded relative path stays inside its run (a manifest edited by hand must not reach out)."""
    return bool(rel) and not Path(rel).is_absolute() and ".." not in Path(rel).parts


def _remove_files(root: Path, rels: list[str]) -> None:
    for rel in filter(_inside, rels):
        if not (root / rel).is_dir():
            (root / rel).unlink(missing_ok=True)
            parent = (root / rel).parent
            while parent != root and _rmdir(parent):
                parent = parent.parent


def _rmdir(path: Path) -> bool:
    with contextlib.suppress(OSError):  # missing, or holds something: it stays
        path.rmdir()
        return True
    return False


def _place(src: Path, dst: Path) -> None:
    """Move a staged file or folder to ``dst``; into an existing folder entry by entry (what else it holds stays)."""
    if src.is_dir() and dst.is_dir():
        for entry in sorted(src.iterdir()):
            _place(entry, dst / entry.name)
        src.rmdir()
    else:
        os.replace(src, dst)


def _read(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError, TypeError):  # missing or damaged: nothing known
        return dict(json.loads(path.read_text()))
    return {}


def _write_json(path: Path, data: dict) -> None:
    """Written whole or not at all: a temporary file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)
