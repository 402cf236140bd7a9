"""pyprofiler's own threads (named `pyprofiler-*`) are left out of the CPU, wall, goroutine and
threadcreate profiles unless `include_self` asks for them; the native sampler skips them without
the GIL, from a set that each of them joins as it starts and leaves before it ends, and stays
right while threads of both kinds come and go (and reuse each other's idents)."""

from __future__ import annotations

import concurrent.futures
import io
import threading
import time

import pytest
import requests
from support import go_pprof, raw_samples, running_server

import pyprofiler
from pyprofiler import proto, samplers
from pyprofiler.samplers import creation, stack
from pyprofiler.samplers.native import native
from pyprofiler.samplers.stack_python import PythonStackBackend

MOD = __name__
TIMEOUT = 30
OWN = "pyprofiler-test-burner"


def burn(stop: threading.Event, limit: float = 30.0) -> None:
    """Compute until `stop` (the leaf frame of a program's thread)."""
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def own_burn(stop: threading.Event, limit: float = 30.0) -> None:
    """The same, in a thread named as pyprofiler's."""
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def burst(seconds: float) -> None:
    """A short-lived program thread's work."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(2_000))


def own_burst(seconds: float) -> None:
    """A short-lived pyprofiler thread's work (as a request thread's)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(2_000))


class Burners:
    """A program thread and one of pyprofiler's, both computing, stopped and joined on exit."""

    def __enter__(self) -> Burners:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=burn, args=(self.stop,), name="app-burner"),
            threading.Thread(target=own_burn, args=(self.stop,), name=OWN),
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in self.threads)


def thread_labels(snapshot) -> set[str]:
    return {dict(sample.labels).get("thread") for sample in snapshot.samples}


def functions(snapshot) -> set[str]:
    return {frame.function for sample in snapshot.samples for frame in sample.frames}


def test_a_thread_named_as_ours_is_registered_while_it_runs():
    seen = {}

    def look() -> None:
        seen["registered"] = creation._own_threads.get(threading.get_ident())

    thread = threading.Thread(target=look, name="pyprofiler-test-look")
    thread.start()
    thread.join(timeout=10)
    assert seen["registered"] == thread.native_id
    assert thread.ident not in creation._own_threads
    assert "run" not in thread.__dict__  # The wrapper is gone with the thread.
    other = threading.Thread(target=look, name="app-look")
    other.start()
    other.join(timeout=10)
    assert seen["registered"] is None


@pytest.mark.parametrize("name", ["profile", "wall"])
def test_timed_profiles_leave_our_threads_out_unless_asked(name, tmp_path):
    profile = pyprofiler.lookup(name)
    with Burners():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Overlapping windows of one sampler: one with our threads, one without.
            with_self = pool.submit(profile.snapshot, 1, include_self=True)
            time.sleep(0.2)
            without = pool.submit(profile.snapshot, 0.6)
            included, left_out = with_self.result(timeout=30), without.result(timeout=30)
    assert "app-burner" in thread_labels(left_out)
    assert f"{MOD}.burn" in functions(left_out)
    assert not {t for t in thread_labels(left_out) if t.startswith("pyprofiler-")}
    assert f"{MOD}.own_burn" not in functions(left_out)
    assert {"app-burner", OWN} <= thread_labels(included)
    assert f"{MOD}.own_burn" in functions(included)
    path = tmp_path / "included.pb.gz"
    path.write_bytes(proto.encode(included))
    tags = {labels.get("thread") for _, labels in raw_samples(go_pprof(["-raw"], path))}
    assert OWN in tags
    # Users leave them out with a tag filter, as the issue asked.
    top = go_pprof(["-top", "-tagignore", "thread=^pyprofiler-"], path)
    assert f"{MOD}.burn" in top and f"{MOD}.own_burn" not in top


def test_goroutine_profile_leaves_our_threads_out_unless_asked(tmp_path):
    profile = pyprofiler.lookup("goroutine")
    with Burners():
        default, with_self = io.BytesIO(), io.BytesIO()
        profile.write_to(default)
        profile.write_to(with_self, include_self=True)
        texts = {}
        for debug in (1, 2):
            for include_self in (False, True):
                out = io.BytesIO()
                profile.write_to(out, debug=debug, include_self=include_self)
                texts[debug, include_self] = out.getvalue().decode()
        counted = profile.count()
    assert OWN not in thread_labels(proto.decode(default.getvalue()))
    assert f"{MOD}.own_burn" not in functions(proto.decode(default.getvalue()))
    assert f"{MOD}.own_burn" in functions(proto.decode(with_self.getvalue()))
    assert f"{MOD}.burn" in functions(proto.decode(default.getvalue()))
    for debug in (1, 2):
        assert f"{MOD}.own_burn" not in texts[debug, False]
        assert f"{MOD}.own_burn" in texts[debug, True]
        assert f"{MOD}.burn" in texts[debug, False]
    assert f'thread "{OWN}"' in texts[2, True]
    total = int(texts[1, False].split("\n", 1)[0].rsplit(" ", 1)[1])
    assert counted == total
    path = tmp_path / "goroutine.pb.gz"
    path.write_bytes(with_self.getvalue())
    assert f"{MOD}.own_burn" in go_pprof(["-top"], path)


def test_threadcreate_counts_our_threads_apart():
    profile = pyprofiler.lookup("threadcreate")

    def started_by_burners() -> tuple[int, int]:
        """(threads Burners started, the same with ours) as the profile counts them."""
        counted = []
        for include_self in (False, True):
            out = io.BytesIO()
            profile.write_to(out, include_self=include_self)
            counted.append(
                sum(
                    sample.values[0]
                    for sample in proto.decode(out.getvalue()).samples
                    if any(f.function == f"{MOD}.Burners.__enter__" for f in sample.frames)
                )
            )
        return counted[0], counted[1]

    count_before, before = profile.count(), started_by_burners()
    with Burners():
        count_after, after = profile.count(), started_by_burners()
    assert count_after - count_before == 1  # The program's burner; ours is counted apart.
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == 2


def test_served_profiles_leave_out_the_servers_threads(tmp_path):
    with running_server() as server, Burners():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Requests in flight while each profile is taken: their threads are running.
            cpu = pool.submit(requests.get, server.url + "profile?seconds=2", timeout=TIMEOUT)
            time.sleep(0.3)
            wall = pool.submit(requests.get, server.url + "wall?seconds=1", timeout=TIMEOUT)
            time.sleep(0.3)
            goroutine = requests.get(server.url + "goroutine", timeout=TIMEOUT)
            responses = {"profile": cpu.result(), "wall": wall.result(), "goroutine": goroutine}
        responses["threadcreate"] = requests.get(server.url + "threadcreate", timeout=TIMEOUT)
        with_self = io.BytesIO()
        pyprofiler.lookup("threadcreate").write_to(with_self, include_self=True)
    tags = {}
    for name, response in responses.items():
        assert response.status_code == 200, response.text
        path = tmp_path / f"{name}.pb.gz"
        path.write_bytes(response.content)
        tags[name] = {labels.get("thread") for _, labels in raw_samples(go_pprof(["-raw"], path))}
        assert not {t for t in tags[name] if t and t.startswith("pyprofiler-")}, (name, tags)
        # No frame of the server's: its threads (and what they run) are left out.
        assert "pyprofiler.httpserver" not in go_pprof(["-top"], path), name
    assert "app-burner" in tags["wall"]
    # The server starts threads for requests: counted apart, they are there when asked for.

    def started_by_us(snapshot) -> set[str]:
        return {f for f in functions(snapshot) if f.startswith("pyprofiler.")}

    assert not started_by_us(proto.decode(responses["threadcreate"].content))
    assert started_by_us(proto.decode(with_self.getvalue()))


def test_include_self_over_http_shows_the_servers_threads(tmp_path):
    with running_server() as server:
        wall = requests.get(server.url + "wall?seconds=1&include_self=1", timeout=TIMEOUT)
        dump = requests.get(server.url + "goroutine?debug=2&include_self=1", timeout=TIMEOUT)
        threadcreate = requests.get(server.url + "threadcreate?include_self=1", timeout=TIMEOUT)
    assert wall.status_code == dump.status_code == threadcreate.status_code == 200
    path = tmp_path / "wall.pb.gz"
    path.write_bytes(wall.content)
    tags = {labels.get("thread") for _, labels in raw_samples(go_pprof(["-raw"], path))}
    assert {t for t in tags if t and t.startswith("pyprofiler-http")}, tags
    assert 'thread "pyprofiler-http' in dump.text
    started = functions(proto.decode(threadcreate.content))
    assert {f for f in started if f.startswith("pyprofiler.")}, started


def churn(stop: threading.Event, errors: list, started: list) -> None:
    """Start short-lived threads of ours and of the program's, one after the other, so that
    each reuses the ident (and the stack) that the previous one left; counts them in
    `started[0]`."""
    try:
        while not stop.is_set() and started[0] < 5_000:
            for name, target in ((f"{OWN}-churn", own_burst), ("app-churn", burst)):
                thread = threading.Thread(target=target, args=(0.002,), name=name)
                thread.start()
                thread.join(timeout=10)
                started[0] += 1
    except Exception as exc:  # Surfaced by the test, not lost in a thread.
        errors.append(exc)


def windows_with_ours(stop: threading.Event) -> list:
    """Windows that want our threads, opening and closing until `stop`: the samplers take
    our threads in and leave them out again while other windows are open."""
    snapshots = []
    while not stop.is_set() and len(snapshots) < 100:
        for name in ("wall", "profile"):
            snapshots.append(pyprofiler.lookup(name).snapshot(0.2, include_self=True))
    return snapshots


def test_skipped_threads_stay_right_under_churn(tmp_path):
    stop, errors, started = threading.Event(), [], [0]
    pyprofiler.set_cpu_profile_rate(1000)  # Readings every millisecond, as threads come and go.
    with Burners(), concurrent.futures.ThreadPoolExecutor(2) as pool:
        churning = pool.submit(churn, stop, errors, started)
        with_ours = pool.submit(windows_with_ours, stop)
        try:
            # Windows that follow each other on both samplers while threads come and go, until
            # at least 100 threads have come and gone (a loaded machine starts fewer per second).
            snapshots = []
            while len(snapshots) < 6 or (started[0] <= 100 and len(snapshots) < 40):
                for name in ("profile", "wall"):
                    snapshots.append(pyprofiler.lookup(name).snapshot(0.5))
        finally:
            stop.set()
            pyprofiler.set_cpu_profile_rate(100)
        churning.result(timeout=30)
        included = with_ours.result(timeout=30)
    assert not errors
    assert started[0] > 100
    for snapshot in snapshots:
        assert f"{MOD}.own_burst" not in functions(snapshot)
        assert f"{MOD}.own_burn" not in functions(snapshot)
        assert not {t for t in thread_labels(snapshot) if t.startswith("pyprofiler-")}
        assert f"{MOD}.burn" in functions(snapshot)
    assert any(f"{MOD}.own_burst" in functions(snapshot) for snapshot in included)
    wall = [s for i, s in enumerate(snapshots) if i % 2]
    # The program's short threads are seen: they are not mistaken for ours that had their ident.
    assert any(f"{MOD}.burst" in functions(snapshot) for snapshot in wall)
    # Every thread of ours left the set as it ended.
    assert not {ident for ident in creation._own_threads if ident not in threading._active}


def test_a_program_thread_on_the_ident_of_one_of_ours_is_profiled():
    # glibc often gives a new thread the stack, and so the ident, that the last one freed.
    ended = threading.Thread(target=lambda: None, name="pyprofiler-test-ended")
    ended.start()
    ended.join(timeout=10)
    stop = threading.Event()
    successor = threading.Thread(target=burn, args=(stop,), name="app-successor")
    successor.start()
    try:
        snapshot = pyprofiler.lookup("profile").snapshot(0.5)
    finally:
        stop.set()
        successor.join(timeout=10)
    labels = thread_labels(snapshot)
    assert "app-successor" in labels, (ended.ident == successor.ident, labels)


@pytest.mark.skipif(native is None, reason="the native sampler's table of our threads")
def test_native_table_takes_any_number_of_threads():
    # Beyond its capacity the rest are sampled as the program's threads and left out by name.
    many = tuple((ident, ident + 1) for ident in range(1, 10_001))
    with Burners():
        try:
            # Ours sort after these small idents: beyond the table.
            native.set_own_threads(many + tuple(creation._own_threads.items()))
            snapshot = pyprofiler.lookup("profile").snapshot(0.4)
        finally:
            with creation._own_lock:
                creation._publish_own_threads()
    assert f"{MOD}.own_burn" not in functions(snapshot)
    assert f"{MOD}.burn" in functions(snapshot)
    with pytest.raises(TypeError):
        native.set_own_threads([("not", "idents")])


def test_traces_of_our_threads_name_them(tmp_path):
    with Burners():
        snapshot = pyprofiler.lookup("wall").snapshot(0.5, include_self=True)
    path = tmp_path / "wall.pb.gz"
    path.write_bytes(proto.encode(snapshot))
    blocks = go_pprof(["-traces"], path).split("-----------+")[1:]
    ours = [block for block in blocks if f"thread:  {OWN}\n" in block]
    assert ours and all(f"{MOD}.own_burn" in block for block in ours)
    assert not [block for block in blocks if f"{MOD}.own_burn" in block and block not in ours]


def test_python_sampler_leaves_our_threads_out(monkeypatch):
    monkeypatch.setattr(samplers, "stack_backend", PythonStackBackend)
    for sampler_class in (stack.CpuSampler, stack.WallSampler):
        with Burners():
            sampler = sampler_class()
            assert isinstance(sampler.backend, PythonStackBackend)
            sampler.start()
            time.sleep(0.4)
            left_out = sampler.cut()
            sampler.include_own_threads(True)
            time.sleep(0.4)
            included = sampler.stop()
        assert left_out is not None
        assert f"{MOD}.own_burn" not in functions(left_out), sampler_class
        assert f"{MOD}.burn" in functions(left_out), sampler_class
        assert f"{MOD}.own_burn" in functions(included), sampler_class
