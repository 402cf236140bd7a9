"""Workloads for test_ui.py, each in a process of its own that serves /debug/pprof/ (and so the
UI) on a free loopback port and prints its URL as its first line:

    python ui_workload.py cpu    thread "ui-hot": parent_work() spends ~70 % of its CPU time in
                                 hot_a() and ~30 % in hot_b(); thread "ui-other": other_work(),
                                 a light load (~10 % of a core) that label filters can hide
    python ui_workload.py leak   heap sampling at a low rate; leak_more() keeps ~2 MB/s in a
                                 global list, steady() kept ~8 MB once at start

Exits by itself after MAX_SECONDS or on stdin EOF, so it never outlives the test.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pyprofiler

MAX_SECONDS = 240
UNIT = 20_000  # Loop iterations of one unit of work: a few milliseconds.

# --- cpu ----------------------------------------------------------------------------------------


def hot_a(units: int) -> int:
    total = 0
    for _ in range(units):
        for i in range(UNIT):
            total += i * i
    return total


def hot_b(units: int) -> int:
    total = 0
    for _ in range(units):
        for i in range(UNIT):
            total += i * i
    return total


def parent_work(stop: threading.Event) -> None:
    deadline = time.monotonic() + MAX_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        hot_a(7)
        hot_b(3)


def other_work(stop: threading.Event) -> None:
    deadline = time.monotonic() + MAX_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(UNIT // 2):
            total += i
        stop.wait(0.02)


# --- leak ---------------------------------------------------------------------------------------

LEAK_OBJECT = 50_000
LEAK_TICK = 0.025
LEAK_MAX_OBJECTS = 4_000  # 200 MB at most, reached after 100 s.

leaked: list = []
steady_kept: list = []


def leak_more(stop: threading.Event) -> None:
    for _ in range(LEAK_MAX_OBJECTS):
        if stop.wait(LEAK_TICK):
            return
        leaked.append(bytearray(LEAK_OBJECT))


def steady() -> None:
    for _ in range(160):
        steady_kept.append(bytearray(LEAK_OBJECT))


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    mode = sys.argv[1]
    stop = threading.Event()
    if mode == "cpu":
        server = pyprofiler.serve(host="127.0.0.1", port=0, max_seconds=30)
        threads = [
            threading.Thread(target=parent_work, args=(stop,), name="ui-hot", daemon=True),
            threading.Thread(target=other_work, args=(stop,), name="ui-other", daemon=True),
        ]
    elif mode == "leak":
        pyprofiler.set_mem_profile_rate(4096)
        server = pyprofiler.serve(host="127.0.0.1", port=0, max_seconds=30)
        steady()
        threads = [threading.Thread(target=leak_more, args=(stop,), name="ui-leak", daemon=True)]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    timer = threading.Timer(MAX_SECONDS, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    for thread in threads:
        thread.start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # Until the test closes our stdin (or dies).
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        timer.cancel()
        server.stop()


if __name__ == "__main__":
    main()
