"""A trace's exact calls (`mode=calls`): every Python function's entry and exit on every thread,
as slices, in place of the sampled stacks.

Python 3.12+: a sys.monitoring tool of its own (PY_START, PY_RESUME and PY_THROW open a slice;
PY_RETURN, PY_YIELD and PY_UNWIND close it), which every thread sees at once and which is freed
when the window closes. A generator or coroutine is one slice per run between suspensions.

Before 3.12: `threading.setprofile`, which only threads started during the window run, plus each
asyncio loop's thread, which trace_asyncio.py hands the profile function to from inside at its
next callback. Other threads that were running when the window opened are not seen: Python
gives no way to set another running thread's profile function before 3.12. Each thread that got
it drops it at its first call after the window (`sys.setprofile(None)` from inside), so a thread
that stays blocked keeps it, inert, until it runs again. The profile function is
process-wide, shared with cProfile and yappi: a window does not open while one is set.

C functions are not recorded, nor calls in pyprofiler's own threads (unless include_self).
Frames entered before the window are not shown; their returns are ignored.
"""

from __future__ import annotations

import _thread
import sys
import threading
import time
from typing import Any, Callable

from pyprofiler.errors import ProfilerBusyError
from pyprofiler.samplers import labelsets
from pyprofiler.samplers.frames import HIDDEN_CODE
from pyprofiler.samplers.trace import CATEGORY_CALL, EventBuffer, ThreadNames

MONITORING = sys.version_info >= (3, 12)
TOOL_NAME = "pyprofiler-trace"
# Events of a thread that threading does not know yet (one starting, seen from 3.12 before its
# Thread registers) waited out before it is recorded unnamed: so that it gets its name.
_UNREGISTERED_EVENTS = 100


class CallRecorder:
    """The exact calls of a TraceWindow (samplers/trace.py)."""

    def __init__(
        self,
        buffer: EventBuffer,
        threads: ThreadNames,
        notes: list[str],
        details: dict[str, Any],
    ) -> None:
        self._buffer = buffer
        self._threads = threads
        # ident -> (tid, [(code, start_ns, label set), ...]), or None for a thread left out.
        self._states: dict[int, tuple[int, list] | None] = {}
        self._unregistered: dict[int, int] = {}  # ident -> events seen while unknown
        self._closed = False
        self._tool: int | None = None
        self._previous_hook: Any = None
        # Before 3.12: the profile function, kept after the window for threads to drop it.
        self._profile: Callable | None = None
        self._profile_installed = False
        self._details = details
        if not MONITORING:
            notes.append(
                "mode=calls before Python 3.12: only threads started during the window and "
                "asyncio loop threads are seen (a running thread's profile function cannot "
                "be set from another thread)"
            )

    def install(self) -> None:
        enter, leave = self._callbacks()
        if MONITORING:
            self._install_monitoring(enter, leave)
        else:
            self._install_profile_function(enter, leave)

    def remove(self) -> None:
        self._closed = True
        self._states.clear()
        if self._tool is not None:
            monitoring = sys.monitoring  # type: ignore[attr-defined]
            tool, self._tool = self._tool, None
            monitoring.set_events(tool, 0)
            for event in _EVENTS:
                monitoring.register_callback(tool, getattr(monitoring.events, event), None)
            monitoring.free_tool_id(tool)
        if self._profile_installed:
            self._profile_installed = False
            if threading._profile_hook is self._profile:  # type: ignore[attr-defined]
                threading.setprofile(self._previous_hook)
            if sys.getprofile() is self._profile:
                sys.setprofile(None)

    def finish(self, end_ns: int) -> None:
        pass  # Calls still running when the window closed are not shown: they did not end in it.

    def adopt_current_thread(self) -> None:
        """Before 3.12: give the calling thread the profile function, unless it has one."""
        if self._profile_installed and sys.getprofile() is None:
            sys.setprofile(self._profile)

    def _thread_state(self, ident: int) -> tuple[int, list] | None:
        if self._closed:
            if self._profile is not None and sys.getprofile() is self._profile:
                sys.setprofile(None)  # This thread's first event since the window closed.
            return None
        if threading._active.get(ident) is None:  # type: ignore[attr-defined]
            seen = self._unregistered.get(ident, 0)
            if seen < _UNREGISTERED_EVENTS:
                self._unregistered[ident] = seen + 1
                return None  # Not recorded yet: its bootstrap, which threading is running.
        tid = self._threads.current()
        state = None if tid is None else (tid, [])
        self._states[ident] = state
        return state

    def _callbacks(self) -> tuple[Callable, Callable]:
        states = self._states
        thread_state = self._thread_state
        get_ident = _thread.get_ident
        now = time.monotonic_ns
        add = self._buffer.add_slice
        labels_in_force = labelsets.current.get
        empty = labelsets.EMPTY
        hidden = HIDDEN_CODE

        def enter(code: Any, *_: Any) -> None:
            ident = get_ident()
            try:
                state = states[ident]
            except KeyError:
                state = thread_state(ident)
            if state is not None and code not in hidden:
                state[1].append((code, now(), labels_in_force(empty)))

        def leave(code: Any, *_: Any) -> None:
            ident = get_ident()
            try:
                state = states[ident]
            except KeyError:
                state = thread_state(ident)
            if state is None or not state[1]:
                return  # A frame entered before the window, or a thread left out.
            tid, stack = state
            if stack[-1][0] is not code:
                if all(entry[0] is not code for entry in stack):
                    return  # Hidden code, or entered before the window.
                while stack[-1][0] is not code:  # Frames whose exits were not seen.
                    entered, start_ns, labels = stack.pop()
                    add((tid, start_ns, now(), entered, CATEGORY_CALL, labels.pprof_labels(), None))
            entered, start_ns, labels = stack.pop()
            add((tid, start_ns, now(), code, CATEGORY_CALL, labels.pprof_labels(), None))

        return enter, leave

    def _install_monitoring(self, enter: Callable, leave: Callable) -> None:
        monitoring = sys.monitoring  # type: ignore[attr-defined]
        for tool in (monitoring.PROFILER_ID, 3, 4):
            if monitoring.get_tool(tool) is None:
                break
        else:
            raise ProfilerBusyError(
                "the sys.monitoring tool ids of profilers (2, 3 and 4) are all in use"
            )
        monitoring.use_tool_id(tool, TOOL_NAME)
        self._tool = tool
        self._details["monitoring_tool_id"] = tool
        events = monitoring.events
        mask = 0
        for event in _EVENTS:
            number = getattr(events, event)
            monitoring.register_callback(tool, number, enter if event in _ENTERS else leave)
            mask |= number
        monitoring.set_events(tool, mask)

    def _install_profile_function(self, enter: Callable, leave: Callable) -> None:
        previous = getattr(threading, "_profile_hook", None)
        yappi = sys.modules.get("yappi")
        if previous is not None or (yappi is not None and yappi.is_running()):
            raise ProfilerBusyError(
                "another profiler (cProfile, yappi, /debug/pprof/calls) holds the profile "
                "function, which mode=calls needs before Python 3.12"
            )

        def profile(frame: Any, event: str, _arg: Any) -> None:
            if event == "call":
                enter(frame.f_code)
            elif event == "return":
                leave(frame.f_code)

        self._previous_hook, self._profile = previous, profile
        threading.setprofile(profile)
        self._profile_installed = True


_ENTERS = ("PY_START", "PY_RESUME", "PY_THROW")
_EVENTS = (*_ENTERS, "PY_RETURN", "PY_YIELD", "PY_UNWIND")
