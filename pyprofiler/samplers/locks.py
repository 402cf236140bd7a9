"""The lock recorder behind the block and mutex profiles: where threads and tasks wait, and
whose release made them wait.

While a rate is set, `threading.Lock`, `threading.RLock` (and so Condition, Semaphore,
BoundedSemaphore, Event, Barrier and queue.Queue, which are built on them) create the native
extension's Lock and RLock, which time only the acquires that have to wait. Thread.join and the
asyncio primitives (Lock, Event, Condition, Semaphore, Queue) are wrapped in Python, and likewise
time only a call that actually waits. With both rates at 0 nothing is installed at all.

The native locks add each event to a table kept in C, keyed by (stack, lock type), as Go's
runtime does: an event costs a stack walk and a hash lookup, and calls into Python only to label a
new entry. The Python wrappers record into a Python table of the same shape; a profile reads both.

Go's semantics: a blocking event of d ns is recorded when d >= the block rate, or otherwise with
probability d/rate and scaled up to stand for what was not sampled; 1 in `fraction` contention
events is recorded for the mutex profile and scaled by `fraction`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import random
import sys
import threading
import time
import types
from typing import Any, Callable

from pyprofiler.samplers import labelsets, stacks
from pyprofiler.samplers.limits import LOCK_MAX_DEPTH, LOCK_MAX_ENTRIES
from pyprofiler.samplers.native import native
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.samplers.stacks import RawStack

# An entry's key when the table is full: its raw stack () stands for "table full".
_TABLE_FULL_KEY = ((), None, labelsets.EMPTY)
# Frames of the synchronization machinery itself: the `lock` label names the primitive by the
# outermost of them, and the variable that holds it is looked up in the first frame outside.
_SYNC_FILES = (threading.__file__, queue.__file__, os.path.dirname(asyncio.__file__))
_NATIVE_NAMES = (
    {native.Lock: "threading.Lock", native.RLock: "threading.RLock"} if native is not None else {}
)
_rng = random.Random()

_table_lock = OwnLock()  # Never a recording lock: recording must not record itself.
_local = threading.local()
_block_rate = 0
_mutex_fraction = 0

# One recorded entry: (raw stack, `lock` label, count, delay in ns, the labels in force: the
# waiter's for block, the releaser's for mutex); the stack () stands for the events that no
# longer fitted in the table.
Recorded = tuple[RawStack, str, float, float, tuple[tuple[str, str], ...]]


class _Table:
    """What the Python-level instrumentation (Thread.join, asyncio) records: (raw stack, type of
    the primitive, label set in force) -> [label, count, delay_ns], with Go's unsampling
    already applied. The native
    locks record into tables of the same shape kept in C; a profile reads both.

    The label is computed when an entry is made, from the first event with that stack and
    primitive type: finding the variable that holds a lock reads frame locals, too slow to
    repeat on every event."""

    def __init__(self) -> None:
        self.entries: dict[tuple[RawStack, type | None, labelsets.LabelSet], list] = {}

    def new_entry(self, key: tuple[RawStack, type, labelsets.LabelSet], label: str) -> list:
        """The entry for `key`, made with `label` unless another thread made it meanwhile."""
        with _table_lock:
            if key not in self.entries and len(self.entries) >= LOCK_MAX_ENTRIES:
                key, label = _TABLE_FULL_KEY, ""
            return self.entries.setdefault(key, [label, 0.0, 0.0])

    def add(self, entry: list, count: float, delay: float) -> None:
        with _table_lock:
            entry[1] += count
            entry[2] += delay

    def items(self) -> list[Recorded]:
        with _table_lock:
            return [
                (raw, *value, label_set.pprof_labels())
                for (raw, _, label_set), value in self.entries.items()
            ]


_block = _Table()
_mutex = _Table()


def _is_sync_frame(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_SYNC_FILES)


def _type_name(obj: object) -> str:
    cls = type(obj)
    native_name = _NATIVE_NAMES.get(cls)
    if native_name is not None:
        return native_name
    return f"{cls.__module__}.{cls.__qualname__}"


def _lock_label(frame: types.FrameType | None, lock: object) -> str:
    """The primitive's type, and the variable or attribute that holds it when that is cheap to
    see: a local of the first frame outside the synchronization modules, or an attribute of one.
    Only sampled contended events pay for this."""
    primitive = _type_name(lock)
    while frame is not None and _is_sync_frame(frame):
        owner = frame.f_locals.get("self")
        if owner is not None:
            lock, primitive = owner, _type_name(owner)  # Condition, Queue, Event, ...
        frame = frame.f_back
    if frame is None:
        return primitive
    for name, value in list(frame.f_locals.items()):
        if value is lock:
            return f"{primitive} {name}"
        try:
            attributes = getattr(value, "__dict__", None)
        except Exception:  # The program's own __getattr__: its business, not a reason to fail.
            continue
        if isinstance(attributes, dict):
            for attribute, held in list(attributes.items()):
                if held is lock:
                    return f"{primitive} {name}.{attribute}"
    for name, value in list(frame.f_globals.items()):
        if value is lock:
            return f"{primitive} {name}"
    return primitive


def _record(table: _Table, count: float, delay: float, lock: object, skip: int) -> None:
    if getattr(_local, "recording", False):  # Whatever recording itself waits on is not news.
        return
    _local.recording = True
    try:
        raw = stacks.current_stack(skip + 1, LOCK_MAX_DEPTH)
        key = (raw, type(lock), labelsets.in_force())
        entry = table.entries.get(key)
        if entry is None:  # Labelled outside the table's lock: it reads the program's objects.
            entry = table.new_entry(key, _lock_label(sys._getframe(skip + 1), lock))
        table.add(entry, count, delay)
    finally:
        _local.recording = False


def _on_block(delay: int, lock: object = None, skip: int = 1) -> None:
    # Called only for sampled events: shorter than the rate means sampled with probability
    # delay/rate, so it stands for rate/delay events and `rate` nanoseconds (Go's unsampling).
    # The native locks apply the same rules in C.
    rate = _block_rate
    if rate > delay:
        _record(_block, rate / delay, rate, lock, skip)
    else:
        _record(_block, 1, delay, lock, skip)


def _on_mutex(delay: int, lock: object = None, skip: int = 1) -> None:
    fraction = max(_mutex_fraction, 1)
    _record(_mutex, fraction, delay * fraction, lock, skip)


def _label_native(lock: object) -> str | None:
    """The label of a new entry in the native locks' tables. The C extension calls this where
    `lock` was acquired after waiting, or released, so the caller's frame is the program's.
    None: the event is a wait of labelling itself, not recorded."""
    if getattr(_local, "recording", False):
        return None
    _local.recording = True
    try:
        return _lock_label(sys._getframe(1), lock)
    finally:
        _local.recording = False


def _sampled_block(delay: int) -> bool:
    rate = _block_rate
    return rate > 0 and delay > 0 and (delay >= rate or _random_below(rate) < delay)


def _sampled_mutex() -> bool:
    return _mutex_fraction > 0 and (_mutex_fraction == 1 or _random_below(_mutex_fraction) == 0)


def _random_below(n: int) -> int:
    return _rng.randrange(n) if n > 1 else 0


# ---- Python-level instrumentation: Thread.join and asyncio ----------------------------------

_original: dict[tuple[type, str], Callable[..., Any]] = {}


def _wrap(cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = cls.__dict__[name]
    _original[(cls, name)] = original
    setattr(cls, name, functools.wraps(original)(make(original)))


def _timed_join(original: Callable[..., Any]) -> Callable[..., Any]:
    def join(self: threading.Thread, timeout: float | None = None) -> None:
        if not self.is_alive():
            return original(self, timeout)
        start = time.monotonic_ns()
        try:
            return original(self, timeout)
        finally:
            delay = time.monotonic_ns() - start
            if _sampled_block(delay):
                _on_block(delay, self, skip=2)

    return join


def _timed_wait(original: Callable[..., Any], fast: Callable[[Any], bool]) -> Callable[..., Any]:
    """An async method that is timed, and reported as blocking, only if `fast(self)` says it
    will have to wait."""

    async def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        if fast(self):
            return await original(self, *args, **kwargs)
        start = time.monotonic_ns()
        waiting = self.__dict__.setdefault("_pyprofiler_waiting", [])
        waiting.append(start)
        try:
            return await original(self, *args, **kwargs)
        finally:
            waiting.remove(start)
            delay = time.monotonic_ns() - start
            if _sampled_block(delay):
                _on_block(delay, self, skip=2)

    return wait


def _accounted_release(original: Callable[..., Any]) -> Callable[..., Any]:
    """asyncio.Lock.release charging the waiting its waiters did since the last charge."""

    def release(self: Any) -> None:
        waiting = self.__dict__.get("_pyprofiler_waiting")
        if waiting:
            now = time.monotonic_ns()
            since = self.__dict__.get("_pyprofiler_charged", 0)
            delay = sum(now - max(start, since) for start in waiting)
            self._pyprofiler_charged = now
            if delay > 0 and _sampled_mutex():
                _on_mutex(delay, self, skip=2)
        return original(self)

    return release


def _install_python_wrappers() -> None:
    _wrap(threading.Thread, "join", _timed_join)
    # Free and nobody queued: asyncio.Lock's own condition for not waiting (it is fair).
    _wrap(
        asyncio.Lock,
        "acquire",
        lambda o: _timed_wait(o, lambda lock: not lock.locked() and not lock._waiters),
    )
    _wrap(asyncio.Lock, "release", _accounted_release)
    _wrap(asyncio.Event, "wait", lambda o: _timed_wait(o, lambda event: event.is_set()))
    _wrap(asyncio.Condition, "wait", lambda o: _timed_wait(o, lambda condition: False))
    _wrap(asyncio.Semaphore, "acquire", lambda o: _timed_wait(o, lambda sem: not sem.locked()))
    _wrap(asyncio.Queue, "get", lambda o: _timed_wait(o, lambda queue: not queue.empty()))
    _wrap(asyncio.Queue, "put", lambda o: _timed_wait(o, lambda queue: not queue.full()))


def _install() -> None:
    if _original:
        return
    if native is not None:
        _original[(threading, "Lock")] = threading.Lock
        _original[(threading, "_allocate_lock")] = threading._allocate_lock  # type: ignore[attr-defined]
        _original[(threading, "_CRLock")] = threading._CRLock  # type: ignore[attr-defined]
        threading.Lock = native.Lock  # type: ignore[misc,assignment]
        threading._allocate_lock = native.Lock  # type: ignore[attr-defined]
        threading._CRLock = native.RLock  # type: ignore[attr-defined]
    _install_python_wrappers()


def _uninstall() -> None:
    for (owner, name), original in _original.items():
        setattr(owner, name, original)
    _original.clear()


def _apply() -> None:
    if _block_rate or _mutex_fraction:
        _install()
    else:
        _uninstall()
    if native is not None:
        native.set_lock_profiling(
            _block_rate, _mutex_fraction, _label_native if _block_rate or _mutex_fraction else None
        )


def set_block_profile_rate(rate: int) -> int:
    """Record blocking events as Go's runtime.SetBlockProfileRate: 0 is off (the default); else
    an event of d ns is recorded when d >= rate, or with probability d/rate. Returns the
    previous rate."""
    global _block_rate
    previous, _block_rate = _block_rate, max(int(rate), 0)
    _apply()
    return previous


def set_mutex_profile_fraction(fraction: int) -> int:
    """Record 1 in `fraction` contention events, as Go's runtime.SetMutexProfileFraction: 0 is
    off (the default); a negative fraction only reads the current one. Returns the previous
    fraction."""
    global _mutex_fraction
    if fraction < 0:
        return _mutex_fraction
    previous, _mutex_fraction = _mutex_fraction, int(fraction)
    _apply()
    return previous


def mutex_fraction() -> int:
    return _mutex_fraction


def recorded(profile: str) -> list[Recorded]:
    """What the `block` or `mutex` table holds, the Python wrappers' and the native locks'."""
    entries = (_block if profile == "block" else _mutex).items()
    if native is not None:
        entries += [
            (raw, label, count, delay, labelsets.resolve(label_set))
            for raw, label, count, delay, label_set in native.lock_contentions(profile)
        ]
    return entries
