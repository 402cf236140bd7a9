"""`python -m pyprofiler run`: options and PYPROFILER_* variables, the program it runs in its own
place (pid, exit status, signals), the bootstrap that starts pyprofiler in it and in its
children, and periodic dumps. The program is tests/runner_workload.py, which never imports
pyprofiler; every profile is read by `go tool pprof`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from support import go_pprof, process_cpu_ns, top_table

from pyprofiler import proto, runner
from pyprofiler.settings import SettingError, Settings, settings_from_environ

TESTS = Path(__file__).resolve().parent
WORKLOAD = str(TESTS / "runner_workload.py")
RUNNER = [sys.executable, "-m", "pyprofiler", "run"]
HOT_FUNCTION = "__main__.compute_checksums"
START_TIMEOUT = 30


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without PYPROFILER_* variables, plus `extra`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYPROFILER_")}
    environ.update(extra)
    return environ


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lines:
    """The lines of a subprocess's stream, read by a thread of their own (a select() on the pipe
    would miss lines already buffered by an earlier readline)."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def join(self, timeout: float = 10) -> None:
        """Wait for the end of the stream (the process has exited)."""
        self._thread.join(timeout)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first further line matching `pattern`; fails the test after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s; got {self.seen}")
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


@contextlib.contextmanager
def running(args: list[str], environ: dict[str, str] | None = None):
    """The runner with `args`, stopped (SIGKILL) when the block ends if it is still running."""
    process = subprocess.Popen(
        RUNNER + args,
        env=environ or clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = Lines(process.stdout), Lines(process.stderr)
    try:
        yield process, stdout, stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        stdout.join()
        stderr.join()
        process.stdout.close()
        process.stderr.close()


def run_to_end(args: list[str], environ: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        RUNNER + args,
        env=environ or clean_environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def served_url(stderr: Lines) -> str:
    return stderr.wait_for(r"serving (http://\S+)")[1]


def fetch(url: str, path: Path, timeout: float = 60) -> Path:
    response = requests.get(url, timeout=timeout)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


# --- The command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "own", "program"),
    [
        (["app.py", "--port", "1"], [], ["app.py", "--port", "1"]),
        (["--port", "7000", "app.py"], ["--port", "7000"], ["app.py"]),
        (["--port=7000", "-m", "pkg.mod", "-x"], ["--port=7000"], ["-m", "pkg.mod", "-x"]),
        (["--keep", "3", "-mhttp.server"], ["--keep", "3"], ["-mhttp.server"]),
        (["--host", "::1", "--", "--weird"], ["--host", "::1"], ["--weird"]),
        (["gunicorn", "-w", "4", "app:app"], [], ["gunicorn", "-w", "4", "app:app"]),
        (["--bogus", "app.py"], ["--bogus"], ["app.py"]),
        (["--port", "1"], ["--port", "1"], []),
    ],
)
def test_options_end_where_the_program_begins(args, own, program):
    assert runner.split_command_line(args) == (own, program)


def test_program_commands(tmp_path, monkeypatch):
    tool = tmp_path / "sometool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    python = sys.executable
    assert runner.program_command(["job.py", "a"]) == (python, [python, "job.py", "a"])
    assert runner.program_command(["-m", "pkg", "a"]) == (python, [python, "-m", "pkg", "a"])
    assert runner.program_command(["-mpkg", "a"]) == (python, [python, "-m", "pkg", "a"])
    assert runner.program_command(["sometool", "-x"]) == (str(tool), ["sometool", "-x"])
    assert runner.program_command(["./bin/tool"]) == ("./bin/tool", ["./bin/tool"])
    assert runner.program_command(["no-such-tool"]) is None


def test_settings_from_the_environment():
    settings = settings_from_environ(
        {
            "PYPROFILER_HOST": "0.0.0.0",
            "PYPROFILER_PORT": "7070",
            "PYPROFILER_DUMP_DIR": "/srv/dumps",
            "PYPROFILER_INTERVAL": "2.5",
            "PYPROFILER_KEEP": "3",
            "PYPROFILER_PROFILES": "profile, heap,profile",
            "PYPROFILER_BLOCK_RATE": "1000",
            "PYPROFILER_MUTEX_FRACTION": "5",
            "PYPROFILER_MEM_RATE": "4096",
            "PYPROFILER_CPU_HZ": "250",
            "PYPROFILER_MEANINGLESS": "ignored",
        }
    )
    assert settings == Settings(
        host="0.0.0.0",
        port=7070,
        dump_dir="/srv/dumps",
        interval=2.5,
        keep=3,
        profiles=("profile", "heap"),
        block_rate=1000,
        mutex_fraction=5,
        mem_rate=4096,
        cpu_hz=250,
    )
    # Empty variables count as unset; the environment round-trips.
    assert settings_from_environ({"PYPROFILER_PORT": "", "PYPROFILER_KEEP": ""}) == Settings()
    round_trip = {k: v for k, v in settings.to_environ().items() if v is not None}
    assert settings_from_environ(round_trip) == settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "65536"),
        ("PORT", "http"),
        ("HOST", "a b"),
        ("INTERVAL", "0"),
        ("INTERVAL", "nan"),
        ("KEEP", "0"),
        ("PROFILES", "cpu"),
        ("PROFILES", "heap,"),
        ("BLOCK_RATE", "-1"),
        ("MUTEX_FRACTION", "1.5"),
        ("MEM_RATE", "lots"),
        ("CPU_HZ", "1001"),
    ],
)
def test_bad_variables_are_named(name, value):
    with pytest.raises(SettingError, match=f"PYPROFILER_{name}={value!r}"):
        settings_from_environ({f"PYPROFILER_{name}": value})


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--port", "70000"], {}, "argument --port: '70000' is not a port number"),
        (["--interval", "-2"], {}, "argument --interval: '-2' is not a positive number"),
        (["--keep", "none"], {}, "argument --keep"),
        (["--profiles", "cpu,heap"], {}, "there is no profile named 'cpu'"),
        (["--cpu-hz", "0"], {}, "argument --cpu-hz"),
        (["--mutex-fraction", "-1"], {}, "argument --mutex-fraction"),
        (["--bogus", "1"], {}, "unrecognized arguments: --bogus"),
        ([], {"PYPROFILER_MEM_RATE": "1k"}, "PYPROFILER_MEM_RATE='1k'"),
    ],
)
def test_bad_usage_exits_2_before_the_program_runs(tmp_path, args, environ, message):
    marker = tmp_path / "ran"
    script = tmp_path / "program.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = run_to_end([*args, str(script)], clean_environ(**environ))
    assert result.returncode == 2, result.stderr
    assert "usage: python -m pyprofiler run" in result.stderr
    assert message in result.stderr
    assert not marker.exists()


def test_missing_program_is_bad_usage():
    for args in ([], ["--port", "0"], ["-m"]):
        result = run_to_end(args)
        assert result.returncode == 2 and "usage:" in result.stderr, (args, result.stderr)
    result = run_to_end(["no-such-program-anywhere"])
    assert result.returncode == runner.EXIT_NOT_FOUND
    assert "no-such-program-anywhere: command not found" in result.stderr


# --- The program in the runner's place ------------------------------------------------------


def test_unmodified_program_serves_its_own_profile(tmp_path):
    with running(["--port", "0", WORKLOAD]) as (process, stdout, stderr):
        url = served_url(stderr)
        # Executed in place: the program has the runner's own pid.
        assert stdout.wait_for(r"^pid (\d+)$")[1] == str(process.pid)
        stdout.wait_for("ready")
        path = fetch(url + "profile?seconds=2", tmp_path / "cpu.pb.gz")
        table = top_table(go_pprof(["-top"], path))
        assert table[HOT_FUNCTION][1] > 50, table
        cmdline = requests.get(url + "cmdline", timeout=10).text.split("\0")
        assert cmdline[-1] == WORKLOAD


@pytest.mark.parametrize("form", ["script", "module"])
def test_exit_status_is_the_programs(form):
    environ = clean_environ(PYTHONPATH=str(TESTS), PYPROFILER_PORT=str(free_port()))
    target = [WORKLOAD] if form == "script" else ["-m", "runner_workload"]
    result = run_to_end([*target, "--seconds", "0", "--exit-code", "7"], environ)
    assert result.returncode == 7, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize(("handler_exit", "expected"), [(None, -signal.SIGTERM), (3, 3)])
def test_signals_reach_the_program(handler_exit, expected):
    args = ["--port", "0", WORKLOAD]
    if handler_exit is not None:
        args += ["--exit-on-sigterm", str(handler_exit)]
    with running(args) as (process, stdout, stderr):
        served_url(stderr)
        stdout.wait_for("ready")
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == expected


def test_program_found_on_path_runs_with_pyprofiler(tmp_path):
    tool = tmp_path / "checksum-tool"
    tool.write_text(f"#!{sys.executable}\n" + Path(WORKLOAD).read_text())
    tool.chmod(0o755)
    environ = clean_environ(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with running(["--port", "0", "checksum-tool"], environ) as (_, stdout, stderr):
        url = served_url(stderr)
        stdout.wait_for("ready")
        path = fetch(url + "profile?seconds=1", tmp_path / "cpu.pb.gz")
        assert HOT_FUNCTION in top_table(go_pprof(["-top"], path))


def test_python_children_start_pyprofiler_too():
    result = run_to_end(["--port", "0", WORKLOAD, "--spawn-child", "--seconds", "0"])
    assert result.returncode == 0, result.stderr
    assert "child done" in result.stdout
    served = re.findall(r"pyprofiler \(pid (\d+)\): serving http://127\.0\.0\.1:", result.stderr)
    assert len(set(served)) == 2, result.stderr  # The program and its child, each on a port.


@pytest.mark.parametrize("own_port", ["same", "0"])
def test_program_that_serves_itself_takes_the_server_over(own_port):
    port = free_port()
    quickstart = [str(TESTS.parent / "examples" / "quickstart.py"), "--duration", "1"]
    quickstart += ["--port", str(port) if own_port == "same" else "0"]
    result = run_to_end(["--port", str(port), *quickstart])
    assert result.returncode == 0, result.stderr
    served = re.search(r"serving http://127\.0\.0\.1:(\d+)/", result.stdout)
    assert served, result.stdout
    assert (served[1] == str(port)) == (own_port == "same")


# --- The bootstrap: never in the program's way ------------------------------------------------


def test_hidden_sitecustomize_runs_and_the_path_is_the_programs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nos.environ['HIDDEN_SITECUSTOMIZE_RAN'] = '1'\nMARK = 'theirs'\n"
    )
    environ = clean_environ(PYTHONPATH=str(tmp_path))
    result = run_to_end(["--port", "0", WORKLOAD, "--report", "--seconds", "0"], environ)
    assert result.returncode == 0, result.stderr
    assert "sitecustomize theirs" in result.stdout
    assert "hidden ran 1" in result.stdout
    assert "bootstrap on sys.path False" in result.stdout
    assert "serving http://" in result.stderr


def run_with_bootstrap(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
    """The program as the runner starts it, without the runner (whose own Python would meet
    the same site setup first)."""
    return subprocess.run(
        [sys.executable, *args],
        env=runner.program_environ(Settings(port=free_port()), environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_failing_hidden_sitecustomize_is_one_line(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('broken site setup')\n")
    environ = clean_environ(PYTHONPATH=str(tmp_path))
    result = run_with_bootstrap([WORKLOAD, "--seconds", "0"], environ)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "pyprofiler" in lines[0], lines
    assert "RuntimeError: broken site setup" in lines[0]


def test_bad_variables_without_the_runner_are_one_line():
    # A deployment that puts the bootstrap on PYTHONPATH itself skips the runner's checks.
    environ = clean_environ(
        PYTHONPATH=runner.BOOTSTRAP_DIR, PYPROFILER_PORT="http", PYPROFILER_CPU_HZ="9"
    )
    result = subprocess.run(
        [sys.executable, WORKLOAD, "--seconds", "0", "--exit-code", "4"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "PYPROFILER_PORT='http'" in lines[0], lines
    assert lines[0].startswith("pyprofiler (pid ")


def test_port_held_by_another_program_leaves_the_program_running():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_to_end(["--port", str(port), WORKLOAD, "--seconds", "0.5"])
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stdout
    assert f"pyprofiler (pid {result.stdout.split()[1]}): not serving on 127.0.0.1:{port}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_rates_reach_the_program(tmp_path):
    args = ["--port", "0", "--cpu-hz", "250", "--mem-rate", "4096"]
    args += ["--block-rate", "1", "--mutex-fraction", "1", WORKLOAD, "--contend"]
    with running(args) as (_, stdout, stderr):
        url = served_url(stderr)
        stdout.wait_for("ready")
        cpu = go_pprof(["-raw"], fetch(url + "profile?seconds=1", tmp_path / "cpu.pb.gz"))
        assert "Period: 4000000\n" in cpu  # 250 Hz
        heap = go_pprof(["-raw"], fetch(url + "heap", tmp_path / "heap.pb.gz"))
        assert "Period: 4096\n" in heap
        time.sleep(0.5)
        for name in ("block", "mutex"):
            path = fetch(url + name, tmp_path / f"{name}.pb.gz")
            table = top_table(go_pprof(["-top"], path))
            assert "__main__.hold_and_wait" in table, (name, table)


# --- Periodic dumps -------------------------------------------------------------------------


DUMPED = ("profile", "heap", "allocs", "block", "mutex", "goroutine")


def _poll_cpu(pid: int, stop: threading.Event, readings: list[tuple[int, int]]) -> None:
    while not stop.wait(0.02):
        try:
            readings.append((time.time_ns(), process_cpu_ns(pid)))
        except (FileNotFoundError, ProcessLookupError):
            return


def _cpu_at(readings: list[tuple[int, int]], when_ns: int) -> float:
    """The process's CPU at `when_ns`, interpolated between the readings around it."""
    before = max((r for r in readings if r[0] <= when_ns), key=lambda r: r[0])
    after = min((r for r in readings if r[0] >= when_ns), key=lambda r: r[0])
    if after[0] == before[0]:
        return before[1]
    share = (when_ns - before[0]) / (after[0] - before[0])
    return before[1] + share * (after[1] - before[1])


def _wait_for_whole_ticks(dumps, pid: int, ticks: int) -> None:
    """Until `ticks` ticks have been written and the last is pruned: the signal that ends the
    program then falls between two ticks, not between a file's rename and its pruning."""
    last = DUMPED[-1]  # Written last in each tick.
    pattern = rf"{last}-\d{{8}}T[\d.]+Z-{pid}\.pb\.gz"
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        present = [p.name for p in dumps.glob(f"{last}-*") if re.fullmatch(pattern, p.name)]
        seen.update(present)
        if len(seen) >= ticks and len(present) == 3:
            return
        time.sleep(0.01)
    raise AssertionError(f"{len(seen)} ticks of {last} in 60 s")


@pytest.mark.slow
def test_periodic_dumps_keep_three_whole_files_that_add_up(tmp_path):
    dumps = tmp_path / "dumps"
    args = ["--port", str(free_port()), "--dump-dir", str(dumps), "--interval", "2"]
    args += ["--keep", "3", WORKLOAD, "--contend"]
    readings: list[tuple[int, int]] = []
    stop = threading.Event()
    with running(args) as (process, stdout, _):
        poller = threading.Thread(target=_poll_cpu, args=(process.pid, stop, readings))
        poller.start()
        try:
            stdout.wait_for("ready")
            _wait_for_whole_ticks(dumps, process.pid, ticks=5)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == -signal.SIGTERM
        finally:
            stop.set()
            poller.join(timeout=10)
    files = sorted(p.name for p in dumps.iterdir() if not p.name.startswith("."))
    for name in DUMPED:
        pattern = rf"{name}-\d{{8}}T[\d.]+Z-{process.pid}\.pb\.gz"
        mine = [f for f in files if re.fullmatch(pattern, f)]
        assert len(mine) == 3, (name, files)
    assert len(files) == 3 * len(DUMPED), files
    for file in files:  # Whole files, each one read by pprof.
        assert "PeriodType:" in go_pprof(["-raw"], dumps / file)
    windows = [proto.decode((dumps / f).read_bytes()) for f in files if f.startswith("profile-")]
    windows.sort(key=lambda w: w.time_nanos)
    for earlier, later in zip(windows, windows[1:]):  # Consecutive, neither gap nor overlap.
        gap_ns = later.time_nanos - (earlier.time_nanos + earlier.duration_nanos)
        assert abs(gap_ns) < 5_000_000, gap_ns
    profiled_ns = sum(w.total("cpu") for w in windows)
    start_ns = windows[0].time_nanos
    end_ns = windows[-1].time_nanos + windows[-1].duration_nanos
    process_ns = _cpu_at(readings, end_ns) - _cpu_at(readings, start_ns)
    assert process_ns > 3e9, process_ns  # The workload kept a CPU busy.
    assert abs(profiled_ns - process_ns) <= 0.05 * process_ns, (profiled_ns, process_ns)


def test_unwritable_dump_directory_is_one_line_and_the_program_runs_on(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    dumps = blocker / "dumps"
    args = ["--port", str(free_port()), "--dump-dir", str(dumps), "--interval", "0.5"]
    result = run_to_end([*args, WORKLOAD, "--seconds", "3", "--exit-code", "5"])
    assert result.returncode == 5, result.stderr
    assert "ready" in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines  # Once per cause, however often it is retried.
    assert "pyprofiler" in lines[0] and str(dumps) in lines[0]
