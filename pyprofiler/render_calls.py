"""The calls profile's other two encodings, from the records of samplers/calls.py: the marshalled
dictionary that `pstats.Stats` (and snakeviz) load, and KCachegrind's callgrind format. Both are
built in memory: nothing is written to a file."""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterator

from pyprofiler.samplers.calls import CallRecords, CallStats
from pyprofiler.snapshot import Frame, escaped

# cProfile's file and line for functions without a source file (C functions).
_PSTATS_NO_FILE = ("~", 0)
_CALLGRIND_NO_FILE = "<built-in>"


def _pstats_key(frame: Frame) -> tuple[str, int, str]:
    if not frame.filename:
        return (*_PSTATS_NO_FILE, frame.function)
    return (frame.filename, frame.start_line, frame.function)


def pstats_data(records: CallRecords) -> bytes:
    """What `pstats.Stats(path)` loads: {function: (primitive calls, calls, own s, total s,
    {caller: (calls, primitive calls, own s, total s)})}, as cProfile's dump_stats writes it."""
    callers: dict[tuple[str, int, str], dict] = {}
    for (caller, callee), edge in records.edges.items():
        callers.setdefault(_pstats_key(callee), {})[_pstats_key(caller)] = (
            edge.calls,
            edge.primitive_calls,
            edge.own_ns / 1e9,
            edge.total_ns / 1e9,
        )
    stats = {}
    for frame, function in records.functions.items():
        key = _pstats_key(frame)
        stats[key] = (
            function.primitive_calls,
            function.calls,
            function.own_ns / 1e9,
            function.total_ns / 1e9,
            callers.get(key, {}),
        )
    return marshal.dumps(stats)


class _Names:
    """Callgrind's name compression: `(id) name` the first time, `(id)` after."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        known = self._ids.get(name)
        if known is not None:
            return f"({known})"
        known = self._ids[name] = len(self._ids) + 1
        return f"({known}) {_one_line(name)}"


def _one_line(text: str) -> str:
    return escaped(text).replace("\n", " ").replace("\r", " ")


def callgrind_lines(records: CallRecords) -> Iterator[str]:
    """The profile in KCachegrind's callgrind format, a line at a time: each function's own
    time on its first line, then a `calls=` entry per function it called, with the time under
    those calls. Times in nanoseconds of the profile's clock."""
    event = f"{records.clock.capitalize()}_ns"
    yield "# callgrind format\n"
    yield "version: 1\n"
    yield "creator: pyprofiler\n"
    yield f"pid: {os.getpid()}\n"
    yield "positions: line\n"
    yield f"events: {event}\n"
    yield f"summary: {sum(f.own_ns for f in records.functions.values())}\n"
    callees: dict[Frame, list[tuple[Frame, CallStats]]] = {}
    for (caller, callee), edge in records.edges.items():
        callees.setdefault(caller, []).append((callee, edge))
    files, functions = _Names(), _Names()
    for frame, function in records.functions.items():
        yield "\n"
        yield f"fl={files(frame.filename or _CALLGRIND_NO_FILE)}\n"
        yield f"fn={functions(frame.function)}\n"
        yield f"{frame.start_line} {function.own_ns}\n"
        for callee, edge in callees.get(frame, ()):
            yield f"cfl={files(callee.filename or _CALLGRIND_NO_FILE)}\n"
            yield f"cfn={functions(callee.function)}\n"
            yield f"calls={edge.calls} {callee.start_line}\n"
            yield f"{frame.start_line} {edge.total_ns}\n"
