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
from typing import Callable

from common import call_heavy, calls_for_a_block, measure_window, report_window
from overhead import calibrate
from workloads import Crowd

from pyprofiler.samplers import calls

CALLS = "calls recorded"


def call_window() -> Callable[[], int]:
    """A call window open (what /calls opens); closing it counts the calls it recorded."""
    window = calls.open_window("cpu")
    return lambda: sum(f.calls for f in window.close().functions.values())


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
        work = lambda: crowd.run(rounds)  # noqa: E731
        report_window("(a) in a calls window", measure_window(pairs, work, call_window), CALLS)
        after = measure_window(pairs, work, call_window, after=True)
        report_window("(a) after a calls window", after, CALLS)
    finally:
        crowd.close()

    count = calls_for_a_block(call_heavy, block_seconds)
    print(f"(c) one thread calling a one-line function, {count:,} calls a block")
    heavy = measure_window(pairs, lambda: call_heavy(count), call_window)
    report_window("(c) in a calls window", heavy, CALLS)


if __name__ == "__main__":
    main()
