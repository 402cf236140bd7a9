"""Workloads for test_heap.py, in a process of their own: the allocation sampler is process-wide,
so figures that must be exact are measured where nothing else allocates.

    python heap_workload.py serve RATE       serve on port 0 (RATE "-": leave the rate alone),
                                             print the URL, then obey stdin lines (below)
    python heap_workload.py threads SECONDS  8 threads allocating at rate 1, then "ok" (for -X dev)

Commands in `serve` mode, one answer line each (JSON unless said otherwise):
    build         f() keeps ~150 MB and g() ~50 MB of small objects, churn() allocates and frees
                  ~1 GB; answers the true figures, measured with sys.getsizeof
    leak          start leaky(), which keeps ~1 MB/s until the process ends; answers "started"
    kept T0 T1    bytes leaky() kept between times T0 and T1 (time.time_ns())
    fallback      set_mem_profile_rate(1), then fallback_keep() keeps ~8 MB; answers its bytes
    quit

Exits by itself after MAX_SECONDS or on stdin EOF, so it never outlives the test. The functions
used as multiprocessing targets live here because a spawned child must import them.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import sys
import threading
import time
from array import array

import pyprofiler
from pyprofiler.samplers.native import native

MAX_SECONDS = 120

# Sizes come from a list, not literals, so that the compiler cannot fold the objects into
# constants; each size is its own (stack, size) bucket.
SMALL_SIZES = [100, 200, 300, 400]
CHURN_SIZES = [1_000, 3_000, 5_000, 7_000]
LEAK_SIZES = [500, 1_500]


def f(count: int) -> list:
    kept = []
    for n in itertools.islice(itertools.cycle(SMALL_SIZES), count):
        kept.append(bytes(n))
    return kept


def g(count: int) -> list:
    kept = []
    for n in itertools.islice(itertools.cycle(SMALL_SIZES), count):
        kept.append(bytes(n))
    return kept


def churn(cycles: int) -> None:
    for _ in itertools.repeat(None, cycles):
        for n in CHURN_SIZES:
            bytes(n)  # Allocated and freed at once.


def retained(objects: list) -> int:
    """What a list built in one function keeps: its objects and its own storage."""
    return sum(map(sys.getsizeof, objects)) + sys.getsizeof(objects)


def build() -> tuple[dict, list]:
    per_object = sum(sys.getsizeof(bytes(n)) for n in SMALL_SIZES) / len(SMALL_SIZES)
    kept_f = f(int(150e6 / per_object))
    kept_g = g(int(50e6 / per_object))
    per_cycle = sum(sys.getsizeof(bytes(n)) for n in CHURN_SIZES)
    cycles = int(1e9 / per_cycle)
    churn(cycles)
    truth = {"f": retained(kept_f), "g": retained(kept_g), "churn": cycles * per_cycle}
    return truth, [kept_f, kept_g]


class Leak:
    """leaky() keeps LEAK_BYTES_PER_TICK every TICK seconds, and logs (time, total kept) in
    arrays allocated up front, so that the log itself is not part of what it keeps."""

    TICK = 0.02
    LEAK_BYTES_PER_TICK = 20_000  # ~1 MB/s
    MAX_TICKS = int(MAX_SECONDS / TICK)

    def __init__(self) -> None:
        per_object = sum(sys.getsizeof(bytes(n)) for n in LEAK_SIZES) / len(LEAK_SIZES)
        self.objects_per_tick = round(self.LEAK_BYTES_PER_TICK / per_object)
        self.kept: list = [None] * (self.MAX_TICKS * self.objects_per_tick)
        self.times = array("q", bytes(8 * self.MAX_TICKS))
        self.totals = array("q", bytes(8 * self.MAX_TICKS))
        self.ticks = 0
        self.stop = threading.Event()

    def leaky(self) -> None:
        kept, objects_per_tick = self.kept, self.objects_per_tick
        sizes = itertools.cycle(LEAK_SIZES)
        total = index = 0
        for tick in range(self.MAX_TICKS):
            if self.stop.wait(self.TICK):
                return
            for _ in itertools.repeat(None, objects_per_tick):
                kept[index] = obj = bytes(next(sizes))
                total += sys.getsizeof(obj)
                index += 1
            self.times[tick] = time.time_ns()
            self.totals[tick] = total
            self.ticks = tick + 1

    def kept_between(self, t0: int, t1: int) -> int:
        """Bytes kept after time t0 up to time t1."""
        times = self.times[: self.ticks]

        def total_at(t: int) -> int:
            i = bisect.bisect_right(times, t)
            return self.totals[i - 1] if i else 0

        return total_at(t1) - total_at(t0)


def fallback_keep() -> list:
    kept = []
    for n in itertools.islice(itertools.cycle(SMALL_SIZES), 32_000):
        kept.append(bytes(n))
    return kept


def serve(rate: str) -> None:
    server = pyprofiler.serve(host="127.0.0.1", port=0, max_seconds=30)
    if rate != "-":
        pyprofiler.set_mem_profile_rate(int(rate))
    leak = Leak()
    leak_thread = threading.Thread(target=leak.leaky, name="leaky", daemon=True)
    keep: list = []
    # Stop on our own after MAX_SECONDS even if the test never says "quit".
    timer = threading.Timer(MAX_SECONDS, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    print(server.url, flush=True)
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "build":
                truth, kept = build()
                keep.append(kept)
                print(json.dumps(truth), flush=True)
            elif command == "leak":
                leak_thread.start()
                print("started", flush=True)
            elif command == "kept":
                print(json.dumps(leak.kept_between(int(args[0]), int(args[1]))), flush=True)
            elif command == "fallback":
                pyprofiler.set_mem_profile_rate(1)
                kept = fallback_keep()
                keep.append(kept)
                print(json.dumps(retained(kept)), flush=True)
            elif command == "frees_seen":
                print(native.stats()["frees_seen"], flush=True)
            elif command == "quit":
                break
    finally:
        timer.cancel()
        leak.stop.set()
        if leak_thread.is_alive():
            leak_thread.join(timeout=10)
        server.stop()


def allocate_mixed(stop: threading.Event, deadline: float, max_rounds: int = 1_000_000) -> None:
    """Dicts, lists, strings and bytes, some kept for a while in a ring so that frees of sampled
    blocks happen long after their allocation (and in other threads' time slices)."""
    ring: list = [None] * 64
    for i in range(max_rounds):
        if stop.is_set() or time.monotonic() > deadline:
            return
        n = i % 16  # A few sizes only: a few hundred (stack, size) buckets.
        ring[i % 64] = {
            "list": [j for j in range(n * 4)],
            "text": "x" * (n * 20) + str(i),
            "blob": bytearray(n * 100),
        }


def allocate_in_threads(threads: int, seconds: float, stop: threading.Event | None = None) -> None:
    """`threads` threads allocating for `seconds` (or until `stop` is set), then joined (and
    checked to have stopped)."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds
    workers = [
        threading.Thread(target=allocate_mixed, args=(stop, deadline), name=f"alloc-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=seconds + 30)
    finally:
        stop.set()
    if any(worker.is_alive() for worker in workers):
        raise RuntimeError("an allocating thread did not stop")


def child_allocates() -> list:
    kept = []
    for n in itertools.islice(itertools.cycle(SMALL_SIZES), 20_000):
        kept.append(bytes(n))
    return kept


def mp_child(path: str, rate: int) -> None:
    """A multiprocessing child: profile its own allocations and write the heap profile to
    `path`. An exception makes the child's exit code 1."""
    pyprofiler.set_mem_profile_rate(rate)
    kept = child_allocates()
    with open(path, "wb") as file:
        pyprofiler.write_heap_profile(file)
    del kept


def main() -> None:
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2])
    elif mode == "threads":
        pyprofiler.set_mem_profile_rate(1)
        allocate_in_threads(8, float(sys.argv[2]))
        pyprofiler.set_mem_profile_rate(0)
        print("ok", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
