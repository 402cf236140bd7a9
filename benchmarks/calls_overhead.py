"""What a /debug/pprof/calls window costs the program: yappi's slowdown while it runs, and none
once it has ended.

    python benchmarks/calls_overhead.py            # about a minute
    python benchmarks/calls_overhead.py --quick    # smoke run, about 15 seconds

As benchmarks/overhead.py does, in one process: blocks of a fixed amount of work alternate in
ABBA order without and with a call window open (samplers/calls.py, what /calls opens), and the
median ratio of adjacent blocks is reported. Reading yappi's records happens after the block.
Three figures: (a) overhead.py's workload (a), one thread in rounds of two hot loops 20 frames
deep, which makes few calls; a call-heavy loop (a small function called a million times a
second), the worst case; and (a) again in blocks that follow a window that has ended, against
blocks that follow none.

Prints one line per figure and exits 0 whatever the figures: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from common import MachineLoad, Pairs, abba, figure, spread
from overhead import calibrate
from workloads import Crowd

from pyprofiler.samplers import calls


@dataclass
class Block:
    measured: bool
    seconds: float
    others: float  # CPUs that other processes used meanwhile.
    calls_recorded: int


def small(value: int) -> int:
    return value + 1


def call_heavy(count: int) -> None:
    for i in range(count):
        small(i)


def run_block(measured: bool, work: Callable[[], object], after_window: bool) -> Block:
    """`work` timed; `measured`: in a call window, or just after one if `after_window`."""
    if measured and after_window:
        calls.open_window("cpu").close()
    window = calls.open_window("cpu") if measured and not after_window else None
    machine = MachineLoad()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    others = machine.others()
    recorded = 0
    if window is not None:
        recorded = sum(f.calls for f in window.close().functions.values())
    return Block(measured, seconds, others, recorded)


def measure(pairs: int, work: Callable[[], object], after_window: bool = False) -> Pairs:
    run_block(False, work, after_window)  # Warming up.
    run_block(True, work, after_window)
    blocks = [run_block(measured, work, after_window) for measured in abba(pairs)]
    return Pairs.of(blocks, lambda block: block.measured)


def report(label: str, pairs: Pairs) -> None:
    ratios = pairs.ratios(lambda block: block.seconds)
    figure(f"{label} slowdown", spread(ratios, ".3f"))
    figure(f"{label} pairs used", f"{len(pairs.kept)} of {pairs.total} ({pairs.quiet} quiet)")
    recorded = [block.calls_recorded / block.seconds for block in pairs.measured()]
    if any(recorded):
        figure(f"{label} calls recorded per second", f"median {statistics.median(recorded):,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    arguments = parser.parse_args()
    pairs = 6 if arguments.quick else 30
    block_seconds = 0.25

    crowd = Crowd(busy=1, idle=0)
    try:
        rounds = calibrate(crowd, block_seconds)
        print("(a) one CPU-bound thread, ~70/30 between hot_major and hot_minor, 20 frames deep")
        report("(a) in a calls window", measure(pairs, lambda: crowd.run(rounds)))
        report("(a) after a calls window", measure(pairs, lambda: crowd.run(rounds), True))
    finally:
        crowd.close()

    count = 1000
    while True:  # Calls that take about a block unprofiled.
        start = time.perf_counter()
        call_heavy(count)
        if time.perf_counter() - start >= block_seconds / 4:
            break
        count *= 2
    count = round(count * block_seconds / (time.perf_counter() - start))
    print(f"(c) one thread calling a one-line function, {count:,} calls a block")
    report("(c) in a calls window", measure(pairs, lambda: call_heavy(count)))


if __name__ == "__main__":
    main()
