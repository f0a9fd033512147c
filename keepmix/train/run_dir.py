"""The run directory: the one place that spells the names of the files a run writes.

A run directory holds::

    run_id          the run's id (also in every checkpoint: a checkpoint copied from another
                    run is refused on resume)
    config.yaml     the complete configuration
    metrics.jsonl   one JSON object per epoch
    checkpoint.pt   written each ``checkpoint_every`` epochs, on SIGINT/SIGTERM and at the end
    final.json      the final record (written last: its presence means the run finished)
    lock            held (an advisory lock) while a process trains in the directory
    accuracy.png, methods.png    pictures (``pictures=True``)
    tensorboard/    event files (``log=tensorboard``)

Every reader and writer of these files (the loop, checkpoints, ``keepmix plot``/``show``,
``benchmarks/reproduce.py``) goes through :class:`RunDir`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "RunLock", "RunDirBusy", "new_run_id", "is_main_process"]


def new_run_id() -> str:
    """A fresh random run id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (nothing is created until something is written)."""

    path: Path

    RUN_ID = "run_id"
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    FINAL = "final.json"
    ACCURACY_PNG = "accuracy.png"
    METHODS_PNG = "methods.png"
    TENSORBOARD = "tensorboard"
    LOCK = "lock"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- where ------------------------------------------------------------------------------
    @classmethod
    def of(cls, run: str | os.PathLike) -> RunDir:
        """The run directory of ``run``: the directory itself, or the folder of a checkpoint file."""
        p = Path(run)
        return cls(p.parent if p.is_file() else p)

    @classmethod
    def new(cls, out_dir: str | os.PathLike, name: str) -> RunDir:
        """``<out_dir>/<name>-<timestamp>`` (with ``-1``, ``-2``, ... when that exists)."""
        base = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, i = base, 1
        while path.exists():  # two runs started within one second
            path, i = base.with_name(f"{base.name}-{i}"), i + 1
        return cls(path)

    @property
    def run_id_file(self) -> Path:
        return self.path / self.RUN_ID

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def final(self) -> Path:
        return self.path / self.FINAL

    @property
    def accuracy_png(self) -> Path:
        return self.path / self.ACCURACY_PNG

    @property
    def methods_png(self) -> Path:
        return self.path / self.METHODS_PNG

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # -- what -------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether this looks like a keepmix run directory (it has a checkpoint or a config)."""
        return self.checkpoint.is_file() or self.config.is_file()

    def is_finished(self) -> bool:
        return self.final.is_file()

    def read_run_id(self) -> str | None:
        """The id in ``run_id`` (None when the file is absent: a run of an older keepmix)."""
        try:
            return self.run_id_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_run_id(self, run_id: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.run_id_file, run_id + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records (an empty list when there is no metrics file yet)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(ln) for ln in self.metrics.read_text().splitlines() if ln.strip()]

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def trim_metrics(self, epochs: int) -> None:
        """Keep only the records of the first ``epochs`` epochs (a resume drops the epochs its
        checkpoint does not include, so none is recorded twice)."""
        if not self.metrics.is_file():
            return
        keep = [ln for ln in self.metrics.read_text().splitlines() if ln.strip() and json.loads(ln).get("epoch", 0) <= epochs]
        _write_atomic(self.metrics, "".join(ln + "\n" for ln in keep))

    def write_final(self, final: dict[str, Any]) -> None:
        _write_atomic(self.final, json.dumps(final, indent=2) + "\n")

    def read_final(self) -> dict[str, Any]:
        return json.loads(self.final.read_text())


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set there), or the only process."""
    return os.environ.get("RANK", "0") == "0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunDirBusy(RuntimeError):
    """Another process trains in this run directory (its lock is held)."""


class RunLock:
    """The run directory's ``lock`` file, held with ``fcntl.flock`` while one process trains there.

    The kernel releases an flock when its holder exits, however it exits, so a lock file left
    by a dead process (killed, out of memory, a crash) is stale: it is recognised as such
    (the pid it names is gone) and taken over. A live holder's lock refuses the second run
    with :class:`RunDirBusy` naming the process. The file holds the holder's pid and host.
    """

    def __init__(self, path: Path, fd: int, stale: str | None) -> None:
        self.path = path
        self._fd: int | None = fd
        #: The pid a stale lock file named (its process is gone), else None.
        self.stale = stale

    @classmethod
    def acquire(cls, run: RunDir | str | os.PathLike) -> RunLock:
        import fcntl
        import socket

        rd = run if isinstance(run, RunDir) else RunDir(Path(run))
        rd.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(rd.lock, os.O_RDWR | os.O_CREAT, 0o644)
        before = os.read(fd, 200).decode(errors="replace").split()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = f"process {before[0]}" + (f" on {before[1]}" if len(before) > 1 else "") if before else "another process"
            raise RunDirBusy(
                f"run directory {str(rd)!r} is in use: {who} is training in it (its lock file {str(rd.lock)!r} is held); "
                "wait for it to finish or stop it, then resume"
            ) from None
        stale = before[0] if before and before[0].isdigit() and not _pid_alive(int(before[0])) else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return cls(rd.lock, fd, stale)

    def release(self) -> None:
        """Empty the lock file (no holder) and release the lock (idempotent). The file stays:
        removing it would let a process that opened it just before lock a file no longer there."""
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
