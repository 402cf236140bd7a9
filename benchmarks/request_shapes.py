"""CPU attribution on request-shaped work: threads that compute between blocking calls.

    python benchmarks/request_shapes.py                     # 20 s windows, about 2 minutes
    python benchmarks/request_shapes.py --seconds 5         # quicker, noisier
    python benchmarks/request_shapes.py --backend python    # the pure-Python sampler

Runs tests/request_workload.py: worker threads that loop parse() (~2.5 ms of CPU), render()
(~7.5 ms), then wait ~10 ms in time.sleep, a socket recv, a queue.Queue.get or a Lock, each
worker timing its own parse() and render() with its thread CPU clock. Two shapes: one worker per
kind of wait, then two per kind beside 100 idle threads. In each, one window of --seconds is
profiled over HTTP by pyprofiler, then (when py-spy is installed) the next window of the same
process is recorded by py-spy: one after the other, because two samplers at once disturb each
other on a small machine. Each worker's split is printed for its window: the truth,
pyprofiler, py-spy. Also the profile's CPU total against the process's CPU in the window.

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
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyprofiler import proto  # noqa: E402

WORKLOAD = Path(__file__).resolve().parent.parent / "tests" / "request_workload.py"
SHAPES = {
    "one worker per wait": ["--copies", "1"],
    "two per wait, 100 idle threads": ["--copies", "2", "--idle", "100"],
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


def window(process: subprocess.Popen, seconds: int, record) -> tuple[dict, dict, int]:
    """One measured window: (the workers' truth, shares as `record()` saw them, process CPU)."""
    process.stdin.write("mark\n")
    process.stdin.flush()
    cpu_before = process_cpu_ns(process.pid)
    stacks = record()
    cpu = process_cpu_ns(process.pid) - cpu_before
    process.stdin.write("report\n")
    process.stdin.flush()
    return json.loads(read_line(process, 30)), shares(stacks), cpu


def measure(shape: list[str], seconds: int, backend: str, hz: int) -> None:
    env = dict(os.environ)
    if backend == "python":
        env["PYPROFILER_NATIVE"] = "0"
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), *shape, f"--hz={hz}", f"--max-seconds={3 * seconds + 90}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    py_spy = shutil.which("py-spy")

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
        url = json.loads(read_line(process, 60))["url"]
        truth, ours, process_cpu = window(process, seconds, record_pyprofiler)
        spy_truth, theirs, _ = window(process, seconds, record_py_spy) if py_spy else ({}, {}, 0)
    finally:
        if process.poll() is None:
            process.stdin.write("quit\n")
            process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

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
        measure(SHAPES[name], args.seconds, args.backend, args.hz)


if __name__ == "__main__":
    main()
