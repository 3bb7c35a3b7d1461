"""One process at a time checks, builds and saves a saved expert store.

Two starts of the same model and format (``chat`` in one terminal, ``bench`` in another) would otherwise write
the same entry together: each truncates or replaces the other's partial file, and the first to finish renames
a file the second is still filling and writes the description that makes it look complete. A kill of the
second then leaves zeros in an entry every later start trusts.

While a start works on an entry ``NAME`` it holds an exclusive ``flock`` on ``NAME.lock`` beside it, from the
moment it looks at the entry until the entry is saved (or given up), and removes the file when done. A second
start waits for it and then reads what it saved, which is sooner than quantizing its own copy beside it.
``moe-tui cache`` asks the same lock whether an entry is being written. Where ``fcntl`` does not exist
(Windows) or the lock file cannot be made (a read-only cache), nothing is locked and stores are saved as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

POLL_S = 0.2  # how often a waiting start tries the lock again
WAITING = "waiting for another moe-tui saving this store"
_WORKING: list[Path] = []  # the entries threads of this process hold (or work on unlocked) now


def working_on_a_store() -> bool:
    """Whether a thread of this process is checking, building or saving a store entry now: a process that
    ended at once would leave the entry's partial files (gigabytes, until a later start discards them)."""
    return bool(_WORKING)


def lock_path(directory: Path) -> Path:
    """The lock file of the store entry ``directory`` (beside it, so that the entry can be removed whole)."""
    return directory.with_name(directory.name + ".lock")


@contextlib.contextmanager
def store_lock(directory: Path | None, report: Callable[[str, int, int], None]) -> Iterator[None]:
    """Hold the entry's lock for the ``with`` block, waiting while another process holds it; ``report(stage,
    done, total)`` shows the wait as a stage (only when there is one), at every poll, so that a callback that
    raises gives the wait up. No lock when ``directory`` is None.
    The lock file is removed when the block ends, so the cache directory holds only the entries."""
    path = lock_path(directory) if directory is not None else None
    handle = _acquire(path, report) if path is not None else None
    if directory is not None:
        _WORKING.append(directory)
    try:
        yield
    finally:
        if directory is not None:
            _WORKING.remove(directory)
        if handle is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # still held: a start waiting on this file sees it gone and makes a new one
            os.close(handle)  # closing the descriptor releases the lock


def _acquire(path: Path, report: Callable[[str, int, int], None]) -> int | None:
    """A descriptor of ``path`` holding its lock (None when it cannot be locked at all)."""
    waited = False
    while True:
        handle = _open(path)
        if handle is None:
            return None
        try:
            while not _try_lock(handle):
                report(WAITING, 0, 1)  # at every poll: a load cancelled by its progress callback stops here too
                waited = True
                time.sleep(POLL_S)
        except OSError:  # a file system without locks (some network mounts): work unlocked, as before
            os.close(handle)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        except BaseException:  # the wait was given up (a cancelled load, ctrl+c)
            os.close(handle)
            raise
        if _is_file_at(handle, path):
            if waited:
                report(WAITING, 1, 1)
            return handle
        os.close(handle)  # its holder was done and removed it: lock the file there now


def is_locked(directory: Path) -> bool:
    """Whether a running process holds the entry's lock (is building or saving it now)."""
    path = lock_path(directory)
    if fcntl is None or not path.is_file():
        return False
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _try_lock(handle)  # taken (and let go at once): nobody held it
    except OSError:  # no locks on this file system: nothing can be known, nothing is held
        return False
    finally:
        os.close(handle)


def _open(path: Path) -> int | None:
    if fcntl is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


def _is_file_at(handle: int, path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (not one removed since it was opened)."""
    try:
        opened, there = os.fstat(handle), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino)


def _try_lock(handle: int) -> bool:
    """Take the lock if it is free (False: another holds it); OSError where the file system has no locks."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
