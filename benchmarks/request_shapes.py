"""CPU attribution on request-shaped work: threads that compute between blocking calls.

    python benchmarks/request_shapes.py                     # 20 s windows, about 5 minutes
    python benchmarks/request_shapes.py --seconds 5         # quicker, noisier
    python benchmarks/request_shapes.py --backend python    # the pure-Python sampler

Four shapes, each in a process of its own:
  - tests/request_workload.py, one worker thread per kind of wait, then two per kind beside 100
    idle threads: each worker loops parse() (~2.5 ms of CPU), render() (~7.5 ms), then waits
    ~10 ms in time.sleep, a socket recv, a queue.Queue.get or a Lock;
  - tests/service_workload.py, a threaded Flask app and an asyncio server whose handler parses,
    waits ~10 ms on a database socket (an await, for asyncio) and renders, under load from
    benchmarks/loadgen.py in another process.
Each times its own parse() and render() with its thread CPU clock. One window of --seconds is
profiled over HTTP by pyprofiler, then (when py-spy is installed) the next window of the same
process is recorded by py-spy: one after the other, because two samplers at once disturb each
other on a small machine. Printed per worker (per service), for its window: the truth,
pyprofiler, py-spy (the wait: its share of the thread, or of the request handler), and the
profile's CPU total against the process's CPU in the window.

A measurement, not a test: exits 0 whatever the figures (tests/test_request_accuracy.py holds
the bars).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyprofiler import proto  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
# name: (script, its arguments, whether it is a service to put under load)
SHAPES = {
    "one worker per wait": ("request_workload.py", ["--copies", "1"], False),
    "two per wait, 100 idle threads": (
        "request_workload.py", ["--copies", "2", "--idle", "100"], False),
    "flask: parse, database socket, render": ("service_workload.py", ["--app=flask"], True),
    "asyncio: parse, await database, render": ("service_workload.py", ["--app=asyncio"], True),
}


def read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"the workload printed nothing within {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the workload exited: {process.wait(timeout=5)}")
    return line.strip()


def process_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def shares(stacks: dict[str, dict[tuple[str, ...], float]]) -> dict[str, dict[str, float]]:
    """Per thread: parse and render as leaves, and anything under the wait_* function, as
    fractions of the thread's total. Stacks are function names, leaf first."""
    result = {}
    for thread, by_stack in stacks.items():
        total = sum(by_stack.values())
        if not total:
            continue
        split = {"parse": 0.0, "render": 0.0, "wait": 0.0}
        for stack, value in by_stack.items():
            leaf = stack[0].rsplit(".", 1)[-1] if stack else ""
            if leaf in ("parse", "render"):
                split[leaf] += value
            elif any(name.rsplit(".", 1)[-1].startswith("wait_") for name in stack):
                split["wait"] += value
        result[thread] = {k: v / total for k, v in split.items()}
        result[thread]["total"] = total
    return result


def service_shares(stacks: dict[str, dict[tuple[str, ...], float]]) -> dict[str, dict[str, float]]:
    """The whole service as one row: parse and render as fractions of the two, and the wait
    for the database as a fraction of the handler's total."""
    split = {"parse": 0.0, "render": 0.0, "wait": 0.0, "handler": 0.0}
    for by_stack in stacks.values():
        for stack, value in by_stack.items():
            names = [name.rsplit(".", 1)[-1] for name in stack]
            if names and names[0] in ("parse", "render"):
                split[names[0]] += value
            if "wait_db" in names:
                split["wait"] += value
            if "work" in names or "handle" in names:
                split["handler"] += value
    computing = (split["parse"] + split["render"]) or 1
    return {"service": {
        "parse": split["parse"] / computing,
        "render": split["render"] / computing,
        "wait": split["wait"] / (split["handler"] or 1),
        "total": sum(sum(by_stack.values()) for by_stack in stacks.values()),
    }}


def pyprofiler_stacks(data: bytes) -> dict[str, dict[tuple[str, ...], float]]:
    snapshot = proto.decode(data)
    index = [t.type for t in snapshot.sample_types].index("cpu")
    stacks: dict = defaultdict(lambda: defaultdict(float))
    for sample in snapshot.samples:
        thread = dict(sample.labels).get("thread", "")
        stacks[thread][tuple(f.function for f in sample.frames)] += sample.values[index]
    return stacks


def py_spy_stacks(path: str) -> dict[str, dict[tuple[str, ...], float]]:
    """py-spy's raw output: 'thread (tid): name;outer (file:line);...;leaf (file:line) count'."""
    stacks: dict = defaultdict(lambda: defaultdict(float))
    with open(path) as file:
        for line in file:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            thread, *frames = stack.split(";")
            name = thread.split(": ", 1)[-1]
            functions = tuple(frame.split(" (", 1)[0] for frame in reversed(frames))
            stacks[name][functions] += float(count)
    return stacks


def window(process: subprocess.Popen, record, service: bool) -> tuple[dict, dict, int]:
    """One measured window: (the truth, shares as `record()` saw them, process CPU)."""
    process.stdin.write("mark\n")
    process.stdin.flush()
    cpu_before = process_cpu_ns(process.pid)
    stacks = record()
    cpu = process_cpu_ns(process.pid) - cpu_before
    process.stdin.write("report\n")
    process.stdin.flush()
    truth = json.loads(read_line(process, 30))
    if service:
        computing = (truth["parse"] + truth["render"]) or 1
        truth = {"service": {"parse": truth["parse"], "render": truth["render"], "cpu": computing}}
        return truth, service_shares(stacks), cpu
    return truth, shares(stacks), cpu


def measure(shape: str, seconds: int, backend: str, hz: int) -> None:
    script, arguments, service = SHAPES[shape]
    env = dict(os.environ)
    if backend == "python":
        env["PYPROFILER_NATIVE"] = "0"
    process = subprocess.Popen(
        [sys.executable, str(TESTS / script), *arguments, f"--hz={hz}",
         f"--max-seconds={3 * seconds + 90}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    py_spy = shutil.which("py-spy")
    load = None

    def record_pyprofiler() -> dict:
        with urllib.request.urlopen(f"{url}profile?seconds={seconds}", timeout=seconds + 60) as r:
            return pyprofiler_stacks(r.read())

    def record_py_spy() -> dict:
        with tempfile.NamedTemporaryFile(suffix=".txt") as output:
            subprocess.run(
                [py_spy, "record", "--pid", str(process.pid), "--duration", str(seconds),
                 "--rate", str(hz), "--nonblocking", "--threads", "--format", "raw",
                 "--output", output.name],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 60,
                check=True,
            )
            return py_spy_stacks(output.name)

    try:
        started = json.loads(read_line(process, 60))
        url = started["url"]
        if service:
            load = subprocess.Popen(
                [sys.executable, str(LOADGEN), f"--port={started['port']}", "--clients=8",
                 f"--seconds={2 * seconds + 30}", "--max-requests=10000000"],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(2)
        truth, ours, process_cpu = window(process, record_pyprofiler, service)
        spy_truth, theirs, _ = (
            window(process, record_py_spy, service) if py_spy else ({}, {}, 0)
        )
    finally:
        for child in (load, process):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(timeout=30)

    def split(truth: dict, thread: str) -> tuple[float, float, float]:
        cpu = truth[thread]["cpu"] or 1
        return truth[thread]["parse"] / cpu, truth[thread]["render"] / cpu, 0.0

    print(f"{'thread':<18} {'source':<12} {'parse':>7} {'render':>7} {'wait':>7} {'off by':>7}")
    worst = 0.0
    for thread in sorted(truth):
        rows = [("truth", split(truth, thread), 0.0)]
        windows = (("pyprofiler", ours, truth), ("py-spy", theirs, spy_truth))
        for source, table, reference in windows:
            if thread in table:
                got = (table[thread]["parse"], table[thread]["render"], table[thread]["wait"])
                off = max(abs(a - b) for a, b in zip(got, split(reference, thread))) * 100
                rows.append((source, got, off))
                if source == "pyprofiler":
                    worst = max(worst, off)
        for source, (parse, render, wait), off in rows:
            print(f"{thread:<18} {source:<12} {parse:>7.1%} {render:>7.1%} {wait:>7.1%} "
                  f"{off:>6.1f}p")
    profiled = sum(row["total"] for row in ours.values())
    print(f"pyprofiler: worst share off by {worst:.1f} points; profile CPU / process CPU "
          f"{profiled / process_cpu:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--backend", choices=("native", "python"), default="native")
    parser.add_argument("--hz", type=int, default=100, help="both profilers' sampling rate")
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append")
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        print("py-spy is not installed: pyprofiler's figures only")
    for name in args.shape or SHAPES:
        print(f"\n== {name}, {args.seconds} s at {args.hz} Hz, {args.backend} sampler")
        measure(name, args.seconds, args.backend, args.hz)


if __name__ == "__main__":
    main()
