"""A trace's asyncio part: every callback an event loop runs, and every task step, as a slice on
the loop's thread; every task's life, from its creation (or the window's start) to its
completion (or the window's end).

The loop is instrumented only while a window is open: `asyncio.events.Handle._run`, through
which every pure-Python loop (asyncio's own, any subclass of BaseEventLoop) runs each callback,
is wrapped for the window and restored after it. A task step or wake-up is a callback whose
`__self__` is the task (C tasks included, 3.9 to 3.13). Not seen: loops that run callbacks in
C (uvloop), and the first step of an eager task (3.12+ `eager_task_factory`), which runs inside
create_task rather than as a callback; its later steps are seen.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import sys
import threading
import time
import weakref
from typing import Any

from pyprofiler.samplers import creation, goroutines, labelsets
from pyprofiler.samplers.frames import HIDDEN_CODE
from pyprofiler.samplers.trace import (
    CATEGORY_CALLBACK,
    CATEGORY_STEP,
    EventBuffer,
    ThreadNames,
)

_TASK_TYPES = tuple({asyncio.Task, getattr(asyncio.tasks, "_PyTask", asyncio.Task)})


class LoopRecorder:
    """The asyncio part of a TraceWindow (samplers/trace.py)."""

    def __init__(
        self,
        buffer: EventBuffer,
        threads: ThreadNames,
        start_ns: int,
        notes: list[str],
        calls: Any = None,
    ) -> None:
        self._buffer = buffer
        self._threads = threads
        self._start_ns = start_ns
        # A wall-clock creation time minus this is on the window's monotonic clock.
        self._wall_minus_monotonic_ns = time.time_ns() - time.monotonic_ns()
        # task -> [id, name, tid, start_ns, coroutine, labels] while it lives in the window.
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._original: Any = None
        self._wrapper: Any = None
        # mode=calls before 3.12: each loop thread is given the profile function from inside.
        self._adopt_thread = getattr(calls, "adopt_current_thread", None)
        if "uvloop" in sys.modules:
            notes.append(
                "uvloop runs its callbacks in C: the steps and tasks of its loops are not seen"
            )

    def install(self) -> None:
        original = asyncio.events.Handle._run
        recorder = self
        adopt_thread = self._adopt_thread

        def run_handle_traced(handle: asyncio.Handle) -> None:
            callback = handle._callback  # type: ignore[attr-defined]
            context = handle._context  # type: ignore[attr-defined]
            if adopt_thread is not None:
                adopt_thread()
            start_ns = time.monotonic_ns()
            try:
                original(handle)
            finally:
                recorder._ran(callback, context, start_ns, time.monotonic_ns())

        HIDDEN_CODE.add(run_handle_traced.__code__)  # Stacks read as if asyncio called directly.
        self._original, self._wrapper = original, run_handle_traced
        for task in goroutines.pending_tasks():
            self._begin(task, _loop_tid(task), self._start_ns, existed=True)
        asyncio.events.Handle._run = run_handle_traced  # type: ignore[method-assign]

    def remove(self) -> None:
        if self._wrapper is None:
            return
        if asyncio.events.Handle._run is self._wrapper:
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        HIDDEN_CODE.discard(self._wrapper.__code__)
        self._wrapper = None

    def finish(self, end_ns: int) -> None:
        for life in list(self._tasks.values()):
            self._end_life(life, end_ns)
        self._tasks.clear()

    def _ran(self, callback: Any, context: Any, start_ns: int, end_ns: int) -> None:
        tid = self._threads.current()
        if tid is None:
            return
        labels = _labels(context)
        task = getattr(callback, "__self__", None)
        if not isinstance(task, _TASK_TYPES):
            name = getattr(callback, "__qualname__", None) or type(callback).__name__
            self._buffer.add_slice((tid, start_ns, end_ns, name, CATEGORY_CALLBACK, labels, None))
            return
        life = self._tasks.get(task)
        if life is None:
            life = self._begin(task, tid, start_ns, existed=False)
        args = {"task": life[1], "coroutine": life[4]}
        self._buffer.add_slice((tid, start_ns, end_ns, life[1], CATEGORY_STEP, labels, args))
        if task.done():
            self._end_life(life, end_ns)
            self._tasks.pop(task, None)

    def _begin(self, task: Any, tid: int, at_ns: int, existed: bool) -> list:
        start_ns = self._start_ns
        created = creation.task_creation(task)
        if not existed and created is not None:
            created_ns = created.created_ns - self._wall_minus_monotonic_ns
            start_ns = min(max(start_ns, created_ns), at_ns)
        coroutine = task.get_coro()
        coroutine_name = getattr(coroutine, "__qualname__", None) or type(coroutine).__name__
        labels = labelsets.of_task(task)
        life = [creation.goroutine_id(task), task.get_name(), tid, start_ns, coroutine_name, labels]
        self._tasks[task] = life
        return life

    def _end_life(self, life: list, end_ns: int) -> None:
        task_id, name, tid, start_ns, _coroutine, labels = life
        self._buffer.add_task((task_id, name, tid, start_ns, end_ns, labels))


def _labels(context: Any) -> tuple:
    found = context.get(labelsets.current) if context is not None else None
    return found.pprof_labels() if found is not None else ()


def _loop_tid(task: Any) -> int:
    """The kernel id of the thread running the task's loop (the main thread's if it runs none)."""
    ident = getattr(task.get_loop(), "_thread_id", None)
    thread = threading._active.get(ident) if ident else None  # type: ignore[attr-defined]
    tid = getattr(thread, "native_id", None)
    return tid if tid is not None else threading.main_thread().native_id or 0
