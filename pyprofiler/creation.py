"""Who created each thread and asyncio task: hooks installed when pyprofiler is imported.

`threading.Thread.start`, `_thread.start_new_thread` and `asyncio.BaseEventLoop.create_task` are
wrapped to record the creating stack, the creating thread or task, and the time. Threads and
tasks also get small goroutine-style ids here, so that "created by ... in goroutine N" can name
the creator. Records live on (or are weakly keyed by) the thread or task, so they go away with it.
"""

from __future__ import annotations

import _thread
import asyncio
import functools
import itertools
import os
import sys
import threading
import time
import types
import weakref
from typing import NamedTuple

MAX_CREATION_FRAMES = 32
# Distinct stacks kept for the threadcreate profile; later new stacks are counted under one entry.
MAX_THREADCREATE_STACKS = 4096

RawStack = tuple  # ((code, line), ...), leaf first
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
_threadcreate_lock = threading.Lock()
threadcreate_counts: dict[RawStack, int] = {}
threadcreate_dropped = 0


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


def raw_stack(frame: types.FrameType | None, limit: int = MAX_CREATION_FRAMES) -> RawStack:
    stack = []
    while frame is not None and len(stack) < limit:
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(stack)


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
    return CreationInfo(raw_stack(frame), current_goroutine_id(), time.time_ns())


def _count_threadcreate(stack: RawStack) -> None:
    global threadcreate_dropped
    with _threadcreate_lock:
        if stack in threadcreate_counts or len(threadcreate_counts) < MAX_THREADCREATE_STACKS:
            threadcreate_counts[stack] = threadcreate_counts.get(stack, 0) + 1
        else:
            threadcreate_dropped += 1


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


@functools.wraps(_original_thread_start)
def _thread_start(self: threading.Thread) -> None:
    info = _created_here(1)
    previous = getattr(self, "_pyprofiler_creation", None)
    self._pyprofiler_creation = info  # type: ignore[attr-defined]
    goroutine_id(self)
    try:
        _original_thread_start(self)
    except BaseException:  # Not started (started twice, say): it keeps its real creator.
        self._pyprofiler_creation = previous  # type: ignore[attr-defined]
        raise
    _count_threadcreate(info.stack)  # Only a start that worked created a thread.


@functools.wraps(_original_start_new_thread)
def _start_new_thread(function, args, kwargs=None):  # noqa: ANN001 - _thread's own signature
    info = _created_here(1)

    def run(*run_args, **run_kwargs):
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


def _after_fork_in_child() -> None:
    global _threadcreate_lock
    _threadcreate_lock = threading.Lock()
    _native_ids.clear()
    _native_ids[threading.get_ident()] = threading.get_native_id()


os.register_at_fork(after_in_child=_after_fork_in_child)


def install() -> None:
    """Wrap thread and task creation; idempotent."""
    if threading.Thread.start is not _thread_start:
        threading.Thread.start = _thread_start  # type: ignore[method-assign]
        _thread.start_new_thread = _start_new_thread
        asyncio.BaseEventLoop.create_task = _create_task  # type: ignore[method-assign]
        goroutine_id(threading.main_thread())
