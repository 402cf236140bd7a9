"""Periodic dumps (start_periodic/stop_periodic) and profiles that follow each other: files
under their final names only when whole, the newest `keep` of each, windows that add up to the
CPU the process used, an unwritable directory logged once and retried, a forked child writing
its own files, and two HTTP profiles back to back missing nothing between them."""

from __future__ import annotations

import bisect
import logging
import os
import re
import threading
import time

import pytest
import requests
from support import go_pprof, raw_samples, run_in_child, spin, threads_running, top_table

import pyprofiler
from pyprofiler import proto

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

NAME = re.compile(r"^(?P<profile>[a-z]+)-\d{8}T\d{6}\.\d{3}Z-(?P<pid>\d+)\.pb\.gz$")


@pytest.fixture(autouse=True)
def _no_writer_left():
    yield
    try:
        pyprofiler.stop_periodic()
    except pyprofiler.PyprofilerError:
        pass


def files_by_profile(directory) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(directory)):
        match = NAME.match(entry)
        assert match, f"unexpected file {entry}"
        found.setdefault(match["profile"], []).append(entry)
    return found


def cpu_ns_of(path) -> int:
    return sum(values[1] for values, _ in raw_samples(go_pprof(["-raw"], path)))


def test_windows_add_up_to_the_cpu_of_the_threads_they_profile(tmp_path):
    with threads_running(("spinner", spin)) as (spinner,):
        # The program's threads' own clocks: pyprofiler's threads (the sampler, the writer)
        # are in no profile.
        clock = time.pthread_getcpuclockid(spinner.ident)
        before = time.clock_gettime_ns(clock) + time.thread_time_ns()
        pyprofiler.start_periodic(tmp_path, interval=0.4, profiles=("profile",))
        time.sleep(2.1)
        pyprofiler.stop_periodic()
        threads_ns = time.clock_gettime_ns(clock) + time.thread_time_ns() - before
    files = files_by_profile(tmp_path)["profile"]
    assert len(files) == 6  # Five whole windows and the last, partial one.
    profiled_ns = sum(cpu_ns_of(tmp_path / name) for name in files)
    assert abs(profiled_ns - threads_ns) <= 0.05 * threads_ns, (profiled_ns, threads_ns)
    assert "support.spin" in top_table(go_pprof(["-top"], tmp_path / files[0]))


def test_newest_files_are_kept_whole_and_readable(tmp_path):
    profiles = ("profile", "wall", "heap", "allocs", "goroutine")
    with threads_running(("spinner", spin)):
        pyprofiler.start_periodic(tmp_path, interval=0.3, profiles=profiles, keep=2)
        time.sleep(1.5)
        pyprofiler.stop_periodic()
    files = files_by_profile(tmp_path)
    assert sorted(files) == sorted(profiles)
    for name, entries in files.items():
        assert len(entries) == 2, (name, entries)
        assert all(NAME.match(entry)["pid"] == str(os.getpid()) for entry in entries)
        for entry in entries:
            go_pprof(["-raw"], tmp_path / entry)
    assert "support.spin" in top_table(go_pprof(["-top"], tmp_path / files["profile"][-1]))


def test_unwritable_directory_is_logged_once_and_retried(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    directory = blocker / "profiles"
    with caplog.at_level(logging.WARNING, logger="pyprofiler"):
        pyprofiler.start_periodic(directory, interval=0.1, profiles=("heap", "goroutine"))
        time.sleep(0.6)
        warnings = [r for r in caplog.records if r.name == "pyprofiler"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert str(directory) in warnings[0].getMessage()
        assert warnings[0].exc_info is None  # A line, not a traceback.
        blocker.unlink()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (directory.exists() and os.listdir(directory)):
            time.sleep(0.05)
        pyprofiler.stop_periodic()
    assert sorted(files_by_profile(directory)) == ["goroutine", "heap"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profiles": ("nonexistent",)}, "no profile named 'nonexistent'"),
        ({"profiles": ("trace",)}, "the trace profile is not written periodically"),
        ({"profiles": ("calls",)}, "the calls profile is not written periodically"),
        ({"profiles": ()}, "at least one profile"),
        ({"interval": 0}, "interval must be positive"),
        ({"keep": 0}, "keep must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(pyprofiler.PyprofilerError, match=message):
        pyprofiler.start_periodic(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_one_writer_at_a_time(tmp_path):
    pyprofiler.start_periodic(tmp_path, interval=60, profiles=("heap",))
    with pytest.raises(pyprofiler.PyprofilerError, match="already being written"):
        pyprofiler.start_periodic(tmp_path, interval=60, profiles=("heap",))
    pyprofiler.stop_periodic()
    with pytest.raises(pyprofiler.PyprofilerError, match="without start_periodic"):
        pyprofiler.stop_periodic()


def test_forked_child_writes_its_own_files(tmp_path):
    pyprofiler.start_periodic(tmp_path, interval=0.2, profiles=("profile", "heap"), keep=1)

    def child() -> None:
        spin(threading.Event(), limit=0.7)
        pyprofiler.stop_periodic()

    code, message = run_in_child(child)
    assert code == 0, message
    pyprofiler.stop_periodic()
    pids = {NAME.match(entry)["pid"] for entry in os.listdir(tmp_path)}
    assert len(pids) == 2 and str(os.getpid()) in pids
    child_profiles = [e for e in os.listdir(tmp_path) if not e.endswith(f"-{os.getpid()}.pb.gz")]
    assert sorted(NAME.match(e)["profile"] for e in child_profiles) == ["heap", "profile"]


def test_a_profile_can_be_taken_while_periodic_windows_run(tmp_path):
    with threads_running(("spinner", spin)):
        pyprofiler.start_periodic(tmp_path, interval=0.3, profiles=("profile",))
        snapshot = pyprofiler.lookup("profile").snapshot(seconds=0.5)
        pyprofiler.stop_periodic()
    assert "support.spin" in {f.function for s in snapshot.samples for f in s.frames}
    assert files_by_profile(tmp_path)["profile"]


class RecordingSpinner:
    """Spins, noting (wall clock, own CPU clock) as it goes, so that its CPU between any two
    instants can be told afterwards."""

    def __init__(self) -> None:
        self.readings: list[tuple[int, int]] = []

    def spin(self, stop: threading.Event) -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            total = 0
            for i in range(2_000):
                total += i
            self.readings.append((time.time_ns(), time.thread_time_ns()))

    def cpu_ns_at(self, wall_ns: int) -> int:
        index = bisect.bisect_left(self.readings, (wall_ns, 0))
        assert 0 < index < len(self.readings)
        (t0, c0), (t1, c1) = self.readings[index - 1], self.readings[index]
        return c0 + (c1 - c0) * (wall_ns - t0) // max(1, t1 - t0)


def test_back_to_back_http_profiles_miss_nothing_between_them(server):
    spinner = RecordingSpinner()
    with threads_running(("spinner", spinner.spin)):
        responses = [requests.get(f"{server.url}profile?seconds=1", timeout=30) for _ in range(2)]
    assert all(r.status_code == 200 for r in responses)
    first, second = (proto.decode(r.content) for r in responses)
    first_end = first.time_nanos + first.duration_nanos
    assert abs(second.time_nanos - first_end) < 1_000_000  # Where the first one ended.
    profiled = sum(
        s.values[1]
        for p in (first, second)
        for s in p.samples
        if dict(s.labels)["thread"] == "spinner"
    )
    used = spinner.cpu_ns_at(second.time_nanos + second.duration_nanos) - spinner.cpu_ns_at(
        first.time_nanos
    )
    assert abs(profiled - used) <= 0.005 * used + 2_000_000, (profiled, used)
