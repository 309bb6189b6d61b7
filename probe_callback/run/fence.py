"""Fences around the user's run: our failed writes are logged once and reported, never raised; one run per folder.

Example:
    >>> faults = Faults()
    >>> with faults.guard("report", step=3):
    ...     raise OSError(28, "No space left on device")
    >>> [f["what"] for f in faults.report()], faults.report()[0]["from_step"]
    (['report'], 3)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .resume import remove_temp_files
from .sharding import on_every_rank

logger = logging.getLogger("probe_callback")


class Faults:
    """What could not be recorded: each kind of write that failed, from which step and why (logged once each)."""

    def __init__(self) -> None:
        self.failed: dict[str, dict[str, Any]] = {}

    def record(self, what: str, step: int, exc: BaseException) -> None:
        entry = self.failed.get(what)
        if entry is not None:
            entry["failures"] += 1
            return
        logger.warning("probe_callback: could not record %s at step %d (%r); training goes on", what, step, exc)
        self.failed[what] = {"what": what, "from_step": int(step), "error": repr(exc), "failures": 1}

    @contextlib.contextmanager
    def guard(self, what: str, step: int) -> Iterator[None]:
        """Run the body; an exception in it is recorded as a fault of ``what`` and swallowed."""
        try:
            yield
        except Exception as exc:  # a failure of ours never kills the user's run
            self.record(what, step, exc)

    def report(self) -> list[dict[str, Any]]:
        """The report's ``not_recorded`` list."""
        return [dict(v) for v in self.failed.values()]


class GuardedStore:
    """A writing :class:`~probe_callback.store.vectors.VectorStore` that stops at its first failed write, never raising.

    After a failure nothing more is appended (a torn tail is cut when the store is next opened), so a
    full disk costs the vectors and memberships from that step on, never the store's alignment.
    ``store=None`` is a store that could not be opened.
    """

    def __init__(self, store: Any, faults: Faults, step: Callable[[], int]) -> None:
        self.store, self.faults, self.step = store, faults, step
        self.broken = store is None

    @property
    def dim(self) -> int | None:
        return None if self.store is None else self.store.meta.dim

    @property
    def path(self) -> Any:
        return None if self.store is None else self.store.path

    def row_ids(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64) if self.store is None else self.store.row_ids()

    def truncate_steps_after(self, step: int) -> None:
        self._call("truncate_steps_after", step)

    def append_vectors(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self._call("append_vectors", rows, vectors)

    def append_memberships(
        self, rows: np.ndarray, steps: np.ndarray, rises: np.ndarray, learning: dict[str, np.ndarray] | None = None
    ) -> None:
        self._call("append_memberships", rows, steps, rises, learning)

    def flush(self, fsync: bool = False) -> None:
        self._call("flush", fsync)

    def close(self) -> None:
        self._call("close")

    def _call(self, name: str, *args: Any) -> None:
        if self.broken:
            return
        try:
            getattr(self.store, name)(*args)
        except Exception as exc:
            self.broken = True
            self.faults.record("vectors", self.step(), exc)
            for f in self.store._files.values():  # stop here; never write the unflushed rest later
                with contextlib.suppress(Exception):
                    f.close()


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``path``, held until :meth:`release` (or the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another process (or callback) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunLocks:
    """One run's hold on its output folder: rank 0 locks ``run.lock``, every rank its ``rank-N.lock``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.held: list[FolderLock] = []

    def acquire(self, rank: int, main: bool, faults: Faults, step: int) -> bool:
        """Take this rank's locks; False when another run holds one. A folder that cannot hold a lock file
        (read-only) is recorded in ``faults`` and left unlocked."""
        self.release()
        ok = True
        for name in (["run.lock"] if main else []) + [f"rank-{rank:05d}.lock"]:
            lock = FolderLock(self.folder / name)
            try:
                got = lock.acquire()
            except OSError as exc:
                faults.record("lock", step, exc)
                continue
            ok = ok and got
            self.held += [lock] if got else []
        return ok

    def fence(self, accelerator: Any, rank: int, main: bool, faults: Faults, step: int) -> bool:
        """Lock the folder for this run on every rank, or on none (False, logged: another run holds it and
        every rank stands down); rank 0 then removes the temp files an interrupted write left there."""
        if not on_every_rank(accelerator, self.acquire(rank, main, faults, step)):
            logger.error(
                "probe_callback: another run (or another ProbeCallback) is writing to %s; this run trains without "
                "the callback. Give each run its own output_dir.",
                self.folder,
            )
            self.release()
            return False
        if main:
            remove_temp_files(self.folder)
        return True

    def release(self) -> None:
        for lock in self.held:
            lock.release()
        self.held = []


class FaultRecordingSink:
    """Wraps a publisher sink: a failing call is recorded in ``faults`` (as ``<Sink>.<method>``, logged once)
    instead of raised."""

    def __init__(self, sink: Any, faults: Faults, step: Callable[[], int]) -> None:
        self.sink, self.faults, self.step = sink, faults, step

    def __getattr__(self, method: str) -> Callable[..., Any]:
        fn = getattr(self.sink, method)

        def call(*args: Any) -> Any:
            with self.faults.guard(f"{type(self.sink).__name__}.{method}", self.step()):
                return fn(*args)

        return call
