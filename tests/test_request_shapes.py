"""CPU and wall profiles of request-shaped threads, in this process and read by `go tool pprof`:
threads that compute between blocking calls are charged where they compute, and threads in C
code that released the GIL where Python called it. The long figures against py-spy are in
benchmarks/request_shapes.py, the 20-second bars over HTTP in test_request_accuracy.py."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from request_workload import WAITS, Workers
from support import go_pprof, raw_samples, top_table

import pyprofiler
from pyprofiler.samplers.native import native

pytestmark = pytest.mark.skipif(
    native is None or not native.stack_reads_available(),
    reason="the GIL-free sampler needs the C extension",
)

HZ = 1000  # Many observations in a short test: the noise of a share shrinks as 1/sqrt(n).
SECONDS = 4
WORKLOAD = "request_workload"
# -top of one thread, in % of that thread's total.
FOCUS = ("-top", "-relative_percentages", "-tagfocus")


def shares(path, thread: str) -> dict[str, float]:
    """parse, render (flat) and the wait function (cum), in % of the thread's total."""
    table = top_table(go_pprof([*FOCUS, f"thread=^{thread}$"], path))
    kind = thread.split("-")[1]
    return {
        "parse": table.get(f"{WORKLOAD}.parse", (0.0, 0.0))[0],
        "render": table.get(f"{WORKLOAD}.render", (0.0, 0.0))[0],
        "wait": table.get(f"{WORKLOAD}.wait_{kind}", (0.0, 0.0))[1],
    }


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One CPU and one wall profile, taken one after the other, of one worker per kind of
    wait; with what the workers timed themselves in each."""
    directory = tmp_path_factory.mktemp("request-shapes")
    workers = Workers(list(WAITS))
    try:
        time.sleep(0.5)
        results = {}
        for kind in ("cpu", "wall"):
            path = directory / f"{kind}.pb.gz"
            base = workers.snapshot()
            if kind == "cpu":
                pyprofiler.start_cpu_profile(str(path), hz=HZ)
                time.sleep(SECONDS)
                pyprofiler.stop_cpu_profile()
            else:
                pyprofiler.set_cpu_profile_rate(HZ)
                try:
                    with open(path, "wb") as file:
                        pyprofiler.lookup("wall").write_to(file, seconds=SECONDS)
                finally:
                    pyprofiler.set_cpu_profile_rate(100)
            results[kind] = (path, workers.since(base))
    finally:
        workers.stop()
    return results


@pytest.mark.parametrize("kind", WAITS)
def test_cpu_is_charged_where_the_thread_computes(profiled, kind):
    path, truth = profiled["cpu"]
    thread = f"worker-{kind}-0"
    got = shares(path, thread)
    timed = truth[thread]
    for function in ("parse", "render"):
        expected = 100 * timed[function] / timed["cpu"]
        # About 1 000 observations per thread: a share's noise is ~1.4 points. (The sampler
        # that reads stacks with the GIL is 18 or more points off here.)
        assert abs(got[function] - expected) <= 6, (function, got, expected)
    assert got["wait"] < 3, got


def test_cpu_totals_match_the_threads_clocks(profiled):
    path, truth = profiled["cpu"]
    samples = raw_samples(go_pprof(["-raw"], path))
    for thread, timed in truth.items():
        profiled_ns = sum(v[1] for v, labels in samples if labels.get("thread") == thread)
        # The workers' own counts stop at their last full round, up to ~20 ms short.
        assert abs(profiled_ns - timed["cpu"]) <= 0.05 * timed["cpu"] + 30e6, thread


@pytest.mark.parametrize("kind", WAITS)
def test_wall_is_split_between_computing_and_waiting(profiled, kind):
    path, truth = profiled["wall"]
    thread = f"worker-{kind}-0"
    got = shares(path, thread)
    timed = truth[thread]
    expected_wait = 100 * timed["wait_wall"] / timed["wall"]
    assert abs(got["wait"] - expected_wait) <= 5, (got, expected_wait)
    # What is not waiting is computing (or waiting for the GIL inside parse and render).
    assert got["parse"] + got["render"] >= 100 - expected_wait - 6, got


def hash_without_the_gil(stop: threading.Event) -> None:
    data = b"x" * (1 << 20)
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        hashlib.sha256(data).digest()  # releases the GIL for inputs over 2 KiB


def spin_with_the_gil(stop: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(10_000):
            total += i


def test_c_code_without_the_gil_counts_at_its_python_call_site(tmp_path):
    path = tmp_path / "cpu.pb.gz"
    stop = threading.Event()
    threads = [
        threading.Thread(target=hash_without_the_gil, args=(stop,), name="hasher"),
        threading.Thread(target=spin_with_the_gil, args=(stop,), name="spinner"),
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        pyprofiler.start_cpu_profile(str(path), hz=HZ)
        time.sleep(2)
        pyprofiler.stop_cpu_profile()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    hasher = top_table(go_pprof([*FOCUS, "thread=^hasher$"], path))
    assert hasher[f"{__name__}.hash_without_the_gil"][0] > 90, hasher
    spinner = top_table(go_pprof([*FOCUS, "thread=^spinner$"], path))
    assert spinner[f"{__name__}.spin_with_the_gil"][0] > 90, spinner
