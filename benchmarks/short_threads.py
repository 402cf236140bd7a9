"""Threads that live a tick or two, as a server that starts a thread per request makes them:
how much of their CPU the CPU profile charges to their own code.

    python benchmarks/short_threads.py            # about 10 seconds

One thread after another computes ~4 ms in short_request() and ends, for 3 s, under a
CpuSampler at 100 Hz, three times. Prints the share of the profile's CPU in short_request()
and the sampler's GIL takes (tests/test_stackread.py holds the bar: at least 60 %).
"""

from __future__ import annotations

import platform
import threading
import time

from pyprofiler.samplers.stack import CpuSampler


def short_request() -> int:
    total = 0
    for i in range(60_000):
        total += i * i
    return total


def one_run(seconds: float) -> tuple[float, int]:
    sampler = CpuSampler(100)
    sampler.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        thread = threading.Thread(target=short_request)
        thread.start()
        thread.join()
    snapshot = sampler.stop()
    total = sum(sample.values[1] for sample in snapshot.samples)
    charged = sum(
        sample.values[1]
        for sample in snapshot.samples
        if any(frame.function.endswith(".short_request") for frame in sample.frames)
    )
    return charged / total if total else 0.0, sampler.stats.get("gil_takes", 0)


def main() -> None:
    print(f"Python {platform.python_version()}")
    for _ in range(3):
        share, gil_takes = one_run(3.0)
        print(f"short_request share of the profile {share:.2f}, sampler GIL takes {gil_takes}")


if __name__ == "__main__":
    main()
