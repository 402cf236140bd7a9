"""A program for tests/test_trace.py to trace, serving its profiles on a port of its own.

    python tests/trace_workload.py busy         # two hot threads, 20 asyncio tasks, a gc
    python tests/trace_workload.py calls N      # a thread calling tick() N times

It prints its /debug/pprof/ URL, then waits for a line on stdin; START_DELAY seconds after it
(time for the test's trace to begin) it does its work, prints a JSON line with what it timed
itself, and serves on until stdin closes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time

import pyprofiler

START_DELAY = 0.4
# Long enough that a late tick at either end (tens of ms on a loaded 2-core machine) stays
# well within the acceptance's 10 %.
HOT_ONE_SECONDS = 0.6
HOT_TWO_SECONDS = 1.0
TASKS = 20
AFTER_SECONDS = 0.3


def hot_one(seconds: float) -> float:
    """Computes for `seconds`, calling no Python function: one slice; returns what it timed."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        total = 0
        for i in range(2_000):
            total += i
    return time.monotonic() - start


def hot_two(seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        total = 0
        for i in range(2_000):
            total += i * 3
    return time.monotonic() - start


async def step_often(index: int) -> int:
    total = 0
    for _ in range(3):
        await asyncio.sleep(0.005)
        total += sum(range(5_000 + index))
    return total


async def run_tasks() -> list[str]:
    tasks = [asyncio.create_task(step_often(i), name=f"task-{i:02d}") for i in range(TASKS)]
    await asyncio.gather(*tasks)
    return [task.get_name() for task in tasks]


def compute_until(done: threading.Event) -> None:
    while not done.is_set():
        sum(range(1_000))


class Cycle:
    def __init__(self) -> None:
        self.me = self


class Busy:
    """Two hot threads and an asyncio loop's thread, started before the trace and set to work
    by `run()`: on 3.9 and 3.10 the native sampler may take a few ms to learn of a new
    thread."""

    def __init__(self) -> None:
        self.timed: dict = {}
        self._go = threading.Event()
        self.threads = [
            threading.Thread(
                target=self._hot, args=("hot_one", hot_one, HOT_ONE_SECONDS, "one"), name="hot-1"
            ),
            threading.Thread(
                target=self._hot, args=("hot_two", hot_two, HOT_TWO_SECONDS, "two"), name="hot-2"
            ),
            threading.Thread(target=self._loop, name="loop"),
        ]
        for thread in self.threads:
            thread.start()

    def _hot(self, name: str, function, seconds: float, worker: str) -> None:  # noqa: ANN001
        self._go.wait()
        with pyprofiler.labels(worker=worker):
            self.timed[name] = function(seconds)
        # Not ending at once: on 3.9 the native sampler may lose what an ending thread did
        # since the previous cut.
        time.sleep(AFTER_SECONDS)

    def _loop(self) -> None:
        self._go.wait()
        self.timed["tasks"] = asyncio.run(run_tasks())

    def run(self) -> dict:
        # benchmarks/trace_accuracy.py --gil-threads: more threads that want the GIL meanwhile.
        hungry = int(os.environ.get("TRACE_WORKLOAD_GIL_THREADS", "0"))
        done = threading.Event()
        for _ in range(hungry):
            threading.Thread(target=compute_until, args=(done,), daemon=True).start()
        self._go.set()
        time.sleep(0.1)
        for _ in range(1000):
            Cycle()
        self.timed["collected"] = gc.collect()
        for thread in self.threads:
            thread.join()
        done.set()
        return self.timed


def tick() -> int:
    return 1


def calls(count: int) -> dict:
    done = {}

    def tick_many() -> None:
        for _ in range(count):
            tick()
        done["ticks"] = count

    # Started after the trace began: before 3.12 only such threads get the profile function.
    ticker = threading.Thread(target=tick_many, name="ticker")
    ticker.start()
    ticker.join()
    return done


def main() -> None:
    server = pyprofiler.serve(port=0)
    busy = Busy() if sys.argv[1] == "busy" else None
    print(server.url, flush=True)
    sys.stdin.readline()
    time.sleep(START_DELAY)
    if busy is not None:
        timed = busy.run()
    else:
        timed = calls(int(sys.argv[2]))
    print(json.dumps(timed), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
