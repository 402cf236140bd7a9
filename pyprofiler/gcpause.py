"""Holding off the cyclic garbage collector while a large profile is built."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a large profile is built.

    Building a goroutine profile of tens of thousands of tasks allocates enough to trigger full
    collections, and a full collection of a heap that large holds the GIL for hundreds of
    milliseconds: every event loop in the process would stall that long. The pause lasts as long
    as the build (about a second at worst) and restores whatever the program had set.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _after_fork_in_child() -> None:
    # Only the forking thread survives: a pause that another thread held must not outlive it.
    global _gc_lock, _gc_pausers
    _gc_lock = threading.Lock()
    if _gc_pausers and _gc_was_enabled:
        gc.enable()
    _gc_pausers = 0


os.register_at_fork(after_in_child=_after_fork_in_child)
