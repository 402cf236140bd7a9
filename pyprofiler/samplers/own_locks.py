"""pyprofiler's own locks: `_thread` locks, made anew in a forked child.

Built from `_thread.allocate_lock`, never `threading.Lock`, which the lock profiler replaces
with its recording locks: pyprofiler's own waits must never appear in the program's mutex or
block profile, not even for locks made after a fork while lock profiling is on. In a forked
child only the forking thread exists, so a lock that another thread held at fork would stay
held for ever: fork.py calls `after_fork_in_child`, which gives every own lock a new one.
"""

from __future__ import annotations

import _thread
import weakref
from typing import Any


class OwnLock:
    """A lock of pyprofiler's own (acquire, release, locked, a context manager)."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        _all.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()


_all: weakref.WeakSet[OwnLock] = weakref.WeakSet()


def after_fork_in_child() -> None:
    for lock in list(_all):
        lock._lock = _thread.allocate_lock()
