"""The CPU and wall samplers' lifecycle: stop while threads come and go, fork while sampling,
the interpreter exiting with a profile running, CPU and wall at once. The bar: the profiler never
crashes, deadlocks or slows the application.

These run with whichever sampler is in use (native when the extension is built); the last test
runs this module and test_cpu.py again with PYPROFILER_NATIVE=0, for the Python sampler thread.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import run_in_child, spin, threads_running, wait_until
from test_cpu import _asleep_in_wait

from pyprofiler import samplers
from pyprofiler.samplers import stack_native
from pyprofiler.samplers.native import native
from pyprofiler.samplers.stack import CpuSampler, WallSampler

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

TESTS = os.path.dirname(os.path.abspath(__file__))
SUBPROCESS_TIMEOUT = 60


def functions(snapshot, thread: str | None = None) -> set[str]:
    return {
        frame.function
        for sample in snapshot.samples
        if thread is None or dict(sample.labels)["thread"] == thread
        for frame in sample.frames
    }


def threads(snapshot) -> set[str]:
    return {dict(sample.labels)["thread"] for sample in snapshot.samples}


def short_lived() -> None:
    total = 0
    for i in range(2_000):
        total += i
    time.sleep(0.002)  # Releases the GIL: a sampler can only see a thread that lets go of it.


def churn(stop: threading.Event) -> None:
    """Start and join short threads as fast as possible until stopped."""
    while not stop.is_set():
        batch = [threading.Thread(target=short_lived) for _ in range(4)]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()


def test_stop_while_threads_start_and_exit_rapidly():
    seen_short_lived = False
    for _ in range(5):
        samplers = [CpuSampler(1000), WallSampler(1000)]
        with threads_running(("churn", churn), ("spinner", spin)):
            for sampler in samplers:
                sampler.start()
            time.sleep(0.2)
            started = time.monotonic()
            snapshots = [sampler.stop() for sampler in samplers]
            assert time.monotonic() - started < 5
        for sampler, snapshot in zip(samplers, snapshots):
            assert sampler.error is None
            assert "support.spin" in functions(snapshot, "spinner")
            seen_short_lived |= f"{__name__}.short_lived" in functions(snapshot)
    assert seen_short_lived


def test_stop_is_prompt_at_a_low_rate():
    sampler = CpuSampler(1)
    sampler.start()
    started = time.monotonic()
    sampler.stop()
    assert time.monotonic() - started < 0.5


def test_sampler_reports_its_own_cpu():
    sampler = CpuSampler(1000)
    with threads_running(("spinner", spin)):
        sampler.start()
        time.sleep(0.3)
        sampler.stop()
    assert sampler.error is None
    assert 0 < sampler.own_cpu_ns < 300_000_000


def test_cpu_and_wall_at_the_same_time():
    idle = threading.Event()
    cpu, wall = CpuSampler(), WallSampler()
    with threads_running(("spinner", spin), ("idler", lambda stop: idle.wait(30))) as running:
        # The CPU the idler uses on its way to sleep would rightly be in the profile.
        assert wait_until(lambda: _asleep_in_wait(running[1]))
        cpu.start()
        wall.start()
        time.sleep(0.6)
        wall_snapshot = wall.stop()
        cpu_snapshot = cpu.stop()
        idle.set()
    assert cpu_snapshot.sample_types[1].type == "cpu"
    assert wall_snapshot.sample_types[1].type == "wall"
    assert "support.spin" in functions(cpu_snapshot, "spinner")
    assert "idler" not in threads(cpu_snapshot)
    assert {"spinner", "idler"} <= threads(wall_snapshot)
    # Each sampler's thread is in neither profile (the caller's stop() frames may be).
    for snapshot in (cpu_snapshot, wall_snapshot):
        assert not {name for name in threads(snapshot) if name.startswith("pyprofiler-")}
        assert "pyprofiler.samplers.stack_python.PythonStackBackend._run" not in functions(snapshot)
    # A wall profile of 0.6 s: about 0.6 s per thread it saw throughout.
    spinner_wall = sum(
        s.values[1] for s in wall_snapshot.samples if dict(s.labels)["thread"] == "spinner"
    )
    assert 0.4e9 < spinner_wall < 1.2e9


def proc_files_open() -> list[str]:
    """This process's descriptors open on its threads' /proc files (the native sampler's)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # The listing's own descriptor, closed meanwhile.
        if target.startswith("/proc/") and "/task/" in target:
            targets.append(target)
    return targets


@pytest.mark.skipif(native is None, reason="the Python sampler reads no /proc files")
def test_sampler_keeps_a_bounded_number_of_proc_files_open():
    # Threads that ran since the previous tick and are off their CPU at this one are asked
    # whether the sampler took the CPU from them, through files it keeps open: at most two for
    # each of 32 threads, and its own sched file.
    assert proc_files_open() == []
    sampler = CpuSampler(1000)
    most = 0
    with threads_running(*[(f"spinner-{i}", spin) for i in range(48)]):
        sampler.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            most = max(most, len(proc_files_open()))
            time.sleep(0.05)
        sampler.stop()
    assert sampler.error is None
    assert 0 < most <= 2 * 32 + 1
    assert proc_files_open() == []


def test_fork_while_sampling():
    def child():
        # The parent's samplers were copied running, but their threads stayed in the parent:
        # stopping them here must return at once, and the child can sample on its own.
        for sampler in inherited:
            started = time.monotonic()
            sampler.stop()
            assert time.monotonic() - started < 2
        # Stopping also closed the /proc files the parent's sampler kept open (one it was
        # opening at the fork may stay: see procfiles.c).
        assert len(proc_files_open()) <= 1, proc_files_open()
        own = CpuSampler(1000)
        own.start()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            short_lived()
        snapshot = own.stop()
        assert f"{__name__}.short_lived" in functions(snapshot, "MainThread"), snapshot.samples

    inherited = [CpuSampler(1000), WallSampler(1000)]
    with threads_running(("spinner", spin)):
        for sampler in inherited:
            sampler.start()
        try:
            for _ in range(3):
                code, message = run_in_child(child, timeout=20)
                assert code == 0, message
        finally:
            snapshots = [sampler.stop() for sampler in inherited]
    for snapshot in snapshots:
        assert "support.spin" in functions(snapshot, "spinner")


def test_child_exits_without_stopping_inherited_samplers():
    sampler = CpuSampler(1000)
    sampler.start()
    try:
        code, message = run_in_child(lambda: stack_native.stop_all_at_exit(), timeout=20)
        assert code == 0, message
    finally:
        sampler.stop()


EXIT_WITHOUT_STOP = """
    import io, sys, threading, time
    import pyprofiler
    from pyprofiler.samplers import stack

    def spin():
        while True:
            sum(range(1000))

    threading.Thread(target=spin, daemon=True).start()
    pyprofiler.start_cpu_profile(io.BytesIO())
    stack.WallSampler(1000).start()
    time.sleep(0.3)
    print("exiting", flush=True)
    {exit}
"""


@pytest.mark.parametrize("exit", ["pass", "sys.exit(0)", "raise SystemExit"])
def test_interpreter_exits_with_profiles_running(exit):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXIT_WITHOUT_STOP).format(exit=exit)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=TESTS,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exiting\n"
    assert result.stderr == ""


@pytest.mark.skipif(native is None, reason="already the Python sampler")
def test_python_sampler_passes_the_same_tests():
    env = dict(os.environ, PYPROFILER_NATIVE="0")
    check = [
        sys.executable,
        "-c",
        "from pyprofiler.samplers import stack, stack_python as p; "
        "assert isinstance(stack.CpuSampler().backend, p.PythonStackBackend)",
    ]
    subprocess.run(check, env=env, check=True, timeout=SUBPROCESS_TIMEOUT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_cpu.py",
            os.path.basename(__file__),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=TESTS,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


class ClockedSpinner:
    """Spins between `go` and `done`, noting its own CPU clock at both ends, then idles until
    stopped: what it used while spinning is known to the nanosecond."""

    def __init__(self) -> None:
        self.go, self.done = threading.Event(), threading.Event()
        self.used_ns = 0

    def spin(self, stop: threading.Event) -> None:
        if not self.go.wait(30):
            return
        start = time.thread_time_ns()
        spin(self.done)
        self.used_ns = time.thread_time_ns() - start
        stop.wait(30)


@pytest.mark.parametrize("sampler_class", [CpuSampler, WallSampler])
def test_consecutive_cuts_add_up_to_the_thread_clock(sampler_class):
    spinner = ClockedSpinner()
    with threads_running(("spinner", spinner.spin)):
        sampler = sampler_class(200)
        sampler.start()
        spinner.go.set()
        windows = []
        for _ in range(6):
            time.sleep(0.15)
            windows.append(sampler.cut())
        spinner.done.set()
        time.sleep(0.05)
        windows.append(sampler.stop())
    assert sampler.error is None
    for earlier, later in zip(windows, windows[1:]):
        end = earlier.time_nanos + earlier.duration_nanos
        assert abs(later.time_nanos - end) < 1_000_000  # Wall clock: no gap, no overlap.
    spinner_total = sum(
        s.values[1] for w in windows for s in w.samples if dict(s.labels)["thread"] == "spinner"
    )
    if sampler_class is CpuSampler:
        # Per-thread totals are the thread's clock, window by window.
        assert abs(spinner_total - spinner.used_ns) <= 0.03 * spinner.used_ns
    else:
        elapsed = sum(w.duration_nanos for w in windows)
        assert 0.8 * elapsed < spinner_total < 1.2 * elapsed
    assert all("support.spin" in functions(w, "spinner") for w in windows[:-2])


def test_an_expired_sampler_ends_and_a_cut_calls_expiry_off():
    with threads_running(("spinner", spin)):
        sampler = CpuSampler(200)
        sampler.start()
        sampler.expire_after(0.3)
        time.sleep(0.1)
        assert sampler.cut() is not None  # In time: it goes on.
        time.sleep(0.4)
        assert "support.spin" in functions(sampler.cut())
        sampler.expire_after(0.05)
        time.sleep(0.5)  # A cut() would call the expiry off: one only, after it.
        assert sampler.cut() is None
        assert sampler.stop().samples == []  # What it recorded since the last cut is gone.


class FailingBackend:
    """A backend whose sampling thread could not run, as the native sampler reports it."""

    own_cpu_ns = 0

    def __init__(self, hz: int, wall: bool) -> None:
        pass

    def start(self) -> None:
        pass

    def cut(self) -> tuple[list, dict[str, int]]:
        return [], {}

    def stop(self) -> tuple[list, str | None, dict[str, int]]:
        return [], "could not create a thread state for the sampler thread", {}

    def include_own_threads(self, include: bool) -> None:
        pass

    def expire_after(self, seconds: float) -> None:
        pass


def test_a_sampler_error_is_commented_in_the_profile_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(samplers, "stack_backend", FailingBackend)
    sampler = WallSampler(100)
    sampler.start()
    assert sampler.cut().comments == ()
    with caplog.at_level(logging.ERROR, logger="pyprofiler"):
        snapshot = sampler.stop()
        sampler.stop()
    assert sampler.error == "could not create a thread state for the sampler thread"
    assert snapshot.comments == (
        "pyprofiler: sampling stopped early: could not create a thread state for the sampler "
        "thread",
    )
    logged = [record.getMessage() for record in caplog.records]
    assert logged == [
        "pyprofiler: the wall sampler stopped: could not create a thread state for the sampler "
        "thread"
    ]
