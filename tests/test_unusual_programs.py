"""Every profile and text form of a legal but unusual program: names holding lone surrogates
(escaped, as valid UTF-8 must carry them), code without a line table (line 0, Go's "unknown").
Every endpoint answers, `go tool pprof` reads every profile, and nothing reaches the host's
stderr; then the pieces on their own."""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import requests
from support import go_pprof, raw_locations, read_line

import pyprofiler
from pyprofiler import proto, render_text, symbols
from pyprofiler.samplers import goroutines
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.native import native
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType, escaped

WORKLOAD = Path(__file__).with_name("unusual_workload.py")
TIMEOUT = 30
DELTAS = {"heap", "allocs", "goroutine", "threadcreate", "block", "mutex"}
# How the workload's names read once escaped.
UNDECODABLE, LONE = "\\udce9", "\\ud800"
ODD_FILE = f"/srv/caf{UNDECODABLE}/legacy{LONE}.py"
LINES_KNOWN = sys.version_info < (3, 10)  # 3.9 reads a missing line table as the first line.


def odd(name: str) -> str:
    return f"{name}{UNDECODABLE}{LONE}"


@pytest.fixture(scope="module", params=["native", "python"])
def workload(request, tmp_path_factory):
    """The unusual program, with the native extension or with its Python fallbacks."""
    if request.param == "native" and native is None:
        pytest.fail("the native extension is not built")
    env = dict(os.environ, PYPROFILER_NATIVE="1" if request.param == "native" else "0")
    stderr = open(tmp_path_factory.mktemp("unusual") / "stderr", "w+")
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    try:
        url, lines = read_line(process, 60).split()
        lines_unknown = lines == "lines-unknown"
        yield types.SimpleNamespace(
            url=url, kind=request.param, lines_unknown=lines_unknown, stderr=stderr
        )
    finally:
        if process.poll() is None:
            process.stdin.write("quit\n")
            process.stdin.flush()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdin.close()
        process.stdout.close()
        stderr.close()


def endpoints(url: str) -> list[str]:
    """Every path the server answers: each profile the index lists, in every form."""
    index = requests.get(url, timeout=TIMEOUT)
    assert index.status_code == 200, index.text
    names = re.findall(r"<a href='([^']+)\?debug=1'>", index.text)
    assert {"profile", "wall", "heap", "goroutine", "unusual/objects"} <= set(names), names
    paths = ["", "cmdline"]
    for name in names:
        if name in ("profile", "wall", "trace", "calls"):  # Timed; trace and calls one at a time.
            paths.append(f"{name}?seconds=1")
            continue
        paths += [name, f"{name}?debug=1"]
        if name == "goroutine":
            paths.append("goroutine?debug=2")
        if name in DELTAS:
            paths.append(f"{name}?seconds=1")
    return paths


@pytest.fixture(scope="module")
def answers(workload, tmp_path_factory):
    """path -> response, for every endpoint, asked concurrently; the call profile after the
    others, since its window slows every call of every thread, the other requests' builds too."""
    paths = endpoints(workload.url)
    calls = [path for path in paths if path.startswith("calls")]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {
            path: pool.submit(requests.get, workload.url + path, timeout=TIMEOUT)
            for path in paths
            if path not in calls
        }
        answers = {path: future.result() for path, future in futures.items()}
    answers.update((path, requests.get(workload.url + path, timeout=TIMEOUT)) for path in calls)
    return answers


def is_profile(response: requests.Response) -> bool:
    return response.headers["Content-Type"] == "application/octet-stream"


def test_every_endpoint_answers(workload, answers):
    for path, response in answers.items():
        unavailable = path.startswith(("allocs", "trace")) or path == "heap?debug=1"
        if workload.kind == "python" and unavailable:
            # Documented: no native hooks, and no native sampler for the sampled trace.
            assert response.status_code == 501, response.text
            continue
        assert response.status_code == 200, (path, response.text)


def test_go_pprof_reads_every_profile(workload, answers, tmp_path):
    read = 0
    for path, response in answers.items():
        if response.status_code != 200 or not is_profile(response):
            continue
        if path.startswith("trace"):
            continue  # Chrome trace-event JSON, checked by test_trace.py.
        file = tmp_path / (re.sub(r"\W", "_", path) + ".pb.gz")
        file.write_bytes(response.content)
        assert "Type:" in go_pprof(["-raw"], file)
        read += 1
    assert read >= 13, read


def locations(answers, path: str, tmp_path) -> str:
    file = tmp_path / "profile.pb.gz"
    file.write_bytes(answers[path].content)
    return "\n".join(raw_locations(go_pprof(["-raw"], file)).values())


def test_names_are_escaped_and_missing_lines_are_zero(workload, answers, tmp_path):
    cpu = locations(answers, "profile?seconds=1", tmp_path)
    # The function without a line table reads line 0 (on 3.9: its first line).
    line = r"\d+" if LINES_KNOWN else "0"
    assert re.search(rf"{re.escape(odd('compute'))} {re.escape(ODD_FILE)}:{line} ", cpu), cpu
    # The same code with its line table keeps its lines, in a file named at run time.
    assert re.search(rf"{re.escape(odd('compute'))} <exec {re.escape(LONE)}>:[1-9]\d* ", cpu), cpu
    assert workload.lines_unknown != LINES_KNOWN


def test_threads_and_tasks_are_named_with_escapes(answers, tmp_path):
    dump = answers["goroutine?debug=2"].text
    assert f'thread "compute-{LONE}"' in dump
    assert f'thread "blocked-{UNDECODABLE}{LONE}"' in dump
    assert f'task "task-{LONE}"' in dump
    assert f"{odd('wait')}(...)\n\t{ODD_FILE}:" in dump
    file = tmp_path / "wall.pb.gz"
    file.write_bytes(answers["wall?seconds=1"].content)
    top = go_pprof(["-top", "-tagfocus", f"thread=compute-{re.escape(LONE)}"], file)
    assert odd("compute") in top


def test_each_profile_shows_the_unusual_code(workload, answers, tmp_path):
    expected = {"goroutine": odd("blocked"), "unusual/objects": odd("record")}
    if workload.kind == "native":  # Without it: no lock or allocation hooks (documented).
        expected.update(heap=odd("allocate"), block=odd("contend"), mutex=odd("contend"))
    for path, function in expected.items():
        assert function in locations(answers, path, tmp_path), path
        assert function in answers[f"{path}?debug=1"].text, path


def test_symbol_answers_escaped_names(answers, workload):
    text = answers["goroutine?debug=1"].text
    address = re.search(rf"#\t(0x[0-9a-f]+)\t{re.escape(odd('blocked'))}\t", text)[1]
    response = requests.post(workload.url + "symbol", data=address, timeout=TIMEOUT)
    assert response.status_code == 200
    assert f"{address} {odd('blocked')}" in response.text


def test_nothing_reaches_the_hosts_stderr(workload, answers):
    assert answers  # Every endpoint was asked first.
    workload.stderr.flush()
    workload.stderr.seek(0)
    assert workload.stderr.read() == ""


# --- The pieces on their own.


def code_without_lines() -> types.CodeType:
    def holder() -> int:
        return 1

    field = "co_linetable" if sys.version_info >= (3, 10) else "co_lnotab"
    return holder.__code__.replace(**{field: b""})


@pytest.mark.parametrize("line", [None, -1, 0])
def test_unknown_lines_name_line_zero(line):
    frame = FrameNamer().frame(code_without_lines(), line)
    assert frame.line == 0
    assert frame.function.endswith("holder")


def test_escaped_keeps_valid_text_and_escapes_surrogates():
    assert escaped("caf\u00e9") == "caf\u00e9"
    assert escaped("caf\udce9/x\ud800") == "caf\\udce9/x\\ud800"


def test_encoder_escapes_every_string(tmp_path):
    frame = Frame("f\ud800", "/srv/caf\udce9.py", 3, 0)
    snapshot = Snapshot(
        sample_types=(ValueType("samples", "count"),),
        period_type=ValueType("samples", "count"),
        period=1,
        time_nanos=1,
        samples=[Sample((frame,), (1,), (("thread", "t\udc80"),), (("size", 1, "b\ud800"),))],
        comments=("c\ud800",),
    )
    decoded = proto.decode(proto.encode(snapshot))
    assert decoded.samples[0].frames == (Frame("f\\ud800", "/srv/caf\\udce9.py", 3, 0),)
    assert decoded.samples[0].labels == (("thread", "t\\udc80"),)
    assert decoded.samples[0].num_labels == (("size", 1, "b\\ud800"),)
    assert decoded.comments == ("c\\ud800",)
    address = symbols.location_address(frame.function, frame.filename, frame.line)
    assert symbols.lookup(address) == "f\\ud800"
    path = tmp_path / "p.pb.gz"
    path.write_bytes(proto.encode(snapshot))
    listed = "\n".join(raw_locations(go_pprof(["-raw"], path)).values())
    assert "f\\ud800 /srv/caf\\udce9.py:0 s=3" in listed


def test_text_forms_escape_and_keep_their_columns():
    frames = (Frame("f\ud800", "/a\udce9.py", 1, 0), Frame("main", "/a.py", 1, 9))
    text = render_text.count_text("x", 1, [(1, frames, ())])
    data = render_text.encode_text(text)
    lines = data.decode("utf-8").splitlines()
    assert lines[2].endswith("\tf\\ud800\t/a\\udce9.py:0")
    # Both `#` lines' file columns start at the same tab stop, as Go's tabwriter aligns them.
    assert lines[2].expandtabs(8).index(" /a") == lines[3].expandtabs(8).index(" /a")


def test_state_of_a_thread_blocked_in_code_without_lines():
    lock = threading.Lock()
    lock.acquire()
    blocked = types.FunctionType(
        code_without_blocking_lines(), {"__builtins__": __builtins__}, "blocked"
    )
    thread = threading.Thread(target=blocked, args=(lock,), name="blocked-without-lines")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            top = sys._current_frames().get(thread.ident)
            if top is not None and top.f_code.co_name == "blocking" and _sleeping(thread):
                break
            time.sleep(0.01)
        # Parked on a futex: with no line to read, it cannot be told from a wait for the GIL.
        assert goroutines.thread_state(thread.native_id, top) in ("runnable", "waiting on lock")
        out = io.BytesIO()
        pyprofiler.lookup("goroutine").write_to(out, debug=2)
        assert 'thread "blocked-without-lines"' in out.getvalue().decode()
    finally:
        lock.release()
        thread.join(timeout=10)


def code_without_blocking_lines() -> types.CodeType:
    def blocking(lock: threading.Lock) -> None:
        lock.acquire()
        lock.release()

    field = "co_linetable" if sys.version_info >= (3, 10) else "co_lnotab"
    return blocking.__code__.replace(**{field: b""})


def _sleeping(thread: threading.Thread) -> bool:
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "S"


def test_linecache_failures_read_as_no_line():
    # A file name no path can be (a lone surrogate cannot be encoded for the file system).
    assert goroutines._source_line("/srv/x\ud800.py", 3) == ""
    assert goroutines._source_line(__file__, None) == ""
