"""The trace recorder: a timeline of one window, one window at a time, for /debug/pprof/trace.

A window records, into one bounded buffer (`EventBuffer`):
- what each thread runs: its sampled stacks merged into nested slices (trace_stacks.py, the
  native wall sampler at SAMPLE_HZ), or with `mode="calls"` every Python function's entry and
  return, from trace_calls.py;
- every garbage collection, a slice on the thread that ran it (`gc.callbacks`);
- every asyncio callback and task step, a slice on its loop's thread, and every task's life
  (trace_asyncio.py).

Everything it installs (the gc callback, the asyncio patch, the profile function or
sys.monitoring tool, the sampler and its thread) is installed by `open_trace` and removed by
`TraceWindow.close`, which whatever ends the window (its end, the client hanging up, an error)
calls; a failure while opening removes what was installed before it.

Times are `time.monotonic_ns()` readings throughout; slices are tuples (see `Slice`) rather than
objects, as mode=calls makes one per call.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyprofiler.errors import ProfilerBusyError
from pyprofiler.samplers import creation
from pyprofiler.samplers.frames import HIDDEN_CODE
from pyprofiler.samplers.own_locks import OwnLock

MODES = ("sampled", "calls")
# At most this many events (a slice is one, a task's life two) per trace: with mode=calls a busy
# program reaches it in well under a second; what does not fit is counted, not kept. About
# 120 bytes each in memory, 60 MB at most.
MAX_EVENTS = 500_000

# A slice: (tid, start_ns, end_ns, what, category, labels, args). `what` is a code object (named
# when the trace is rendered) or a name; `labels` the pyprofiler.labels pairs in force; `args`
# a dict of the slice's own details, or None.
Slice = tuple
# A task's life: (task id, name, tid of its loop's thread, start_ns, end_ns, labels); it starts
# at the task's creation or the window's start, and ends at its completion or the window's end.
TaskLife = tuple

CATEGORY_SAMPLED = "sampled"
CATEGORY_CALL = "call"
CATEGORY_GC = "gc"
CATEGORY_STEP = "asyncio.step"
CATEGORY_CALLBACK = "asyncio.callback"


class EventBuffer:
    """The slices and task lives of one window, at most MAX_EVENTS events; what comes after is
    only counted. Appended to from any thread, holding the GIL (a list's append is atomic), so
    the bound can be passed by one event per thread appending at the same instant."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self.limit = limit
        self.slices: list[Slice] = []
        self.tasks: list[TaskLife] = []
        self._events = 0
        # next() of a count is atomic where `+= 1` is not: drops counted from any thread.
        self._drops = itertools.count()

    def add_slice(self, record: Slice) -> None:
        if self._events < self.limit:
            self._events += 1
            self.slices.append(record)
        else:
            next(self._drops)

    def add_task(self, record: TaskLife) -> None:
        if self._events + 2 <= self.limit:
            self._events += 2
            self.tasks.append(record)
        else:
            next(self._drops)
            next(self._drops)

    def dropped(self) -> int:
        """Events counted and not kept, read once the window has closed (reading takes one
        more from the count)."""
        return next(self._drops)


@dataclass
class TraceRecords:
    """What one window recorded."""

    mode: str
    start_ns: int  # monotonic
    end_ns: int
    wall_start_ns: int  # time.time_ns() at start_ns
    slices: list[Slice]
    tasks: list[TaskLife]
    thread_names: dict[int, str]  # tid -> name
    dropped: int
    max_events: int
    # What the window could not see, or why a part of it stopped.
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # How it recorded (rates, tool ids).


class Part(Protocol):
    """One kind of recording of a window: installed at open, removed at close (once, even if
    install failed halfway), then its loose ends written to the buffer as of `end_ns`."""

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def finish(self, end_ns: int) -> None: ...


class ThreadNames:
    """Kernel thread id -> name of the threads a window saw, and which are pyprofiler's own."""

    def __init__(self, include_self: bool) -> None:
        self.include_self = include_self
        self.names: dict[int, str] = {}
        self._left_out: set[int] = set()  # pyprofiler's own threads, unless include_self
        self._unnamed: dict[int, tuple[int, bool]] = {}  # tid -> (ident, own), not yet known

    def current(self) -> int | None:
        """The calling thread's kernel id, or None for one of pyprofiler's left out."""
        tid = threading.get_native_id()
        if tid not in self.names:
            if tid in self._left_out:
                return None
            ident = threading.get_ident()
            thread = threading._active.get(ident)  # type: ignore[attr-defined]
            if creation.is_own_thread(ident, thread) and not self.include_self:
                self._left_out.add(tid)
                return None
            if thread is None:  # Starting (or not threading's): named later, or at the end.
                self._unnamed[tid] = (ident, False)
            else:
                self.names[tid] = thread.name
        return tid

    def learn(self, tid: int, ident: int, own: bool) -> None:
        """A thread the sampler saw, by kernel id (or its ident, where that is not known yet);
        one that threading does not know yet (it is starting) is named at a later call, or at
        the end."""
        if tid in self.names:
            return
        # By kernel id: a starting thread's ident may still be its creator's.
        thread = next((t for t in threading.enumerate() if t.native_id == tid), None)
        if thread is None and tid == ident:
            thread = threading._active.get(ident)  # type: ignore[attr-defined]
        if thread is None:
            self._unnamed[tid] = (ident, own)
            return
        self._unnamed.pop(tid, None)
        self.names[tid] = creation.own_thread_name(thread.name) if own else thread.name

    def learn_unnamed(self) -> None:
        for tid, (ident, own) in list(self._unnamed.items()):
            self.learn(tid, ident, own)

    def all_now(self) -> dict[int, str]:
        """The names learnt, and every living thread's name as it is now."""
        self.learn_unnamed()
        for tid in self._unnamed:
            self.names.setdefault(tid, f"thread-{tid}")
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is not None and tid not in self._left_out:
                self.names[tid] = thread.name
        return self.names


class GcRecorder:
    """Every collection as a slice on the thread that ran it, via `gc.callbacks`."""

    def __init__(self, buffer: EventBuffer, threads: ThreadNames) -> None:
        self._buffer = buffer
        self._threads = threads
        self._started: tuple[int, int | None] | None = None  # (start_ns, tid) of the one running

    def _callback(self, phase: str, info: dict) -> None:
        now = time.monotonic_ns()
        if phase == "start":
            self._started = (now, self._threads.current())
            return
        started, self._started = self._started, None
        if started is None or started[1] is None:
            return  # Began before the window, or on a thread of ours.
        args = {
            "generation": info.get("generation"),
            "collected": info.get("collected"),
            "uncollectable": info.get("uncollectable"),
        }
        self._buffer.add_slice((started[1], started[0], now, "gc", CATEGORY_GC, (), args))

    def install(self) -> None:
        HIDDEN_CODE.add(GcRecorder._callback.__code__)  # Stacks read as if gc ran directly.
        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        HIDDEN_CODE.discard(GcRecorder._callback.__code__)

    def finish(self, end_ns: int) -> None:
        pass


_lock = OwnLock()
_open: TraceWindow | None = None
# The text of Go's runtime (StartTrace) that its handler puts after "Could not enable tracing: ".
BUSY = "tracing is already enabled"


class TraceWindow:
    """An open trace: its parts installed and recording into one buffer."""

    def __init__(self, mode: str, include_self: bool, max_events: int) -> None:
        self.mode = mode
        self.buffer = EventBuffer(max_events)
        self.threads = ThreadNames(include_self)
        self.parts: list[Part] = []
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.start_ns = 0
        self.wall_start_ns = 0

    def close(self) -> TraceRecords:
        """Remove every part (whatever happens) and return what the window recorded."""
        global _open
        with _lock:
            if _open is not self:
                raise RuntimeError("this trace window is closed already")
            try:
                end_ns = _remove_all(self.parts)
            finally:
                _open = None
        for part in self.parts:
            part.finish(end_ns)
        return TraceRecords(
            mode=self.mode,
            start_ns=self.start_ns,
            end_ns=end_ns,
            wall_start_ns=self.wall_start_ns,
            slices=self.buffer.slices,
            tasks=self.buffer.tasks,
            thread_names=self.threads.all_now(),
            dropped=self.buffer.dropped(),
            max_events=self.buffer.limit,
            notes=self.notes,
            details=self.details,
        )


def _remove_all(parts: list[Part]) -> int:
    """Remove every part, last installed first, even when one fails; the end of the window."""
    end_ns = time.monotonic_ns()
    failure: BaseException | None = None
    for part in reversed(parts):
        try:
            part.remove()
        except BaseException as exc:  # The others are removed all the same.
            failure = failure or exc
    if failure is not None:
        raise failure
    return end_ns


def open_trace(
    mode: str = "sampled", include_self: bool = False, max_events: int = MAX_EVENTS
) -> TraceWindow:
    """Start recording a timeline of every thread (pyprofiler's own only if `include_self`).
    Raises ProfilerBusyError while another trace is open, ProfileUnavailableError where `mode`
    cannot be recorded here; nothing stays installed when it raises."""
    # Imported here: these import this module for its buffer and constants.
    from pyprofiler.samplers import trace_asyncio, trace_calls, trace_stacks

    global _open
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    with _lock:
        if _open is not None:
            raise ProfilerBusyError(BUSY)
        window = TraceWindow(mode, include_self, max_events)
        window.wall_start_ns = time.time_ns()
        window.start_ns = time.monotonic_ns()
        buffer, threads = window.buffer, window.threads
        if mode == "calls":
            calls = trace_calls.CallRecorder(buffer, threads, window.notes, window.details)
            stacks: Part = calls
        else:
            stacks = trace_stacks.StackTimeline(
                buffer, threads, window.start_ns, window.notes, window.details
            )
            calls = None
        candidates: list[Part] = [
            GcRecorder(buffer, threads),
            trace_asyncio.LoopRecorder(buffer, threads, window.start_ns, window.notes, calls),
            stacks,
        ]
        try:
            for part in candidates:
                window.parts.append(part)
                part.install()
        except BaseException:
            _remove_all(window.parts)
            raise
        _open = window
    return window


def tracing() -> bool:
    """Whether a trace window is open."""
    return _open is not None


def after_fork_in_child() -> None:
    """In a forked child: the window belongs to the parent's request and its sampler thread
    stayed there; what it installed in this process goes."""
    global _open
    window, _open = _open, None
    if window is not None:
        for part in window.parts:
            try:
                part.remove()
            except Exception:  # Nothing to report to in a fresh child; removal is best effort.
                pass
