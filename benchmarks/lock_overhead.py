"""Overhead of the block and mutex profiles, measured against the bars of issue 5 (recorded in
docs/performance.md).

    python benchmarks/lock_overhead.py            # full run, under 3 minutes
    python benchmarks/lock_overhead.py --quick    # smoke run, about 30 seconds

(a) Uncontended acquire/release of threading.Lock() and threading.RLock() against the plain
_thread locks: with both rates at 0 (nothing is installed: the same type, ratio ~1.00), and with
block rate 1 and mutex fraction 1 (the C extension's Lock and RLock), bar <= 1.5x.
(b) A threaded Flask app (werkzeug, 127.0.0.1, port 0) whose route takes a lock (held for a
little CPU work and a 0.1 ms sleep, so that concurrent requests sometimes contend for it),
passes an item through a queue.Queue and does about a millisecond of CPU work, under load from
benchmarks/loadgen.py in a separate process: requests/s with both rates at 1 against both at 0,
bar >= 0.97. Everything the route uses is made afresh at the start of each block, so that the
"on" blocks use instrumented primitives and the "off" blocks plain ones, as an application
that set the rates before creating its locks would.

Separate processes drift by several percent on shared machines, so each comparison runs in one
process as blocks alternating in ABBA order (A B B A A B B A ...); each consecutive pair gives
a ratio, and the median ratio is reported. Pairs during which other processes used more than
QUIET_CPUS are left out when enough quiet ones remain (the report says how many were kept).

Prints one line per figure with PASS/FAIL against its bar, and exits 0 whatever the figures: it
is a measurement, not a test.
"""

from __future__ import annotations

import _thread
import argparse
import os
import platform
import queue
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

from common import (
    HTTP_CLIENTS,
    MachineLoad,
    Pairs,
    QuietHandler,
    abba,
    figure,
    load,
    spread,
)
from flask import Flask
from werkzeug.serving import make_server

import pyprofiler
from pyprofiler.samplers import locks
from pyprofiler.samplers.native import native

HOST = "127.0.0.1"
MAX_REQUESTS = 500_000  # Per block; the block's duration is what normally ends it.
LOCKED_ITERATIONS = 1_000  # CPU work with the route's lock held (~0.05 ms),
LOCKED_SLEEP = 0.0001  # and a short wait for something else (a cache, a pool): contention.
# (--locked-sleep changes it; 0 leaves the route's lock nearly uncontended.)
REQUEST_ITERATIONS = 20_000  # CPU work per request outside the lock (~1 ms).

PLAIN_LOCK = type(_thread.allocate_lock())
PLAIN_RLOCK = _thread.RLock


@dataclass(frozen=True)
class Plan:
    lock_pairs: int  # ABBA pairs per lock figure
    lock_iterations: int  # acquire/release per block
    http_pairs: int
    http_seconds: float


FULL = Plan(lock_pairs=60, lock_iterations=200_000, http_pairs=16, http_seconds=3.0)
QUICK = Plan(lock_pairs=12, lock_iterations=100_000, http_pairs=4, http_seconds=2.0)


def set_rates(on: bool) -> None:
    pyprofiler.set_block_profile_rate(1 if on else 0)
    pyprofiler.set_mutex_profile_fraction(1 if on else 0)


@dataclass
class Block:
    on: bool  # B: the instrumented side
    value: float  # seconds for (a), requests/s for (b)
    others: float


def _on(block: Block) -> bool:
    return block.on


def _value(block: Block) -> float:
    return block.value


def run_abba(pairs: int, block: Callable[[bool], float]) -> list[Block]:
    block(False)  # One discarded pair: warming caches, connections, specializations.
    block(True)
    blocks = []
    for on in abba(pairs):
        machine = MachineLoad()
        value = block(on)
        blocks.append(Block(on, value, machine.others()))
    return blocks


def describe(pairs: Pairs) -> str:
    used = f"all {pairs.total}" if len(pairs.kept) == pairs.total else f"{len(pairs.kept)}"
    return (
        f"{used} of {pairs.total} pairs ({pairs.quiet} quiet), "
        f"others <= {pairs.most_others():.2f} CPUs"
    )


# --- (a) uncontended acquire/release.


def acquire_release(lock, iterations: int) -> float:
    acquire, release = lock.acquire, lock.release
    start = time.perf_counter()
    for _ in range(iterations):
        acquire()
        release()
    return time.perf_counter() - start


def with_statement(lock, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        with lock:
            pass
    return time.perf_counter() - start


def compare_locks(plan: Plan, plain, candidate, loop) -> Pairs:
    def block(on: bool) -> float:
        return loop(candidate if on else plain, plan.lock_iterations)

    return Pairs.of(run_abba(plan.lock_pairs, block), _on)


def workload_a(plan: Plan) -> None:
    print(f"(a) uncontended acquire/release, {plan.lock_iterations} per block, time vs plain lock")
    for kind, plain_type in (("Lock", PLAIN_LOCK), ("RLock", PLAIN_RLOCK)):

        def make(kind: str = kind):
            # Looked up at each call: what threading.Lock is depends on the rates.
            return threading.Lock() if kind == "Lock" else threading.RLock()

        plain = plain_type() if kind == "RLock" else _thread.allocate_lock()
        set_rates(False)
        off = make()
        same = type(off) is plain_type
        figure(
            f"(a) {kind}, rates 0: threading.{kind}() type",
            f"{type(off).__module__}.{type(off).__qualname__}",
            "plain",
            same,
        )
        pairs = compare_locks(plan, plain, off, acquire_release)
        figure(f"(a) {kind}, rates 0: acquire+release", spread(pairs.ratios(_value)), "~1.00")
        figure("    pairs", describe(pairs))
        set_rates(True)
        on = make()
        instrumented = native is not None and type(on) is getattr(native, kind)
        figure(
            f"(a) {kind}, rates 1/1: threading.{kind}() type",
            f"{type(on).__module__}.{type(on).__qualname__}",
            "native",
            instrumented,
        )
        for label, loop in (("acquire+release", acquire_release), ("with", with_statement)):
            pairs = compare_locks(plan, plain, on, loop)
            ratios = pairs.ratios(_value)
            figure(
                f"(a) {kind}, rates 1/1: {label}",
                spread(ratios),
                "<= 1.5",
                statistics.median(ratios) <= 1.5,
            )
            figure("    pairs", describe(pairs))
        plain_ns = 1e9 * acquire_release(plain, plan.lock_iterations) / plan.lock_iterations
        on_ns = 1e9 * acquire_release(on, plan.lock_iterations) / plan.lock_iterations
        figure(
            f"(a) {kind} acquire+release, one block", f"plain {plain_ns:.0f} ns, on {on_ns:.0f} ns"
        )
        set_rates(False)


# --- (b) a threaded Flask app under load.


class RouteState:
    """What the route synchronizes on, made afresh per block so that it is instrumented in the
    blocks with the rates on and plain in the others."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.count = 0


def spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def create_app(state: list[RouteState], locked_sleep: float) -> Flask:
    app = Flask("lock_overhead")

    @app.route("/work")
    def work() -> str:
        current = state[0]
        with current.lock:
            current.count += 1
            spin(LOCKED_ITERATIONS)
            if locked_sleep:
                time.sleep(locked_sleep)
        current.queue.put(current.count)
        item = current.queue.get()
        return str(spin(REQUEST_ITERATIONS) + item)

    return app


def contentions(name: str) -> tuple[int, int]:
    """Contentions recorded so far in profile `name`: in all, and in the route's frames."""
    samples = pyprofiler.lookup(name).snapshot().samples
    in_route = [s for s in samples if any(f.function.endswith(".work") for f in s.frames)]
    return sum(s.values[0] for s in samples), sum(s.values[0] for s in in_route)


def _deep(depth: int, function: Callable[[], float]) -> float:
    return _deep(depth - 1, function) if depth else function()


def recording_cost_us(events: int = 20_000) -> float:
    """What recording one event costs the Python-level instrumentation (Thread.join, asyncio),
    timed at a stack depth like a request handler's. The native locks record in C instead and
    call Python only to label a new entry."""

    def record() -> float:
        lock = threading.Lock()
        start = time.perf_counter()
        for _ in range(events):
            locks._on_block(1_000, lock)
        return (time.perf_counter() - start) / events * 1e6

    set_rates(True)
    try:
        return _deep(30, record)
    finally:
        set_rates(False)


def workload_b(plan: Plan, locked_sleep: float) -> None:
    print(
        f"(b) Flask app, werkzeug threaded server, {HTTP_CLIENTS} clients (loadgen.py), "
        f"{plan.http_seconds:g} s blocks, {locked_sleep * 1e3:g} ms sleep under the route's "
        "lock: requests/s rates 1/1 vs 0/0"
    )
    state = [RouteState()]
    app = create_app(state, locked_sleep)
    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    results: dict[bool, list[dict]] = {False: [], True: []}

    def block(on: bool) -> float:
        set_rates(on)
        state[0] = RouteState()
        result = load(server.server_port, plan.http_seconds, MAX_REQUESTS)
        set_rates(False)
        results[on].append(result)
        return result["requests"] / result["seconds"]

    try:
        pairs = Pairs.of(run_abba(plan.http_pairs, block), _on)
    finally:
        set_rates(False)
        server.shutdown()
        server.server_close()
        thread.join(10)
    ratios = pairs.ratios(_value)
    figure(
        "(b) requests/s, rates 1/1 / rates 0",
        spread(ratios),
        ">= 0.97",
        statistics.median(ratios) >= 0.97,
    )
    figure("    pairs", describe(pairs))
    for on in (False, True):
        rates = [r["requests"] / r["seconds"] for r in results[on]]
        p99 = [r["p99_ms"] for r in results[on]]
        figure(
            f"(b) rates {'1/1' if on else '0/0'}",
            f"median {statistics.median(rates):.0f} req/s, p99 {statistics.median(p99):.1f} ms",
        )
    (block_all, block_route), (mutex_all, mutex_route) = map(contentions, ("block", "mutex"))
    requests_on = sum(r["requests"] for r in results[True])
    figure(
        "(b) contentions recorded, rates-on blocks",
        f"block {block_all}, mutex {mutex_all} for {requests_on} requests",
        "> 0",
        block_all > 0 and mutex_all > 0,
    )
    figure("    of which in the route", f"block {block_route}, mutex {mutex_route}")
    cost = recording_cost_us()
    per_request = (block_all + mutex_all) / max(requests_on, 1)
    figure(
        "(b) one Python-level event, 30 frames deep",
        f"{cost:.1f} us (join, asyncio); {per_request:.1f} events per request",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", default="ab", help="which workloads, e.g. 'a' (default 'ab')")
    parser.add_argument(
        "--locked-sleep",
        type=float,
        default=LOCKED_SLEEP,
        help=f"seconds (b)'s route sleeps holding its lock (default {LOCKED_SLEEP})",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'quick' if args.quick else 'full'} run: {plan}"
    )
    if native is None:
        print("the C extension is not built: threading's locks cannot be instrumented")
    assert locks._block_rate == 0 and locks._mutex_fraction == 0
    start = time.monotonic()
    if "a" in args.only:
        workload_a(plan)
    if "b" in args.only:
        workload_b(plan, args.locked_sleep)
    print(f"done in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
