"""/debug/pprof/calls (issue 15, item 2): every call counted by yappi, read back with `go tool
pprof`, `pstats` and a callgrind parser; one window at a time, and yappi never left running."""

from __future__ import annotations

import asyncio
import pstats
import re
import sys
import threading
import time

import pytest
import requests
import yappi
from support import go_pprof, pprof_traces, top_counts, wait_until
from test_http import ask_and_hang_up

from pyprofiler import proto
from pyprofiler.calls import call_snapshot
from pyprofiler.samplers.calls import CallRecords, CallStats
from pyprofiler.snapshot import Frame

TIMEOUT = 30
TICKS = 12_345
NAP_SECONDS = 0.2
NAPS = 3
TEXT = "text/plain; charset=utf-8"
POSITIVE_INTEGER = 'invalid value for "seconds" - must be a positive integer\n'
BUSY = (
    "Could not enable calls profiling: yappi is already profiling this process "
    "(one call profile at a time)\n"
)


def tick() -> None:
    """The function whose calls are counted."""


def make_ticks(count: int) -> int:
    made = 0
    for _ in range(count):
        tick()
        made += 1
    return made


def nap() -> None:
    time.sleep(NAP_SECONDS)


def get(server, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _no_yappi_left():
    yield
    running = yappi.is_running()
    yappi.stop()  # So that one failure does not make every later test "busy".
    yappi.clear_stats()
    assert not running, "yappi was left running"


def during_window(server, query: str, work) -> tuple[requests.Response, object]:
    """Ask for `calls?query`; once the window is open, run `work()` in a thread of the program
    (so that it all happens inside the window), then wait for the window to end."""
    answered: dict = {}
    asker = threading.Thread(target=lambda: answered.update(r=get(server, f"calls?{query}")))
    asker.start()
    try:
        assert wait_until(yappi.is_running, timeout=10)
        done: dict = {}
        worker = threading.Thread(target=lambda: done.update(result=work()), name="app-worker")
        worker.start()
        worker.join(timeout=TIMEOUT)
        assert "result" in done, "the work did not finish"
        assert yappi.is_running(), "the work outlasted the window"
    finally:
        asker.join(timeout=TIMEOUT)
    return answered["r"], done["result"]


def saved(response: requests.Response, tmp_path, name: str = "calls"):
    assert response.status_code == 200, response.text
    path = tmp_path / name
    path.write_bytes(response.content)
    return path


def function_named(names, suffix: str) -> str:
    found = [name for name in names if name.endswith(suffix)]
    assert len(found) == 1, (suffix, sorted(names))
    return found[0]


def test_go_pprof_shows_every_call_and_who_made_it(server, tmp_path):
    response, made = during_window(server, "seconds=2", lambda: make_ticks(TICKS))
    assert made == TICKS
    assert response.headers["Content-Disposition"] == 'attachment; filename="calls"'
    path = saved(response, tmp_path)
    assert "calls/count cpu/nanoseconds" in go_pprof(["-raw"], path)
    counts = top_counts(go_pprof(["-sample_index=calls", "-top"], path))
    assert counts[function_named(counts, ".tick")][0] == TICKS
    assert counts[function_named(counts, ".make_ticks")][0] == 1
    # The caller -> callee edge, as the graph and -peek draw it, with its exact count.
    traces = pprof_traces(go_pprof(["-sample_index=calls", "-traces"], path))
    edges = {tuple(functions): value for value, _, functions in traces}
    assert edges[(function_named(counts, ".tick"), function_named(counts, ".make_ticks"))] == TICKS
    # The request's own thread, waiting out the window, is pyprofiler's: left out.
    assert "pyprofiler.hangup.sleep" not in counts


def test_include_self_shows_pyprofilers_own_threads(server, tmp_path):
    path = saved(get(server, "calls?seconds=1&include_self=1"), tmp_path)
    counts = top_counts(go_pprof(["-sample_index=calls", "-top"], path))
    assert counts["pyprofiler.hangup.sleep"][0] == 1


def test_pyprofilers_request_threads_run_outside_the_window(server, tmp_path):
    """Requests served while a window is open (by pool threads started before it, or during
    it) run without yappi's hook: not in the profile even with include_self=1, and not slowed."""

    def ask_goroutines() -> int:
        return sum(get(server, "goroutine?debug=1").status_code == 200 for _ in range(5))

    response, answered = during_window(server, "seconds=2&include_self=1", ask_goroutines)
    assert answered == 5
    path = saved(response, tmp_path)
    counts = top_counts(go_pprof(["-sample_index=calls", "-nodefraction=0", "-top"], path))
    assert counts["pyprofiler.hangup.sleep"][0] == 1  # The window's own request: it starts yappi.
    assert not [name for name in counts if name.startswith("pyprofiler.samplers.goroutines")]


def test_pstats_loads_with_every_call(server, tmp_path):
    response, _ = during_window(server, "seconds=2&format=pstats", lambda: make_ticks(TICKS))
    assert response.headers["Content-Disposition"] == 'attachment; filename="calls.pstats"'
    stats = pstats.Stats(str(saved(response, tmp_path, "calls.pstats"))).stats
    by_name = {name: key for key in stats for name in [key[2]]}
    tick_key = by_name[function_named(by_name, ".tick")]
    primitive, calls, own, total, callers = stats[tick_key]
    assert (primitive, calls) == (TICKS, TICKS)
    assert 0 <= own <= total
    caller_key = by_name[function_named(by_name, ".make_ticks")]
    assert callers[caller_key][:2] == (TICKS, TICKS)


def parse_callgrind(text: str) -> tuple[dict[str, str], dict[str, int]]:
    """The header, and the calls made of each function; fails on a line out of the format."""
    lines = text.splitlines()
    assert lines[0] == "# callgrind format"
    header = {}
    names: dict[str, str] = {}
    calls: dict[str, int] = {}
    callee = None
    for line in lines[1:]:
        if not line:
            continue
        if re.match(r"[a-z]+: ", line):
            key, _, value = line.partition(": ")
            header[key] = value
            continue
        named = re.match(r"(fl|fn|cfl|cfn)=\((\d+)\)(?: (.+))?\Z", line)
        if named:
            kind, number, name = named.groups()
            table = f"{kind.lstrip('c')}{number}"
            if name is not None:
                assert table not in names, f"{line!r}: defined twice"
                names[table] = name
            assert table in names, f"{line!r}: used before it was defined"
            if kind == "cfn":
                callee = names[table]
            continue
        call = re.match(r"calls=(\d+) (\d+)\Z", line)
        if call:
            calls[callee] = calls.get(callee, 0) + int(call[1])
            continue
        assert re.match(r"\d+ \d+\Z", line), f"{line!r} is no callgrind line"
    return header, calls


def test_callgrind_is_well_formed(server, tmp_path):
    response, _ = during_window(server, "seconds=2&format=callgrind", lambda: make_ticks(TICKS))
    assert response.headers["Content-Disposition"] == 'attachment; filename="callgrind.out.calls"'
    header, calls = parse_callgrind(response.content.decode())
    assert header["version"] == "1"
    assert header["positions"] == "line"
    assert header["events"] == "Cpu_ns"
    assert int(header["summary"]) > 0
    assert calls[function_named(calls, ".tick")] == TICKS


def top_milliseconds(output: str) -> dict[str, tuple[float, float]]:
    """Function name -> (flat, cum) in ms from `go tool pprof -unit=ms -top`."""
    table = {}
    for line in output.splitlines():
        match = re.match(
            r"^\s*([\d.]+)(?:ms)?\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)(?:ms)?\s+[\d.]+%\s+(.+?)\s*$", line
        )
        if match:
            table[match[3]] = (float(match[1]), float(match[2]))
    return table


def naps() -> None:
    for _ in range(NAPS):
        nap()


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_the_wall_clock_shows_time_asleep(server, tmp_path, clock):
    response, _ = during_window(server, f"seconds=1&clock={clock}", naps)
    path = saved(response, tmp_path)
    assert f"calls/count {clock}/nanoseconds" in go_pprof(["-raw"], path)
    times = top_milliseconds(go_pprof([f"-sample_index={clock}", "-unit=ms", "-top"], path))
    asleep = NAPS * NAP_SECONDS * 1000
    nap_cum = times[function_named(times, ".nap")][1]
    sleep_flat = times["time.sleep"][0] if "time.sleep" in times else 0.0
    if clock == "wall":
        assert asleep * 0.95 <= nap_cum <= asleep * 1.5
        assert asleep * 0.95 <= sleep_flat <= nap_cum
    else:
        assert nap_cum < asleep * 0.25


def test_asyncio_tasks_are_counted(server, tmp_path):
    async def step() -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)
            tick()

    async def steps() -> None:
        await asyncio.gather(*(step() for _ in range(20)))

    response, _ = during_window(server, "seconds=1", lambda: asyncio.run(steps()))
    counts = top_counts(go_pprof(["-sample_index=calls", "-top"], saved(response, tmp_path)))
    assert counts[function_named(counts, ".tick")][0] == 100
    assert counts[function_named(counts, "step")][0] == 20  # A coroutine: once, not per step.


def test_a_client_that_hangs_up_leaves_no_yappi_running(server):
    hung_up = ask_and_hang_up(server.port, "/debug/pprof/calls?seconds=10", yappi.is_running)
    assert wait_until(lambda: not yappi.is_running(), timeout=1, interval=0.002)
    assert time.monotonic() - hung_up < 1
    response = get(server, "calls?seconds=1")
    assert response.status_code == 200
    assert response.content[:2] == b"\x1f\x8b"


def test_a_second_window_at_once_is_refused(server):
    first: dict = {}
    asker = threading.Thread(target=lambda: first.update(r=get(server, "calls?seconds=2")))
    asker.start()
    try:
        assert wait_until(yappi.is_running, timeout=10)
        second = get(server, "calls?seconds=1&format=pstats")
    finally:
        asker.join(timeout=TIMEOUT)
    assert second.status_code == 500
    assert second.headers["Content-Type"] == TEXT
    assert second.text == BUSY
    assert first["r"].status_code == 200


def test_yappi_run_by_the_program_is_left_alone(server):
    yappi.start()
    try:
        response = get(server, "calls?seconds=1")
        assert yappi.is_running()
    finally:
        yappi.stop()
    assert response.status_code == 500
    assert response.text == BUSY


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("clock=gpu", 'invalid value for "clock" - must be one of cpu, wall\n'),
        ("clock=CPU", 'invalid value for "clock" - must be one of cpu, wall\n'),
        ("format=json", 'invalid value for "format" - must be one of pprof, pstats, callgrind\n'),
        ("seconds=abc", POSITIVE_INTEGER),
        ("seconds=0", POSITIVE_INTEGER),
        ("seconds=1&include_self=x", 'invalid value for "include_self" - must be an integer\n'),
    ],
)
def test_bad_parameters_are_400(server, query, text):
    response = get(server, f"calls?{query}")
    assert response.status_code == 400
    assert response.headers["X-Go-Pprof"] == "1"
    assert response.text == text
    assert not yappi.is_running()


def test_without_yappi_the_answer_is_501(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "yappi", None)  # `import yappi` raises ImportError.
    response = get(server, "calls?seconds=1")
    assert response.status_code == 501
    assert response.text.startswith("the calls profile needs yappi, which cannot be imported")


def test_the_index_lists_calls(server):
    page = get(server, "").text
    assert "<tr><td>0</td><td><a href='calls?debug=1'>calls</a></td></tr>\n" in page
    assert "<li><div class=profile-name>calls: </div> Deterministic call profile" in page


def test_a_bare_request_lasts_one_second(server):
    started = time.monotonic()
    assert get(server, "calls").status_code == 200
    assert 1 <= time.monotonic() - started < 3


# --- The pprof form on made-up records: the edges and the calls no caller made.

MAIN = Frame("app.main", "app.py", 1, 1)
WALK = Frame("app.walk", "app.py", 10, 10)
LEN = Frame("builtins.len", "", 0, 0)


def test_made_up_records_read_back_by_pprof(tmp_path):
    records = CallRecords(
        clock="cpu",
        start_ns=time.time_ns(),
        duration_ns=10**9,
        functions={
            MAIN: CallStats(1, 1, 5_000, 100_000),
            WALK: CallStats(7, 4, 60_000, 95_000),  # 3 of them recursive, 2 with no caller seen.
            LEN: CallStats(9, 9, 35_000, 35_000),
        },
        edges={
            (MAIN, WALK): CallStats(2, 2, 30_000, 90_000),
            (WALK, WALK): CallStats(3, 0, 20_000, 40_000),
            (WALK, LEN): CallStats(9, 9, 35_000, 35_000),
        },
    )
    path = tmp_path / "calls.pb.gz"
    path.write_bytes(proto.encode(call_snapshot(records)))
    counts = top_counts(go_pprof(["-sample_index=calls", "-top"], path))
    assert counts["app.walk"][0] == 7
    assert counts["app.main"][0] == 1
    assert counts["builtins.len"][0] == 9
    in_ns = re.sub(r"(\d)ns\b", r"\1", go_pprof(["-sample_index=cpu", "-unit=ns", "-traces"], path))
    traces = {(tuple(functions), value) for value, _, functions in pprof_traces(in_ns)}
    assert (("app.walk", "app.main"), 30_000) in traces
    assert (("app.walk", "app.walk"), 20_000) in traces
    assert (("app.walk",), 10_000) in traces  # The calls no caller made.
    assert (("builtins.len", "app.walk"), 35_000) in traces
