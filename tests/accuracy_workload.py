"""Workload for test_accuracy.py, run as a script: one thread splits its CPU ~70/30 between
hot_a and hot_b at ~20 frames depth and measures the true split with time.thread_time_ns();
a second, mostly sleeping thread runs side_task.

Prints the server URL, then obeys stdin lines: "mark" (start a measuring window), "report"
(print the window's {"hot_a": ns, "hot_b": ns} as JSON), "quit". Exits by itself after
MAX_SECONDS or on stdin EOF, so it never outlives the test.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import pyprofiler

DEPTH = 20
SHARE_A = 0.7
MAX_SECONDS = 120


def hot_a(n: int) -> int:
    # hot_a and hot_b have identical bodies, so that neither is easier to catch mid-chunk.
    total = 0
    for i in range(n):
        total += i
    return total


def hot_b(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def descend(depth: int, function, n: int) -> int:
    if depth <= 1:
        return function(n)
    return descend(depth - 1, function, n)


def hot_worker(stop: threading.Event, totals: dict) -> None:
    rng = random.Random(1234)
    while not stop.is_set():
        function = hot_a if rng.random() < SHARE_A else hot_b
        # Chunks of random length (~0.2-2 ms), never in step with the sampler's 10 ms ticks.
        n = rng.randint(5_000, 50_000)
        start = time.thread_time_ns()
        descend(DEPTH, function, n)
        totals[function.__name__] += time.thread_time_ns() - start


def side_task(stop: threading.Event) -> None:
    while not stop.wait(0.008):
        hot_deadline = time.thread_time() + 0.001
        while time.thread_time() < hot_deadline:
            pass


def main() -> None:
    totals = {"hot_a": 0, "hot_b": 0}
    stop = threading.Event()
    threads = [
        threading.Thread(target=hot_worker, args=(stop, totals), name="hot-worker"),
        threading.Thread(target=side_task, args=(stop,), name="side-worker"),
    ]
    server = pyprofiler.serve(port=0, max_seconds=60)
    for thread in threads:
        thread.start()
    # Stop on our own after MAX_SECONDS even if the parent never says "quit".
    timer = threading.Timer(MAX_SECONDS, stop.set)
    timer.daemon = True
    timer.start()
    print(server.url, flush=True)
    base = dict(totals)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "mark":
                base = dict(totals)
            elif command == "report":
                print(json.dumps({k: totals[k] - base[k] for k in totals}), flush=True)
            elif command == "quit" or stop.is_set():
                break
    finally:
        timer.cancel()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        server.stop()


if __name__ == "__main__":
    main()
