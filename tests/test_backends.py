"""Each recorder's two backends side by side, in one process, on the same fixtures: the native
extension's and its Python twin's. Nothing is skipped for want of the extension (CI always
builds it): only PYPROFILER_NATIVE=0, which asks for the Python backends alone, leaves the
comparison out."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from pyprofiler.samplers import stacks
from pyprofiler.samplers.heap_native import NativeHeap
from pyprofiler.samplers.heap_tracemalloc import TracemallocHeap
from pyprofiler.samplers.native import native, unavailable_reason
from pyprofiler.samplers.stack_native import NativeStackBackend
from pyprofiler.samplers.stack_python import PythonStackBackend

if os.environ.get("PYPROFILER_NATIVE") == "0":
    pytest.skip("PYPROFILER_NATIVE=0: only the Python backends are in use", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def extension():
    assert native is not None, f"pyprofiler's native extension {unavailable_reason}"
    assert native.stack_reads_available(), "this process cannot copy its own stacks"


def wait_in_known_place(stop: threading.Event) -> None:
    stop.wait()


def spin_in_known_place(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def sampled_functions(samples: list, thread: str) -> set[str]:
    return {
        frame.function
        for sample in samples
        if dict(sample.labels).get("thread") == thread and sample.values[1] > 0
        for frame in sample.frames
    }


@pytest.mark.parametrize(
    ("wall", "target"), [(True, wait_in_known_place), (False, spin_in_known_place)]
)
def test_stack_backends_see_the_same_thread_in_the_same_function(wall, target):
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), name="known-place", daemon=True)
    thread.start()
    backends = [NativeStackBackend(200, wall), PythonStackBackend(200, wall)]
    try:
        for backend in backends:
            backend.start()
        time.sleep(0.5)
        cut = [backend.cut() for backend in backends]
        time.sleep(0.3)
    finally:
        stopped = [backend.stop() for backend in backends]
        stop.set()
        thread.join()
    function = f"{__name__}.{target.__name__}"
    for (window, stats), (samples, error, _) in zip(cut, stopped):
        assert error is None
        assert isinstance(stats, dict)
        assert function in sampled_functions(window, "known-place")
        assert function in sampled_functions(samples, "known-place")
    assert all(backend.own_cpu_ns > 0 for backend in backends)


def allocate_in_known_place() -> list:
    return [bytearray(4096) for _ in range(2000)]  # The line both backends must name.


ALLOCATION_LINE = allocate_in_known_place.__code__.co_firstlineno + 1


def test_heap_backends_both_find_the_allocation_site():
    recorders = [NativeHeap(), TracemallocHeap()]
    previous = recorders[0].get_rate()
    native.reset()
    try:
        for recorder in recorders:
            recorder.set_rate(1)
        assert all(recorder.recording() for recorder in recorders)
        kept = allocate_in_known_place()
        records = [recorder.records() for recorder in recorders]
        stats = [dict(recorder.stats()) for recorder in recorders]
    finally:
        recorders[1].set_rate(0)
        recorders[0].set_rate(previous)
    assert [recorder.sees_frees for recorder in recorders] == [True, False]
    for found in records:
        here = [
            record
            for record in found
            if any(f.filename == __file__ and f.line == ALLOCATION_LINE for f in record.frames)
        ]
        assert sum(record.alloc_bytes - record.free_bytes for record in here) >= 4096 * 2000
    assert len(kept) == 2000
    assert stats[0]["SampleRate"] == 1 and stats[1]["Tracemalloc"] is True


def test_raw_stack_readers_agree():
    def inner() -> tuple:
        frame = sys._getframe()
        return (
            native.frame_stack(frame),
            stacks.walk(frame),
            native.current_stack(0)[:8],
            stacks.walk(sys._getframe(0), 8),
        )

    # The leaf is the running frame itself, a line further on at each read: its code must agree.
    native_from_frame, walked_from_frame, native_here, walked_here = inner()
    assert native_from_frame[1:] == walked_from_frame[1:]
    assert native_here[1:] == walked_here[1:]
    leaves = (native_from_frame, walked_from_frame, native_here, walked_here)
    assert all(stack[0][0] is inner.__code__ for stack in leaves)
