"""End to end against a separate process, over HTTP and judged by `go tool pprof`: a 20 s CPU
profile of threads that compute between blocking calls (time.sleep, a socket recv, a
queue.Queue.get, a Lock) charges each function what the threads timed themselves, and the
blocking line next to nothing. Once with one thread per kind of wait, once with two per kind
beside 100 idle threads.

The workload samples at 500 Hz: the profile is unbiased at any rate, and at 100 Hz a thread
that gets an eighth of a core is seen ~250 times in 20 s, too few to tell 3 points apart from
noise (benchmarks/request_shapes.py prints the 100 Hz figures)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import go_pprof, raw_samples, top_table

WORKLOAD = Path(__file__).with_name("request_workload.py")
SECONDS = 20
HZ = 500
KINDS = ("sleep", "socket", "queue", "lock")
SHAPES = {
    "one-per-wait": ["--copies", "1"],
    "two-per-wait-100-idle": ["--copies", "2", "--idle", "100"],
}


def read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"workload printed nothing within {timeout} s"
    line = process.stdout.readline()
    assert line, f"workload exited early: {process.wait(timeout=5)}"
    return line.strip()


def process_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module", params=sorted(SHAPES))
def measured(request, tmp_path_factory):
    """(profile path, the workers' own timing, process CPU in the window)."""
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), *SHAPES[request.param], f"--hz={HZ}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = json.loads(read_line(process, 60))["url"]
        process.stdin.write("mark\n")
        process.stdin.flush()
        cpu_before = process_cpu_ns(process.pid)
        response = requests.get(f"{url}profile?seconds={SECONDS}", timeout=SECONDS + 60)
        cpu_after = process_cpu_ns(process.pid)
        process.stdin.write("report\n")
        process.stdin.flush()
        truth = json.loads(read_line(process, 30))
        assert response.status_code == 200, response.text
        path = tmp_path_factory.mktemp(request.param) / "profile.pb.gz"
        path.write_bytes(response.content)
        yield path, truth, cpu_after - cpu_before
    finally:
        if process.poll() is None:
            try:
                process.stdin.write("quit\n")
                process.stdin.close()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=10)


def kind_shares(path, kind: str) -> dict[str, float]:
    """% of the CPU of the threads waiting in `kind`: parse, render (flat), the wait (cum)."""
    table = top_table(
        go_pprof(["-top", "-relative_percentages", "-tagfocus", f"thread=^worker-{kind}-"], path)
    )
    return {
        "parse": table.get("__main__.parse", (0.0, 0.0))[0],
        "render": table.get("__main__.render", (0.0, 0.0))[0],
        "wait": table.get(f"__main__.wait_{kind}", (0.0, 0.0))[1],
    }


def timed_shares(truth: dict, kind: str) -> dict[str, float]:
    threads = [t for name, t in truth.items() if name.startswith(f"worker-{kind}-")]
    cpu = sum(t["cpu"] for t in threads)
    return {f: 100 * sum(t[f] for t in threads) / cpu for f in ("parse", "render")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_function_is_charged_what_it_used(measured, kind):
    path, truth, _ = measured
    got, expected = kind_shares(path, kind), timed_shares(truth, kind)
    for function in ("parse", "render"):
        assert abs(got[function] - expected[function]) <= 3, (function, got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_blocking_line_is_charged_next_to_nothing(measured, kind):
    path, _, _ = measured
    assert kind_shares(path, kind)["wait"] < 3


@pytest.mark.slow
def test_total_cpu_matches_process_cpu(measured):
    path, _, process_ns = measured
    profiled_ns = sum(values[1] for values, _ in raw_samples(go_pprof(["-raw"], path)))
    assert process_ns > 0
    assert abs(profiled_ns - process_ns) <= 0.10 * process_ns, (profiled_ns, process_ns)
