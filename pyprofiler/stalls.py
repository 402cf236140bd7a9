"""Building a large profile without stalling the process.

A goroutine profile of tens of thousands of tasks creates and drops hundreds of thousands of
objects. Two things would hold the GIL for tens or hundreds of milliseconds at a time and stall
every event loop in the process: a collection of the cyclic GC over a heap that large, and
freeing a container of tens of thousands of entries in one C call. So the collector is held off
while the profile is built, large containers are emptied a slice at a time, and a large
snapshot that must outlive the pause (the first half of a delta profile) waits as bytes, which
the collector never traverses.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
from collections.abc import Iterator

from pyprofiler.samplers.own_locks import OwnLock

# Entries freed per slice: a few milliseconds of deallocation at most.
_RELEASE_SLICE = 2048

# While a profile is built, the youngest generation's threshold is this: no collection starts
# (no build allocates a billion objects), yet gc.isenabled() and gc.disable()/gc.enable() stay
# the application's, untouched. A distinctive value tells whether the application set a
# threshold of its own meanwhile: then its setting stands.
PAUSED_THRESHOLD = 1_000_000_007

_gc_lock = OwnLock()
_gc_pausers = 0
_gc_threshold = 0  # The application's youngest-generation threshold, while paused.


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a large profile is built.

    A full collection of a heap with tens of thousands of tasks holds the GIL for hundreds of
    milliseconds. The pause lasts as long as the build (about a second at worst). It raises the
    youngest generation's threshold rather than calling gc.disable(): the application's own
    gc.disable()/gc.enable() then never interfere with it, and when the pause ends the threshold
    is put back unless the application set one meanwhile, which stands.
    """
    global _gc_pausers
    with _gc_lock:
        if _gc_pausers == 0:
            _pause()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                _resume()


def _pause() -> None:
    global _gc_threshold
    threshold, *older = gc.get_threshold()
    _gc_threshold = threshold
    gc.set_threshold(PAUSED_THRESHOLD, *older)


def _resume() -> None:
    threshold, *older = gc.get_threshold()
    if threshold == PAUSED_THRESHOLD:  # Else the application set its own meanwhile.
        gc.set_threshold(_gc_threshold, *older)


def release_gradually(container: list | dict) -> None:
    """Empty `container` a slice at a time, so that other threads get the GIL in between."""
    if isinstance(container, dict):
        while container:
            for _ in range(min(_RELEASE_SLICE, len(container))):
                container.popitem()
    else:
        while container:
            del container[-_RELEASE_SLICE:]


def pack(items: list) -> list[bytes]:
    """Move `items` into pickled slices, emptying the list."""
    packed = []
    while items:
        packed.append(pickle.dumps(items[:_RELEASE_SLICE], pickle.HIGHEST_PROTOCOL))
        del items[:_RELEASE_SLICE]
    return packed


def unpack(packed: list[bytes]) -> list:
    """The items that `pack` stored, emptying `packed`: our own bytes, never the caller's."""
    items: list = []
    while packed:
        items.extend(pickle.loads(packed.pop(0)))
    return items


def after_fork_in_child() -> None:
    # Only the forking thread survives: a pause that another thread held must not outlive it.
    global _gc_pausers
    if _gc_pausers:
        _resume()
    _gc_pausers = 0
