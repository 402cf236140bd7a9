"""Who created each thread and asyncio task: hooks installed when pyprofiler is imported.

`threading.Thread.start`, `_thread.start_new_thread` and `asyncio.BaseEventLoop.create_task` are
wrapped to record the creating stack, the creating thread or task, and the time. Threads and
tasks also get small goroutine-style ids here, so that "created by ... in goroutine N" can name
the creator. Records live on (or are weakly keyed by) the thread or task, so they go away with it.

A new thread also starts with the labels in force where it was started (labelsets), as a
goroutine inherits its creator's, and so does a call submitted to a ThreadPoolExecutor (and so
`loop.run_in_executor`) while it runs; tasks and `asyncio.to_thread` get them from contextvars.

pyprofiler's own threads are the threads named `pyprofiler-...`: each registers itself here as
it starts running and unregisters before it ends, so that the profiles that list threads can
leave them out (the native sampler reads the same set, published to it, without the GIL).
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import concurrent.futures.thread
import functools
import itertools
import os
import sys
import threading
import time
import types
import weakref
from typing import NamedTuple

from pyprofiler.samplers import labelsets, stacks
from pyprofiler.samplers.frames import HIDDEN_CODE
from pyprofiler.samplers.limits import LOCK_MAX_DEPTH
from pyprofiler.samplers.native import native
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.samplers.stacks import RawStack

# Frames kept of a creating stack: as many as of a contention's.
MAX_CREATION_FRAMES = LOCK_MAX_DEPTH
# Distinct stacks kept for the threadcreate profile; later new stacks are counted under one entry.
MAX_THREADCREATE_STACKS = 4096

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)


class CreationInfo(NamedTuple):
    stack: RawStack
    creator_id: int
    created_ns: int  # time.time_ns()


_next_id = itertools.count(1)
_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Thread or Task -> id
_task_creation: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Task -> CreationInfo
_low_level_creation: dict[int, CreationInfo] = {}  # ident -> info, for _thread threads
# ident -> kernel thread id where threading has none (_thread threads) or a stale one (the
# thread that forked: threading keeps the parent's id for it in the child).
_native_ids: dict[int, int] = {}
# The prefix of the names of pyprofiler's own threads, which profiles leave out by default.
OWN_THREAD_PREFIX = "pyprofiler-"
_own_lock = OwnLock()
_own_threads: dict[int, int] = {}  # ident -> kernel thread id, while each runs


class CreationCounts:
    """Thread starts counted by creating stack, at most MAX_THREADCREATE_STACKS stacks; later
    new stacks are only counted in `dropped`."""

    def __init__(self) -> None:
        self.counts: dict[RawStack, int] = {}
        self.dropped = 0

    def add(self, stack: RawStack) -> None:
        if stack in self.counts or len(self.counts) < MAX_THREADCREATE_STACKS:
            self.counts[stack] = self.counts.get(stack, 0) + 1
        else:
            self.dropped += 1


_threadcreate_lock = OwnLock()
threadcreate = CreationCounts()  # The program's threads.
own_threadcreate = CreationCounts()  # pyprofiler's own.


def goroutine_id(owner: object) -> int:
    """A small id for a Thread or Task, assigned on first use and kept for its lifetime."""
    existing = _ids.get(owner)
    if existing is None:
        existing = _ids.setdefault(owner, next(_next_id))
    return existing


_untracked_ids: dict[int, int] = {}  # ident -> id, for threads that threading does not know


def thread_goroutine_id(ident: int, thread: threading.Thread | None) -> int:
    """The id of a thread, whether or not threading knows it (_thread, C extensions)."""
    if thread is not None:
        return goroutine_id(thread)
    existing = _untracked_ids.get(ident)
    if existing is None:
        existing = _untracked_ids[ident] = next(_next_id)
    return existing


def forget_untracked_except(idents: set[int]) -> None:
    """Drop the ids of untracked threads that have exited (their idents get reused)."""
    for ident in [ident for ident in _untracked_ids if ident not in idents]:
        _untracked_ids.pop(ident, None)


def current_goroutine_id() -> int:
    task = None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # No running loop in this thread.
        pass
    return goroutine_id(task if task is not None else threading.current_thread())


def _created_here(skip: int) -> CreationInfo:
    frame: types.FrameType | None = sys._getframe(skip + 1)
    # asyncio.create_task and friends are not who created the task: their caller is.
    while frame is not None and frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
        frame = frame.f_back
    return CreationInfo(
        stacks.walk(frame, MAX_CREATION_FRAMES), current_goroutine_id(), time.time_ns()
    )


def _count_threadcreate(stack: RawStack, own: bool = False) -> None:
    with _threadcreate_lock:
        (own_threadcreate if own else threadcreate).add(stack)


def threadcreate_entries(include_self: bool) -> list[tuple[RawStack, int]]:
    """(creating stack, count) of the thread starts counted so far; pyprofiler's own threads
    only with `include_self`. A stack None stands for the starts that no longer fitted."""
    with _threadcreate_lock:
        tables = (threadcreate, own_threadcreate) if include_self else (threadcreate,)
        entries: list[tuple[RawStack, int]] = []
        for table in tables:
            entries.extend(table.counts.items())
            if table.dropped:
                entries.append((None, table.dropped))
    return entries


def is_own_thread_name(name: str) -> bool:
    return name.startswith(OWN_THREAD_PREFIX)


def is_own_thread(ident: int, thread: threading.Thread | None) -> bool:
    """Whether the thread `ident` is one of pyprofiler's: registered, or named as one (a thread
    of ours about to register itself)."""
    return ident in _own_threads or (thread is not None and is_own_thread_name(thread.name))


def own_thread_name(name: str) -> str:
    """`name` for one of pyprofiler's threads, prefixed if it is not already."""
    return name if is_own_thread_name(name) else OWN_THREAD_PREFIX + name


def _publish_own_threads() -> None:
    """Under _own_lock: hand the set to the native samplers, which read it without the GIL."""
    if native is not None:
        native.set_own_threads(tuple(_own_threads.items()))


def _own_thread_started(ident: int, tid: int) -> None:
    with _own_lock:
        _own_threads[ident] = tid
        _publish_own_threads()


def _own_thread_ended(ident: int) -> None:
    with _own_lock:
        _own_threads.pop(ident, None)
        _publish_own_threads()


def _run_as_own_thread(thread: threading.Thread) -> None:
    """Make `thread` register itself as pyprofiler's while it runs. From inside the thread:
    registered before it runs code of its own, and gone before its ident can be reused."""
    run = thread.run

    def run_registered() -> None:
        ident = _thread.get_ident()
        _own_thread_started(ident, threading.get_native_id())
        sys.setprofile(None)  # Put there by threading.setprofile (yappi's, say): not for us.
        try:
            run()
        finally:
            _own_thread_ended(ident)
            thread.__dict__.pop("run", None)  # The wrapper and the thread refer to each other.

    thread.run = run_registered  # type: ignore[method-assign]


def native_id(ident: int, thread: threading.Thread | None) -> int | None:
    """The kernel thread id of the thread `ident`, whether or not threading knows it."""
    tid = _native_ids.get(ident)
    if tid is None and thread is not None:
        tid = thread.native_id
    return tid


def thread_creation(thread: threading.Thread) -> CreationInfo | None:
    info = getattr(thread, "_pyprofiler_creation", None)
    if info is None and thread.ident is not None:
        info = _low_level_creation.get(thread.ident)
    return info


def low_level_creation(ident: int) -> CreationInfo | None:
    return _low_level_creation.get(ident)


def task_creation(task: asyncio.Task) -> CreationInfo | None:
    return _task_creation.get(task)


_original_thread_start = threading.Thread.start
_original_start_new_thread = _thread.start_new_thread
_original_create_task = asyncio.BaseEventLoop.create_task
_original_submit = concurrent.futures.ThreadPoolExecutor.submit
_executor_worker = getattr(concurrent.futures.thread, "_worker", None)


@functools.wraps(_original_thread_start)
def _thread_start(self: threading.Thread) -> None:
    info = _created_here(1)
    previous = getattr(self, "_pyprofiler_creation", None)
    self._pyprofiler_creation = info  # type: ignore[attr-defined]
    goroutine_id(self)
    label_set = labelsets.in_force()
    if label_set is not labelsets.EMPTY and not _is_pool_worker(self):
        # Only a labelled thread runs inside a frame of ours, hidden from its stacks.
        self._bootstrap_inner = functools.partial(  # type: ignore[attr-defined]
            _bootstrap_with_labels, label_set, self._bootstrap_inner
        )
    own = is_own_thread_name(self.name) and "run" not in self.__dict__
    if own:
        _run_as_own_thread(self)
    try:
        _original_thread_start(self)
    except BaseException:  # Not started (started twice, say): it keeps its real creator.
        self._pyprofiler_creation = previous  # type: ignore[attr-defined]
        if own:
            self.__dict__.pop("run", None)
        raise
    _count_threadcreate(info.stack, own)  # Only a start that worked created a thread.


def _is_pool_worker(thread: threading.Thread) -> bool:
    """A thread that serves every later caller of a pool, started by whichever call first needed
    it: an executor's (each call brings its labels, _submit) or anyio's, which runs FastAPI's
    and Starlette's sync endpoints (each call runs in its caller's context)."""
    return getattr(thread, "_target", None) is _executor_worker or type(
        thread
    ).__module__.startswith("anyio.")


def _bootstrap_with_labels(label_set: labelsets.LabelSet, bootstrap_inner) -> None:  # noqa: ANN001
    labelsets.current.set(label_set)
    bootstrap_inner()


@functools.wraps(_original_start_new_thread)
def _start_new_thread(function, args, kwargs=None):  # noqa: ANN001 - _thread's own signature
    info = _created_here(1)
    label_set = labelsets.in_force()

    def run(*run_args, **run_kwargs):
        if label_set is not labelsets.EMPTY:
            labelsets.current.set(label_set)
        ident = _thread.get_ident()
        _low_level_creation[ident] = info
        _native_ids[ident] = threading.get_native_id()
        try:
            return function(*run_args, **run_kwargs)
        finally:
            _low_level_creation.pop(ident, None)
            _native_ids.pop(ident, None)

    ident = _original_start_new_thread(run, args, kwargs or {})
    _count_threadcreate(info.stack)
    return ident


@functools.wraps(_original_create_task)
def _create_task(self: asyncio.AbstractEventLoop, coro, *args, **kwargs) -> asyncio.Task:  # noqa: ANN001
    task = _original_create_task(self, coro, *args, **kwargs)
    _task_creation[task] = _created_here(1)
    goroutine_id(task)
    return task


def _call_with_labels(label_set: labelsets.LabelSet, function, /, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    token = labelsets.current.set(label_set)
    try:
        return function(*args, **kwargs)
    finally:
        labelsets.current.reset(token)  # The worker thread goes on to other calls.


@functools.wraps(_original_submit)
def _submit(self: concurrent.futures.ThreadPoolExecutor, fn, /, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    label_set = labelsets.in_force()
    if label_set is labelsets.EMPTY:
        return _original_submit(self, fn, *args, **kwargs)
    return _original_submit(self, _call_with_labels, label_set, fn, *args, **kwargs)


HIDDEN_CODE.update((_bootstrap_with_labels.__code__, _call_with_labels.__code__, _submit.__code__))


def after_fork_in_child() -> None:
    _native_ids.clear()
    _native_ids[threading.get_ident()] = threading.get_native_id()
    # Only the forking thread runs in the child, under the kernel id it has here.
    ident = threading.get_ident()
    own = ident in _own_threads
    _own_threads.clear()
    if own:
        _own_threads[ident] = threading.get_native_id()
    _publish_own_threads()


def install() -> None:
    """Wrap thread and task creation; idempotent."""
    if threading.Thread.start is not _thread_start:
        threading.Thread.start = _thread_start  # type: ignore[method-assign]
        concurrent.futures.ThreadPoolExecutor.submit = _submit  # type: ignore[method-assign]
        _thread.start_new_thread = _start_new_thread
        asyncio.BaseEventLoop.create_task = _create_task  # type: ignore[method-assign]
        goroutine_id(threading.main_thread())
