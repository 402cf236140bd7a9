"""Processes of one service serving one port: the group directory, who may join, the leader's
answers for every member, members lost during a request, failover, forked children, and the
error an unrelated program gets.

Fast tests run plain processes (tests/group_workload.py) and forks of this one; the tests
marked `deployment` run real gunicorn and uvicorn pools (tests/group_apps.py) under load.
Every process is started in a session of its own and that session is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from support import (
    go_pprof,
    process_cpu_ns,
    read_line,
    wait_until,
)

import pyprofiler
from pyprofiler import fanout, group
from pyprofiler import server as server_module

# Forking this (multi-threaded) process is part of what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

TESTS = Path(__file__).parent
WORKLOAD = TESTS / "group_workload.py"
LOADGEN = TESTS.parent / "benchmarks" / "loadgen.py"
TIMEOUT = 60  # Per HTTP request; the profiles asked for last 1-5 s.
START_TIMEOUT = 60  # For a pool of workers to start on a busy machine.
FAILOVER_LIMIT = 5.0  # Acceptance: the port answers again within 5 s after its holder died.
CPU_TOLERANCE = 0.25  # Acceptance: each worker's profiled CPU within 25 % of its /proc CPU.
_WORKER_ROW = re.compile(
    r"<tr><td><a href='\?pid=(\d+)'>\d+</a></td><td>[^<]*</td><td>(yes)?</td><td>"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}/debug/pprof/{path}"


def get(port: int, path: str, **kwargs) -> requests.Response:
    return requests.get(url(port, path), timeout=TIMEOUT, **kwargs)


def fetch(port: int, path: str, destination: Path) -> Path:
    """A profile from the port, saved for `go tool pprof`."""
    response = get(port, path)
    assert response.status_code == 200, response.text
    destination.write_bytes(response.content)
    return destination


def workers(port: int) -> dict[int, bool]:
    """pid -> holds the port, from the index page's table of processes (empty when one
    process serves the port alone)."""
    try:
        page = requests.get(url(port, ""), timeout=TIMEOUT).text
    except requests.RequestException:
        return {}
    return {int(pid): bool(holds) for pid, holds in _WORKER_ROW.findall(page)}


def wait_for_workers(port: int, condition, timeout: float = START_TIMEOUT) -> dict[int, bool]:
    """The index's processes once `condition(processes)` holds; fails the test otherwise."""
    seen: dict[int, bool] = {}

    def check() -> bool:
        seen.clear()
        seen.update(workers(port))
        return condition(seen)

    assert wait_until(check, timeout=timeout, interval=0.2), f"processes serving: {seen}"
    return dict(seen)


def labelled_samples(path: Path) -> list[tuple[tuple[int, ...], dict[str, str]]]:
    """(values, string labels) per sample of `go tool pprof -raw`, which prints a sample's
    labels on one line: `pid:[123] thread:[MainThread]`."""
    samples: list[tuple[tuple[int, ...], dict[str, str]]] = []
    section = None
    for line in go_pprof(["-raw"], path).splitlines():
        if line in ("Samples:", "Locations", "Mappings"):
            section = line
            continue
        values = re.match(r"^\s+([\d\s-]+):", line)
        if section != "Samples:":
            continue
        if values:
            samples.append((tuple(int(v) for v in values[1].split()), {}))
        elif samples:
            samples[-1][1].update(re.findall(r"(\w+):\[([^\]]*)\]", line))
    return samples


def cpu_by_pid(path: Path) -> dict[int, int]:
    """CPU nanoseconds per `pid` label of a CPU profile."""
    totals: dict[int, int] = {}
    for values, labels in labelled_samples(path):
        pid = int(labels["pid"])
        totals[pid] = totals.get(pid, 0) + values[1]
    return totals


def tagged_pids(path: Path) -> set[int]:
    """The pids that `go tool pprof -tags` lists under the `pid` label."""
    output = go_pprof(["-tags"], path)
    section = re.search(r"^ pid: Total .*\n((?:[ \t]+\S.*\n?)*)", output, re.M)
    assert section, output
    return {int(line.rsplit(":", 1)[1]) for line in section[1].splitlines() if line.strip()}


def pids_running(path: Path, function: str, **labels: str) -> set[int]:
    """The pids of the samples that have `function` on their stack (and `labels`), from
    `go tool pprof -traces`."""
    pids = set()
    for block in re.split(r"^-+\+-+$", go_pprof(["-traces"], path), flags=re.M)[1:]:
        found: dict[str, str] = {}
        functions = []
        for line in block.splitlines():
            sample = re.match(r"^\s*-?[\d.]+\w*\s{3}(\S.*)$", line)
            label = re.match(r"^\s*([^\s:]+):\s+(.*)$", line)
            if sample or functions:
                functions.append(sample[1] if sample else line.strip())
            elif label:
                found[label[1]] = label[2].strip()
        if function in functions and labels.items() <= found.items():
            pids.add(int(found["pid"]))
    return pids


def stop_session(process: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        if process.stdin:
            process.stdin.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    # Whatever else the session started (workers of a pool) goes with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.stdout:
        process.stdout.close()


@contextlib.contextmanager
def sessions(*commands: list[str], env: dict | None = None):
    """Start each command in a session of its own (stdin and stdout piped); kill every
    session at the end."""
    started: list[subprocess.Popen] = []
    try:
        for command in commands:
            started.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=TESTS,
                    env=dict(os.environ, **(env or {})),
                    start_new_session=True,
                )
            )
        yield started
    finally:
        for process in started:
            stop_session(process)


def member_command(port: int) -> list[str]:
    return [sys.executable, str(WORKLOAD), "member", str(port)]


def ready(process: subprocess.Popen) -> tuple[int, bool]:
    """(pid, holds the port) from a workload's `ready` line."""
    word, pid, holds = read_line(process, START_TIMEOUT).split()
    assert word == "ready"
    return int(pid), holds == "1"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A group directory of the test's own, through XDG_RUNTIME_DIR."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


# --- The group directory.


def test_private_directory_is_created_for_this_user_only(private_tmp):
    path = group.private_directory()
    assert path == str(private_tmp / "pyprofiler")
    info = os.lstat(path)
    assert info.st_mode & 0o777 == 0o700
    assert info.st_uid == os.getuid()


@pytest.mark.parametrize("flaw", ["open to others", "symlink", "another owner"])
def test_a_directory_that_is_not_private_is_refused(private_tmp, monkeypatch, flaw):
    path = private_tmp / "pyprofiler"
    if flaw == "open to others":
        path.mkdir(mode=0o700)
        path.chmod(0o755)
    elif flaw == "symlink":
        (private_tmp / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(private_tmp / "elsewhere")
    else:
        path.mkdir(mode=0o700)
        uid = os.getuid() + 1
        monkeypatch.setattr(group.os, "getuid", lambda: uid)
    assert group.private_directory() is None


def test_without_a_private_directory_a_taken_port_is_the_plain_error(private_tmp):
    (private_tmp / "pyprofiler").mkdir(mode=0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(pyprofiler.PyprofilerError) as raised:
            pyprofiler.serve(port=port)
    # No wait for a group that cannot exist, and the holder is named.
    assert time.monotonic() - started < 2
    assert f"port {port} is in use by another program (pid {os.getpid()} " in str(raised.value)


def test_a_port_held_by_a_plain_socket_is_refused_at_once(private_tmp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(pyprofiler.PyprofilerError, match=f"port {port} is in use by another"):
            pyprofiler.serve(port=port)
    assert time.monotonic() - started < server_module.JOIN_WAIT
    assert not (private_tmp / "pyprofiler" / f"port-{port}" / f"{os.getpid()}.sock").exists()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def socket_file(path: Path) -> None:
    """A Unix socket file that nobody listens on."""
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))


def test_stale_sockets_are_removed_by_whoever_meets_them(private_tmp):
    directory = group.private_directory()
    port_group = group.PortGroup(directory, 1)
    os.mkdir(port_group.path, 0o700)
    gone = Path(port_group.socket_path(dead_pid()))
    socket_file(gone)
    half_bound = Path(port_group.path, f"{dead_pid()}.binding")
    socket_file(half_bound)
    # A live pid (this process) whose socket nobody listens on any more.
    refused = Path(port_group.socket_path(os.getpid()))
    socket_file(refused)

    assert port_group.members() == [os.getpid()]
    assert not gone.exists() and not half_bound.exists()
    with pytest.raises(group.MemberGone):
        port_group.connect(os.getpid(), timeout=5)
    assert not refused.exists()
    assert port_group.members() == []


def test_serve_cleans_up_after_processes_that_died(private_tmp):
    port = free_port()
    directory = group.private_directory()
    stale_group = group.PortGroup(directory, port)
    os.mkdir(stale_group.path, 0o700)
    socket_file(Path(stale_group.socket_path(dead_pid())))
    abandoned = group.PortGroup(directory, free_port())
    os.mkdir(abandoned.path, 0o700)
    socket_file(Path(abandoned.socket_path(dead_pid())))

    server = pyprofiler.serve(port=port)
    try:
        assert server.holds_port
        assert stale_group.members() == [os.getpid()]
        assert os.listdir(stale_group.path) == [f"{os.getpid()}.sock"]
        assert not os.path.exists(abandoned.path)
    finally:
        server.stop()
    assert not os.path.exists(stale_group.path)


def test_member_sockets_are_private(private_tmp):
    server = pyprofiler.serve(port=0)
    try:
        path = group.PortGroup(group.private_directory(), server.port).socket_path(os.getpid())
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    finally:
        server.stop()


def test_pid_without_a_group_answers_for_this_process_only():
    client = pyprofiler.create_app().test_client()
    own = client.get(f"/debug/pprof/cmdline?pid={os.getpid()}")
    assert own.status_code == 200
    assert own.get_data(as_text=True) == client.get("/debug/pprof/cmdline").get_data(as_text=True)
    other = client.get("/debug/pprof/heap?pid=1")
    assert other.status_code == 404
    assert other.get_data(as_text=True) == "no process with pid 1 serves this port\n"
    assert client.get("/debug/pprof/heap?pid=x").status_code == 400


# --- Who may join.

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_relation_rules():
    spawned_child = [
        sys.executable,
        "-c",
        "import multiprocessing, time; time.sleep(60)",
        "--multiprocessing-fork",
    ]
    # A process that starts a sleeper of its own: a sleeper with another parent.
    launcher = [
        sys.executable,
        "-c",
        "import subprocess, sys, time; "
        f"p = subprocess.Popen({SLEEPER!r}); print(p.pid, flush=True); time.sleep(60)",
    ]
    with sessions(
        SLEEPER,
        SLEEPER,
        [*SLEEPER, "other"],
        [*spawned_child, "1"],
        [*spawned_child, "2"],
        launcher,
    ) as (one, twin, other, spawned_1, spawned_2, launcher_process):
        cousin = int(read_line(launcher_process, 30))
        assert "sibling" in group.relation(one.pid, joiner_pid=twin.pid)
        assert "ancestor" in group.relation(one.pid)
        assert "descendant" in group.relation(os.getpid(), joiner_pid=one.pid)
        assert "descendant" in group.relation(os.getpid(), joiner_pid=cousin)
        assert "multiprocessing" in group.relation(spawned_1.pid, joiner_pid=spawned_2.pid)
        # Unrelated: another command line, another parent, itself.
        assert group.relation(one.pid, joiner_pid=other.pid) is None
        assert group.relation(one.pid, joiner_pid=cousin) is None
        assert group.relation(one.pid, joiner_pid=spawned_1.pid) is None
        assert group.relation(one.pid, joiner_pid=one.pid) is None
    assert group.relation(dead_pid()) is None


def test_an_unrelated_program_gets_a_clear_error_and_goes_on():
    port = free_port()
    server = pyprofiler.serve(port=port)
    # Started through a launcher that exits at once, so that this process is not its parent.
    launcher = [
        sys.executable,
        "-c",
        "import os, subprocess, sys; "
        "subprocess.Popen(sys.argv[1:] + [str(os.getpid())]); print(os.getpid(), flush=True)",
        sys.executable,
        str(WORKLOAD),
        "unrelated",
        str(port),
    ]
    try:
        with sessions(launcher) as (process,):
            read_line(process, 30)
            error = read_line(process, 30)
            assert read_line(process, 30) == "still running"
    finally:
        server.stop()
    assert error.startswith(f"PyprofilerError: port {port} is served by pyprofiler in ")
    assert f"pid {os.getpid()} (" in error
    assert "not related" in error
    assert "Serve this program on a different port." in error


# --- Forked children.


def child_burn(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def listening_inode(port: int) -> int:
    for connection in psutil.Process().net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return os.fstat(connection.fd).st_ino
    raise AssertionError(f"this process does not listen on {port}")


def socket_inodes(pid: int) -> set[str]:
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def fork_burning_child(seconds: float) -> int:
    pid = os.fork()
    if pid == 0:  # Child: never return into pytest.
        try:
            child_burn(seconds)
        finally:
            os._exit(0)
    return pid


def test_forked_child_joins_closes_the_port_and_takes_over(tmp_path):
    port = free_port()
    server = pyprofiler.serve(port=port)
    child = None
    try:
        inode = listening_inode(port)
        child = fork_burning_child(30)
        members = wait_for_workers(port, lambda seen: len(seen) == 2)
        assert members == {os.getpid(): True, child: False}
        # The child's copy of the listening socket was closed at fork.
        assert f"socket:[{inode}]" not in socket_inodes(child)
        profile = fetch(port, "profile?seconds=1", tmp_path / "profile")
        assert child in pids_running(profile, f"{__name__}.child_burn")

        server.stop()
        assert wait_until(lambda: group.port_holder(port) == child, timeout=FAILOVER_LIMIT)
        assert get(port, "cmdline").status_code == 200
    finally:
        server.stop()
        if child is not None:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


def test_forked_child_serving_on_its_own_port_leaves_the_group():
    port = free_port()
    server = pyprofiler.serve(port=port)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            own = pyprofiler.serve(port=0)
            assert own.holds_port and own.port != port
            try:
                pyprofiler.serve(port=port)  # One server per process, as before the fork.
            except pyprofiler.PyprofilerError:
                os.write(write_fd, b"ok")
            time.sleep(5)
            code = 0
        finally:
            os._exit(code)
    try:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            assert pipe.read(2) == b"ok"
        assert workers(port) == {}  # The child left its parent's group: one process serves.
        assert group.PortGroup(group.private_directory(), port).members() == [os.getpid()]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        server.stop()


# --- Sibling workers (processes started alike).


def test_siblings_serve_one_port(tmp_path):
    port = free_port()
    with sessions(member_command(port), member_command(port)) as processes:
        states = dict(ready(p) for p in processes)
        pids = set(states)
        assert sorted(states.values()) == [False, True]
        holder = next(pid for pid, holds in states.items() if holds)
        other = next(pid for pid in pids if pid != holder)
        assert wait_for_workers(port, lambda seen: len(seen) == 2) == states

        # A member's own profile, taken from it directly: the holder has never encoded those
        # addresses, and finds their names by asking the members.
        port_group = group.PortGroup(group.private_directory(), port)
        answer = fanout.ask(port_group, other, "/debug/pprof/goroutine", TIMEOUT)
        (tmp_path / "member").write_bytes(answer.body)
        raw = go_pprof(["-raw"], tmp_path / "member")
        addresses = re.findall(r"^\s+\d+: (0x[0-9a-f]+) ", raw, re.M)
        assert addresses
        response = requests.post(url(port, "symbol"), data="+".join(addresses), timeout=TIMEOUT)
        assert len(response.text.splitlines()) == 1 + len(set(addresses))

        profile = fetch(port, "profile?seconds=2", tmp_path / "profile")
        assert tagged_pids(profile) == pids
        assert pids_running(profile, "__main__.burn") == pids

        one = fetch(port, f"profile?seconds=1&pid={other}", tmp_path / "one")
        assert {labels["pid"] for _, labels in labelled_samples(one)} == {str(other)}
        for name in ("heap", "goroutine", "threadcreate", "allocs"):
            assert tagged_pids(fetch(port, name, tmp_path / name)) == pids, name
        delta = get(port, "goroutine?seconds=1")
        assert delta.headers["Content-Disposition"] == 'attachment; filename="goroutine-delta"'
        (tmp_path / "delta").write_bytes(delta.content)
        assert "Samples:" in go_pprof(["-raw"], tmp_path / "delta")  # pprof reads it.

        text = get(port, "goroutine?debug=1").text
        for pid in pids:
            assert f"# pyprofiler: worker pid {pid}\ngoroutine profile: total " in text
        assert get(port, f"goroutine?debug=2&pid={holder}").text.startswith(
            f"# pyprofiler: worker pid {holder}\ngoroutine "
        )

        page = get(port, "").text
        assert "Processes serving this port: 2." in page
        group_count, own_count = (
            int(re.search(r"<tr><td>(\d+)</td><td><a href='goroutine\?debug=1'>", index)[1])
            for index in (page, get(port, f"?pid={other}").text)
        )
        assert group_count > own_count > 0

        missing = get(port, "profile?seconds=1&pid=1")
        assert missing.status_code == 404
        assert missing.text == "no process with pid 1 serves this port\n"
        assert missing.headers["X-Go-Pprof"] == "1"
        for bad in ("abc", "0", "-3"):
            response = get(port, f"heap?pid={bad}")
            assert response.status_code == 400
            assert response.text == 'invalid value for "pid" - must be a positive integer\n'
        # Parameters are checked once, by the holder, with Go's texts.
        assert get(port, "profile?seconds=abc").status_code == 400
        assert get(port, "no-such-profile").text == "Unknown profile\n"


def test_overlapping_profiles_of_the_group_are_both_answered(tmp_path):
    port = free_port()
    with sessions(member_command(port), member_command(port)) as processes:
        pids = {ready(process)[0] for process in processes}
        wait_for_workers(port, lambda seen: len(seen) == 2)
        first: dict = {}
        thread = threading.Thread(
            target=lambda: first.update(response=get(port, "profile?seconds=3"))
        )
        thread.start()
        try:
            time.sleep(1)
            second = get(port, "profile?seconds=1")
        finally:
            thread.join(TIMEOUT)
        assert second.status_code == 200 and first["response"].status_code == 200
        for name, response in (("first", first["response"]), ("second", second)):
            path = tmp_path / f"{name}.pb.gz"
            path.write_bytes(response.content)
            assert tagged_pids(path) == pids


def test_a_member_killed_during_a_profile_is_left_out_and_named(tmp_path):
    port = free_port()
    commands = [member_command(port)] * 3
    with sessions(*commands) as processes:
        states = dict(ready(p) for p in processes)
        wait_for_workers(port, lambda seen: len(seen) == 3)
        victim = next(pid for pid, holds in states.items() if not holds)
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.update(response=get(port, "profile?seconds=3"))
        )
        thread.start()
        try:
            time.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
        finally:
            thread.join(TIMEOUT)
        response = result["response"]
        assert response.status_code == 200
        path = tmp_path / "profile"
        path.write_bytes(response.content)
        assert tagged_pids(path) == set(states) - {victim}
        comments = go_pprof(["-comments"], path)
        assert f"pyprofiler: worker pid {victim} lost: exited: " in comments
        # The next profile is of the survivors only, without a word about the victim.
        after = fetch(port, "heap", tmp_path / "heap")
        assert tagged_pids(after) == set(states) - {victim}
        assert str(victim) not in go_pprof(["-comments"], after)


def kill_holder_and_wait_for_the_port(holder: int, port: int) -> None:
    """SIGKILL the process holding the port; another member must answer on it in time."""
    os.kill(holder, signal.SIGKILL)
    killed = time.monotonic()

    def answers() -> bool:
        try:
            return requests.get(url(port, "cmdline"), timeout=1).status_code == 200
        except requests.RequestException:
            return False

    assert wait_until(answers, timeout=FAILOVER_LIMIT + 5, interval=0.05)
    elapsed = time.monotonic() - killed
    print(f"port answered again {elapsed:.2f} s after its holder was killed")
    assert elapsed < FAILOVER_LIMIT


def test_the_port_answers_again_soon_after_its_holder_dies():
    port = free_port()
    with sessions(member_command(port), member_command(port)) as processes:
        states = dict(ready(p) for p in processes)
        wait_for_workers(port, lambda seen: len(seen) == 2)
        holder = next(pid for pid, holds in states.items() if holds)
        survivor = next(pid for pid, holds in states.items() if not holds)
        kill_holder_and_wait_for_the_port(holder, port)
        assert group.port_holder(port) == survivor


# --- multiprocessing.Pool under a serving parent.


def test_pool_children_of_a_serving_parent_are_in_its_profiles(tmp_path):
    port = free_port()
    with sessions([sys.executable, str(WORKLOAD), "pool", str(port)]) as (process,):
        parent, holds = ready(process)
        assert holds
        children = {c.pid for c in psutil.Process(parent).children()}
        assert len(children) == 4
        wait_for_workers(port, lambda seen: set(seen) == children | {parent})
        profile = fetch(port, "profile?seconds=3", tmp_path / "profile")
        assert pids_running(profile, "__main__.crunch") == children


# --- Real deployments (CI runs these on one Python).


def gunicorn_command(app_port: int, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "4",
        "-b",
        f"127.0.0.1:{app_port}",
        *options,
        "group_apps:wsgi_app",
    ]


def load(app_port: int, seconds: float) -> subprocess.Popen:
    command = [sys.executable, str(LOADGEN), "--port", str(app_port), "--clients", "8"]
    return subprocess.Popen(
        [*command, "--seconds", str(seconds)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def gunicorn_workers(master: int, count: int) -> set[int]:
    found: set[int] = set()

    def started() -> bool:
        found.clear()
        found.update(c.pid for c in psutil.Process(master).children())
        return len(found) == count

    assert wait_until(started, timeout=START_TIMEOUT, interval=0.2), found
    return set(found)


def profile_against_proc(port: int, pids: set[int], path: Path, query: str = "") -> dict:
    """A 5 s CPU profile from the port, and for each of `pids` (profiled CPU, /proc CPU)
    over the request."""
    before = {pid: process_cpu_ns(pid) for pid in pids}
    fetch(port, f"profile?seconds=5{query}", path)
    after = {pid: process_cpu_ns(pid) for pid in pids}
    profiled = cpu_by_pid(path)
    return {pid: (profiled.get(pid, 0), after[pid] - before[pid]) for pid in pids}


def assert_cpu_matches(figures: dict[int, tuple[int, int]]) -> None:
    for pid, (profiled, proc) in figures.items():
        print(f"pid {pid}: profiled {profiled / 1e9:.3f} s, /proc {proc / 1e9:.3f} s")
    for pid, (profiled, proc) in figures.items():
        assert proc > 0, f"pid {pid} did no work"
        assert abs(profiled - proc) <= CPU_TOLERANCE * proc, (pid, profiled, proc)


@pytest.mark.deployment
@pytest.mark.parametrize("preload", [False, True], ids=["import", "preload"])
def test_gunicorn_workers_are_one_service(tmp_path, preload):
    port, app_port = free_port(), free_port()
    options = ["--preload"] if preload else []
    env = {"GROUP_APP_PPROF_PORT": str(port)}
    with sessions(gunicorn_command(app_port, *options), env=env) as (master,):
        worker_pids = gunicorn_workers(master.pid, 4)
        serving = worker_pids | ({master.pid} if preload else set())
        wait_for_workers(port, lambda seen: set(seen) == serving)
        loader = load(app_port, 60)
        try:
            time.sleep(1)
            profile = tmp_path / "profile"
            figures = profile_against_proc(port, worker_pids, profile)
            assert tagged_pids(profile) == serving
            assert_cpu_matches(figures)
            if preload:  # The master holds the port; it serves nothing and computes little.
                assert cpu_by_pid(profile)[master.pid] < min(f[0] for f in figures.values())

            one = min(worker_pids)
            figures = profile_against_proc(port, {one}, tmp_path / "one", f"&pid={one}")
            assert set(cpu_by_pid(tmp_path / "one")) == {one}
            assert_cpu_matches(figures)

            holder = next(pid for pid, holds in workers(port).items() if holds)
            victim = max(worker_pids - {holder})
            result: dict = {}
            thread = threading.Thread(
                target=lambda: result.update(response=get(port, "profile?seconds=5"))
            )
            thread.start()
            try:
                time.sleep(2)
                os.kill(victim, signal.SIGKILL)
            finally:
                thread.join(TIMEOUT)
            assert result["response"].status_code == 200
            killed = tmp_path / "killed"
            killed.write_bytes(result["response"].content)
            assert tagged_pids(killed) == serving - {victim}
            assert f"pyprofiler: worker pid {victim} lost" in go_pprof(["-comments"], killed)

            serving = wait_for_workers(
                port, lambda seen: len(seen) == len(serving) and victim not in seen
            ).keys()
            replacement = set(serving) - worker_pids - {master.pid}
            assert len(replacement) == 1
            after = fetch(port, "profile?seconds=2", tmp_path / "after")
            assert tagged_pids(after) == set(serving)
            assert replacement <= set(cpu_by_pid(after))
        finally:
            stop_session(loader)


@pytest.mark.deployment
def test_gunicorn_port_answers_again_after_its_holder_is_killed(tmp_path):
    port, app_port = free_port(), free_port()
    env = {"GROUP_APP_PPROF_PORT": str(port)}
    with sessions(gunicorn_command(app_port), env=env) as (master,):
        worker_pids = gunicorn_workers(master.pid, 4)
        holder = next(
            pid
            for pid, holds in wait_for_workers(port, lambda seen: set(seen) == worker_pids).items()
            if holds
        )
        loader = load(app_port, 60)
        try:
            kill_holder_and_wait_for_the_port(holder, port)
            serving = wait_for_workers(port, lambda seen: len(seen) == 4 and holder not in seen)
            profile = fetch(port, "profile?seconds=2", tmp_path / "profile")
            assert tagged_pids(profile) == set(serving)
        finally:
            stop_session(loader)


@pytest.mark.deployment
def test_uvicorn_workers_goroutine_profile_lists_both_workers_tasks(tmp_path):
    port, app_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(app_port),
        "group_apps:asgi_app",
    ]
    env = {"GROUP_APP_PPROF_PORT": str(port)}
    with sessions(command, env=env) as (supervisor,):
        serving = set(wait_for_workers(port, lambda seen: len(seen) == 2))
        assert {c.pid for c in psutil.Process(supervisor.pid).children()} >= serving
        pending: list[threading.Thread] = []

        def slow_request() -> None:
            with contextlib.suppress(requests.RequestException):
                requests.get(f"http://127.0.0.1:{app_port}/slow?seconds=20", timeout=30)

        with_tasks: set[int] = set()
        # The kernel hands connections to either worker: a few more requests each round
        # until both hold some (bounded).
        for round_number in range(10):
            for _ in range(4):
                thread = threading.Thread(target=slow_request, daemon=True)
                thread.start()
                pending.append(thread)
            time.sleep(0.5)
            profile = fetch(port, "goroutine", tmp_path / f"goroutine-{round_number}")
            with_tasks = pids_running(profile, "group_apps.slow_request", kind="task")
            if with_tasks == serving:
                break
        assert with_tasks == serving
