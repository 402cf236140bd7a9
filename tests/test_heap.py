"""The heap and allocs profiles (docs/index.md, spec sections 1.2, 1.3, 2.3 and 3.3), judged by
`go tool pprof`.

The allocation sampler is process-global, and serve() turns it on, so what depends on its exact
state runs elsewhere: in a forked child (run_in_child: a crash there is a failed test, not a dead
test run) or in a fresh interpreter running heap_workload.py. Tests that change the rate in
this process restore it (the mem_rate fixture).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import select
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
import zlib
from pathlib import Path

import heap_workload
import pytest
import requests
from support import go_pprof, pprof_traces, raw_samples, run_in_child

import pyprofiler
from pyprofiler import heap, proto
from pyprofiler.samplers.native import native

# fork() in a multi-threaded process (the module's server) is part of what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

WORKLOAD = Path(__file__).with_name("heap_workload.py")
TIMEOUT = 30  # Per HTTP request.
CHILD_TIMEOUT = 60
TEXT = "text/plain; charset=utf-8"
POSITIVE_INTEGER = 'invalid value for "seconds" - must be a positive integer\n'

# ---- helpers ----------------------------------------------------------------------------------

_TOP_ROW = re.compile(
    r"^\s*(?P<flat>-?\d+)B?\s+-?[\d.]+%\s+-?[\d.]+%\s+(?P<cum>-?\d+)B?\s+-?[\d.]+%\s+"
    r"(?P<name>.+?)\s*$"
)


def top(path, sample_index: str | None = None, *extra: str) -> tuple[str, list]:
    """`go tool pprof -top` with exact values: (its "Type:", [(function, flat, cum)] in pprof's
    order). -unit=B prints bytes (and counts) as plain integers; -nodefraction=0 drops nothing."""
    args = ["-top", "-unit=B", "-nodefraction=0", "-nodecount=100000", *extra]
    if sample_index:
        args.insert(0, f"-sample_index={sample_index}")
    output = go_pprof(args, path)
    type_line = re.search(r"^Type: (\S+)$", output, re.M)
    assert type_line, output
    rows = [
        (m["name"], int(m["flat"]), int(m["cum"]))
        for m in map(_TOP_ROW.match, output.splitlines())
        if m
    ]
    return type_line[1], rows


def flat_of(rows: list, suffix: str) -> int:
    """The flat value of the function whose name ends with `suffix` (0 if pprof shows none)."""
    matches = [flat for name, flat, _ in rows if name.endswith(suffix)]
    assert len(matches) <= 1, f"several functions end with {suffix}: {rows}"
    return matches[0] if matches else 0


def get(server, path: str, **kwargs) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT, **kwargs)


@pytest.fixture
def mem_rate():
    """set_mem_profile_rate for one test, from empty tables (the pytest process's deep and varied
    stacks would otherwise fill the 16 384 buckets over a run). Afterwards the previous rate is
    back, and so is whether the program had chosen one (so that serve() in later test modules
    still turns the default on)."""
    previous, chosen = pyprofiler.get_mem_profile_rate(), heap._rate_chosen
    native.reset()
    yield pyprofiler.set_mem_profile_rate
    pyprofiler.set_mem_profile_rate(previous)
    heap._rate_chosen = chosen


class _Allocator(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("ctx", "malloc", "calloc", "realloc", "free")]


def installed_allocators() -> tuple:
    """What PyMem_GetAllocator returns for the MEM and OBJ domains (the ones pyprofiler hooks)."""
    result = []
    for domain in (1, 2):  # PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ
        allocator = _Allocator()
        ctypes.pythonapi.PyMem_GetAllocator(ctypes.c_int(domain), ctypes.byref(allocator))
        result.append(tuple(getattr(allocator, name) for name, _ in _Allocator._fields_))
    return tuple(result)


def samples_taken() -> int:
    return native.stats()["samples"]


def keep_objects(count: int, size: int) -> list:
    """`count` objects of `size` bytes, allocated on one line (no int objects are created)."""
    kept = []
    for _ in itertools.repeat(None, count):
        kept.append(bytes(size))
    return kept


def in_child(body, timeout: float = CHILD_TIMEOUT) -> None:
    """Run `body` in a forked child, in a thread of its own: its stack is then a few frames deep
    rather than pytest's forty, which keeps stacks (and profiles at rate 1) small."""

    def shallow():
        errors = []

        def run():
            try:
                body()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="heap-test")
        thread.start()
        thread.join(timeout)
        assert not thread.is_alive(), f"the test body did not end within {timeout} s"
        if errors:
            raise errors[0]

    code, message = run_in_child(shallow, timeout=timeout + 5)
    assert code == 0, message


class Workload:
    """heap_workload.py in its own interpreter; stopped (and killed if need be) by close()."""

    def __init__(self, *args: str, env: dict | None = None, python_flags: tuple = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *python_flags, str(WORKLOAD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.url = self.read()

    def read(self, timeout: float = 60) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the workload printed nothing within {timeout} s"
        line = self.process.stdout.readline()
        assert line, f"the workload exited early: {self.process.wait(timeout=10)}"
        return line.strip()

    def ask(self, command: str, timeout: float = 60) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)
        self.process.stdout.close()


@contextlib.contextmanager
def workload(*args: str, **kwargs):
    process = Workload(*args, **kwargs)
    try:
        yield process
    finally:
        process.close()


# ---- accuracy, end to end, in a process of its own --------------------------------------------


@pytest.mark.parametrize(
    "allocator, frees_seen",
    # Over pymalloc, sampled blocks come from the raw domain and only its frees are looked up;
    # under any other allocator every free is.
    [("pymalloc", "raw domain"), ("malloc", "every free")],
)
def test_inuse_and_alloc_space_match_what_functions_keep_and_churn(allocator, frees_seen):
    # Sampling error is about 1/sqrt(bytes / rate). At 32 KiB, g's ~50 MB is ~1 600 samples
    # (2.5 %), so its 15 % bar is 6 standard deviations away, and f's 10 % (~4 800 samples,
    # 1.4 %) is 7: a failure means a wrong estimate, not bad luck. (At the default 512 KiB, g
    # would be ~100 samples, 10 %: the bar would be 1.5 sigma.)
    env = {**os.environ, "PYTHONMALLOC": allocator}
    with workload("serve", str(32 * 1024), env=env) as process:
        assert process.ask("frees_seen") == frees_seen
        truth = json.loads(process.ask("build"))
        type_, rows = top(process.url + "heap", "inuse_space")
        assert type_ == "inuse_space"
        assert abs(flat_of(rows, ".f") - truth["f"]) <= 0.10 * truth["f"], (truth, rows[:5])
        assert abs(flat_of(rows, ".g") - truth["g"]) <= 0.15 * truth["g"], (truth, rows[:5])
        assert flat_of(rows, ".churn") <= 1e6, "freed memory shown as in use"

        # allocs shows alloc_space by default: what churn() allocated and freed, ~1 GB.
        type_, rows = top(process.url + "allocs")
        assert type_ == "alloc_space"
        assert abs(flat_of(rows, ".churn") - truth["churn"]) <= 0.10 * truth["churn"], rows[:5]


def test_leak_hunt_with_a_delta_profile(tmp_path):
    # leaky() keeps ~1 MB/s. At 8 KiB, the ~5 MB it keeps in 5 s are ~600 samples (4 %): the
    # 25 % bar is 6 standard deviations away.
    with workload("serve", str(8 * 1024)) as process:
        assert process.ask("leak") == "started"
        time.sleep(0.5)
        response = requests.get(process.url + "heap?seconds=5", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == 'attachment; filename="heap-delta"'
        path = tmp_path / "heap-delta.pb.gz"
        path.write_bytes(response.content)

        # The window the delta covers: its end (time_nanos) and length (duration_nanos).
        snapshot = proto.decode(response.content)
        assert 4.5e9 <= snapshot.duration_nanos <= 10e9
        end = snapshot.time_nanos
        kept = json.loads(process.ask(f"kept {end - snapshot.duration_nanos} {end}"))
        assert 3e6 <= kept <= 7e6, f"the workload kept {kept} bytes, not ~5 MB"

    type_, rows = top(path, "inuse_space")
    assert type_ == "inuse_space"
    name, flat, _ = rows[0]
    assert name.endswith("leaky"), rows[:5]
    assert abs(flat - kept) <= 0.25 * kept, (kept, rows[:5])
    assert "Duration: 5" in go_pprof(["-raw"], path)


# ---- the HTTP surface, in this process ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, default", [("heap", "inuse_space"), ("allocs", "alloc_space")], ids=["heap", "allocs"]
)
def test_sample_types_period_and_labels(server, mem_rate, name, default):
    mem_rate(4096)
    kept = keep_objects(2_000, 1_000)
    raw = go_pprof(["-raw"], server.url + name)
    assert "PeriodType: space bytes\nPeriod: 4096\n" in raw
    types = "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes"
    assert types.replace(default + "/bytes", default + "/bytes[dflt]") + "\n" in raw
    samples = raw_samples(raw)
    assert samples
    # Every sample carries the numeric label `bytes`: the object size.
    assert all(re.fullmatch(r"\d+ bytes", labels.get("bytes", "")) for _, labels in samples)
    assert any(labels["bytes"] == "1033 bytes" for _, labels in samples)
    type_, rows = top(server.url + name)
    assert type_ == default
    assert flat_of(rows, "keep_objects") > 0
    del kept


def test_pyprofilers_own_threads_allocations_only_with_include_self(server, mem_rate):
    """Building a profile allocates; pyprofiler's request threads do that, and the program's
    heap and allocs profiles leave it out unless include_self=1 (as the CPU profile does)."""
    mem_rate(4096)
    for _ in range(3):
        assert get(server, "allocs").status_code == 200

    def builders(rows: list) -> list[str]:
        return [name for name, _, _ in rows if name.startswith("pyprofiler.proto.")]

    for name in ("heap", "allocs"):
        assert not builders(top(server.url + name, "alloc_objects")[1])
        assert builders(top(server.url + f"{name}?include_self=1", "alloc_objects")[1])
    text = get(server, "heap?debug=1&include_self=1").text
    assert "pyprofiler.proto." in text
    assert "pyprofiler.proto." not in get(server, "heap?debug=1").text


def test_gc_parameter(server, mem_rate):
    mem_rate(64 * 1024)
    collections = gc.get_stats()[2]["collections"]
    response = get(server, "heap?gc=1")
    assert response.status_code == 200
    assert proto.decode(response.content).sample_types[3].type == "inuse_space"
    assert gc.get_stats()[2]["collections"] > collections, "gc=1 did not collect"
    response = get(server, "heap?gc=abc")
    assert response.status_code == 400
    assert response.headers["Content-Type"] == TEXT
    assert response.text == 'invalid value for "gc" - must be an integer\n'


@pytest.mark.parametrize(
    "query, body",
    [
        ("seconds=1&debug=1", "seconds and debug params are incompatible\n"),
        ("seconds=abc", POSITIVE_INTEGER),
        ("seconds=0", POSITIVE_INTEGER),
    ],
)
@pytest.mark.parametrize("name", ["heap", "allocs"])
def test_delta_parameter_errors(server, name, query, body):
    response = get(server, f"{name}?{query}")
    assert response.status_code == 400
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["X-Go-Pprof"] == "1"
    assert response.text == body


_HEADER = re.compile(r"heap profile: (\d+): (\d+) \[(\d+): (\d+)\] @ heap/(\d+)")
_RECORD = re.compile(r"(\d+): (\d+) \[(\d+): (\d+)\] @((?: 0x[0-9a-f]+)+)")
_FRAME = re.compile(r"#\t0x[0-9a-f]+\t+\S.*\t+.+:\d+")
MEMSTATS = [
    "RSS", "VMS", "PeakRSS", "AllocatedBlocks", "GCCounts", "GCThresholds", "GCCollections",
    "GCCollected", "GCUncollectable", "GCGarbage", "SampleRate", "Samples", "TrackedBlocks",
    "DroppedBlocks", "DroppedStacks", "RetiredStacks", "TruncatedStacks", "SamplerBytes",
    "FreesSeen",
]  # fmt: skip


def parse_heap_text(text: str) -> tuple[tuple[int, ...], list, dict[str, str]]:
    """(header numbers, [(record numbers, addresses, frame lines)], MemStats) of a debug=1 text,
    asserting its layout on the way."""
    lines = text.split("\n")
    header = _HEADER.fullmatch(lines[0])
    assert header, lines[0]
    records: list = []
    stats: dict[str, str] = {}
    i = 1
    while lines[i] != "":
        record = _RECORD.fullmatch(lines[i])
        assert record, lines[i]
        frames = []
        i += 1
        while lines[i].startswith("#"):
            assert _FRAME.fullmatch(lines[i]), lines[i]
            frames.append(lines[i])
            i += 1
        assert lines[i] == "", lines[i]
        i += 1
        records.append((tuple(map(int, record.groups()[:4])), record[5].split(), frames))
    assert lines[i + 1] == "# python.MemStats", lines[i : i + 2]
    for line in lines[i + 2 :]:
        if line:
            match = re.fullmatch(r"# (\w+) = (.+)", line)
            assert match, line
            stats[match[1]] = match[2]
    return tuple(map(int, header.groups())), records, stats


@pytest.mark.parametrize("name", ["heap", "allocs"])
def test_debug1_text(server, tmp_path, mem_rate, name):
    mem_rate(4096)
    kept = keep_objects(2_000, 1_000)
    response = get(server, f"{name}?debug=1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    assert "Content-Disposition" not in response.headers
    numbers, records, stats = parse_heap_text(response.text)
    assert numbers[4] == 2 * 4096  # heap/<2*rate>, as Go writes it
    # The header sums the records; records are raw counts, sorted by in-use bytes.
    assert numbers[:4] == tuple(sum(r[0][k] for r in records) for k in range(4))
    inuse = [r[0][1] for r in records]
    assert inuse == sorted(inuse, reverse=True)
    ours = [r for r in records if any("keep_objects" in frame for frame in r[2])]
    assert ours and max(r[0][1] for r in ours) >= 1033
    assert list(stats) == MEMSTATS
    assert int(stats["SampleRate"]) == 4096
    assert int(stats["RSS"]) > 0 and int(stats["SamplerBytes"]) > 0
    assert stats["FreesSeen"] in ("raw domain", "every free")
    assert re.fullmatch(r"\[\d+ \d+ \d+\]", stats["GCThresholds"])
    # pprof's legacy parser reads the records (and the rate from the header).
    path = tmp_path / "heap.txt"
    path.write_text(response.text)
    assert "PeriodType: space bytes\nPeriod: 4096\n" in go_pprof(["-raw", "-symbolize=none"], path)
    del kept


def test_index_lists_heap_and_allocs_with_counts(server, mem_rate):
    mem_rate(4096)
    kept = keep_objects(100, 1_000)
    page = get(server, "").text
    for name in ("heap", "allocs"):
        row = re.search(rf"<tr><td>(\d+)</td><td><a href='{name}\?debug=1'>{name}</a>", page)
        assert row, page
        assert int(row[1]) >= 1
        assert re.search(rf"<div class=profile-name>{name}: </div> A sampling of", page)
    del kept


def test_write_heap_profile(tmp_path, mem_rate):
    path = str(tmp_path / "heap.pb.gz")
    mem_rate(4096)
    kept = keep_objects(2_000, 1_000)
    with open(path, "wb") as file:
        pyprofiler.write_heap_profile(file)
    type_, rows = top(path)
    assert type_ == "inuse_space"
    # 2 000 x 1 033 bytes at 4 KiB: ~500 samples, so well within 25 %.
    assert abs(flat_of(rows, "keep_objects") - 2_066_000) < 0.25 * 2_066_000, rows[:5]
    del kept


def test_negative_rate_raises_value_error(mem_rate):
    mem_rate(4096)
    with pytest.raises(ValueError, match="0 or more"):
        pyprofiler.set_mem_profile_rate(-1)
    assert pyprofiler.get_mem_profile_rate() == 4096


# ---- the sampler's exact state, in forked children --------------------------------------------


def test_rate_zero_removes_the_hooks():
    def child():
        pyprofiler.set_mem_profile_rate(0)
        unhooked = installed_allocators()
        pyprofiler.set_mem_profile_rate(4096)
        assert installed_allocators() != unhooked
        pyprofiler.set_mem_profile_rate(0)
        assert native.get_rate() == 0 and pyprofiler.get_mem_profile_rate() == 0
        assert installed_allocators() == unhooked
        before = samples_taken()
        kept = keep_objects(10_000, 1_000)
        assert samples_taken() == before
        del kept

    in_child(child)


# tracemalloc hooks the same allocators. Started while pyprofiler's hooks are installed, it wraps
# them, and stopping it reinstalls what it wrapped.


def test_rate_zero_while_tracemalloc_runs_leaves_it_tracing():
    def child():
        pyprofiler.set_mem_profile_rate(4096)
        tracemalloc.start()
        try:
            pyprofiler.set_mem_profile_rate(0)
            before = tracemalloc.get_traced_memory()[0]
            kept = keep_objects(10_000, 100)  # 133-byte blocks: pymalloc's, the OBJ domain
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown >= 10_000 * 133, f"tracemalloc saw {grown} of 1 330 000 bytes"
        del kept

    in_child(child)


def test_rate_zero_after_tracemalloc_stopped_samples_nothing():
    def child():
        pyprofiler.set_mem_profile_rate(4096)
        tracemalloc.start()
        try:
            pyprofiler.set_mem_profile_rate(0)
        finally:
            tracemalloc.stop()
        assert native.get_rate() == 0
        before = samples_taken()
        kept = keep_objects(10_000, 100)
        assert samples_taken() == before, "sampling at rate 0"
        del kept

    in_child(child)


def test_rate_one_samples_every_allocation_unscaled(tmp_path):
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = keep_objects(1_000, 1_000)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)
        del kept

    in_child(child)
    assert "Period: 1\n" in go_pprof(["-raw"], path)
    # The 1 000 objects of 1 033 bytes (bytes(1000) is a 1 033-byte block), unscaled, and
    # nothing much else in that function: the list it appends to grows a few dozen times (by
    # under 100 KB in all).
    _, rows = top(path, "alloc_objects")
    assert 1_000 <= flat_of(rows, "keep_objects") <= 1_050, rows
    _, rows = top(path, "alloc_space")
    assert 1_033_000 <= flat_of(rows, "keep_objects") <= 1_033_000 + 100_000, rows


def keep_among_other_work(count: int, size: int) -> list:
    """keep_objects with other C-level work (json, re) between the allocations, as in a real
    program, which leaves different bytes on the C stack each time."""
    kept = []
    for i in range(count):
        kept.append(bytes(size))
        json.dumps([i, {"key": [i, str(i)]}], sort_keys=True)
        re.sub("a", "b", "abc" * (i % 7))
    return kept


def test_one_record_per_stack_and_size(tmp_path):
    # Buckets are keyed by (stack, size class): one line allocating one size is one record.
    path = str(tmp_path / "heap.txt")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = keep_among_other_work(5_000, 1_000)
        with open(path, "wb") as file:
            pyprofiler.lookup("heap").write_to(file, debug=1)
        pyprofiler.set_mem_profile_rate(0)
        del kept

    in_child(child)
    _, records, _ = parse_heap_text(Path(path).read_text())
    ours = [
        (tuple(addresses), numbers[3] // numbers[2])
        for numbers, addresses, frames in records
        if "keep_among_other_work" in frames[0]
    ]
    assert ours
    duplicates = {key[1] for key in ours if ours.count(key) > 1}
    assert not duplicates, f"several records for one (stack, size), sizes {sorted(duplicates)}"


def allocate_lengths(count: int) -> list:
    kept = []
    for n in range(count):
        kept.append(bytearray(n))
    return kept


def test_sizes_share_a_record_per_size_class(tmp_path):
    # 20 000 lengths from one line: a few dozen size classes, not 20 000 records.
    path = str(tmp_path / "heap.txt")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = allocate_lengths(20_000)
        with open(path, "wb") as file:
            pyprofiler.lookup("heap").write_to(file, debug=1)
        pyprofiler.set_mem_profile_rate(0)
        del kept

    in_child(child)
    _, records, stats = parse_heap_text(Path(path).read_text())
    ours = [numbers for numbers, _, frames in records if "allocate_lengths" in frames[0]]
    assert 30 < len(ours) < 120, len(ours)
    assert sum(numbers[0] for numbers in ours) >= 20_000  # Every one of them, in use.
    assert int(stats["DroppedStacks"]) == 0


def allocation_sites(count: int, keep: bool) -> list:
    """`count` functions of their own (exec'd), each allocating a 100-byte block once, kept
    or not: as many allocation sites."""
    kept = []
    for n in range(count):
        namespace: dict = {}
        exec(f"def site_{n}():\n    return bytes(100)\n", namespace)
        block = namespace[f"site_{n}"]()
        if keep:
            kept.append(block)
    return kept


def test_full_bucket_table_is_counted_and_shown(tmp_path):
    path, text_path = str(tmp_path / "heap.pb.gz"), str(tmp_path / "heap.txt")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        # More live sites than the 16 384 buckets: none can be retired.
        kept = allocation_sites(17_000, keep=True)
        pyprofiler.set_mem_profile_rate(0)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        with open(text_path, "wb") as file:
            pyprofiler.lookup("heap").write_to(file, debug=1)
        del kept

    in_child(child)
    _, _, stats = parse_heap_text(Path(text_path).read_text())
    assert int(stats["DroppedStacks"]) > 0
    _, rows = top(path, "alloc_objects")
    # At rate 1, unscaled: one object in the overflow bucket per dropped stack.
    assert flat_of(rows, "[pyprofiler: heap table full]") == int(stats["DroppedStacks"])


def fresh_site() -> bytes:
    return bytes(4096)


def test_sites_without_live_memory_are_retired_so_that_new_ones_are_seen(tmp_path):
    heap_path, allocs_path = str(tmp_path / "heap.pb.gz"), str(tmp_path / "allocs.pb.gz")
    text_path = str(tmp_path / "heap.txt")

    def child():
        # As after a debugger, coverage or a /calls window: on 3.12+ every code object then
        # allocates its instrumentation as it starts to run (see the test below).
        sys.setprofile(lambda *args: None)
        sys.setprofile(None)
        pyprofiler.set_mem_profile_rate(1)
        allocation_sites(40_000, keep=False)  # A long-running program's passing sites.
        kept = [fresh_site() for _ in range(10)]
        pyprofiler.set_mem_profile_rate(0)
        for name, target in (("heap", heap_path), ("allocs", allocs_path)):
            with open(target, "wb") as file:
                pyprofiler.lookup(name).write_to(file)
        with open(text_path, "wb") as file:
            pyprofiler.lookup("heap").write_to(file, debug=1)
        del kept

    in_child(child)
    _, _, stats = parse_heap_text(Path(text_path).read_text())
    assert int(stats["RetiredStacks"]) > 16_384
    assert int(stats["DroppedStacks"]) == 0
    _, rows = top(heap_path, "inuse_space")
    assert flat_of(rows, "test_heap.fresh_site") >= 10 * 4096
    _, rows = top(allocs_path, "alloc_objects")
    assert flat_of(rows, "[pyprofiler: retired allocation sites]") > 16_384
    assert "allocation sites without live memory retired" in go_pprof(["-comments"], heap_path)


def test_code_objects_of_passing_sites_are_freed_once_their_sites_retire(tmp_path):
    """exec'd functions, each run once at rate 1 and dropped, after a profile function was set
    and removed: the heap recorder names a site by its code objects until the site is retired,
    and then lets them go. (On 3.12+ a code object allocates its instrumentation as it starts to
    run; a bucket naming the code kept it alive, the code kept that bucket's block in use, and
    neither was ever freed or retired.)"""
    result_path = tmp_path / "result.json"

    def child():
        sys.setprofile(lambda *args: None)
        sys.setprofile(None)
        pyprofiler.set_mem_profile_rate(1)
        first = []
        for n in range(40_000):
            namespace: dict = {}
            exec(f"def site_{n}():\n    return bytes(100)\n", namespace)
            namespace[f"site_{n}"]()
            if n < 1000:
                first.append(weakref.ref(namespace[f"site_{n}"].__code__))
            del namespace
        pyprofiler.set_mem_profile_rate(0)
        pyprofiler.lookup("heap").write_to(io.BytesIO())  # Releases what retired sites held.
        gc.collect()
        alive = sum(code() is not None for code in first)
        result_path.write_text(json.dumps({"alive": alive}))

    in_child(child)
    assert json.loads(result_path.read_text())["alive"] < 100


def descend(depth: int, size: int) -> bytes:
    if depth > 1:
        return descend(depth - 1, size)
    return bytes(size)


def test_deep_stacks_are_truncated_and_counted(tmp_path):
    path, text_path = str(tmp_path / "heap.pb.gz"), str(tmp_path / "heap.txt")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = descend(100, 4321)
        pyprofiler.set_mem_profile_rate(0)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        with open(text_path, "wb") as file:
            pyprofiler.lookup("heap").write_to(file, debug=1)
        del kept

    in_child(child)
    _, _, stats = parse_heap_text(Path(text_path).read_text())
    assert int(stats["TruncatedStacks"]) > 0
    # The 64 frames nearest the allocation (bytes(4321) is a 4 354-byte block) are kept.
    output = go_pprof(["-traces", "-sample_index=inuse_objects", "-tagfocus=bytes=4354B"], path)
    traces = pprof_traces(output)
    assert len(traces) == 1, output
    value, _, functions = traces[0]
    assert value == 1 and len(functions) == 64, output
    assert all(name.endswith("descend") for name in functions), functions


def test_stacks_through_pathlib_are_named(tmp_path):
    # On 3.9 and 3.10 functions are named from their module's namespace, and pathlib's classes
    # hold a property whose getter is an operator.attrgetter, not a function.
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = [pathlib.PurePosixPath("a", str(i)).as_posix() for i in range(100)]
        pyprofiler.set_mem_profile_rate(0)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        del kept

    in_child(child)
    _, rows = top(path, "alloc_objects")
    # pathlib is a package from 3.13 on: pathlib._local.PurePath.
    assert any(n.startswith("pathlib.") and ".PurePath." in n for n, _, _ in rows), rows


def test_blocks_freed_while_the_hooks_were_removed_are_not_in_use(tmp_path):
    # Objects sampled, then freed at rate 0 (no hooks to see the frees): once sampling is back
    # on, the profile must not report them as live (a leak that is not there).
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        kept = keep_objects(10_000, 1_000)
        pyprofiler.set_mem_profile_rate(0)
        del kept
        pyprofiler.set_mem_profile_rate(64 * 1024)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)

    in_child(child)
    _, rows = top(path, "inuse_space")
    assert flat_of(rows, "keep_objects") < 100_000, rows[:5]


def test_fork_child_starts_empty_and_profiles_its_own():
    # Names that no frame of the at-fork handlers (which allocate in the child) contains.
    def kept_by_parent() -> list:
        return keep_objects(5_000, 1_000)

    def kept_by_child() -> list:
        return keep_objects(5_000, 2_000)

    def functions() -> set[str]:
        return {frame.function for r in heap.records() for frame in r.frames}

    def parent():
        pyprofiler.set_mem_profile_rate(4096)
        kept = kept_by_parent()
        assert samples_taken() > 0 and any("kept_by_parent" in f for f in functions())
        # A rate this coarse samples nothing between the fork and the first line of the child,
        # so that line sees exactly what the fork left.
        pyprofiler.set_mem_profile_rate(1 << 40)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                samples_at_fork = samples_taken()
                pyprofiler.set_mem_profile_rate(4096)
                ours = kept_by_child()
                names = functions()
                if samples_at_fork == 0 and samples_taken() > 0:
                    if any("kept_by_child" in f for f in names):
                        code = 0 if not any("kept_by_parent" in f for f in names) else 4
                    else:
                        code = 3
                else:
                    code = 2
                del ours
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        # 2: samples at fork, 3: no samples of its own, 4: the parent's samples.
        assert os.waitstatus_to_exitcode(status) == 0, f"child check failed: status {status}"
        # The parent's samples are its own and untouched.
        assert any("kept_by_parent" in f for f in functions())
        assert not any("kept_by_child" in f for f in functions())
        del kept

    in_child(parent)


# ---- no crash ------------------------------------------------------------------------------


def test_threads_allocating_at_rate_one(tmp_path):
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(1)
        heap_workload.allocate_in_threads(8, 1.5)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)
        stats = native.stats()
        assert stats["samples"] > 10_000 and stats["dropped_blocks"] == 0, stats

    in_child(child)
    _, rows = top(path, "alloc_objects")
    assert flat_of(rows, "allocate_mixed") > 10_000


def test_raw_frees_without_the_gil_while_sampling_every_allocation(tmp_path):
    # zlib allocates and frees through PyMem_RawMalloc with the GIL released: raw frees then
    # race with sampling and with the tracked table growing, resetting and being read.
    path = str(tmp_path / "heap.pb.gz")

    def compress_and_keep(deadline: float) -> None:
        data = bytes(range(256)) * 4096
        while time.monotonic() < deadline:
            assert zlib.decompress(zlib.compress(data, 1)) == data
            kept = [bytes(600) for _ in range(200)]  # Over 512 bytes: raw blocks via pymalloc.
            del kept

    def child():
        pyprofiler.set_mem_profile_rate(1)
        assert native.stats()["frees_seen"] == "raw domain"
        deadline = time.monotonic() + 1.5
        workers = [threading.Thread(target=compress_and_keep, args=(deadline,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for i in range(15):
            pyprofiler.lookup("heap").write_to(io.BytesIO())
            if i % 5 == 4:
                native.reset()
            time.sleep(0.05)
        for worker in workers:
            worker.join(timeout=30)
        assert not any(worker.is_alive() for worker in workers)
        # Samples after the last reset, whatever the timing.
        compress_and_keep(time.monotonic() + 0.1)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)
        assert native.stats()["dropped_blocks"] == 0

    in_child(child)
    _, rows = top(path, "alloc_objects")
    assert flat_of(rows, "compress_and_keep") > 0, rows[:8]


def test_threads_allocating_under_dev_mode():
    # -X dev: CPython's debug allocator hooks underneath ours, and its extra checks.
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(WORKLOAD), "threads", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip() == "ok"


def test_rate_toggling_while_threads_allocate(tmp_path):
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(0)
        unhooked = installed_allocators()
        # A short switch interval lets this thread in between the allocating ones often.
        sys.setswitchinterval(0.0005)
        stop = threading.Event()
        done = threading.Thread(
            target=heap_workload.allocate_in_threads, args=(4, 30.0, stop), name="allocating"
        )
        done.start()
        try:
            for i in range(300):
                pyprofiler.set_mem_profile_rate(0 if i % 2 else 4096)
                time.sleep(0.001)
        finally:
            stop.set()
            done.join(timeout=60)
        assert not done.is_alive()
        assert pyprofiler.get_mem_profile_rate() == 0
        assert installed_allocators() == unhooked
        pyprofiler.set_mem_profile_rate(4096)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)

    in_child(child)
    _, rows = top(path, "alloc_objects")
    assert flat_of(rows, "allocate_mixed") > 0


def test_reset_while_threads_allocate(tmp_path):
    path = str(tmp_path / "heap.pb.gz")

    def child():
        pyprofiler.set_mem_profile_rate(256)
        sys.setswitchinterval(0.0005)
        stop = threading.Event()

        def read_profiles():
            for _ in range(10_000):
                if stop.is_set():
                    return
                pyprofiler.write_heap_profile(io.BytesIO())

        reader = threading.Thread(target=read_profiles)
        allocating = threading.Thread(
            target=heap_workload.allocate_in_threads, args=(4, 30.0, stop), name="allocating"
        )
        reader.start()
        allocating.start()
        resets = refused = 0
        try:
            for _ in range(200):
                try:
                    native.reset()
                    resets += 1
                except RuntimeError as exc:  # A reader was listing the buckets at that moment.
                    assert "buckets() runs" in str(exc)
                    refused += 1
                time.sleep(0.005)
        finally:
            stop.set()
            allocating.join(timeout=60)
            reader.join(timeout=60)
        assert not allocating.is_alive() and not reader.is_alive()
        assert resets > 0
        pyprofiler.set_mem_profile_rate(0)  # Nothing sampled between the reset and the check.
        native.reset()
        stats = native.stats()
        assert stats["samples"] == stats["tracked_blocks"] == stats["dropped_stacks"] == 0
        pyprofiler.set_mem_profile_rate(256)
        kept = keep_objects(1_000, 1_000)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)
        del kept

    in_child(child)
    _, rows = top(path, "alloc_objects")
    assert flat_of(rows, "keep_objects") > 0


@pytest.mark.slow
def test_soak_rates_resets_and_profiles_while_threads_allocate(tmp_path):
    # 20 s of everything at once: 8 allocating threads while the main thread changes the rate
    # (1 included), resets, and writes profiles.
    path = str(tmp_path / "heap.pb.gz")

    def child():
        sys.setswitchinterval(0.0005)
        stop = threading.Event()
        allocating = threading.Thread(
            target=heap_workload.allocate_in_threads, args=(8, 60.0, stop), name="allocating"
        )
        allocating.start()
        deadline = time.monotonic() + 20
        written = 0
        try:
            for i in itertools.count():
                if time.monotonic() > deadline:
                    break
                pyprofiler.set_mem_profile_rate((0, 1, 512, 4096)[i % 4])
                if i % 7 == 0:
                    with contextlib.suppress(RuntimeError):  # refused while a profile lists
                        native.reset()
                pyprofiler.write_heap_profile(io.BytesIO())
                written += 1
                time.sleep(0.01)
        finally:
            stop.set()
            allocating.join(timeout=60)
        assert not allocating.is_alive(), "the allocating threads did not stop"
        assert written > 10, f"only {written} profiles written in 20 s"
        # The recorder still records after all that (the threads may have ended their rounds
        # before the deadline, and the last reset may have come after their last sample).
        native.reset()
        pyprofiler.set_mem_profile_rate(4096)
        heap_workload.allocate_mixed(threading.Event(), time.monotonic() + 10, max_rounds=20_000)
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)
        pyprofiler.set_mem_profile_rate(0)

    in_child(child, timeout=120)
    _, rows = top(path, "alloc_objects")
    assert flat_of(rows, "allocate_mixed") > 0


def parent_allocates() -> list:
    return keep_objects(5_000, 1_000)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_profile_on_their_own(tmp_path, mem_rate, method):
    path = str(tmp_path / f"{method}.pb.gz")
    mem_rate(4096)
    kept = parent_allocates()
    context = multiprocessing.get_context(method)
    child = context.Process(target=heap_workload.mp_child, args=(str(path), 4096))
    child.start()
    child.join(timeout=CHILD_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join(timeout=10)
    assert child.exitcode == 0
    _, rows = top(path, "inuse_space")
    # 20 000 objects, 5 000 of each size (not computed by calling child_allocates here).
    expected = 5_000 * sum(sys.getsizeof(bytes(n)) for n in heap_workload.SMALL_SIZES)
    assert abs(flat_of(rows, "child_allocates") - expected) <= 0.25 * expected, rows[:5]
    assert not any(name.endswith("parent_allocates") for name, _, _ in rows)
    # The parent's samples are its own (read from the sampler's buckets, by code object).
    names = {code.co_name for frames, *_ in native.buckets() for code, _ in frames or ()}
    assert "parent_allocates" in names and "child_allocates" not in names
    del kept


# ---- without the native extension, and before any heap profiling -------------------------------


def test_tracemalloc_fallback(tmp_path):
    env = dict(os.environ, PYPROFILER_NATIVE="0")
    with workload("serve", "-", env=env) as process:
        index = requests.get(process.url, timeout=TIMEOUT).text
        description = re.search(r"<div class=profile-name>heap: </div> (.*)</li>", index)
        assert description and "tracemalloc fallback" in description[1], index

        response = requests.get(process.url + "heap", timeout=TIMEOUT)
        assert response.status_code == 501
        assert response.headers["Content-Type"] == TEXT
        assert "tracemalloc" in response.text and "set_mem_profile_rate(1)" in response.text

        response = requests.get(process.url + "allocs", timeout=TIMEOUT)
        assert response.status_code == 501
        assert "native extension" in response.text

        kept = json.loads(process.ask("fallback"))
        path = tmp_path / "heap.pb.gz"
        response = requests.get(process.url + "heap", timeout=TIMEOUT)
        assert response.status_code == 200
        path.write_bytes(response.content)

    raw = go_pprof(["-raw"], path)
    assert "Samples:\ninuse_objects/count inuse_space/bytes\n" in raw
    # Frames are named by module; fallback_keep() is in __main__. tracemalloc is exact.
    type_, rows = top(path, "inuse_space")
    assert type_ == "inuse_space"
    assert rows[0][0] == "__main__", rows[:5]
    assert kept <= rows[0][1] <= 1.05 * kept, (kept, rows[:5])


def test_index_counts_before_heap_profiling_starts():
    # An application that mounts create_app() and never set a rate: no samples, so count 0.
    code = (
        "import json, re, pyprofiler\n"
        "page = pyprofiler.create_app().test_client().get('/debug/pprof/').get_data(True)\n"
        "print(json.dumps({n: int(c) for c, n in re.findall("
        "r\"<tr><td>(-?\\d+)</td><td><a href='(\\w+)\\?debug=1'>\", page)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["heap"] == 0 and counts["allocs"] == 0, counts
