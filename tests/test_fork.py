"""os.fork() while the parent is profiling: the child starts with no profile and no server of
its own, can take and serve profiles that show its own threads, and the parent is unaffected.

Each child reports through its exit code (and a traceback on a pipe); run_in_child kills it
after a timeout, so a deadlock fails the test instead of hanging the run.
"""

from __future__ import annotations

import io
import threading
import time

import pytest
import requests
from support import go_pprof, run_in_child, running_server, spin, threads_running, top_table

import pyprofiler
from pyprofiler import proto, registry, symbols
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType

# fork() in a multi-threaded process is exactly the situation under test.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

CHILD_TIMEOUT = 20
CHILD_WORK = f"{__name__}.child_main_work"
CHILD_WORKER = f"{__name__}.child_worker"


def child_main_work(seconds: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def child_worker(stop: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def profile_in_child(work) -> Snapshot:
    buffer = io.BytesIO()
    pyprofiler.start_cpu_profile(buffer)
    try:
        work()
    finally:
        pyprofiler.stop_cpu_profile()
    return proto.decode(buffer.getvalue())


def function_names(snapshot) -> set[str]:
    return {frame.function for sample in snapshot.samples for frame in sample.frames}


@pytest.fixture
def parent_profile(tmp_path):
    """A CPU profile running in the parent, with a busy thread, across the fork; yields the
    path it is written to when the fixture ends."""
    path = tmp_path / "parent.pb.gz"
    with threads_running(("parent-busy", spin)):
        pyprofiler.start_cpu_profile(path)
        try:
            time.sleep(0.2)
            yield path
        finally:
            pyprofiler.stop_cpu_profile()


def test_child_can_profile_and_serve_while_parent_profiles(tmp_path):
    path = tmp_path / "parent.pb.gz"

    def child():
        # Neither the parent's profile nor its server exist here: both must be available.
        snapshot = profile_in_child(lambda: time.sleep(0.2))
        assert snapshot.sample_types[1].type == "cpu"
        with running_server() as server:
            response = requests.get(server.url + "cmdline", timeout=10)
            assert response.status_code == 200
            response = requests.get(server.url + "profile?seconds=1", timeout=10)
            assert response.status_code == 200, response.text
            assert proto.decode(response.content).period == 10_000_000

    with threads_running(("parent-busy", spin)):
        pyprofiler.start_cpu_profile(path)
        try:
            with running_server() as parent_server:
                code, message = run_in_child(child, timeout=CHILD_TIMEOUT)
                # The parent's server still answers after the child served on its own.
                response = requests.get(parent_server.url + "cmdline", timeout=10)
                assert response.status_code == 200
            time.sleep(0.2)
        finally:
            pyprofiler.stop_cpu_profile()
    assert code == 0, message
    # The parent's profile is complete and still shows the parent's busy thread.
    table = top_table(go_pprof(["-tagfocus", "thread=^parent-busy$", "-top"], path))
    assert "support.spin" in table


def test_parent_can_profile_again_after_child(parent_profile):
    code, message = run_in_child(lambda: None, timeout=CHILD_TIMEOUT)
    assert code == 0, message
    # The parent's slot is still taken by its own running profile, not freed by the child.
    with pytest.raises(pyprofiler.ProfilerBusyError):
        pyprofiler.start_cpu_profile(io.BytesIO())


def test_child_profile_shows_its_main_thread(parent_profile):
    def child():
        snapshot = profile_in_child(child_main_work)
        assert CHILD_WORK in function_names(snapshot), sorted(function_names(snapshot))

    code, message = run_in_child(child, timeout=CHILD_TIMEOUT)
    assert code == 0, message


def test_child_profile_shows_threads_started_after_fork(parent_profile):
    # New threads in the child reuse the stacks, and so the idents, of the parent's threads
    # that did not survive the fork, the parent's sampler thread among them.
    names = [f"child-worker-{i}" for i in range(3)]

    def child():
        with threads_running(*[(name, child_worker) for name in names]):
            snapshot = profile_in_child(lambda: time.sleep(1.0))
        threads = {dict(sample.labels)["thread"] for sample in snapshot.samples}
        assert set(names) <= threads, sorted(threads)
        assert CHILD_WORKER in function_names(snapshot)

    code, message = run_in_child(child, timeout=CHILD_TIMEOUT)
    assert code == 0, message


@pytest.mark.parametrize("module", [symbols, registry], ids=["symbols", "registry"])
def test_child_is_not_deadlocked_by_a_lock_held_at_fork(module):
    # Another thread of the parent (an HTTP request encoding a profile, a lookup) can hold
    # one of pyprofiler's module locks at the instant of fork; the child inherits it locked
    # with no thread to release it. cpu and server re-create their locks after fork; every
    # lock the child's profile path takes must be safe the same way.
    held, release = threading.Event(), threading.Event()

    def hold():
        with module._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold, name="lock-holder")
    holder.start()
    try:
        assert held.wait(10)

        def child():
            assert pyprofiler.lookup("profile") is not None
            # A made-up sample, so that encoding interns a location whatever the sampler saw.
            frame = Frame("child.work", "child.py", 1, 2)
            snapshot = Snapshot(
                sample_types=(ValueType("samples", "count"),),
                period_type=ValueType("samples", "count"),
                period=1,
                time_nanos=1,
                samples=[Sample((frame,), (1,))],
            )
            assert proto.decode(proto.encode(snapshot)) == snapshot

        code, message = run_in_child(child, timeout=5)
    finally:
        release.set()
        holder.join(timeout=10)
    assert code == 0, message
