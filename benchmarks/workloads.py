"""The workloads that benchmarks/overhead.py profiles.

`Crowd` runs CPU-bound threads in fixed amounts of work (rounds of `Split`) beside idle threads
blocked in `threading.Event.wait()`; `create_app` is the Flask app of the HTTP workload.
"""

from __future__ import annotations

import contextlib
import threading
import time

from flask import Flask

import pyprofiler

# Recursion depth of `_descend`: the hot functions run 20 frames deep in a Crowd thread, as they
# might in a service behind a web framework.
DESCEND_FRAMES = 12

# Loop iterations per round of `Split`: a round takes about half a millisecond, split ~70/30.
MAJOR_ITERATIONS = 7_000
MINOR_ITERATIONS = 3_000

# Loop iterations per HTTP request: about a millisecond of CPU.
REQUEST_ITERATIONS = 20_000


def hot_major(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def hot_minor(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


_NO_LABELS = contextlib.nullcontext()


def _descend(depth: int, function, *args) -> None:
    if depth:
        _descend(depth - 1, function, *args)
    else:
        function(*args)


class Split:
    """Rounds of hot_major then hot_minor, each call timed with this thread's CPU clock, so that
    the true split of the CPU between the two is known to compare a profile against. Setting
    `halt` ends the rounds early. `labelled`: each call runs under labels of its own, as two
    routes would."""

    def __init__(self, halt: threading.Event, labelled: bool = False) -> None:
        self.major_ns = 0
        self.minor_ns = 0
        self._halt = halt
        self._labelled = labelled

    def run(self, rounds: int) -> None:
        _descend(DESCEND_FRAMES, self._rounds, rounds)

    def _rounds(self, rounds: int) -> None:
        clock = time.thread_time_ns
        major_labels = pyprofiler.labels(route="/major") if self._labelled else _NO_LABELS
        minor_labels = pyprofiler.labels(route="/minor") if self._labelled else _NO_LABELS
        for _ in range(rounds):
            if self._halt.is_set():
                return
            start = clock()
            with major_labels:
                hot_major(MAJOR_ITERATIONS)
            middle = clock()
            with minor_labels:
                hot_minor(MINOR_ITERATIONS)
            end = clock()
            self.major_ns += middle - start
            self.minor_ns += end - middle


class Crowd:
    """`busy` threads that each run a fixed number of Split rounds per block of work, and `idle`
    threads that wait on an Event for the crowd's whole life.

    The threads are started once and reused, so that no block pays for thread creation and a
    profile always sees the same threads.
    """

    def __init__(self, busy: int, idle: int, labelled: bool = False) -> None:
        self.busy = busy
        self._labelled = labelled
        self._go = threading.Barrier(busy + 1)
        self._done = threading.Barrier(busy + 1)
        self._closing = threading.Event()
        self._halt = threading.Event()
        self._rounds = 0
        self._splits: list[Split] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"busy-{i}", daemon=True) for i in range(busy)
        ] + [
            threading.Thread(target=self._closing.wait, name=f"idle-{i}", daemon=True)
            for i in range(idle)
        ]
        for thread in self._threads:
            thread.start()

    def start(self, rounds: int) -> None:
        """Set every busy thread running `rounds` rounds; returns at once."""
        self._rounds = rounds
        self._splits = []
        self._halt.clear()
        self._go.wait()

    def halt(self) -> None:
        """Make the busy threads stop after their current round."""
        self._halt.set()

    def join(self) -> list[Split]:
        """Wait for the busy threads to finish; their Splits tell how the CPU was split."""
        self._done.wait()
        return self._splits

    def run(self, rounds: int) -> list[Split]:
        self.start(rounds)
        return self.join()

    def close(self) -> None:
        self._closing.set()
        self._go.wait()  # Releases the busy threads, which see _closing and return.
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            self._go.wait()
            if self._closing.is_set():
                return
            split = Split(self._halt, self._labelled)
            split.run(self._rounds)
            self._splits.append(split)
            self._done.wait()


def create_app(labelled: bool = False) -> Flask:
    """A Flask app whose one route, /work, spends about a millisecond of CPU; `labelled`: its
    requests labelled by pyprofiler.label_requests."""
    app = Flask("benchmark")

    @app.route("/work")
    def work() -> str:
        return str(hot_major(REQUEST_ITERATIONS))

    return pyprofiler.label_requests(app) if labelled else app
