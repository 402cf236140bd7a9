"""What the overhead benchmarks share: ABBA ordering and the pairs it makes, how busy the rest of
the machine was, the HTTP load generator run, and how figures are printed."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from werkzeug.serving import WSGIRequestHandler

LOADGEN = Path(__file__).with_name("loadgen.py")
HTTP_CLIENTS = 8
# A pair during which other processes used more CPUs than this is left out, as long as at least
# MIN_PAIRS quiet pairs remain (the reports say how many were kept).
QUIET_CPUS = 0.1
MIN_PAIRS = 3


def process_cpu_seconds(pid: int) -> float:
    """The CPU a running process used so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def thread_context_switches(pid: int) -> dict[int, int]:
    """Each live thread's context switches so far (voluntary and not), from /proc."""
    switches = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                switches[int(tid)] = sum(
                    int(line.split()[1]) for line in status if "ctxt_switches:" in line
                )
        except (FileNotFoundError, ProcessLookupError):
            continue  # It exited meanwhile.
    return switches


def switches_since(before: dict[int, int], pid: int) -> int:
    """The context switches of a process since `before` (thread_context_switches), but for
    those of threads that exited meanwhile: /proc forgets them (the soak app's short-lived
    threads switch a few times each)."""
    now = thread_context_switches(pid)
    return sum(count - before.get(tid, 0) for tid, count in now.items())


class MachineLoad:
    """CPUs that other processes used: on a 2-core machine anything else running disturbs the
    figures. Linux only, as the CPU profile is: the machine's idle time from /proc/stat, this
    process's and its waited-for children's (the load generator's) CPU from getrusage(), and that
    of `measured`, a child still running (the app under test), from /proc."""

    def __init__(self, measured: int | None = None) -> None:
        self._measured = measured
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        idle = (int(fields[4]) + int(fields[5])) / tick  # idle + iowait
        own = sum(
            usage.ru_utime + usage.ru_stime
            for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        if self._measured is not None:
            own += process_cpu_seconds(self._measured)
        return idle, own, time.monotonic()

    def others(self) -> float:
        """CPUs, on average since creation, neither idle nor used by this process, its
        waited-for children or `measured`."""
        idle, own, wall = (end - start for end, start in zip(self._read(), self._start))
        return max(0.0, (os.cpu_count() or 1) - (idle + own) / wall)


def abba(pairs: int) -> list[bool]:
    """Whether each block is the measured (B) side: False, True, True, False, False, True, ..."""
    return [(i + 1) // 2 % 2 == 1 for i in range(2 * pairs)]


@dataclass
class Pairs:
    """The (measured, baseline) pairs of adjacent ABBA blocks that figures are computed from.
    A block is anything with `others`, the CPUs that other processes used meanwhile."""

    kept: list[tuple[Any, Any]]
    total: int
    quiet: int  # Pairs during which other processes used at most QUIET_CPUS.

    @classmethod
    def of(cls, blocks: list, measured: Callable[[Any], bool]) -> Pairs:
        pairs = [
            (first, second) if measured(first) else (second, first)
            for first, second in zip(blocks[::2], blocks[1::2])
        ]
        quiet = [p for p in pairs if max(b.others for b in p) <= QUIET_CPUS]
        # With too few quiet pairs to tell anything, all are kept, and the report says so.
        kept = quiet if len(quiet) >= MIN_PAIRS else pairs
        return cls(kept, len(pairs), len(quiet))

    def ratios(self, value: Callable[[Any], float]) -> list[float]:
        """value(measured) / value(baseline) for each pair."""
        return [value(measured) / value(baseline) for measured, baseline in self.kept]

    def measured(self) -> list:
        return [measured for measured, _ in self.kept]

    def baseline(self) -> list:
        return [baseline for _, baseline in self.kept]

    def most_others(self) -> float:
        return max(block.others for pair in self.kept for block in pair)


def figure(name: str, value: str, bar: str = "", passed: bool | None = None) -> None:
    verdict = "" if passed is None else ("PASS" if passed else "FAIL")
    print(f"{name:<42} {value:<52} {bar:<16} {verdict}".rstrip(), flush=True)


def spread(values: list[float], fmt: str = ".3f") -> str:
    median, low, high = statistics.median(values), min(values), max(values)
    return f"median {median:{fmt}} (min {low:{fmt}}, max {high:{fmt}})"


# A window of a profile that records while it is open (a /calls or /trace window): opening it
# returns the function that closes it and says how much it recorded.
OpenWindow = Callable[[], Callable[[], int]]


@dataclass
class WindowBlock:
    measured: bool
    seconds: float
    others: float  # CPUs that other processes used meanwhile.
    recorded: int  # What the window recorded (calls, events).


def window_block(
    measured: bool, work: Callable[[], object], open_window: OpenWindow, after: bool
) -> WindowBlock:
    """`work` timed; `measured`: inside a window, or just after one has ended if `after`.
    Reading what the window recorded happens after the timing."""
    if measured and after:
        open_window()()
    close = open_window() if measured and not after else None
    machine = MachineLoad()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    others = machine.others()
    return WindowBlock(measured, seconds, others, close() if close is not None else 0)


def measure_window(
    pairs: int, work: Callable[[], object], open_window: OpenWindow, after: bool = False
) -> Pairs:
    """`pairs` ABBA pairs of window_block, after one unmeasured block of each kind."""
    window_block(False, work, open_window, after)
    window_block(True, work, open_window, after)
    blocks = [window_block(measured, work, open_window, after) for measured in abba(pairs)]
    return Pairs.of(blocks, lambda block: block.measured)


def report_window(label: str, pairs: Pairs, recorded: str, bar: float | None = None) -> None:
    """The slowdown of blocks in (or after) a window, with `bar` as the highest it may be."""
    ratios = pairs.ratios(lambda block: block.seconds)
    passed = None if bar is None else statistics.median(ratios) <= bar
    figure(f"{label} slowdown", spread(ratios, ".3f"), f"<= {bar}" if bar else "", passed)
    figure(f"{label} pairs used", f"{len(pairs.kept)} of {pairs.total} ({pairs.quiet} quiet)")
    rates = [block.recorded / block.seconds for block in pairs.measured()]
    if any(rates):
        figure(f"{label} {recorded} per second", f"median {statistics.median(rates):,.0f}")


def calls_for_a_block(function: Callable[[int], object], block_seconds: float) -> int:
    """How many calls of `function(count)`'s loop take about `block_seconds` unprofiled."""
    count = 1000
    while True:
        start = time.perf_counter()
        function(count)
        if time.perf_counter() - start >= block_seconds / 4:
            break
        count *= 2
    return round(count * block_seconds / (time.perf_counter() - start))


def small(value: int) -> int:
    return value + 1


def call_heavy(count: int) -> None:
    """A call-heavy loop: a one-line function called `count` times."""
    for i in range(count):
        small(i)


class QuietHandler(WSGIRequestHandler):
    # An access log line per request would cost the server more than the profiler does.
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def load(
    port: int,
    seconds: float,
    max_requests: int | None = None,
    generator: list[str] | None = None,
) -> dict:
    """One bounded run of the load generator against 127.0.0.1:port: loadgen.py, or the command
    `generator` (which takes the same options and prints the same line)."""
    bound = [f"--max-requests={max_requests}"] if max_requests else []
    completed = subprocess.run(
        (generator or [sys.executable, str(LOADGEN)])
        + [f"--port={port}", f"--seconds={seconds}", f"--clients={HTTP_CLIENTS}", *bound],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result = json.loads(completed.stdout)
    if result["errors"]:
        print(f"    load generator: {result['errors']} errors, first {result['first_error']}")
    return result
