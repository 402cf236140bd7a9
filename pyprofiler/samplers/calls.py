"""The call recorder: every call of every thread (asyncio tasks included, on their loop's thread)
counted and timed by yappi, over one window at a time.

yappi is process-wide, so a window is exclusive: opening one while another is open, or while the
program runs yappi itself, raises ProfilerBusyError. Whatever ends a window (its end, the client
hanging up, an error) closes it with `CallWindow.close`, which stops yappi and clears what it
recorded, so that nothing keeps the program's calls slowed down after it.

C functions are recorded too (yappi's `builtins`): they cost the same either way, since yappi
takes their events regardless, and without them yappi leaves their time out of every caller's
own time, so a function waiting in `time.sleep` would show none.
"""

from __future__ import annotations

import _thread
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from pyprofiler.errors import ProfilerBusyError, ProfileUnavailableError, PyprofilerError
from pyprofiler.samplers import creation
from pyprofiler.samplers.frames import modules_by_filename
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.snapshot import Frame

CLOCKS = ("cpu", "wall")
# yappi's name for a method of a C type, as its repr: "<method 'append' of 'list' objects>".
_C_METHOD = re.compile(r"<method '([^']+)' of '([^']+)' objects>\Z")
# Marks the threads that are pyprofiler's in yappi's records, named as each is first seen.
_OWN_THREAD = "\0pyprofiler"


class CallStats(NamedTuple):
    calls: int
    primitive_calls: int  # Calls made while the function was not already running (recursion).
    own_ns: int  # In the function itself.
    total_ns: int  # With everything it called.


@dataclass
class CallRecords:
    """What one window recorded: every function called, and every caller -> callee pair."""

    clock: str  # "cpu" or "wall": what the times are of.
    start_ns: int  # time.time_ns() when the window opened.
    duration_ns: int
    functions: dict[Frame, CallStats]
    # (caller, callee): the callee's calls from that caller, and its times under it.
    edges: dict[tuple[Frame, Frame], CallStats]


_lock = OwnLock()
_open: CallWindow | None = None


class CallWindow:
    """An open window: yappi running over every thread."""

    def __init__(self, yappi: Any, clock: str) -> None:
        self._yappi = yappi
        self.clock = clock
        self._start_ns = time.time_ns()
        self._start_monotonic_ns = time.monotonic_ns()

    def close(self, include_self: bool = False) -> CallRecords:
        """Stop recording and return what was recorded (pyprofiler's own threads only if
        `include_self`); yappi is stopped and cleared whatever happens."""
        global _open
        yappi = self._yappi
        with _lock:
            if _open is not self:
                raise PyprofilerError("this call profile window is closed already")
            try:
                yappi.stop()
                duration_ns = time.monotonic_ns() - self._start_monotonic_ns
                stats = yappi.get_func_stats(
                    filter_callback=None if include_self else _not_own_thread
                )
                return _records(stats, self.clock, self._start_ns, duration_ns)
            finally:
                _open = None
                if yappi.is_running():  # stop() itself failed.
                    yappi.stop()
                yappi.clear_stats()
                yappi.set_context_name_callback(None)


def open_window(clock: str) -> CallWindow:
    """Start yappi over every thread with `clock` ("cpu": each thread's CPU time; "wall").
    Raises ProfileUnavailableError without yappi, ProfilerBusyError while yappi runs already."""
    global _open
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
    yappi = _import_yappi()
    with _lock:
        if _open is not None or yappi.is_running():
            raise ProfilerBusyError(
                "yappi is already profiling this process (one call profile at a time)"
            )
        # set_clock_type refuses while yappi holds records: what an earlier use left goes.
        yappi.clear_stats()
        yappi.set_clock_type(clock)
        yappi.set_context_name_callback(_context_name)
        try:
            yappi.start(builtins=True, profile_threads=True)
        except BaseException:
            yappi.stop()
            yappi.clear_stats()
            yappi.set_context_name_callback(None)
            raise
        _open = window = CallWindow(yappi, clock)
    return window


def _import_yappi() -> Any:
    try:
        import yappi
    except ImportError as exc:
        raise ProfileUnavailableError(
            f"the calls profile needs yappi, which cannot be imported here: {exc} "
            "(pip install 'yappi>=1.6')"
        ) from exc
    return yappi


def _context_name() -> str | None:
    # Called by yappi inside its profiling hook: threading._active, not current_thread(), which
    # could take a lock that the hook interrupted (yappi's own callback does the same).
    ident = _thread.get_ident()
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    if creation.is_own_thread(ident, thread):
        return _OWN_THREAD
    return None if thread is None else thread.name


def _not_own_thread(stat: Any) -> bool:
    return stat.ctx_name != _OWN_THREAD


def _frame(stat: Any, modules: dict[str, str]) -> Frame:
    """`module.function`, as the sampled profiles name functions; C functions have no file."""
    if stat.builtin:
        method = _C_METHOD.match(stat.name)
        name = f"{method[2]}.{method[1]}" if method else f"{stat.module}.{stat.name}"
        return Frame(name, "", 0, 0)
    module = modules.get(stat.module)
    name = f"{module}.{stat.name}" if module else stat.name
    return Frame(name, stat.module, stat.lineno, stat.lineno)


def _stats(stat: Any) -> CallStats:
    return CallStats(stat.ncall, stat.nactualcall, _ns(stat.tsub), _ns(stat.ttot))


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _records(stats: Any, clock: str, start_ns: int, duration_ns: int) -> CallRecords:
    modules = modules_by_filename()
    frames: dict[str, Frame] = {}

    def frame(stat: Any) -> Frame:
        found = frames.get(stat.full_name)
        if found is None:
            found = frames[stat.full_name] = _frame(stat, modules)
        return found

    functions: dict[Frame, CallStats] = {}
    edges: dict[tuple[Frame, Frame], CallStats] = {}
    for stat in stats:
        caller = frame(stat)
        functions[caller] = _stats(stat)
        for child in stat.children:
            edges[(caller, frame(child))] = _stats(child)
    return CallRecords(clock, start_ns, duration_ns, functions, edges)


def after_fork_in_child() -> None:
    """In a forked child: yappi's hooks stayed on the forking thread only, and the window
    belongs to the parent's request; stop them and forget it."""
    global _open
    window, _open = _open, None
    if window is not None:
        window._yappi.stop()
        window._yappi.clear_stats()
        window._yappi.set_context_name_callback(None)
