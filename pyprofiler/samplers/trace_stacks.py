"""A trace's sampled stacks: the native wall sampler at SAMPLE_HZ, cut every CUT_SECONDS by a
thread of ours, each thread's stacks merged into nested slices.

Each cut is a short window in which a thread's stacks are known with the wall time each was
seen for, but not in which order. A cut is laid out once the next one is known: its stacks one
after the other, ending at its end (starting at its start for a thread that ended in it), the
one that continues the thread's current stack first, the one that the next cut continues last,
and between them each the one that shares most frames with the previous. Where a stack differs
from the one before, the slices of the frames it no longer has end, and those of its new frames
begin. So a function that runs for 200 ms is one slice of 200 ms, within a tick or two at each
end, and calls shorter than a tick are seen only when a tick lands in them, as in any sampled
profile. Slices are by function (code object), not by line.

Only the native sampler: the Python one reads stacks only where the GIL changes hands and would
cost the program a GIL hold per tick at this rate, so without the extension the sampled trace is
unavailable (mode=calls is not).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pyprofiler.errors import ProfileUnavailableError
from pyprofiler.samplers import NATIVE_STACK_READS, creation, labelsets
from pyprofiler.samplers.frames import HIDDEN_CODE
from pyprofiler.samplers.native import native, unavailable_reason
from pyprofiler.samplers.trace import CATEGORY_SAMPLED, EventBuffer, ThreadNames

SAMPLE_HZ = 1000
CUT_SECONDS = 0.01
MISSED_WINDOWS = 10
# The frame of the stacks that no longer fitted the sampler's table (never within 10 ms).
TABLE_FULL = "[pyprofiler: stack table full]"

# An open slice: [code or name, start_ns, labels].
_Open = list


class StackTimeline:
    """The sampled stacks of a window, as slices: a Part of a TraceWindow (samplers/trace.py)."""

    def __init__(
        self,
        buffer: EventBuffer,
        threads: ThreadNames,
        start_ns: int,
        notes: list[str],
        details: dict[str, Any],
    ) -> None:
        if not NATIVE_STACK_READS:
            why = unavailable_reason or "cannot read stacks here (process_vm_readv is denied)"
            raise ProfileUnavailableError(
                f"the sampled trace needs pyprofiler's native sampler, which {why}; "
                "mode=calls records a trace without it"
            )
        self._buffer = buffer
        self._threads = threads
        self._window_start_ns = self._trace_start_ns = start_ns
        self._wall_minus_monotonic_ns = time.time_ns() - time.monotonic_ns()
        # track (a thread's kernel id) -> its open slices, outermost first.
        self._open: dict[int, list[_Open]] = {}
        self._tids: dict[int, int] = {}  # ident -> the kernel id its records last carried
        self._known: set[int] = set()  # tracks seen
        self._last_seen: dict[int, int] = {}  # track -> end of the last window it was in
        self._missed: dict[int, int] = {}  # track -> windows since, while it has open slices
        self._sampler: Any = None
        self._cutter: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ended_at = 0  # Where the last thread laid out ran to.
        self._pending: _Window | None = None
        self._pid = os.getpid()
        self.error: str | None = None
        self._notes = notes
        details.update(sample_hz=SAMPLE_HZ, cut_ms=CUT_SECONDS * 1000)

    def install(self) -> None:
        sampler = native.StackSampler(SAMPLE_HZ, True)
        sampler.include_own_threads(self._threads.include_self)
        self._window_start_ns = time.monotonic_ns()
        sampler.start()
        self._sampler = sampler
        # Named as ours: left out of every profile, and of the sampler's own readings.
        self._cutter = threading.Thread(target=self._cut_every, name="pyprofiler-trace")
        self._cutter.daemon = True
        self._cutter.start()

    def remove(self) -> None:
        self._stopping.set()
        cutter, self._cutter = self._cutter, None
        if cutter is not None and cutter is not threading.current_thread():
            cutter.join()
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return
        records, _unseen, _own_cpu_ns, _error, stats = sampler.stop()
        if os.getpid() == self._pid:  # A forked child only lets go of the parent's sampler.
            self._window(records, stats["reading_ns"])
            self._flush()

    def finish(self, end_ns: int) -> None:
        if self.error is not None:
            self._notes.append(f"the sampled stacks stopped early: {self.error}")
        for track in list(self._open):
            self._close(track, 0, min(end_ns, self._last_seen.get(track, end_ns)))
        self._open.clear()

    def _cut_every(self) -> None:
        try:
            while not self._stopping.wait(CUT_SECONDS):
                sampler = self._sampler
                if sampler is None:
                    break
                cut = sampler.cut()
                if cut is None:
                    break
                # The reading's own time: it comes late when the cut finds the sampler waiting
                # for the GIL, and a window ended at the call would squeeze what the late
                # reading saw into too short a time.
                self._window(cut[0], cut[2]["reading_ns"])
        except Exception as exc:  # A recorder switches itself off; it never raises into the host.
            self.error = f"{type(exc).__name__}: {exc}"

    def _window(self, records: list, end_ns: int) -> None:
        """Take one cut's records, from the previous cut to `end_ns`, and lay out the cut
        before it, now that what followed it is known."""
        start_ns, self._window_start_ns = self._window_start_ns, end_ns
        window = _Window(start_ns, end_ns)
        for stack, ident, tid, alive, own, value_ns, _count, label_set, first_ns in records:
            track = self._track(ident, tid, own, window)
            if stack is None:
                frames: tuple = (TABLE_FULL,)
            else:
                frames = tuple(code for code, _line in reversed(stack) if code not in HIDDEN_CODE)
            # Stacks that differ only in lines are one: slices are by function. Records come in
            # the order first met, so the first of them holds the merged stack's first tick.
            stacks = window.seen.setdefault(track, {})
            known = stacks.get(frames)
            if known is None:
                stacks[frames] = [value_ns, labelsets.resolve(label_set), first_ns]
            else:
                known[0] += value_ns
            if not alive:
                window.ended.add(track)
        self._threads.learn_unnamed()
        pending, self._pending = self._pending, window
        if pending is not None:
            self._lay_out_window(pending, window)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._lay_out_window(pending, None)

    def _lay_out_window(self, window: _Window, following: _Window | None) -> None:
        for track in [track for track in self._open if track not in window.seen]:
            # No ticks of a thread in a window is no news (the sampler waited for the GIL);
            # in several, it is gone: its slices end where it was last seen.
            missed = self._missed[track] = self._missed.get(track, 0) + 1
            if missed >= MISSED_WINDOWS:
                self._close(track, 0, self._last_seen[track])
                del self._open[track]
        for track, stacks in window.seen.items():
            segments = [
                (frames, value, first, labels) for frames, (value, labels, first) in stacks.items()
            ]
            after = following.seen.get(track) if following is not None else None
            self._lay_out(track, segments, window, list(after) if after else None)
            self._missed.pop(track, None)
            self._last_seen[track] = window.end_ns
            if track in window.ended:
                self._close(track, 0, self._ended_at)
                del self._open[track]

    def _lay_out(
        self,
        track: int,
        segments: list[tuple[tuple, int, int, tuple]],
        window: _Window,
        after: list[tuple] | None,
    ) -> None:
        """Lay out a thread's stacks of one window: first the one that continues its current
        stack, last the one that the next window continues, and between them each the one
        that shares most with the previous."""
        opened = self._open.setdefault(track, [])
        total = sum(segment[1] for segment in segments)
        # A thread's ticks weigh the wall time before each: those of a thread running
        # throughout fill the window, those of one that started in it end at its end, and
        # those of one that ended in it start at its start.
        from_start = track in window.ended and track in self._open and bool(opened)
        at = window.start_ns if from_start else window.end_ns - total
        began_ns = window.began.get(track)
        if began_ns is not None and began_ns < at:
            # A new thread's first stack goes back to its start: on 3.9 and 3.10 the sampler
            # learns of a thread only when it gets the GIL, which busy threads may hold a while.
            at = began_ns
        left = list(segments)
        last = None
        if after and len(left) > 1:
            index = max(
                range(len(left)),
                key=lambda i: max(_continuation(frames, left[i]) for frames in after),
            )
            last = left.pop(index)
        current = tuple(entry[0] for entry in opened)
        while left or last is not None:
            if left:
                best = max(range(len(left)), key=lambda i: _continuation(current, left[i]))
                frames, value, first, labels = left.pop(best)
            else:
                (frames, value, first, labels), last = last, None
            # A tick weighs the time since the one before: the stack became this one at an
            # instant unknown within its first tick, half-way on average. That tick is long
            # when the sampler waited for the GIL to pin new code (as threads start and end).
            changed_at = at
            if current and frames != current:
                changed_at += first / 2
            self._change(track, frames, round(changed_at), labels)
            current = frames
            at += value
        self._ended_at = round(at)

    def _track(self, ident: int, tid: int, own: bool, window: _Window) -> int:
        """The track of a record: its thread's kernel id. On 3.9 and 3.10 the kernel id may
        come a few cuts after a thread's first stacks, whose ident may still be its creator's:
        till then they are on a track of that ident, whose open slices move to the kernel id's
        track when a record carries both (and which otherwise ends, unmerged)."""
        if not tid:
            track = ident
        else:
            track = tid
            if self._tids.get(ident) != tid:
                self._tids[ident] = tid
                if ident in self._open and tid not in self._open:
                    self._move(ident, tid)
        if track not in self._known:
            self._known.add(track)
            self._threads.learn(track, ident, own)
            started = self._started_ns(ident)
            if started is not None:
                window.began[track] = started
        return track

    def _move(self, track: int, to: int) -> None:
        """A thread's open slices and pending stacks, from one track to another."""
        self._open[to] = self._open.pop(track)
        for table in (self._last_seen, self._missed):
            if track in table:
                table[to] = table.pop(track)
        pending = self._pending
        if pending is not None:
            for table in (pending.seen, pending.began):
                if track in table:
                    table[to] = table.pop(track)  # type: ignore[attr-defined]
            if track in pending.ended:
                pending.ended.discard(track)
                pending.ended.add(to)

    def _started_ns(self, ident: int) -> int | None:
        """When a thread started, if it did during the trace, on the monotonic clock."""
        thread = threading._active.get(ident)  # type: ignore[attr-defined]
        info = creation.thread_creation(thread) if thread is not None else None
        if info is None:
            return None
        started_ns = info.created_ns - self._wall_minus_monotonic_ns
        return started_ns if started_ns > self._trace_start_ns else None

    def _change(self, track: int, frames: tuple, at_ns: int, labels: tuple) -> None:
        """The thread's stack becomes `frames` at `at_ns`."""
        opened = self._open[track]
        keep = _shared(tuple(entry[0] for entry in opened), frames)
        self._close(track, keep, at_ns)
        opened.extend([frame, at_ns, labels] for frame in frames[keep:])

    def _close(self, track: int, keep: int, at_ns: int) -> None:
        """End the track's open slices beyond the `keep` outermost at `at_ns`."""
        opened = self._open[track]
        add = self._buffer.add_slice
        while len(opened) > keep:
            frame, start_ns, labels = opened.pop()
            add((track, start_ns, at_ns, frame, CATEGORY_SAMPLED, labels, None))


class _Window:
    """One cut's stacks, by track, waiting for the next cut to be laid out."""

    def __init__(self, start_ns: int, end_ns: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        # track -> {frames: [wall ns, labels, the wall ns of its first tick]}
        self.seen: dict[int, dict[tuple, list]] = {}
        self.ended: set[int] = set()
        self.began: dict[int, int] = {}  # Threads first seen here that started in the trace.


def _continuation(current: tuple, segment: tuple) -> tuple[int, int, int]:
    """How well `segment` follows a stack: frames shared, then fewest added, then weight."""
    frames, value, _first, _labels = segment
    shared = _shared(current, frames)
    return shared, shared - len(frames), value


def _shared(a: tuple, b: tuple) -> int:
    """How many outermost frames two stacks share."""
    shared = 0
    for x, y in zip(a, b):
        if x is not y:
            break
        shared += 1
    return shared
