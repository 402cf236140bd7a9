"""A trace's records (samplers/trace.py) as Chrome's trace-event JSON, gzipped: the format that
Perfetto UI, chrome://tracing and speedscope open.

`{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`, times in whole
microseconds from the window's start (whole, so that a slice's end, ts + dur, is exact and
nesting is never lost to rounding). Slices are complete events (`X`), sorted by start on each
thread's track; tasks are async events (`b`/`e`, category `asyncio.task`, the task's id);
process and thread names are metadata (`M`); events dropped for the buffer's bound are an
instant event and `otherData.dropped_events`.

On a thread's track, exact slices (collections, asyncio steps and callbacks, mode=calls' calls)
keep their measured times, and sampled slices, whose edges are known to a tick or so, give way
where they would straddle an exact one: each keeps its larger part, inside or outside it, so
that every track nests.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from bisect import bisect_left
from collections.abc import Iterator
from typing import IO, Any

from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.trace import CATEGORY_SAMPLED, TraceRecords

TASK_CATEGORY = "asyncio.task"
_CHUNK_EVENTS = 2000


def write(records: TraceRecords, file: IO[bytes], process_name: str | None = None) -> None:
    """Write the trace to `file` as gzipped JSON, a chunk at a time."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip container.
    for text in json_chunks(records, process_name):
        data = compressor.compress(text.encode("utf-8", "surrogateescape"))
        if data:
            file.write(data)
    file.write(compressor.flush())


def json_chunks(records: TraceRecords, process_name: str | None = None) -> Iterator[str]:
    """The trace's JSON document in pieces."""
    yield '{"traceEvents": [\n'
    batch: list[str] = []
    first = True
    for event in trace_events(records, process_name):
        batch.append(json.dumps(event, separators=(",", ":")))
        if len(batch) >= _CHUNK_EVENTS:
            yield ("" if first else ",\n") + ",\n".join(batch)
            batch, first = [], False
    if batch:
        yield ("" if first else ",\n") + ",\n".join(batch)
    other = json.dumps(other_data(records), separators=(",", ":"))
    yield f'\n],\n"displayTimeUnit": "ms",\n"otherData": {other}}}\n'


def other_data(records: TraceRecords) -> dict[str, Any]:
    data: dict[str, Any] = {
        "producer": "pyprofiler /debug/pprof/trace",
        "mode": records.mode,
        "start_time_unix_ns": records.wall_start_ns,
        "duration_us": (records.end_ns - records.start_ns) // 1000,
        "dropped_events": records.dropped,
        "max_events": records.max_events,
        "python": sys.version.split()[0],
    }
    data.update(records.details)
    if records.notes:
        data["notes"] = "; ".join(records.notes)
    return data


def trace_events(records: TraceRecords, process_name: str | None = None) -> Iterator[dict]:
    """Every event of the trace: metadata first, then each thread's slices in order, then the
    tasks' lives and the drop count."""
    pid = os.getpid()
    origin = records.start_ns
    namer = _Namer()
    by_thread: dict[int, list] = {}
    for record in records.slices:
        by_thread.setdefault(record[0], []).append(record)
    tids = set(by_thread) | {task[2] for task in records.tasks}
    name = process_name or _process_name()
    yield _metadata("process_name", pid, pid, name)
    for tid in sorted(tids):
        thread_name = records.thread_names.get(tid, f"thread-{tid}")
        yield _metadata("thread_name", pid, tid, thread_name)
    for tid in sorted(by_thread):
        for start_us, end_us, _order, record in nested(by_thread[tid], origin):
            _tid, _start, _end, what, category, labels, args = record
            event = {
                "ph": "X",
                "name": namer.name(what),
                "cat": category,
                "ts": start_us,
                "dur": end_us - start_us,
                "pid": pid,
                "tid": tid,
            }
            event_args = dict(args) if args else {}
            if labels:
                event_args["labels"] = dict(labels)
            if event_args:
                event["args"] = event_args
            yield event
    for task_id, task_name, tid, start_ns, end_ns, labels in sorted(
        records.tasks, key=lambda task: task[3]
    ):
        common = {"cat": TASK_CATEGORY, "id": task_id, "name": task_name, "pid": pid, "tid": tid}
        begin = {"ph": "b", "ts": _us(start_ns, origin), **common}
        if labels:
            begin["args"] = {"labels": dict(labels)}
        yield begin
        yield {"ph": "e", "ts": max(_us(end_ns, origin), begin["ts"]), **common}
    if records.dropped:
        yield {
            "ph": "i",
            "s": "g",
            "name": f"pyprofiler: {records.dropped} events dropped (at most "
            f"{records.max_events} per trace)",
            "ts": _us(records.end_ns, origin),
            "pid": pid,
            "tid": pid,
            "args": {"dropped_events": records.dropped},
        }


def nested(slices: list, origin: int) -> list[tuple[int, int, int, tuple]]:
    """One thread's slices as (start_us, end_us, order, record), sorted so that each comes after
    every slice that contains it, with sampled slices cut to nest with the exact ones."""
    exact: list[tuple[int, int]] = []
    sampled: list[tuple[int, int, int, tuple]] = []
    placed: list[tuple[int, int, int, tuple]] = []
    for index, record in enumerate(slices):
        start_us, end_us = _us(record[1], origin), _us(record[2], origin)
        if end_us < start_us:
            continue
        # Of two slices with the same times, the one added later contains the other.
        item = (start_us, end_us, -index, record)
        if record[4] == CATEGORY_SAMPLED:
            sampled.append(item)
        else:
            exact.append((start_us, end_us))
            placed.append(item)
    placed.extend(_give_way(sampled, exact))
    placed.sort(key=lambda item: (item[0], -item[1], item[2]))
    return placed


def _give_way(
    sampled: list[tuple[int, int, int, tuple]], exact: list[tuple[int, int]]
) -> list[tuple[int, int, int, tuple]]:
    """The sampled slices, each inside its (adjusted) parent and none straddling an exact one."""
    intervals = _Intervals(exact)
    sampled.sort(key=lambda item: (item[0], -item[1], item[2]))
    kept: list[tuple[int, int, int, tuple]] = []
    parents: list[tuple[int, int, int, int]] = []  # (original start, end; adjusted start, end)
    for start, end, order, record in sampled:
        # A slice left behind may still run when this one starts (a frame that outlasts its
        # caller's slice, as the sampler's cuts can leave one): this one starts after it.
        after = start
        while parents and not (parents[-1][0] <= start and end <= parents[-1][1]):
            after = max(after, parents.pop()[3])
        new_start, new_end = after, end
        if parents:
            new_start, new_end = max(after, parents[-1][2]), min(end, parents[-1][3])
        while new_start < new_end:
            crossed = intervals.straddled(new_start, new_end)
            if crossed is None:
                break
            # Its part inside the exact slice, or outside it, whichever is longer.
            inside = (max(new_start, crossed[0]), min(new_end, crossed[1]))
            if crossed[0] > new_start:
                outside = (new_start, crossed[0])
            else:
                outside = (crossed[1], new_end)
            longer = inside[1] - inside[0] > outside[1] - outside[0]
            new_start, new_end = inside if longer else outside
        parents.append((start, end, new_start, new_end))
        if new_start < new_end:
            kept.append((new_start, new_end, order, record))
    return kept


class _Intervals:
    """A thread's exact slices, which nest: which of them a span partly overlaps."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        intervals.sort(key=lambda interval: (interval[0], -interval[1]))
        self.intervals = intervals
        self.starts = [interval[0] for interval in intervals]
        # Each one's innermost container (-1 for none): every slice containing a point is
        # reached from the latest to start before that point, going out.
        self.parents: list[int] = []
        open_: list[int] = []
        for index, (_start, end) in enumerate(intervals):
            while open_ and intervals[open_[-1]][1] < end:
                open_.pop()
            self.parents.append(open_[-1] if open_ else -1)
            open_.append(index)

    def straddled(self, start: int, end: int) -> tuple[int, int] | None:
        """One that [start, end) partly overlaps, or None."""
        intervals, parents = self.intervals, self.parents
        # Those around its end: starting inside it and ending after it.
        index = bisect_left(self.starts, end) - 1
        while index >= 0 and intervals[index][0] > start:
            if intervals[index][1] > end:
                return intervals[index]
            index = parents[index]
        # Those around its start: starting before it and ending inside it.
        index = bisect_left(self.starts, start) - 1
        while index >= 0:
            other_start, other_end = intervals[index]
            if start < other_end < end and other_start < start:
                return intervals[index]
            index = parents[index]
        return None


def _us(ns: int, origin: int) -> int:
    return (ns - origin) // 1000


def _metadata(kind: str, pid: int, tid: int, name: str) -> dict:
    return {"ph": "M", "name": kind, "ts": 0, "pid": pid, "tid": tid, "args": {"name": name}}


def _process_name() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return " ".join(argv)[:200]  # Viewers show the pid beside it.


class _Namer:
    """Code objects as `module.Class.method`; names as they are."""

    def __init__(self) -> None:
        self._frames = FrameNamer()
        self._names: dict[int, str] = {}

    def name(self, what: Any) -> str:
        if isinstance(what, str):
            return what
        found = self._names.get(id(what))
        if found is None:
            found = self._names[id(what)] = self._frames.frame(what, None).function
        return found
