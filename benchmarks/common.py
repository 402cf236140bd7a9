"""What the overhead benchmarks share: ABBA ordering, how busy the rest of the machine was, and
the HTTP load generator run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler

LOADGEN = Path(__file__).with_name("loadgen.py")
HTTP_CLIENTS = 8
# A pair during which other processes used more CPUs than this is left out, as long as at least
# MIN_PAIRS quiet pairs remain (the reports say how many were kept).
QUIET_CPUS = 0.1
MIN_PAIRS = 3


class MachineLoad:
    """CPUs that other processes used: on a 2-core machine anything else running disturbs the
    figures. Linux only, as the CPU profile is: the machine's idle time from /proc/stat, this
    process's and its waited-for children's (the load generator's) CPU from getrusage()."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        idle = (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait
        own = sum(
            usage.ru_utime + usage.ru_stime
            for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        return idle, own, time.monotonic()

    def others(self) -> float:
        """CPUs, on average since creation, neither idle nor used by this process."""
        idle, own, wall = (end - start for end, start in zip(self._read(), self._start))
        return max(0.0, (os.cpu_count() or 1) - (idle + own) / wall)


def abba(pairs: int) -> list[bool]:
    """Whether each block is the measured (B) side: False, True, True, False, False, True, ..."""
    return [(i + 1) // 2 % 2 == 1 for i in range(2 * pairs)]


class QuietHandler(WSGIRequestHandler):
    # An access log line per request would cost the server more than the profiler does.
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def load(port: int, seconds: float, max_requests: int | None = None) -> dict:
    """One bounded run of the load generator against 127.0.0.1:port."""
    bound = [f"--max-requests={max_requests}"] if max_requests else []
    completed = subprocess.run(
        [sys.executable, str(LOADGEN), f"--port={port}", f"--seconds={seconds}"]
        + [f"--clients={HTTP_CLIENTS}", *bound],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result = json.loads(completed.stdout)
    if result["errors"]:
        print(f"    load generator: {result['errors']} errors, first {result['first_error']}")
    return result
