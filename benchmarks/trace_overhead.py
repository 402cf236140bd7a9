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
import threading
from typing import Callable

from common import call_heavy, calls_for_a_block, measure_window, report_window
from overhead import calibrate
from workloads import Crowd, Split

from pyprofiler.samplers import trace

EVENTS = "events recorded"


def trace_window(mode: str) -> Callable[[], Callable[[], int]]:
    """Opens a trace window of `mode` (what /trace opens); closing it counts its events."""

    def open_window() -> Callable[[], int]:
        window = trace.open_trace(mode)

        def close() -> int:
            records = window.close()
            return len(records.slices) + 2 * len(records.tasks) + records.dropped

        return close

    return open_window


def in_new_thread(work: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        thread = threading.Thread(target=work, name="traced-work")
        thread.start()
        thread.join()

    return run


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
        sampled = trace_window("sampled")
        report_window("(a) sampled trace", measure_window(pairs, work, sampled), EVENTS, 1.05)
        after = measure_window(pairs, work, sampled, after=True)
        report_window("(a) after a trace window", after, EVENTS, 1.01)
    finally:
        crowd.close()

    fresh = in_new_thread(lambda: Split(threading.Event()).run(rounds))
    calls_mode = trace_window("calls")
    report_window(
        "(a) mode=calls, a thread of the window", measure_window(pairs, fresh, calls_mode), EVENTS
    )
    count = calls_for_a_block(call_heavy, block_seconds)
    print(f"(c) one thread calling a one-line function, {count:,} calls a block")
    heavy = in_new_thread(lambda: call_heavy(count))
    report_window("(c) mode=calls", measure_window(pairs, heavy, calls_mode), EVENTS)


if __name__ == "__main__":
    main()
