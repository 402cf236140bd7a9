"""Every thread, every pending asyncio task and every switched-out greenlet of the process, as
Go's goroutines.

Threads come from sys._current_frames(); tasks from asyncio's own registry of live tasks, read
without calling into any event loop (a snapshot of the weak set is taken in one C-level copy, and
coroutine await chains are read as plain attributes), so inspecting another thread's loop never
blocks or breaks it; greenlets, which keep no registry, from the cyclic collector's list of
objects, and only once the program has imported greenlet.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import linecache
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from typing import NamedTuple

from pyprofiler.samplers import creation, labelsets, stacks
from pyprofiler.samplers.creation import CreationInfo
from pyprofiler.samplers.limits import MAX_STACK_DEPTH
from pyprofiler.samplers.native import native
from pyprofiler.samplers.stacks import RawStack
from pyprofiler.stalls import release_gradually

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Kernel wait channels (/proc/<pid>/task/<tid>/wchan) and what a Go user would call them.
# Kernel versions name the futex wait differently; every other channel is some form of I/O.
_WCHAN_STATES = {
    "futex_wait_queue": "waiting on lock",
    "futex_wait_queue_me": "waiting on lock",
    "futex_do_wait": "waiting on lock",
    "futex_wait": "waiting on lock",
    "hrtimer_nanosleep": "sleep",
    "do_nanosleep": "sleep",
    "clock_nanosleep": "sleep",
}
_LOCK_CALLS = (".acquire(", ".wait(", ".get(", ".put(", ".join(", "acquire(")


class Goroutine(NamedTuple):
    id: int
    kind: str  # "thread" or "task"
    name: str
    state: str
    age_seconds: float | None
    stack: RawStack  # leaf first
    creation: CreationInfo | None
    labels: tuple[tuple[str, str], ...] = ()  # pyprofiler.labels in force in it


def _task_registries() -> list:
    tasks = asyncio.tasks
    # 3.9-3.11 keep one weak set; 3.12+ split scheduled tasks from eager ones.
    return [
        registry
        for registry in (
            getattr(tasks, "_all_tasks", None),
            getattr(tasks, "_scheduled_tasks", None),
            getattr(tasks, "_eager_tasks", None),
        )
        if registry is not None
    ]


def pending_tasks() -> list:
    """Pending tasks of every event loop in the process, in any thread."""
    found = []
    for registry in _task_registries():
        data = getattr(registry, "data", registry)  # WeakSet -> its set of weak references
        for item in data.copy():  # set.copy holds the GIL throughout: no concurrent mutation.
            task = item() if isinstance(item, weakref.ref) else item
            if task is not None and not task.done():
                found.append(task)
    return found


_GENERATORS = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)
_CODE_ATTRIBUTES = {
    types.CoroutineType: "cr_code",
    types.GeneratorType: "gi_code",
    types.AsyncGeneratorType: "ag_code",
}


def _position(awaitable: object) -> tuple[types.CodeType, int] | None:
    """(code, line) where a coroutine or generator stands; None for anything else or once it
    finished. The native extension reads the line without creating a frame object."""
    if not isinstance(awaitable, _GENERATORS):
        return None
    code = getattr(awaitable, _CODE_ATTRIBUTES[type(awaitable)])
    if native is not None:
        line = native.suspended_line(awaitable)
    else:
        frame = getattr(awaitable, _CODE_ATTRIBUTES[type(awaitable)][:2] + "_frame")
        if frame is None:
            return None
        line = frame.f_lineno or 0  # None: code without a line table.
    return None if line is None else (code, line)


def _awaited(awaitable: object) -> object:
    for attribute in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(awaitable, attribute, None)
        if inner is not None:
            return inner
    return None


def await_chain(task: asyncio.Task) -> tuple[RawStack, str]:
    """(stack leaf first, state) of a task, from its coroutine's await chain."""
    frames = []
    running = False
    awaitable = task.get_coro()
    while awaitable is not None and len(frames) < MAX_STACK_DEPTH:
        position = _position(awaitable)
        if position is None:
            break  # A future, or another awaitable without a frame: what the task waits on.
        frames.append(position)
        running = running or bool(
            getattr(awaitable, "cr_running", False) or getattr(awaitable, "gi_running", False)
        )
        awaitable = _awaited(awaitable)
    if running:
        state = "running"
    elif awaitable is not None and frames:
        code = frames[-1][0]
        state = f"awaiting {getattr(code, 'co_qualname', code.co_name)}"
    else:
        state = "runnable"  # Not started yet, or woken and queued to run.
    return tuple(reversed(frames)), state


def _proc_task(tid: int, name: str) -> str | None:
    try:
        with open(f"/proc/self/task/{tid}/{name}") as file:
            return file.read()
    except OSError:
        return None


def _source_line(filename: str, line: int | None) -> str:
    """The text of a line, or "" where there is none to read: no line number (code without a
    line table), a name that is no path (`<string>`, lone surrogates), a loader that fails."""
    if not line:
        return ""
    try:
        return linecache.getline(filename, line)
    except Exception:  # linecache may call any module loader's get_source().
        return ""


def thread_state(tid: int | None, top: types.FrameType | None) -> str:
    """Go-style state from the kernel's view of the thread and its top Python frame."""
    stat = _proc_task(tid, "stat") if tid else None
    if stat is None:
        return "unknown"
    kernel_state = stat[stat.rindex(")") + 2]
    if kernel_state == "R":
        return "running"
    if kernel_state == "D":
        return "I/O wait"
    wchan = (_proc_task(tid, "wchan") or "").strip()
    if wchan == "0":
        return "runnable"  # Woken between the two reads: it waits for nothing now.
    state = _WCHAN_STATES.get(wchan)
    if state == "waiting on lock" and top is not None:
        line = _source_line(top.f_code.co_filename, top.f_lineno)
        if not any(call in line for call in _LOCK_CALLS):
            return "runnable"  # Parked on a futex waiting for the GIL, not on a lock.
    if state is None:
        state = "I/O wait" if wchan else "waiting"
    return state


def _thread_age(tid: int | None, info: CreationInfo | None) -> float | None:
    if info is not None:
        return (time.time_ns() - info.created_ns) / 1e9
    stat = _proc_task(tid, "stat") if tid else None
    try:
        with open("/proc/uptime") as file:
            uptime = float(file.read().split()[0])
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    return uptime - start_ticks / _CLOCK_TICKS


def _thread_goroutine(
    ident: int, top: types.FrameType, by_ident: dict, labels: tuple[tuple[str, str], ...]
) -> Goroutine:
    thread = by_ident.get(ident)
    tid = creation.native_id(ident, thread)
    if thread is not None:
        info, name = creation.thread_creation(thread), thread.name
    else:  # Started by _thread or a C extension: no threading name.
        info, name = creation.low_level_creation(ident), f"_thread-{ident}"
    return Goroutine(
        id=creation.thread_goroutine_id(ident, thread),
        kind="thread",
        name=name,
        state=thread_state(tid, top),
        age_seconds=_thread_age(tid, info),
        stack=stacks.walk(top),
        creation=info,
        labels=labels,
    )


def threads(include_self: bool = False) -> list[Goroutine]:
    """Every thread running Python code; pyprofiler's own only with `include_self`."""
    frames = sys._current_frames()
    try:
        by_ident = dict(threading._active)  # type: ignore[attr-defined]
        labels = labelsets.of_threads()
        result = [
            _thread_goroutine(ident, top, by_ident, labels.get(ident, ()))
            for ident, top in frames.items()
            if include_self or not creation.is_own_thread(ident, by_ident.get(ident))
        ]
        creation.forget_untracked_except(set(frames))
        return result
    finally:
        # The dict holds this very frame: kept, the two would form a cycle that keeps the locals
        # of every caller (a whole profile being built) alive until a collection finds it.
        del frames


def thread_count() -> int:
    """How many threads threads() lists (pyprofiler's own left out)."""
    by_ident = threading._active  # type: ignore[attr-defined]
    idents = list(sys._current_frames())  # The frames themselves are not kept.
    return sum(not creation.is_own_thread(ident, by_ident.get(ident)) for ident in idents)


def tasks() -> Iterator[Goroutine]:
    """Pending tasks one at a time: a list of tens of thousands would be freed in one piece."""
    now = time.time_ns()
    for task in pending_tasks():
        stack, state = await_chain(task)
        info = creation.task_creation(task)
        yield Goroutine(
            id=creation.goroutine_id(task),
            kind="task",
            name=task.get_name(),
            state=state,
            age_seconds=(now - info.created_ns) / 1e9 if info else None,
            stack=stack,
            creation=info,
            labels=labelsets.of_task(task),
        )


def suspended_greenlets() -> list:
    greenlet_module = sys.modules.get("greenlet")
    if greenlet_module is None:
        return []
    greenlet_type = greenlet_module.greenlet
    # Greenlets keep no registry of themselves: find them among the collector's objects. By
    # their type, never isinstance(): that asks a proxy for its __class__, and a lazy one (as
    # Django's settings) runs code of its own, which may raise.
    everything = gc.get_objects()
    try:
        return [
            candidate
            for candidate in everything
            if issubclass(type(candidate), greenlet_type) and candidate.gr_frame is not None
        ]
    finally:
        release_gradually(everything)


def greenlets() -> Iterator[Goroutine]:
    """Switched-out greenlets (gevent, eventlet), when the program imported greenlet. A thread's
    running greenlet is not listed: its stack is the thread's."""
    for suspended in suspended_greenlets():
        name = getattr(suspended, "name", None)
        yield Goroutine(
            id=creation.goroutine_id(suspended),
            kind="greenlet",
            name=name if isinstance(name, str) else f"greenlet-{id(suspended):x}",
            state="switched out",
            age_seconds=None,
            stack=stacks.walk(suspended.gr_frame),
            creation=None,
        )


def goroutines(include_self: bool = False) -> Iterator[Goroutine]:
    """All threads (pyprofiler's own only with `include_self`), then all pending tasks, then all
    switched-out greenlets."""
    return itertools.chain(threads(include_self), tasks(), greenlets())
