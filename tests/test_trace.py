"""/debug/pprof/trace: the Chrome trace-event timeline of issue 15, judged as the issue's
acceptance asks: a program with two busy threads, 20 asyncio tasks and a forced collection
(tests/trace_workload.py); exact calls with mode=calls; what a hang-up, bad parameters and a
second trace leave installed; speedscope reading it in headless Chromium (marked "browser")."""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import functools
import gc
import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from support import headless_chromium, read_line, wait_until

from pyprofiler import registry, render_trace
from pyprofiler.samplers import NATIVE_STACK_READS, trace, trace_calls

WORKLOAD = Path(__file__).with_name("trace_workload.py")
TIMEOUT = 60
TOLERANCE = 0.10  # Of a hot function's duration, as the program timed it.

needs_native_sampler = pytest.mark.skipif(
    not NATIVE_STACK_READS, reason="the sampled trace needs the native sampler"
)


# --- The trace-event format: what every viewer needs of it.


def validate(document: dict) -> list[dict]:
    """The trace's events, after checking the format: every event has ph, ts, pid and tid;
    complete slices nest on each thread and are in order of start; B/E pairs nest; async
    events pair up."""
    assert document["displayTimeUnit"] == "ms"
    assert isinstance(document["otherData"], dict)
    events = document["traceEvents"]
    tracks: dict[tuple[int, int], list[dict]] = {}
    open_async: dict[tuple[str, object], dict] = {}
    for event in events:
        for key in ("ph", "ts", "pid", "tid"):
            assert key in event, f"{key} missing from {event}"
        assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0, event
        if event["ph"] in "XBE":
            tracks.setdefault((event["pid"], event["tid"]), []).append(event)
        elif event["ph"] == "b":
            key = (event["cat"], event["id"])
            assert key not in open_async, f"async event {key} begun twice"
            open_async[key] = event
        elif event["ph"] == "e":
            begun = open_async.pop((event["cat"], event["id"]))
            assert begun["name"] == event["name"] and event["ts"] >= begun["ts"]
        else:
            assert event["ph"] in "Mi", event
    assert not open_async, f"async events never ended: {list(open_async)}"
    for track, slices in tracks.items():
        starts = [event["ts"] for event in slices]
        assert starts == sorted(starts), f"timestamps not monotonic on track {track}"
        stack: list[float] = []  # Ends of the slices open at this point.
        for event in slices:
            if event["ph"] == "E":
                assert stack, f"E without B on {track}"
                stack.pop()
                continue
            end = event["ts"] + event.get("dur", 0) if event["ph"] == "X" else float("inf")
            assert event["ph"] != "X" or event["dur"] >= 0, event
            while stack and stack[-1] <= event["ts"] and stack[-1] != float("inf"):
                stack.pop()
            assert not stack or end <= stack[-1], f"{event} straddles its parent on {track}"
            stack.append(end)
    return events


def thread_tids(events: list[dict]) -> dict[str, int]:
    return {
        e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
    }


def slices_named(events: list[dict], suffix: str, tid: int | None = None) -> list[dict]:
    return [
        e
        for e in events
        if e["ph"] == "X" and e["name"].endswith(suffix) and (tid is None or e["tid"] == tid)
    ]


@pytest.fixture(scope="module")
def busy_trace():
    """The workload's trace over its busy seconds, and what it timed itself."""
    document, timed = traced_workload(["busy"], seconds=3)
    return document, timed


def traced_workload(arguments: list[str], seconds: int, mode: str = "sampled"):
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_line(process, TIMEOUT)
        answers: list[requests.Response] = []
        asking = threading.Thread(
            target=lambda: answers.append(
                requests.get(
                    url + "trace", params={"seconds": seconds, "mode": mode}, timeout=TIMEOUT
                )
            )
        )
        asking.start()
        time.sleep(0.1)  # The window opens within milliseconds; the work starts 0.4 s after go.
        process.stdin.write("go\n")
        process.stdin.flush()
        timed = json.loads(read_line(process, TIMEOUT))
        asking.join(TIMEOUT)
        (response,) = answers
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == 'attachment; filename="trace"'
        return json.loads(gzip.decompress(response.content)), timed
    finally:
        process.stdin.close()
        process.wait(timeout=TIMEOUT)


@needs_native_sampler
def test_the_trace_validates_and_shows_each_hot_function_for_as_long_as_it_ran(busy_trace):
    document, timed = busy_trace
    events = validate(document)
    tids = thread_tids(events)
    for thread, function in (("hot-1", "hot_one"), ("hot-2", "hot_two")):
        (hot,) = slices_named(events, f".{function}", tids[thread])
        duration = hot["dur"] / 1e6
        assert abs(duration - timed[function]) <= TOLERANCE * timed[function], (
            f"{function}: {duration:.4f} s in the trace, {timed[function]:.4f} s timed"
        )
        assert hot["args"]["labels"] == {"worker": "one" if thread == "hot-1" else "two"}
        assert hot["cat"] == "sampled"
    assert document["otherData"]["dropped_events"] == 0
    assert document["otherData"]["mode"] == "sampled"


@needs_native_sampler
def test_the_trace_shows_every_task_by_name_and_its_steps_on_the_loop_thread(busy_trace):
    document, timed = busy_trace
    events = document["traceEvents"]
    loop_tid = thread_tids(events)["loop"]
    began = {e["name"]: e for e in events if e["ph"] == "b" and e["cat"] == "asyncio.task"}
    assert set(timed["tasks"]) <= set(began)
    for name in timed["tasks"]:
        assert began[name]["tid"] == loop_tid
        steps = [e for e in events if e.get("cat") == "asyncio.step" and e["name"] == name]
        # A first step, three wake-ups after each sleep.
        assert len(steps) == 4, (name, steps)
        assert all(step["tid"] == loop_tid for step in steps)
        assert all(began[name]["ts"] <= step["ts"] for step in steps)


@needs_native_sampler
def test_the_trace_shows_the_collection_on_the_thread_that_ran_it(busy_trace):
    document, timed = busy_trace
    events = document["traceEvents"]
    main_tid = thread_tids(events)["MainThread"]
    forced = [
        e
        for e in events
        if e.get("cat") == "gc" and e["args"]["generation"] == 2 and e["tid"] == main_tid
    ]
    assert any(e["args"]["collected"] == timed["collected"] for e in forced), forced
    assert all(e["args"]["uncollectable"] == 0 for e in forced)


def test_mode_calls_shows_every_call_of_a_function():
    count = 5_000
    document, timed = traced_workload(["calls", str(count)], seconds=2, mode="calls")
    events = validate(document)
    assert timed["ticks"] == count
    ticker = thread_tids(events)["ticker"]
    ticks = slices_named(events, ".tick", ticker)
    assert len(ticks) == count
    assert all(e["cat"] == "call" for e in ticks)
    assert document["otherData"]["mode"] == "calls"
    (runner,) = slices_named(events, "tick_many", ticker)
    assert runner["ts"] <= min(e["ts"] for e in ticks)


# --- What a window leaves behind: nothing, however it ends.


def nothing_installed() -> list[str]:
    """What a trace left installed in this process, if anything."""
    left = []
    if trace.tracing():
        left.append("a trace window is open")
    if sys.getprofile() is not None:
        left.append(f"profile function {sys.getprofile()}")
    if getattr(threading, "_profile_hook", None) is not None:
        left.append("threading's profile hook")
    if sys.version_info >= (3, 12):
        for tool in range(6):
            if sys.monitoring.get_tool(tool) == trace_calls.TOOL_NAME:
                left.append(f"sys.monitoring tool {tool}")
    if any(getattr(cb, "__self__", None).__class__ is trace.GcRecorder for cb in gc.callbacks):
        left.append("a gc callback")
    if asyncio.events.Handle._run is not ORIGINAL_HANDLE_RUN:
        left.append("Handle._run is patched")
    if any(t.name == "pyprofiler-trace" for t in threading.enumerate()):
        left.append("the trace's thread runs")
    return left


ORIGINAL_HANDLE_RUN = asyncio.events.Handle._run


@pytest.mark.parametrize("mode", ["sampled", "calls"])
def test_a_trace_stops_and_leaves_nothing_when_its_client_hangs_up(server, mode):
    if mode == "sampled" and not NATIVE_STACK_READS:
        pytest.skip("the sampled trace needs the native sampler")
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    try:
        path = f"/debug/pprof/trace?seconds=20&mode={mode}"
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert wait_until(trace.tracing, timeout=10)
        time.sleep(0.3)
    finally:
        connection.close()
    hung_up = time.monotonic()
    assert wait_until(lambda: not nothing_installed(), timeout=5, interval=0.002), (
        nothing_installed()
    )
    assert time.monotonic() - hung_up < 0.25


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("seconds=abc", 'invalid value for "seconds"'),
        ("seconds=-1", 'invalid value for "seconds"'),
        ("seconds=100000", 'invalid value for "seconds" - must be at most'),
        ("mode=exact", 'invalid value for "mode" - must be one of sampled, calls'),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_installed(server, query, text):
    response = requests.get(server.url + "trace?" + query, timeout=TIMEOUT)
    assert response.status_code == 400
    assert text in response.text
    assert response.headers["X-Go-Pprof"] == "1"
    assert not nothing_installed()


def test_a_second_trace_gets_gos_answer_and_the_first_goes_on(server):
    answers: list[requests.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(
            requests.get(server.url + "trace?seconds=2&mode=calls", timeout=TIMEOUT)
        )
    )
    first.start()
    try:
        assert wait_until(trace.tracing, timeout=10)
        second = requests.get(server.url + "trace?seconds=1", timeout=TIMEOUT)
        assert second.status_code == 500
        assert second.text == "Could not enable tracing: tracing is already enabled\n"
        assert second.headers["X-Go-Pprof"] == "1"
    finally:
        first.join(TIMEOUT)
    assert answers[0].status_code == 200
    validate(json.loads(gzip.decompress(answers[0].content)))
    assert not nothing_installed()


def test_a_trace_lasts_one_second_by_default_as_gos(server):
    started = time.monotonic()
    response = requests.get(server.url + "trace?mode=calls", timeout=TIMEOUT)
    assert response.status_code == 200
    document = json.loads(gzip.decompress(response.content))
    assert 0.95e6 <= document["otherData"]["duration_us"] <= 1.5e6
    assert time.monotonic() - started < 3


def test_the_index_lists_the_trace_with_its_description(server):
    page = requests.get(server.url, timeout=TIMEOUT).text
    assert "<a href='trace?debug=1'>trace</a>" in page
    assert registry.lookup("trace").description in page.replace("&#x27;", "'")


@needs_native_sampler
def test_the_pyprofiler_thread_is_left_out_unless_asked_for(server):
    response = requests.get(server.url + "trace?seconds=1&include_self=1", timeout=TIMEOUT)
    names = set(thread_tids(validate(json.loads(gzip.decompress(response.content)))).values())
    assert names  # Something ran: at least the server's thread answering.
    response = requests.get(server.url + "trace?seconds=1", timeout=TIMEOUT)
    events = validate(json.loads(gzip.decompress(response.content)))
    assert not any(name.startswith("pyprofiler-") for name in thread_tids(events))


# --- The buffer's bound and the renderer's nesting, on made-up records.


def test_events_beyond_the_bound_are_counted_in_the_trace():
    buffer = trace.EventBuffer(limit=10)
    for index in range(25):
        buffer.add_slice((1, index * 1000, index * 1000 + 500, f"f{index}", "call", (), None))
    records = made_up_records(buffer)
    document = json.loads("".join(render_trace.json_chunks(records)))
    events = validate(document)
    assert len([e for e in events if e["ph"] == "X"]) == 10
    assert document["otherData"]["dropped_events"] == 15
    (dropped,) = [e for e in events if e["ph"] == "i"]
    assert dropped["args"]["dropped_events"] == 15


def test_sampled_slices_give_way_to_the_exact_ones_they_straddle():
    buffer = trace.EventBuffer()
    us = 1000  # ns: the records' unit; the events' is the microsecond.
    # A sampled frame that begins a little before a gc ends, and one that ends inside a step.
    buffer.add_slice((1, 0, 100 * us, "outer", trace.CATEGORY_SAMPLED, (), None))
    buffer.add_slice((1, 10 * us, 30 * us, "gc", trace.CATEGORY_GC, (), {"generation": 0}))
    buffer.add_slice((1, 28 * us, 60 * us, "after_gc", trace.CATEGORY_SAMPLED, (), None))
    buffer.add_slice((1, 50 * us, 90 * us, "step", trace.CATEGORY_STEP, (), None))
    buffer.add_slice((1, 52 * us, 88 * us, "in_step", trace.CATEGORY_SAMPLED, (), None))
    buffer.add_slice((1, 48 * us, 89 * us, "mostly_in_step", trace.CATEGORY_SAMPLED, (), None))
    events = validate(json.loads("".join(render_trace.json_chunks(made_up_records(buffer)))))
    by_name = {e["name"]: e for e in events if e["ph"] == "X"}
    assert (by_name["gc"]["ts"], by_name["gc"]["dur"]) == (10, 20)
    assert (by_name["after_gc"]["ts"], by_name["after_gc"]["dur"]) == (30, 20)
    assert (by_name["mostly_in_step"]["ts"], by_name["mostly_in_step"]["dur"]) == (50, 39)
    assert (by_name["in_step"]["ts"], by_name["in_step"]["dur"]) == (52, 36)


def made_up_records(buffer: trace.EventBuffer) -> trace.TraceRecords:
    return trace.TraceRecords(
        mode="sampled",
        start_ns=0,
        end_ns=1_000_000_000,
        wall_start_ns=0,
        slices=buffer.slices,
        tasks=buffer.tasks,
        thread_names={1: "one"},
        dropped=buffer.dropped(),
        max_events=buffer.limit,
    )


def test_on_a_groups_port_a_trace_is_one_members_asked_by_pid(server):
    from test_group import member_command, ready, sessions, wait_for_workers

    with sessions(member_command(server.port)) as (member,):
        pid, _ = ready(member)
        wait_for_workers(server.port, lambda seen: len(seen) == 2)
        refused = requests.get(server.url + "trace?seconds=1", timeout=TIMEOUT)
        assert refused.status_code == 400
        assert "add pid=N" in refused.text
        response = requests.get(
            server.url + "trace",
            params={"seconds": 1, "mode": "calls", "pid": pid},
            timeout=TIMEOUT,
        )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Disposition"] == 'attachment; filename="trace"'
    events = validate(json.loads(gzip.decompress(response.content)))
    assert {event["pid"] for event in events} == {pid}


# --- speedscope (npm package), offline in headless Chromium.

# speedscope's dist/release directory, where `npm install --prefix DIR speedscope@1.25.0` leaves
# it; DIR is ~/.cache/pyprofiler-speedscope unless PYPROFILER_SPEEDSCOPE names the release
# directory (.ci/run installs it there).
SPEEDSCOPE = os.environ.get("PYPROFILER_SPEEDSCOPE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "pyprofiler-speedscope/node_modules/speedscope/dist/release",
)


@contextlib.contextmanager
def serving(directory: Path):
    """A loopback HTTP server of `directory`'s files, quiet."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.browser
@needs_native_sampler
def test_speedscope_opens_the_trace_and_names_each_threads_hot_function(busy_trace, tmp_path):
    release = Path(SPEEDSCOPE)
    assert (release / "index.html").is_file(), (
        f"no speedscope in {release}: npm install --prefix ~/.cache/pyprofiler-speedscope "
        "speedscope@1.25.0 (as .ci/run does)"
    )
    document, _timed = busy_trace
    site = tmp_path / "site"
    shutil.copytree(release, site)
    (site / "trace.json").write_text(json.dumps(document))
    with serving(site) as origin, headless_chromium(tmp_path / "chromium") as browser:
        # The sandwich view: a table of every function of one thread's profile, as text.
        browser.get(f"{origin}/index.html#profileURL=/trace.json&view=sandwich")
        body = browser.find_element("tag name", "body")
        threads = len(thread_tids(document["traceEvents"]))
        found: dict[str, str] = {}
        for _ in range(2 * threads):
            assert wait_until(lambda: "Symbol Name" in body.text, timeout=TIMEOUT), body.text
            text = body.text
            for thread, function in (("hot-1", ".hot_one"), ("hot-2", ".hot_two")):
                if f"{thread} (tid" in text and function in text:
                    found[thread] = function
            if len(found) == 2:
                break
            body.send_keys("n")  # speedscope's key for the next thread's profile.
            time.sleep(0.2)
    assert found == {"hot-1": ".hot_one", "hot-2": ".hot_two"}, text
