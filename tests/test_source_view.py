"""`go tool pprof -http`'s Source view lists the Python source of a served profile's hot function
(pprof reads the files named by the functions because the profiles' mapping names no file that
it could disassemble instead)."""

from __future__ import annotations

import contextlib
import html
import inspect
import os
import re
import select
import signal
import subprocess
import threading
import time
import urllib.parse

import pytest
import requests
from support import _pprof_tmpdir, running_server, threads_running

import pyprofiler

PPROF_START_TIMEOUT = 90
TIMEOUT = 30


def hot_function(stop: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i * i


HOT = f"{__name__}.hot_function"


@pytest.fixture
def pprof_web(request):
    """`go tool pprof -http=127.0.0.1: -no_browser SOURCE` (pprof picks a free port), stopped
    whatever the test does; returns a function that starts it and returns its URL."""
    started: list[subprocess.Popen] = []

    def start(source: str) -> str:
        process = subprocess.Popen(
            ["go", "tool", "pprof", "-http=127.0.0.1:", "-no_browser", source],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,  # Read as it comes: select() cannot see what a buffer holds.
            env=dict(os.environ, PPROF_TMPDIR=_pprof_tmpdir[0]),
            start_new_session=True,  # `go tool` runs pprof as a child: both are stopped.
        )
        started.append(process)
        output = b""
        deadline = time.monotonic() + PPROF_START_TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(rb"Serving web UI on (http://\S+)\n", output)
            if match:
                return match[1].decode()
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            chunk = process.stdout.read(4096) if ready else b""
            if ready and not chunk:
                break  # pprof exited.
            output += chunk
        pytest.fail(f"go tool pprof -http did not start:\n{output.decode(errors='replace')}")

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # Already gone.
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stdout.close()


def source_lines(function) -> dict[int, str]:
    lines, start = inspect.getsourcelines(function)
    return {start + i: line.rstrip("\n") for i, line in enumerate(lines)}


def listed_lines(page: str) -> dict[int, tuple[str, str]]:
    """Line number -> (flat, source) of each source line of pprof's listing."""
    listed = {}
    for match in re.finditer(
        r"<span class=line>\s*(\d+)</span> <span class=\w+>\s*(\S+)\s+\S+\s+(.*?) </span>", page
    ):
        listed[int(match[1])] = (match[2], html.unescape(match[3]))
    return listed


@pytest.mark.parametrize("source", ["served", "file"])
def test_source_view_lists_the_hot_functions_lines(pprof_web, source, tmp_path):
    with threads_running(("hot", hot_function)):
        if source == "served":
            with running_server() as server:
                ui = pprof_web(server.url + "profile?seconds=2")
        else:
            path = tmp_path / "cpu.pb.gz"
            pyprofiler.start_cpu_profile(path)
            time.sleep(2)
            pyprofiler.stop_cpu_profile()
            ui = pprof_web(str(path))
    focus = urllib.parse.quote("^" + re.escape(HOT) + "$")
    page = requests.get(f"{ui}/ui/source?f={focus}", timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    assert HOT in page.text
    listed = listed_lines(page.text)
    source_text = source_lines(hot_function)
    # Every line of the function is listed with its own text, read from this file.
    for number, text in source_text.items():
        assert listed.get(number, ("", ""))[1].strip() == text.strip(), (number, listed)
    # The loop's lines carry the samples; nothing was disassembled.
    loop = [n for n, text in source_text.items() if "total +=" in text or "for i in" in text]
    assert any(listed[n][0] != "." for n in loop), {n: listed[n] for n in loop}
    assert "<span class=asm>" not in page.text
