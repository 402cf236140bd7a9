"""start_cpu_profile/stop_cpu_profile and the wall profile on real threads, read back with
`go tool pprof`."""

from __future__ import annotations

import _thread
import io
import logging
import sys
import threading
import time

import pytest
from support import go_pprof, raw_samples, spin, threads_running, top_table, wait_until

import pyprofiler
from pyprofiler import cpu, proto
from pyprofiler.samplers import stack_native, stack_table


class Spinner:
    def spin(self, stop: threading.Event) -> None:
        # The loop body is inline so that Spinner.spin itself is the leaf (flat) frame.
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            total = 0
            for i in range(20_000):
                total += i


class OtherSpinner:
    def spin(self, stop: threading.Event) -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            total = 0
            for i in range(20_000):
                total += i


class Idler:
    def wait_forever(self, stop: threading.Event) -> None:
        stop.wait(30)


SPIN = f"{__name__}.Spinner.spin"
OTHER_SPIN = f"{__name__}.OtherSpinner.spin"
IDLE = f"{__name__}.Idler.wait_forever"


def cpu_profile(path, seconds: float = 1.0, **kwargs) -> None:
    """Take a CPU profile of `seconds` into `path` via the public API."""
    pyprofiler.start_cpu_profile(path, **kwargs)
    try:
        time.sleep(seconds)
    finally:
        pyprofiler.stop_cpu_profile()


@pytest.fixture(scope="module")
def busy_profile(tmp_path_factory):
    """One 1 s profile shared by the read-only checks: a spinner, a second spinner and an idle
    thread, each named."""
    path = tmp_path_factory.mktemp("cpu") / "cpu.pb.gz"
    with threads_running(
        ("spinner", Spinner().spin), ("other", OtherSpinner().spin), ("idler", Idler().wait_forever)
    ) as threads:
        # The idler must be asleep before the profile starts: the CPU it uses on its way there
        # would rightly be in the profile. With two spinners holding the GIL that takes a while.
        assert wait_until(lambda: _asleep_in_wait(threads[2]))
        cpu_profile(str(path))
    return path


def _asleep_in_wait(thread: threading.Thread) -> bool:
    top = sys._current_frames().get(thread.ident)
    if top is None or top.f_code.co_name != "wait" or top.f_code.co_filename != threading.__file__:
        return False
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "S"


def test_busy_function_shows_with_qualified_name(busy_profile):
    table = top_table(go_pprof(["-top"], busy_profile))
    assert SPIN in table
    assert OTHER_SPIN in table
    # Two equal spinners share the GIL; each is a large part of the profile.
    assert table[SPIN][0] > 20
    assert table[OTHER_SPIN][0] > 20


def test_idle_thread_is_absent(busy_profile):
    top = go_pprof(["-top"], busy_profile)
    assert IDLE not in top
    labels = {labels.get("thread") for _, labels in raw_samples(go_pprof(["-raw"], busy_profile))}
    assert "idler" not in labels


def test_sample_and_period_types(busy_profile):
    raw = go_pprof(["-raw"], busy_profile)
    assert "PeriodType: cpu nanoseconds" in raw
    assert "Period: 10000000" in raw
    assert "samples/count cpu/nanoseconds" in raw
    assert "Type: cpu" in go_pprof(["-top"], busy_profile)


def test_every_sample_has_thread_label(busy_profile):
    samples = raw_samples(go_pprof(["-raw"], busy_profile))
    assert samples
    assert all("thread" in labels for _, labels in samples)
    assert {"spinner", "other"} <= {labels["thread"] for _, labels in samples}
    # CPU-weighted samples: every value positive, count column at least 1, but for the CPU of
    # a thread never seen on a CPU: no sample, its CPU under a frame of its own.
    assert all(cpu_ns > 0 for (_, cpu_ns), _ in samples)
    for sample in proto.decode(busy_profile.read_bytes()).samples:
        assert sample.values[0] >= 1 or sample.frames == (stack_native.NOT_SEEN_ON_A_CPU,)


def test_thread_label_matches_the_thread_running_the_function(busy_profile):
    snapshot = proto.decode(busy_profile.read_bytes())
    for sample in snapshot.samples:
        names = {frame.function for frame in sample.frames}
        thread = dict(sample.labels)["thread"]
        if SPIN in names:
            assert thread == "spinner"
        if OTHER_SPIN in names:
            assert thread == "other"


@pytest.mark.parametrize(
    ("thread", "present", "absent"),
    [
        ("spinner", SPIN, OTHER_SPIN),
        ("other", OTHER_SPIN, SPIN),
    ],
)
def test_tagfocus_thread_selects_that_thread(busy_profile, thread, present, absent):
    top = go_pprof(["-tagfocus", f"thread=^{thread}$", "-top"], busy_profile)
    table = top_table(top)
    assert present in table
    assert absent not in table


def test_start_twice_raises_busy():
    pyprofiler.start_cpu_profile(io.BytesIO())
    try:
        with pytest.raises(pyprofiler.PyprofilerError, match="cpu profiling already in use"):
            pyprofiler.start_cpu_profile(io.BytesIO())
        # The subclass lets callers tell "busy" from misuse.
        with pytest.raises(pyprofiler.ProfilerBusyError):
            pyprofiler.start_cpu_profile(io.BytesIO())
    finally:
        pyprofiler.stop_cpu_profile()


def test_stop_without_start_raises():
    with pytest.raises(pyprofiler.PyprofilerError, match="without start_cpu_profile"):
        pyprofiler.stop_cpu_profile()


def test_stop_twice_raises():
    pyprofiler.start_cpu_profile(io.BytesIO())
    pyprofiler.stop_cpu_profile()
    with pytest.raises(pyprofiler.PyprofilerError):
        pyprofiler.stop_cpu_profile()


def test_can_profile_again_after_stop(tmp_path):
    for i in range(2):
        path = tmp_path / f"cpu{i}.pb.gz"
        with threads_running(("spinner", Spinner().spin)):
            cpu_profile(path, seconds=0.3)
        assert SPIN in top_table(go_pprof(["-top"], path))


def test_accepts_str_path_and_pathlike(tmp_path):
    with threads_running(("spinner", Spinner().spin)):
        cpu_profile(str(tmp_path / "str.pb.gz"), seconds=0.3)
        cpu_profile(tmp_path / "pathlike.pb.gz", seconds=0.3)
    for name in ("str.pb.gz", "pathlike.pb.gz"):
        assert SPIN in top_table(go_pprof(["-top"], tmp_path / name))


def test_accepts_binary_file_and_leaves_it_open(tmp_path):
    path = tmp_path / "file.pb.gz"
    with open(path, "wb") as file, threads_running(("spinner", Spinner().spin)):
        cpu_profile(file, seconds=0.3)
        # The caller owns the file object: the profiler must not close it.
        assert not file.closed
    assert SPIN in top_table(go_pprof(["-top"], path))


def test_accepts_bytesio(tmp_path):
    buffer = io.BytesIO()
    with threads_running(("spinner", Spinner().spin)):
        cpu_profile(buffer, seconds=0.3)
    path = tmp_path / "bytesio.pb.gz"
    path.write_bytes(buffer.getvalue())
    assert SPIN in top_table(go_pprof(["-top"], path))


def test_unwritable_path_does_not_leave_profiler_running(tmp_path):
    missing = tmp_path / "no-such-dir" / "cpu.pb.gz"
    with pytest.raises(OSError):
        pyprofiler.start_cpu_profile(missing)
    # The failed start must not hold the one CPU profiling slot.
    pyprofiler.start_cpu_profile(io.BytesIO())
    pyprofiler.stop_cpu_profile()


def test_invalid_hz_raises_and_leaves_profiler_free():
    with pytest.raises(ValueError, match="hz"):
        pyprofiler.start_cpu_profile(io.BytesIO(), hz=0)
    pyprofiler.start_cpu_profile(io.BytesIO())
    pyprofiler.stop_cpu_profile()


def test_hz_sets_period(tmp_path):
    path = tmp_path / "hz.pb.gz"
    cpu_profile(path, seconds=0.1, hz=250)
    assert "Period: 4000000" in go_pprof(["-raw"], path)


def short_lived(stop: threading.Event) -> None:
    total = 0
    for i in range(30_000):
        total += i


def test_threads_starting_and_exiting_during_profile(tmp_path, caplog):
    path = tmp_path / "churn.pb.gz"
    caplog.set_level(logging.WARNING, logger="pyprofiler")
    stop = threading.Event()
    pyprofiler.start_cpu_profile(path)
    try:
        # 50 threads in 10 batches 0.1 s apart: churn across a ~1 s profile. The time cap
        # only guards against a hang; on a loaded machine the batches may take longer.
        deadline = time.monotonic() + 60
        started = 0
        while started < 50 and time.monotonic() < deadline:
            batch = [
                threading.Thread(target=short_lived, args=(stop,), name=f"short-{started + i}")
                for i in range(5)
            ]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join(timeout=10)
            started += len(batch)
            time.sleep(0.1)
        # After the churn the sampler must still be alive and sampling.
        with threads_running(("spinner", Spinner().spin)):
            time.sleep(0.3)
    finally:
        pyprofiler.stop_cpu_profile()
    assert started == 50
    assert not [r for r in caplog.records if r.name == "pyprofiler"], caplog.text
    table = top_table(go_pprof(["-top"], path))
    assert SPIN in table


def test_wall_profile_includes_idle_threads(tmp_path):
    with threads_running(("idler", Idler().wait_forever), ("spinner", Spinner().spin)):
        snapshot = pyprofiler.lookup("wall").snapshot(seconds=1)
    path = tmp_path / "wall.pb.gz"
    path.write_bytes(proto.encode(snapshot))
    raw = go_pprof(["-raw"], path)
    assert "PeriodType: wall nanoseconds" in raw
    assert "samples/count wall/nanoseconds" in raw
    top = go_pprof(["-tagfocus", "thread=^idler$", "-top"], path)
    table = top_table(top)
    assert IDLE in table
    assert SPIN not in table
    assert "Type: wall" in top
    assert SPIN in top_table(go_pprof(["-tagfocus", "thread=^spinner$", "-top"], path))


def test_wall_profiles_overlap_and_are_independent_of_cpu():
    # Several wall profiles run at once, each over its own window, beside a CPU profile.
    wall = pyprofiler.lookup("wall")
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=wall.snapshot(seconds=1)))
    thread.start()
    try:
        assert wait_until(lambda: cpu.windows_open("wall") == 1, timeout=5)
        second = wall.snapshot(seconds=0.3)
        pyprofiler.start_cpu_profile(io.BytesIO())
        pyprofiler.stop_cpu_profile()
    finally:
        thread.join(timeout=10)
    assert result["s"].sample_types[1].type == "wall"
    assert 0.9e9 < result["s"].duration_nanos < 2e9
    assert 0.25e9 < second.duration_nanos < 0.8e9


def recurse_then_spin(depth: int, stop: threading.Event) -> None:
    if depth > 0:
        recurse_then_spin(depth - 1, stop)
        return
    Spinner().spin(stop)


def test_deep_stacks_keep_innermost_frames(tmp_path):
    path = tmp_path / "deep.pb.gz"
    with threads_running(("deep", lambda stop: recurse_then_spin(200, stop))):
        cpu_profile(path, seconds=0.5)
    snapshot = proto.decode(path.read_bytes())
    deep = [s for s in snapshot.samples if dict(s.labels)["thread"] == "deep"]
    assert deep
    # Go's limit since 1.23: 128 frames, counted from the leaf.
    assert max(len(s.frames) for s in deep) == 128
    assert any(s.frames[0].function == SPIN for s in deep)


def test_full_stack_table_is_counted_not_lost(monkeypatch):
    monkeypatch.setattr(stack_table, "MAX_STACKS", 2)
    table = stack_table.StackTable()

    def one():
        table.add(sys._getframe(), "t", 10)

    def two():
        table.add(sys._getframe(), "t", 20)

    def three():
        table.add(sys._getframe(), "t", 30)

    for add in (one, two, three, three):
        add()
    samples = {s.frames[0].function: s.values for s in table.samples()}
    assert samples["[pyprofiler: stack table full]"] == (2, 60)
    assert sum(count for count, _ in samples.values()) == 4
    assert table.dropped_stacks == 2


def test_threads_not_started_by_threading_are_profiled(tmp_path):
    # Threads from _thread.start_new_thread (and from C extensions) run Python code too and
    # use the process's CPU; the docstring promises the profile's total matches it.
    stop, done = threading.Event(), threading.Event()

    def raw_thread_work():
        try:
            Spinner().spin(stop)
        finally:
            done.set()

    path = tmp_path / "raw.pb.gz"
    _thread.start_new_thread(raw_thread_work, ())
    try:
        cpu_profile(path, seconds=0.5)
    finally:
        stop.set()
        assert done.wait(10)
    assert SPIN in top_table(go_pprof(["-top"], path))


def test_sampler_thread_does_not_profile_itself(busy_profile):
    # (The caller's own stop_cpu_profile() frames may legitimately appear, as runtime/pprof
    # frames do in Go; the sampler thread's loop must not.)
    samples = raw_samples(go_pprof(["-raw"], busy_profile))
    assert not {labels["thread"] for _, labels in samples} & {"pyprofiler-CpuSampler"}
    python_sampler = "pyprofiler.samplers.stack_python.PythonStackBackend._run"
    assert python_sampler not in go_pprof(["-top"], busy_profile)


def test_spin_helper_is_named_in_profile(tmp_path):
    # The support spinner is a plain function: module.function naming.
    path = tmp_path / "plain.pb.gz"
    with threads_running(("plain", spin)):
        cpu_profile(path, seconds=0.5)
    assert "support.spin" in top_table(go_pprof(["-top"], path))


class Computes:
    """A class whose __init__ computes for as long as it is told to."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            spin(stop)


def construct_after_warming_up(stop: threading.Event) -> None:
    # A call site run often enough: 3.13 then calls __init__ through a shim frame of its own.
    for warm in range(100, -1, -1):
        Computes(None if warm else stop)


def test_computing_inside_a_warm_init_is_seen(tmp_path):
    path = tmp_path / "cpu.pb.gz"
    with threads_running(("constructor", construct_after_warming_up)):
        time.sleep(0.1)
        pyprofiler.start_cpu_profile(path)
        time.sleep(0.5)
        pyprofiler.stop_cpu_profile()
    table = top_table(go_pprof(["-top", "-tagfocus", "thread=constructor"], path))
    assert table.get("support.spin", (0, 0))[1] > 90, table
    assert table.get(f"{__name__}.Computes.__init__", (0, 0))[1] > 90, table
