"""The goroutine and threadcreate profiles: every thread and every pending asyncio task, grouped
by stack, read by `go tool pprof` (debug=0), in Go's count layout (debug=1) and full dump
(debug=2), and as `?seconds=N` deltas (spec sections 1.2, 1.3, 2.1, 2.2, 3.3)."""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import gc
import inspect
import io
import linecache
import os
import queue
import re
import select
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
from support import go_pprof, pprof_traces, top_counts, wait_until

import pyprofiler
from pyprofiler import registry, stalls
from pyprofiler.samplers import goroutines
from pyprofiler.snapshot import Sample

MOD = __name__
TIMEOUT = 30  # Per HTTP request.
TEXT = "text/plain; charset=utf-8"
SENTINEL = object()
WORKLOAD = Path(__file__).with_name("goroutine_workload.py")
WAIT_STACK = ["threading.Condition.wait", "queue.Queue.get", f"{MOD}.worker"]
TASK_CHAIN = ["asyncio.locks.Event.wait", f"{MOD}.wait_for_reply", f"{MOD}.fetch", f"{MOD}.handler"]


def get(server, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT)


def download(server, path: str, target: Path) -> Path:
    response = get(server, path)
    assert response.status_code == 200, response.text
    target.write_bytes(response.content)
    return target


def line_of(function, text: str) -> int:
    """The line number of the first line of `function` that contains `text`."""
    lines, start = inspect.getsourcelines(function)
    return start + next(i for i, line in enumerate(lines) if text in line)


# --- The full dump (debug=2), parsed.

_HEADER = re.compile(
    r'^goroutine (\d+) \[(.*?)(?:, (\d+) (seconds|minutes))?\]: (thread|task|greenlet) "(.*)"$'
)
_CREATED_BY = re.compile(r"^created by (\S+) in goroutine (\d+)$")


class Dumped(NamedTuple):
    id: int
    state: str
    age: str | None  # "N seconds" or "N minutes"
    kind: str
    name: str
    functions: list[str]  # Leaf first.
    locations: list[str]  # "file:line", one per function.
    created_by: str | None
    creator_id: int | None
    created_at: str | None  # "file:line" of the creating call.
    text: str


def parse_dump(text: str) -> list[Dumped]:
    """Every block of a goroutine?debug=2 dump; fails on any line out of Go's layout."""
    assert text.endswith("\n") and not text.endswith("\n\n\n"), text[-200:]
    dumped = []
    for block in text[:-1].split("\n\n"):
        lines = block.split("\n")
        header = _HEADER.match(lines[0])
        assert header, lines[0]
        functions, locations = [], []
        created_by = creator_id = created_at = None
        i = 1
        while i < len(lines) and not lines[i].startswith("created by "):
            assert lines[i].endswith("(...)"), block
            assert re.match(r"^\t\S.*:\d+$", lines[i + 1]), block
            functions.append(lines[i][: -len("(...)")])
            locations.append(lines[i + 1][1:])
            i += 2
        if i < len(lines):
            created = _CREATED_BY.match(lines[i])
            assert created, block
            created_by, creator_id = created[1], int(created[2])
            assert re.match(r"^\t\S.*:\d+$", lines[i + 1]), block
            created_at = lines[i + 1][1:]
            assert all(re.match(r"^\tcalled from \S+ at \S.*:\d+$", x) for x in lines[i + 2 :])
        age = f"{header[3]} {header[4]}" if header[3] else None
        dumped.append(
            Dumped(
                int(header[1]),
                header[2],
                age,
                header[5],
                header[6],
                functions,
                locations,
                created_by,
                creator_id,
                created_at,
                block,
            )
        )
    return dumped


def by_name(dumped: list[Dumped]) -> dict[tuple[str, str], Dumped]:
    return {(g.kind, g.name): g for g in dumped}


# --- Threads stuck on a queue, one per simulated request.


def worker(requests_queue: queue.Queue) -> None:
    """A request handler waiting for a reply that only the sentinel brings."""
    item = requests_queue.get()
    assert item is SENTINEL


def spawn_worker(requests_queue: queue.Queue, name: str) -> threading.Thread:
    thread = threading.Thread(target=worker, args=(requests_queue,), name=name, daemon=True)
    thread.start()
    return thread


def _top_frame(thread: threading.Thread):
    return sys._current_frames().get(thread.ident)


def _in_lock_acquire(frame) -> bool:
    """Whether `frame` is Condition.wait at its `waiter.acquire(...)` line."""
    return (
        frame is not None
        and frame.f_code is threading.Condition.wait.__code__
        and ".acquire(" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    )


def _kernel_state(thread: threading.Thread) -> str:
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as file:
            stat = file.read()
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2]


def blocked_in(thread: threading.Thread, code) -> bool:
    """Whether `thread` is parked with `code` somewhere on its stack, in Condition.wait, and
    asleep in the kernel (not still on its way into the wait)."""
    if _kernel_state(thread) != "S":
        return False
    frame = _top_frame(thread)
    if not _in_lock_acquire(frame):
        return False
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame is not None


class StuckWorkers:
    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []

    def spawn(self, count: int, prefix: str) -> list[threading.Thread]:
        new = [spawn_worker(self.queue, f"{prefix}-{i}") for i in range(count)]
        self.threads.extend(new)
        assert wait_until(lambda: all(blocked_in(t, worker.__code__) for t in new))
        return new

    def release(self) -> None:
        for _ in self.threads:
            self.queue.put(SENTINEL)
        for thread in self.threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self.threads), "a worker did not stop"


@contextlib.contextmanager
def stuck_workers(count: int, prefix: str):
    workers = StuckWorkers()
    try:
        workers.spawn(count, prefix)
        yield workers
    finally:
        workers.release()


def traces_at(traces, function: str):
    return [t for t in traces if function in t[2]]


# --- Acceptance A: threads stuck at one stack.


def test_stuck_threads_counted_at_their_stack(server, tmp_path):
    with stuck_workers(7, "stuck") as workers:
        # pprof fetching from the server itself.
        top = top_counts(go_pprof(["-top"], server.url + "goroutine"))
        assert top[f"{MOD}.worker"] == (0, 7)
        assert top[f"{MOD}.worker"][1] <= top["queue.Queue.get"][1]

        path = download(server, "goroutine", tmp_path / "goroutine.pb.gz")
        at_worker = traces_at(pprof_traces(go_pprof(["-traces"], path)), f"{MOD}.worker")
        assert sum(value for value, _, _ in at_worker) == 7
        assert {labels["thread"] for _, labels, _ in at_worker} == {t.name for t in workers.threads}
        assert all(labels["kind"] == "thread" for _, labels, _ in at_worker)
        stacks = {tuple(functions) for _, _, functions in at_worker}
        assert len(stacks) == 1
        assert list(stacks.pop())[:3] == WAIT_STACK

        focused = top_counts(go_pprof(["-top", "-tagfocus", "thread=^stuck-"], path))
        assert focused["threading.Condition.wait"] == (7, 7)
        assert focused[f"{MOD}.worker"] == (0, 7)


def test_full_dump_names_creator_age_and_state(server):
    with stuck_workers(3, "dumped") as workers:
        response = get(server, "goroutine?debug=2")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    assert "Content-Disposition" not in response.headers
    goroutines = by_name(parse_dump(response.text))
    main = goroutines[("thread", threading.main_thread().name)]
    start_line = line_of(spawn_worker, "thread.start()")
    ids = set()
    for thread in workers.threads:
        g = goroutines[("thread", thread.name)]
        ids.add(g.id)
        assert g.state == "waiting on lock", g.text
        assert g.age is not None and re.match(r"^\d+ (seconds|minutes)$", g.age), g.text
        assert g.functions[:3] == WAIT_STACK, g.text
        assert g.locations[2] == f"{__file__}:{line_of(worker, 'requests_queue.get()')}"
        # The creator is the function that called Thread.start, in the goroutine that ran it.
        assert g.created_by == f"{MOD}.spawn_worker", g.text
        assert g.created_at == f"{__file__}:{start_line}", g.text
        assert g.creator_id == main.id, g.text
        assert f"\tcalled from {MOD}.StuckWorkers.spawn at {__file__}:" in g.text
    assert len(ids) == 3
    assert main.created_by is None  # Like Go's main goroutine.


def _delta_window_open() -> bool:
    # The handler waits between its two snapshots, at write_delta's sleep.
    code = registry.Profile.write_delta.__code__
    waiting = line_of(registry.Profile.write_delta, "sleep(")
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is code:
                return frame.f_lineno == waiting
            frame = frame.f_back
    return False


def test_delta_shows_exactly_the_threads_started_during_the_window(server, tmp_path):
    with stuck_workers(3, "before") as workers:
        result: dict = {}

        def fetch() -> None:
            result["response"] = get(server, "goroutine?seconds=2")

        fetcher = threading.Thread(target=fetch, name="delta-fetch")
        fetcher.start()
        try:
            assert wait_until(_delta_window_open, timeout=10)
            added = workers.spawn(4, "during")
        finally:
            fetcher.join(timeout=TIMEOUT)
        assert not fetcher.is_alive()
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == 'attachment; filename="goroutine-delta"'
    path = tmp_path / "delta.pb.gz"
    path.write_bytes(response.content)

    assert top_counts(go_pprof(["-top"], path))[f"{MOD}.worker"] == (0, 4)
    at_worker = traces_at(pprof_traces(go_pprof(["-traces"], path)), f"{MOD}.worker")
    assert sorted(labels["thread"] for _, labels, _ in at_worker) == sorted(t.name for t in added)
    assert all(value == 1 for value, _, _ in at_worker)
    raw = go_pprof(["-raw"], path)
    assert "PeriodType: goroutine count" in raw
    assert "Duration:" in raw


def test_delta_rejects_debug(server):
    response = get(server, "goroutine?seconds=1&debug=1")
    assert response.status_code == 400
    assert response.text == "seconds and debug params are incompatible\n"


# --- Acceptance B: 500 tasks stuck in one await chain, in a loop in another thread.


async def wait_for_reply(reply: asyncio.Event) -> None:
    await reply.wait()


async def fetch(reply: asyncio.Event) -> None:
    await wait_for_reply(reply)


async def handler(reply: asyncio.Event, index: int) -> int:
    await fetch(reply)
    return index


async def start_requests(count: int):
    reply = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = []
    for index in range(count):
        tasks.append(loop.create_task(handler(reply, index), name=f"req-{index}"))
    await asyncio.sleep(0)  # Each task runs its first step, up to reply.wait(), before this.
    return reply, tasks


async def gather_all(tasks) -> list:
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


def run(loop: asyncio.AbstractEventLoop, coroutine, timeout: float = 10):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=timeout)


@contextlib.contextmanager
def loop_in_thread(name: str = "test-loop"):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the event loop thread did not stop"
        loop.close()


class InFlight(NamedTuple):
    loop: asyncio.AbstractEventLoop
    reply: asyncio.Event
    tasks: list


@contextlib.contextmanager
def requests_in_flight(count: int = 500):
    """`count` tasks req-0.. blocked in handler -> fetch -> wait_for_reply, completed (and
    checked) on exit."""
    with loop_in_thread() as loop:
        reply, tasks = run(loop, start_requests(count))
        try:
            yield InFlight(loop, reply, tasks)
        finally:
            loop.call_soon_threadsafe(reply.set)
            assert run(loop, gather_all(tasks)) == list(range(count))


def test_tasks_counted_at_their_await_chain(server, tmp_path):
    with requests_in_flight(500):
        path = download(server, "goroutine", tmp_path / "goroutine.pb.gz")
    top = top_counts(go_pprof(["-top", "-tagfocus", "kind=task"], path))
    assert top[TASK_CHAIN[0]] == (500, 500)
    for function in TASK_CHAIN[1:]:
        assert top[function] == (0, 500)
    traces = pprof_traces(go_pprof(["-traces", "-tagfocus", "kind=task"], path))
    assert sorted(labels["task"] for _, labels, _ in traces) == sorted(
        f"req-{i}" for i in range(500)
    )
    assert all(functions == TASK_CHAIN for _, _, functions in traces)
    assert all(labels["kind"] == "task" for _, labels, _ in traces)
    # Threads are not tasks.
    threads_only = top_counts(go_pprof(["-top", "-tagfocus", "kind=thread"], path))
    assert f"{MOD}.handler" not in threads_only


def test_debug1_groups_the_tasks_in_one_record(server):
    with requests_in_flight(500):
        response = get(server, "goroutine?debug=1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    text = response.text
    header = re.match(r"^goroutine profile: total (\d+)\n", text)
    assert header, text[:200]
    counts = [int(c) for c in re.findall(r"^(\d+) @", text, re.M)]
    assert int(header[1]) == sum(counts)
    assert counts == sorted(counts, reverse=True)  # Largest first, as Go writes them.
    address = r"0x[0-9a-f]+"
    frame = r"#\t{address}\t{name}\t+{file}:\d+\n"
    record = re.compile(
        rf"^500 @ {address} {address} {address} {address}\n"
        + "".join(
            frame.format(address=address, name=re.escape(name), file=re.escape(file))
            for name, file in zip(
                TASK_CHAIN, [asyncio.locks.__file__, __file__, __file__, __file__]
            )
        )
        + r"\n",
        re.M,
    )
    assert record.search(text), text[:3000]


def test_debug2_names_every_task(server):
    with requests_in_flight(500):
        response = get(server, "goroutine?debug=2")
    goroutines = by_name(parse_dump(response.text))
    start_line = line_of(start_requests, "loop.create_task(")
    ids = set()
    for i in range(500):
        g = goroutines[("task", f"req-{i}")]
        ids.add(g.id)
        assert g.state.startswith("awaiting "), g.text
        assert g.age is not None, g.text
        assert g.functions == TASK_CHAIN, g.text
        assert g.created_by == f"{MOD}.start_requests", g.text
        assert g.created_at == f"{__file__}:{start_line}", g.text
    assert len(ids) == 500
    # Task ids do not collide with thread ids.
    assert not ids & {g.id for g in goroutines.values() if g.kind == "thread"}


def test_loop_keeps_running_after_its_tasks_are_profiled(server):
    with requests_in_flight(500) as flight:
        for debug in (0, 1, 2):
            assert get(server, f"goroutine?debug={debug}").status_code == 200
        answered: concurrent.futures.Future = concurrent.futures.Future()
        flight.loop.call_soon_threadsafe(answered.set_result, "pong")
        assert answered.result(timeout=10) == "pong"
        assert flight.loop.is_running()
        assert not any(task.done() for task in flight.tasks)
    # requests_in_flight checked on exit that all 500 completed with their own results.
    assert all(task.done() and not task.cancelled() for task in flight.tasks)


def _garbage_of_the_profiler() -> list:
    """What a collection finds unreachable that pyprofiler built: cycles it left behind."""
    package = os.path.dirname(pyprofiler.__file__)
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [
            garbage
            for garbage in gc.garbage
            if isinstance(garbage, (goroutines.Goroutine, Sample))
            or (
                isinstance(garbage, types.FrameType)
                and garbage.f_code.co_filename.startswith(package)
            )
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_writing_the_profile_leaves_no_reference_cycles():
    """A cycle through a profile's frames would keep the whole profile alive until the next
    collection, which then holds the GIL for as long as it takes to traverse it."""
    profile = pyprofiler.lookup("goroutine")
    with requests_in_flight(200):
        gc.collect()
        gc.disable()
        try:
            for debug in (0, 1, 2):
                profile.write_to(io.BytesIO(), debug=debug)
                assert _garbage_of_the_profiler() == [], f"debug={debug}"
            profile.write_delta(io.BytesIO(), 0.05)
            assert _garbage_of_the_profiler() == [], "delta"
        finally:
            gc.enable()


async def short_request(index: int) -> int:
    await asyncio.sleep(0)
    return index


async def churn(stop: threading.Event, max_rounds: int = 100_000) -> int:
    """Create and finish tasks until told to stop; every round checks its results."""
    rounds = 0
    while not stop.is_set() and rounds < max_rounds:
        results = await asyncio.gather(*(short_request(i) for i in range(50)))
        assert results == list(range(50))
        rounds += 1
    return rounds


def test_profiling_a_busy_loop_never_breaks_it(server):
    stop = threading.Event()
    with loop_in_thread("busy-loop") as loop:
        rounds = asyncio.run_coroutine_threadsafe(churn(stop), loop)
        try:
            for i in range(12):
                response = get(server, f"goroutine?debug={i % 3}")
                assert response.status_code == 200, response.text
        finally:
            stop.set()
        assert rounds.result(timeout=30) > 0


def parked_greenlet(parent) -> None:
    parent.switch()


def greenlet_body(parent) -> None:
    parked_greenlet(parent)


@contextlib.contextmanager
def switched_out_greenlets(count: int):
    """`count` greenlets switched out in greenlet_body -> parked_greenlet; finished on exit."""
    import greenlet  # A test extra; imported here so that other tests run without it.

    parent = greenlet.getcurrent()
    parked = [greenlet.greenlet(greenlet_body) for _ in range(count)]
    for g in parked:
        g.switch(parent)
    try:
        yield parked
    finally:
        for g in parked:
            g.switch()
        assert all(g.dead for g in parked)


GREENLET_STACK = [f"{MOD}.parked_greenlet", f"{MOD}.greenlet_body"]


class LazyProxy:
    """As Django's lazy settings: asking for anything, __class__ included, runs code that may
    raise."""

    def __getattribute__(self, name: str) -> object:
        raise RuntimeError(f"settings are not configured (asked for {name})")


def test_greenlet_search_asks_no_object_for_its_class(server):
    proxy = LazyProxy()
    with switched_out_greenlets(2):
        for path in ("goroutine", "goroutine?debug=1", "goroutine?debug=2", ""):
            response = get(server, path)
            assert response.status_code == 200, response.text
    del proxy


def test_switched_out_greenlets_are_goroutines(server, tmp_path):
    with switched_out_greenlets(7) as parked:
        path = download(server, "goroutine", tmp_path / "goroutine.pb.gz")
        dumped = [
            g for g in parse_dump(get(server, "goroutine?debug=2").text) if g.kind == "greenlet"
        ]
        count = pyprofiler.lookup("goroutine").count()
    top = top_counts(go_pprof(["-top", "-tagfocus", "kind=greenlet"], path))
    assert top[GREENLET_STACK[0]] == (7, 7)
    assert top[GREENLET_STACK[1]] == (0, 7)
    assert len(dumped) == 7
    assert all(g.functions == GREENLET_STACK and g.state == "switched out" for g in dumped)
    assert len({g.id for g in dumped}) == 7
    assert count >= 7 + 1  # The greenlets and at least this thread.
    # Finished greenlets are gone.
    assert all(g.dead for g in parked)
    after = parse_dump(get(server, "goroutine?debug=2").text)
    assert not [g for g in after if g.kind == "greenlet"]


async def dump_from_inside() -> str:
    buffer = io.BytesIO()
    pyprofiler.lookup("goroutine").write_to(buffer, debug=2)
    return buffer.getvalue().decode()


def test_task_taking_the_dump_is_running():
    with loop_in_thread("self-dump") as loop:
        future = asyncio.run_coroutine_threadsafe(dump_from_inside(), loop)
        text = future.result(timeout=10)
    goroutines = parse_dump(text)
    own = [g for g in goroutines if g.kind == "task" and f"{MOD}.dump_from_inside" in g.functions]
    assert len(own) == 1
    assert own[0].state == "running", own[0].text
    loop_thread = by_name(goroutines)[("thread", "self-dump")]
    assert f"{MOD}.dump_from_inside" in loop_thread.functions


# --- debug=0/1/2 of the built-in count profiles.


@pytest.mark.parametrize("name", ["goroutine", "threadcreate"])
def test_debug0_is_a_count_profile_for_pprof(server, tmp_path, name):
    response = get(server, name)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    path = tmp_path / f"{name}.pb.gz"
    path.write_bytes(response.content)
    raw = go_pprof(["-raw"], path)
    assert f"PeriodType: {name} count\n" in raw
    assert "Period: 1\n" in raw
    assert f"\n{name}/count\n" in raw
    top = go_pprof(["-top"], path)
    assert f"Type: {name}\n" in top


@pytest.mark.parametrize("name", ["goroutine", "threadcreate"])
def test_debug1_is_go_count_layout(server, name):
    with stuck_workers(2, f"layout-{name}"):
        response = get(server, f"{name}?debug=1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    assert "Content-Disposition" not in response.headers
    text = response.text
    header = re.match(rf"^{name} profile: total (\d+)\n", text)
    assert header, text[:200]
    records = re.findall(r"^(\d+) @((?: 0x[0-9a-f]+)*)\n((?:#.*\n)*)\n", text, re.M)
    assert records
    assert int(header[1]) == sum(int(count) for count, _, _ in records)
    for _, addresses, frame_lines in records:
        assert len(addresses.split()) == len(frame_lines.splitlines())
        assert all(
            re.match(r"^#\t0x[0-9a-f]+\t\S+\t+\S.*:\d+$", x) for x in frame_lines.splitlines()
        )
    function = {"goroutine": f"{MOD}.worker", "threadcreate": f"{MOD}.spawn_worker"}[name]
    assert re.search(rf"^#\t0x[0-9a-f]+\t{re.escape(function)}\t+", text, re.M)


def test_pprof_reads_debug1_through_the_symbol_endpoint(server):
    """`go tool pprof URL?debug=1` parses Go's count layout, takes one off each `@` address
    (return PCs point after the call) and asks /debug/pprof/symbol for their names (spec 2.1)."""
    with stuck_workers(3, "legacy"):
        top = top_counts(go_pprof(["-top"], server.url + "goroutine?debug=1"))
    assert "<unknown>" not in top
    assert top.get(f"{MOD}.worker", (0, 0))[1] == 3


def test_threadcreate_debug2_is_the_debug1_layout(server):
    text = get(server, "threadcreate?debug=2").text
    assert re.match(r"^threadcreate profile: total \d+\n", text)
    assert "goroutine " not in text


def test_goroutine_counts_sorted_like_go(server, tmp_path):
    """Go's TestGoroutineCounts: 100 goroutines in three functions, counted 50/40/10."""
    stop = threading.Event()
    started = []
    for i in range(100):
        target = func1 if i % 10 == 0 else func2 if i % 2 == 0 else func3
        started.append(threading.Thread(target=target, args=(stop,), name=f"counted-{i}"))
    try:
        for thread in started:
            thread.start()
        functions = (func1, func2, func3)
        assert wait_until(lambda: all(_parked_in(t, functions) for t in started))
        text = get(server, "goroutine?debug=1").text
        path = download(server, "goroutine", tmp_path / "goroutine.pb.gz")
    finally:
        stop.set()
        for thread in started:
            thread.join(timeout=10)
    assert not any(t.is_alive() for t in started)
    positions = [text.find(f"\n{count} @ ") for count in (50, 40, 10)]
    assert -1 not in positions and positions == sorted(positions), text[:2000]
    for count, function in ((50, "func3"), (40, "func2"), (10, "func1")):
        record = text[text.find(f"\n{count} @ ") :].split("\n\n")[0]
        assert f"\t{MOD}.{function}\t" in record
    top = top_counts(go_pprof(["-top"], path))
    assert top[f"{MOD}.func1"][1] == 10
    assert top[f"{MOD}.func2"][1] == 40
    assert top[f"{MOD}.func3"][1] == 50


def func1(stop: threading.Event) -> None:
    stop.wait(30)


def func2(stop: threading.Event) -> None:
    stop.wait(30)


def func3(stop: threading.Event) -> None:
    stop.wait(30)


def _parked_in(thread: threading.Thread, functions) -> bool:
    if _kernel_state(thread) != "S":
        return False
    frame = _top_frame(thread)
    if not _in_lock_acquire(frame):
        return False
    codes = {f.__code__ for f in functions}
    while frame is not None and frame.f_code not in codes:
        frame = frame.f_back
    return frame is not None


# --- threadcreate.


def start_with_threading(done: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=done.wait, args=(10,), name="created-by-threading")
    thread.start()
    return thread


def low_level_body(done: threading.Event, finished: threading.Event) -> None:
    try:
        done.wait(10)
    finally:
        finished.set()


def start_with_low_level(done: threading.Event, finished: threading.Event) -> None:
    _thread.start_new_thread(low_level_body, (done, finished))


def test_threadcreate_counts_both_ways_of_starting_a_thread(server, tmp_path):
    profile = pyprofiler.lookup("threadcreate")
    done, finished = threading.Event(), threading.Event()
    before = profile.count()
    thread = start_with_threading(done)
    start_with_low_level(done, finished)
    try:
        assert profile.count() - before == 2
        path = download(server, "threadcreate", tmp_path / "threadcreate.pb.gz")
        text = get(server, "threadcreate?debug=1").text
    finally:
        done.set()
        thread.join(timeout=10)
        assert finished.wait(10)
    top = top_counts(go_pprof(["-top"], path))
    assert top[f"{MOD}.start_with_threading"] == (1, 1)
    assert top[f"{MOD}.start_with_low_level"] == (1, 1)
    starters = (f"{MOD}.start_with_threading", f"{MOD}.start_with_low_level")
    mine = [t for t in pprof_traces(go_pprof(["-traces"], path)) if t[2][0] in starters]
    assert sorted(functions[0] for _, _, functions in mine) == sorted(starters)
    # The creating stack goes on past the function that started the thread.
    this_test = f"{MOD}.test_threadcreate_counts_both_ways_of_starting_a_thread"
    assert all(functions[1] == this_test for _, _, functions in mine)
    for function in ("start_with_threading", "start_with_low_level"):
        assert re.search(rf"^1 @ 0x[0-9a-f]+.*\n#\t0x[0-9a-f]+\t{MOD}\.{function}\t", text, re.M)


def start_once(thread: threading.Thread) -> None:
    thread.start()


def start_again(thread: threading.Thread) -> None:
    thread.start()


def test_threadcreate_ignores_starts_that_fail(server):
    """A failed start creates no thread, so it must neither count as one nor replace the
    creation record of the thread that is running."""
    profile = pyprofiler.lookup("threadcreate")
    done = threading.Event()
    thread = threading.Thread(target=done.wait, args=(10,), name="started-twice")
    before = profile.count()
    start_once(thread)
    try:
        with pytest.raises(RuntimeError):
            start_again(thread)
        with pytest.raises(TypeError):
            _thread.start_new_thread(low_level_body, "not a tuple")
        counted = profile.count() - before
        dump = by_name(parse_dump(get(server, "goroutine?debug=2").text))
    finally:
        done.set()
        thread.join(timeout=10)
    assert counted == 1
    assert dump[("thread", "started-twice")].created_by == f"{MOD}.start_once"


# --- Threads that threading does not know, and the calling thread.


def low_level_blocker(lock: _thread.LockType, finished: threading.Event) -> None:
    try:
        lock.acquire()
    finally:
        finished.set()


@contextlib.contextmanager
def low_level_thread():
    lock = _thread.allocate_lock()
    lock.acquire()
    finished = threading.Event()
    _thread.start_new_thread(low_level_blocker, (lock, finished))
    try:
        assert wait_until(lambda: _low_level_parked(low_level_blocker.__code__))
        yield
    finally:
        lock.release()
        assert finished.wait(10)


def _low_level_parked(code) -> bool:
    return any(frame.f_code is code for frame in sys._current_frames().values())


def test_goroutine_lists_threads_started_with__thread(server):
    """Go's goroutine profile lists every goroutine; a thread started with
    _thread.start_new_thread (threadcreate counts it) is a thread too."""
    with low_level_thread():
        top = top_counts(go_pprof(["-top"], server.url + "goroutine"))
        dump = get(server, "goroutine?debug=2").text
    assert top.get(f"{MOD}.low_level_blocker", (0, 0))[1] == 1
    assert f"\n{MOD}.low_level_blocker(...)\n" in dump


def test_goroutine_count_matches_the_profile_total():
    """The index page's count (Profile.count) and the profile's total describe the same
    goroutines, as runtime.NumGoroutine and the goroutine profile do in Go."""
    profile = pyprofiler.lookup("goroutine")

    def same() -> bool:
        buffer = io.BytesIO()
        profile.write_to(buffer, debug=1)
        total = int(re.match(rb"goroutine profile: total (\d+)", buffer.getvalue())[1])
        return profile.count() == total

    with low_level_thread():
        assert wait_until(same, timeout=5, interval=0.1)


def test_full_dump_starts_with_the_calling_thread():
    """Go's dump puts the goroutine that asked for it first (spec 2.2)."""
    with stuck_workers(2, "newer"):  # Threads newer than this one.
        buffer = io.BytesIO()
        pyprofiler.lookup("goroutine").write_to(buffer, debug=2)
    first = parse_dump(buffer.getvalue().decode())[0]
    assert (first.kind, first.name) == ("thread", threading.current_thread().name), first.text


# --- Threads and tasks from before `import pyprofiler`, in a process of their own.


@contextlib.contextmanager
def workload_process():
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the workload printed nothing within 30 s"
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read()
        yield url
    finally:
        try:
            process.stdin.write("quit\n")
            process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
        assert code == 0, stderr


def test_threads_and_tasks_from_before_import_have_no_creator(tmp_path):
    with workload_process() as url:
        dump = requests.get(url + "goroutine?debug=2", timeout=TIMEOUT).text
        path = tmp_path / "goroutine.pb.gz"
        path.write_bytes(requests.get(url + "goroutine", timeout=TIMEOUT).content)
        threadcreate = top_counts(go_pprof(["-top"], url + "threadcreate"))
    goroutines = by_name(parse_dump(dump))

    early_thread = goroutines[("thread", "early-thread")]
    assert early_thread.created_by is None
    assert "created by" not in early_thread.text
    assert "__main__.early_worker" in early_thread.functions
    assert early_thread.state == "waiting on lock", early_thread.text
    assert early_thread.age is not None  # From the kernel's start time of the thread.

    early_task = goroutines[("task", "early-task")]
    assert early_task.created_by is None
    assert "created by" not in early_task.text
    assert early_task.functions[-1] == "__main__.early_waiter"
    assert early_task.state.startswith("awaiting "), early_task.text

    main = goroutines[("thread", "MainThread")]
    late_thread = goroutines[("thread", "late-thread")]
    assert (late_thread.created_by, late_thread.creator_id) == ("__main__.start_late", main.id)
    late_task = goroutines[("task", "late-task")]
    assert late_task.created_by == "__main__.spawn_task"

    traces = pprof_traces(go_pprof(["-traces"], path))
    names = {
        (labels.get("kind"), labels.get("thread") or labels.get("task")) for _, labels, _ in traces
    }
    assert {("thread", "early-thread"), ("task", "early-task")} <= names
    # Only threads started after the import are counted by threadcreate.
    assert threadcreate["__main__.start_late"] == (1, 1)
    assert threadcreate.get("__main__.<module>", (0, 0))[0] == 0


# --- The application's collector settings are its own (stalls.gc_paused).


class ChangesGcWhenNamed(threading.Thread):
    """A thread whose name, read while a goroutine profile is built, runs `change` once: the
    application changing its collector at that moment."""

    def __init__(self) -> None:
        self.done = threading.Event()
        super().__init__(target=self.done.wait, args=(TIMEOUT,))
        self.change = None
        self.seen_threshold: int | None = None

    @property
    def name(self) -> str:
        change, self.change = self.change, None
        if change is not None:
            self.seen_threshold = gc.get_threshold()[0]
            change()
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value


@contextlib.contextmanager
def collector_restored():
    enabled, thresholds = gc.isenabled(), gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        (gc.enable if enabled else gc.disable)()


def build_goroutine_profile_while(change) -> ChangesGcWhenNamed:
    thread = ChangesGcWhenNamed()
    thread.start()
    thread.change = change  # Armed once started: starting reads the name too.
    try:
        pyprofiler.lookup("goroutine").write_to(io.BytesIO())
    finally:
        thread.change = None
        thread.done.set()
        thread.join(timeout=TIMEOUT)
    return thread


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_applications_gc_switch_made_during_a_build_stands(enabled_before):
    with collector_restored():
        (gc.enable if enabled_before else gc.disable)()
        change = gc.disable if enabled_before else gc.enable
        thread = build_goroutine_profile_while(change)
        assert thread.seen_threshold == stalls.PAUSED_THRESHOLD  # It ran during the pause.
        assert gc.isenabled() is not enabled_before


def test_the_applications_thresholds_set_during_a_build_stand():
    with collector_restored():
        build_goroutine_profile_while(lambda: gc.set_threshold(5000, 20, 30))
        assert gc.get_threshold() == (5000, 20, 30)


def test_a_build_leaves_the_collector_as_it_found_it():
    with collector_restored():
        gc.set_threshold(1234, 11, 12)
        build_goroutine_profile_while(lambda: None)
        assert gc.get_threshold() == (1234, 11, 12)
        assert gc.isenabled()


def test_no_collection_starts_during_a_build():
    collections = []

    def count(phase: str, info: dict) -> None:
        # One may start as the pause ends, the build done: what the build allocated is due.
        if phase == "start" and gc.get_threshold()[0] == stalls.PAUSED_THRESHOLD:
            collections.append(info["generation"])

    def allocate_containers() -> None:
        garbage = [[] for _ in range(50_000)]  # Far past the youngest generation's threshold.
        del garbage

    gc.callbacks.append(count)
    try:
        with collector_restored():
            gc.enable()
            with stalls.gc_paused():
                gc.collect(0)  # One started while paused is seen.
            assert collections == [0]
            collections.clear()
            thread = build_goroutine_profile_while(allocate_containers)
            assert thread.seen_threshold == stalls.PAUSED_THRESHOLD  # It allocated paused.
            assert collections == []
    finally:
        gc.callbacks.remove(count)


def test_overlapping_builds_restore_the_collector_once():
    with collector_restored():
        gc.set_threshold(900, 10, 10)
        release = threading.Event()
        inside = threading.Event()

        def hold() -> None:
            with stalls.gc_paused():
                inside.set()
                release.wait(TIMEOUT)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert inside.wait(TIMEOUT)
            build_goroutine_profile_while(lambda: None)
            assert gc.get_threshold()[0] == stalls.PAUSED_THRESHOLD  # The other still builds.
        finally:
            release.set()
            holder.join(timeout=TIMEOUT)
        assert gc.get_threshold() == (900, 10, 10)


def test_a_thread_woken_between_its_stat_and_wchan_reads_is_runnable(monkeypatch):
    # /proc said sleeping, then the thread woke: wchan reads "0", which is no wait at all.
    reads = {"stat": "1 (worker) S 1 1", "wchan": "0"}
    monkeypatch.setattr(goroutines, "_proc_task", lambda tid, name: reads[name])
    assert goroutines.thread_state(1, None) == "runnable"
    reads["wchan"] = "do_sys_poll"
    assert goroutines.thread_state(1, None) == "I/O wait"
