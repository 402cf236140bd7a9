"""What a /debug/pprof/trace window costs the program: the sampled trace at its default rate,
mode=calls, and nothing once the window has ended.

    python benchmarks/trace_overhead.py            # about two minutes
    python benchmarks/trace_overhead.py --quick    # smoke run, about 20 seconds

As benchmarks/overhead.py does, in one process: blocks of a fixed amount of work alternate in
ABBA order without and with a trace window open (samplers/trace.py, what /trace opens), and the
median ratio of adjacent blocks is reported; rendering the trace happens after the block. The
work is overhead.py's workload (a): one thread in rounds of two hot loops 20 frames deep.
Figures: (1) the sampled trace (1 kHz wall sampler cut every 10 ms, gc and asyncio hooks);
(2) mode=calls, with the work in a thread started in the block (before Python 3.12 only threads
started during a window are traced), and a call-heavy loop, its worst case; (3) blocks that
follow a window that has ended, against blocks that follow none.

Prints one line per figure and exits 0 whatever the figures: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

from common import MachineLoad, Pairs, abba, figure, spread
from overhead import calibrate
from workloads import Crowd, Split

from pyprofiler.samplers import trace


@dataclass
class Block:
    measured: bool
    seconds: float
    others: float  # CPUs that other processes used meanwhile.
    events: int


def run_block(measured: bool, work: Callable[[], object], mode: str | None) -> Block:
    """`work` timed; `measured`: in a trace window of `mode`, or just after one if None."""
    if measured and mode is None:
        trace.open_trace("sampled").close()
    window = trace.open_trace(mode) if measured and mode is not None else None
    machine = MachineLoad()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    others = machine.others()
    events = 0
    if window is not None:
        records = window.close()
        events = len(records.slices) + 2 * len(records.tasks) + records.dropped
    return Block(measured, seconds, others, events)


def measure(pairs: int, work: Callable[[], object], mode: str | None) -> Pairs:
    run_block(False, work, mode)  # Warming up.
    run_block(True, work, mode)
    blocks = [run_block(measured, work, mode) for measured in abba(pairs)]
    return Pairs.of(blocks, lambda block: block.measured)


def report(label: str, pairs: Pairs, bar: float | None = None) -> None:
    ratios = pairs.ratios(lambda block: block.seconds)
    median = statistics.median(ratios)
    passed = None if bar is None else median <= bar
    figure(f"{label} slowdown", spread(ratios, ".3f"), f"<= {bar}" if bar else "", passed)
    figure(f"{label} pairs used", f"{len(pairs.kept)} of {pairs.total} ({pairs.quiet} quiet)")
    events = [block.events / block.seconds for block in pairs.measured()]
    if any(events):
        figure(f"{label} events recorded per second", f"median {statistics.median(events):,.0f}")


def in_new_thread(work: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        thread = threading.Thread(target=work, name="traced-work")
        thread.start()
        thread.join()

    return run


def small(value: int) -> int:
    return value + 1


def call_heavy(count: int) -> None:
    for i in range(count):
        small(i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    arguments = parser.parse_args()
    pairs = 6 if arguments.quick else 30
    block_seconds = 0.25
    print(f"Python {platform.python_version()}, {'quick' if arguments.quick else 'full'} run")

    crowd = Crowd(busy=1, idle=0)
    try:
        rounds = calibrate(crowd, block_seconds)
        work = lambda: crowd.run(rounds)  # noqa: E731
        print("(a) one CPU-bound thread, ~70/30 between hot_major and hot_minor, 20 frames deep")
        report("(a) sampled trace", measure(pairs, work, "sampled"), bar=1.05)
        report("(a) after a trace window", measure(pairs, work, None), bar=1.01)
    finally:
        crowd.close()

    fresh = in_new_thread(lambda: Split(threading.Event()).run(rounds))
    report("(a) mode=calls, a thread of the window", measure(pairs, fresh, "calls"))
    count = 1000
    while True:  # Calls that take about a block untraced.
        start = time.perf_counter()
        call_heavy(count)
        if time.perf_counter() - start >= block_seconds / 4:
            break
        count *= 2
    count = round(count * block_seconds / (time.perf_counter() - start))
    print(f"(c) one thread calling a one-line function, {count:,} calls a block")
    heavy = in_new_thread(lambda: call_heavy(count))
    report("(c) mode=calls", measure(pairs, heavy, "calls"))


if __name__ == "__main__":
    main()
