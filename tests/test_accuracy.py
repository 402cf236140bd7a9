"""End to end against a separate process: does a 20 s CPU profile fetched over HTTP split the
time between two functions as the workload itself measured, and account for the CPU the
process actually used?"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import go_pprof, process_cpu_ns, raw_samples, read_line, top_table

from pyprofiler import proto

WORKLOAD = Path(__file__).with_name("accuracy_workload.py")
SECONDS = 20
HOT_A = "__main__.hot_a"
HOT_B = "__main__.hot_b"
SIDE = "__main__.side_task"


@pytest.fixture(scope="module")
def workload():
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            try:
                process.stdin.write("quit\n")
                process.stdin.close()
                process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def measured(workload, tmp_path_factory):
    """Fetch one SECONDS-long CPU profile; return (path, true split, process CPU in window)."""
    url = read_line(workload, timeout=30)
    assert url.startswith("http://127.0.0.1:"), url
    workload.stdin.write("mark\n")
    workload.stdin.flush()
    cpu_before = process_cpu_ns(workload.pid)
    response = requests.get(f"{url}profile?seconds={SECONDS}", timeout=SECONDS + 60)
    cpu_after = process_cpu_ns(workload.pid)
    workload.stdin.write("report\n")
    workload.stdin.flush()
    truth = json.loads(read_line(workload, timeout=30))
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("accuracy") / "profile.pb.gz"
    path.write_bytes(response.content)
    return path, truth, cpu_after - cpu_before


@pytest.mark.slow
def test_flat_split_matches_workload(measured):
    path, truth, _ = measured
    true_a = truth["hot_a"] / (truth["hot_a"] + truth["hot_b"])
    table = top_table(go_pprof(["-tagfocus", "thread=^hot-worker$", "-top"], path))
    flat_a, flat_b = table[HOT_A][0], table[HOT_B][0]
    # The leaves should be nearly all of the hot thread's time, the descent a sliver.
    assert flat_a + flat_b > 80, table
    profiled_a = flat_a / (flat_a + flat_b)
    assert abs(profiled_a - true_a) * 100 <= 3, (profiled_a, true_a, table)


@pytest.mark.slow
def test_total_cpu_matches_process_cpu(measured):
    path, _, process_ns = measured
    samples = raw_samples(go_pprof(["-raw"], path))
    profiled_ns = sum(values[1] for values, _ in samples)
    # Not a fixed amount: on a loaded machine the workload gets less than a core.
    assert process_ns > 0
    assert abs(profiled_ns - process_ns) <= 0.10 * process_ns, (profiled_ns, process_ns)


@pytest.mark.slow
def test_hot_functions_run_about_twenty_frames_deep(measured):
    path, _, _ = measured
    snapshot = proto.decode(path.read_bytes())
    depths = [
        sum(frame.function == "__main__.descend" for frame in sample.frames)
        for sample in snapshot.samples
        if sample.frames and sample.frames[0].function in (HOT_A, HOT_B)
    ]
    assert depths and min(depths) >= 19


@pytest.mark.slow
@pytest.mark.parametrize(
    ("thread", "present", "absent"),
    [("hot-worker", HOT_A, SIDE), ("side-worker", SIDE, HOT_A)],
)
def test_tagfocus_thread_selects_that_thread(measured, thread, present, absent):
    path, _, _ = measured
    table = top_table(go_pprof(["-tagfocus", f"thread=^{thread}$", "-top"], path))
    assert present in table
    assert absent not in table
