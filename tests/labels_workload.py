"""Two routes computing at once, each under its own labels, run as a script for the labels'
end-to-end test: `work_a` under labels(route="/a") and `work_b` under labels(route="/b"), /a
given twice /b's work per chunk so that the shares differ.

    python tests/labels_workload.py MODE SECONDS OUT.pb.gz

MODE is `tasks` (one event loop, two tasks per route yielding to the loop between chunks),
`loops` (the same tasks spread over two loops in two threads) or `threads` (two plain threads
per route). The CPU profile is taken in this process for SECONDS and written to OUT; each
task's chunk, or each thread as a whole, is timed with its thread's CPU clock meanwhile.
Prints a JSON line {"timed": {route: ns}, "workers": ns}: what the program measured itself,
and its worker threads' CPU over the profile (the process's less pyprofiler's own sampler
thread, which the profile leaves out).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import pyprofiler
from pyprofiler import proto

CHUNK = 20_000  # ~1 ms of CPU: a handler's computing between two awaits.
WORK = {"/a": 2 * CHUNK, "/b": CHUNK}


def work_a(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i & 1023
    return total


def work_b(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i & 1023
    return total


FUNCTIONS = {"/a": work_a, "/b": work_b}


class Timing:
    """Each route's CPU, counted only while a profile runs."""

    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.timed = {route: 0 for route in WORK}
        self.lock = threading.Lock()

    def chunk(self, route: str) -> None:
        started = time.thread_time_ns()
        FUNCTIONS[route](WORK[route])
        used = time.thread_time_ns() - started
        if self.measuring:
            with self.lock:
                self.timed[route] += used


async def handler(route: str, timing: Timing) -> None:
    with pyprofiler.labels(route=route):
        while not timing.stop:
            timing.chunk(route)
            await asyncio.sleep(0)


def run_loop(routes: list[str], timing: Timing) -> None:
    async def main() -> None:
        await asyncio.gather(*(handler(route, timing) for route in routes))

    asyncio.run(main())


def run_thread(route: str, timing: Timing) -> None:
    """Timed as a whole (its thread's clock, read by main()): clock reads between chunks would
    be where a thread gives up the GIL, and be charged to the route as they are."""
    function, iterations = FUNCTIONS[route], WORK[route]
    with pyprofiler.labels(route=route):
        while not timing.stop:
            function(iterations)


def cpu_ns(thread: threading.Thread) -> int:
    return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))


def main() -> None:
    mode, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    timing = Timing()
    both = ["/a", "/b", "/a", "/b"]
    if mode == "tasks":
        targets = [(run_loop, (both, timing))]
    elif mode == "loops":
        targets = [(run_loop, (["/a", "/b"], timing)) for _ in range(2)]
    elif mode == "threads":
        targets = [(run_thread, (route, timing)) for route in both]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    threads = [threading.Thread(target=target, args=args) for target, args in targets]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        profile = pyprofiler.lookup("profile")
        timing.measuring = True
        started = [cpu_ns(thread) for thread in threads]
        snapshot = profile.snapshot(seconds)
        used = [cpu_ns(thread) - before for thread, before in zip(threads, started)]
        timing.measuring = False
        if mode == "threads":
            for (_, (route, _)), thread_ns in zip(targets, used):
                timing.timed[route] += thread_ns
    finally:
        timing.stop = True
        for thread in threads:
            thread.join(timeout=30)
    with open(out, "wb") as file:
        file.write(proto.encode(snapshot))
    print(json.dumps({"timed": timing.timed, "workers": sum(used)}), flush=True)


if __name__ == "__main__":
    main()
