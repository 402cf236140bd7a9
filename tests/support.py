"""Helpers the tests share: `go tool pprof` as the judge of every profile, servers that always
stop, busy/idle threads with known function names, a bounded fork runner, and one request to an
ASGI app as a server makes it. (conftest.py holds only the fixtures.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import threading
import time
import traceback

import pytest

import pyprofiler

GO_PPROF_TIMEOUT = 90


def _run_go_pprof(args: list[str], path, timeout: float) -> subprocess.CompletedProcess:
    # PPROF_TMPDIR: pprof saves fetched profiles there instead of in ~/pprof.
    return subprocess.run(
        ["go", "tool", "pprof", *args, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PPROF_TMPDIR=_pprof_tmpdir[0]),
        check=False,
    )


def go_pprof(args: list[str], path: str | os.PathLike, timeout: float = GO_PPROF_TIMEOUT) -> str:
    """Run `go tool pprof ARGS PATH` (PATH may be a URL) and return its stdout.

    Fails the test with pprof's stderr when pprof rejects the input: that is the point of
    asking the real client.
    """
    result = _run_go_pprof(args, path, timeout)
    if result.returncode != 0:
        pytest.fail(f"go tool pprof {' '.join(args)} {path} failed:\n{result.stderr}")
    return result.stdout


def go_pprof_error(args: list[str], path: str | os.PathLike, timeout: float = 60) -> str:
    """Run `go tool pprof` where it must fail; return its stderr (what the user is shown)."""
    result = _run_go_pprof(args, path, timeout)
    assert result.returncode != 0, f"go tool pprof unexpectedly accepted {path}"
    return result.stderr


# Where pprof saves what it fetches; conftest.py sets it once a session.
_pprof_tmpdir = [""]


_TOP_LINE = re.compile(
    r"^\s*(?P<flat>\S+)\s+(?P<flat_pct>[\d.]+)%\s+[\d.]+%\s+(?P<cum>\S+)\s+"
    r"(?P<cum_pct>[\d.]+)%\s+(?P<name>.+?)\s*$"
)


def top_table(output: str) -> dict[str, tuple[float, float]]:
    """Function name -> (flat %, cum %) from `go tool pprof -top` output."""
    table = {}
    for line in output.splitlines():
        match = _TOP_LINE.match(line)
        if match and match["flat"] != "flat":
            table[match["name"]] = (float(match["flat_pct"]), float(match["cum_pct"]))
    return table


def raw_samples(output: str) -> list[tuple[tuple[int, ...], dict[str, str]]]:
    """(values, labels) per sample from `go tool pprof -raw` output; labels as printed."""
    samples: list[tuple[tuple[int, ...], dict[str, str]]] = []
    section = None
    for line in output.splitlines():
        if line in ("Samples:", "Locations", "Mappings"):
            section = line
            continue
        if section != "Samples:":
            continue
        values = re.match(r"^\s+([\d\s-]+):", line)
        label = re.match(r"^\s+(\S+):\[(.*)\]\s*$", line)
        if values:
            samples.append((tuple(int(v) for v in values[1].split()), {}))
        elif label and samples:
            samples[-1][1][label[1]] = label[2]
    return samples


def raw_locations(output: str) -> dict[int, str]:
    """Location id -> its `-raw` line (address, mapping, function, file:line)."""
    locations = {}
    section = None
    for line in output.splitlines():
        if line in ("Samples:", "Locations", "Mappings"):
            section = line
            continue
        match = re.match(r"^\s+(\d+): (.*)$", line)
        if section == "Locations" and match:
            locations[int(match[1])] = match[2]
    return locations


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """A line of a workload subprocess's output, failing the test if none comes in time."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"workload printed nothing within {timeout} s"
    line = process.stdout.readline()
    assert line, f"workload exited early: {process.wait(timeout=5)}"
    return line.strip()


def process_cpu_ns(pid: int) -> int:
    """utime + stime of the whole process from /proc, in nanoseconds."""
    with open(f"/proc/{pid}/stat") as file:
        # Fields after the parenthesised command name, which may itself contain spaces.
        fields = file.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def tasks_cpu_ns(pid: int, name_prefix: str) -> int:
    """utime + stime, in nanoseconds, of the process's threads whose kernel name (comm) starts
    with `name_prefix`, as /proc has them now (an exited thread is no longer listed)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as file:
                text = file.read()
        except OSError:
            continue  # Exited meanwhile.
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name.startswith(name_prefix):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `condition` until true; bounded in time so that a hang fails instead of blocking."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@contextlib.contextmanager
def running_server(**kwargs):
    """pyprofiler.serve(port=0) that is stopped whatever the test does."""
    server = pyprofiler.serve(host="127.0.0.1", port=0, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def spin(stop: threading.Event, limit: float = 30.0) -> None:
    """Burn CPU in pure Python until `stop` is set (or `limit` seconds, so nothing outlives
    a test run)."""
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


@contextlib.contextmanager
def threads_running(*targets: tuple[str, object]):
    """Start one thread per (name, function(stop_event)); stop and join them on exit."""
    stop = threading.Event()
    threads = [threading.Thread(target=fn, args=(stop,), name=name) for name, fn in targets]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "a test thread did not stop"


def run_in_child(body, timeout: float = 30.0) -> tuple[int, str]:
    """Fork; the child runs `body()` and exits 0 if it returned, 1 with the traceback if it
    raised. Returns (exit code, child's message); a child still running after `timeout`
    seconds is killed (exit code -SIGKILL), so a deadlock fails the test instead of hanging it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # Child: never return into pytest.
        code = 1
        try:
            os.close(read_fd)
            try:
                body()
                code, message = 0, "ok"
            except BaseException:
                message = traceback.format_exc()
            os.write(write_fd, message.encode()[:60_000])
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status), message or f"killed after {timeout} s (deadlock?)"
    return os.WEXITSTATUS(status), message


# --- Count profiles (goroutine, threadcreate, custom): absolute -top values and -traces stacks.

_TOP_COUNT_LINE = re.compile(
    r"^\s*(?P<flat>-?\d+)\s+-?[\d.]+%\s+-?[\d.]+%\s+(?P<cum>-?\d+)\s+-?[\d.]+%\s+(?P<name>.+?)\s*$"
)


def top_counts(output: str) -> dict[str, tuple[int, int]]:
    """Function name -> (flat, cum) from `go tool pprof -top` of a count profile, whose values
    pprof prints as plain integers (negative ones too, in a delta)."""
    table = {}
    for line in output.splitlines():
        match = _TOP_COUNT_LINE.match(line)
        if match:
            table[match["name"]] = (int(match["flat"]), int(match["cum"]))
    return table


def pprof_traces(output: str) -> list[tuple[int, dict[str, str], list[str]]]:
    """(value, string labels, function names leaf first) per sample of `go tool pprof -traces`."""
    traces = []
    for block in re.split(r"^-+\+-+$", output, flags=re.M)[1:]:
        value, labels, functions = None, {}, []
        for line in block.splitlines():
            if not line.strip():
                continue
            if value is None:
                sample = re.match(r"^\s*(-?\d+)\s{3}(\S.*)$", line)
                label = re.match(r"^\s*([^\s:]+):\s+(.*)$", line)
                if sample:
                    value = int(sample[1])
                    functions.append(sample[2].strip())
                elif label:
                    labels[label[1]] = label[2].strip()
            else:
                functions.append(line.strip())
        if value is not None:
            traces.append((value, labels, functions))
    return traces


def asgi_request(
    app, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request to an ASGI app, as a server would make it."""

    async def run() -> tuple[int, dict[str, str], bytes]:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        forever = asyncio.Event()
        sent: list[dict] = []

        async def receive() -> dict:
            if pending:
                return pending.pop()
            await forever.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        raw_path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [
                (k.lower().encode(), v.encode())
                for k, v in {"host": "testserver", **(headers or {})}.items()
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=30)
        start = next(m for m in sent if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        names = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return start["status"], names, content

    return asyncio.run(run())


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_TIMEOUT = 60


@contextlib.contextmanager
def headless_chromium(profile_dir: os.PathLike | str):
    """Debian's Chromium, headless, driven by selenium through Debian's chromedriver, stopped
    whatever the test does. A missing browser fails the test: .ci/run installs it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), f"{path} missing: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        # Nothing but loopback, whatever Chromium would fetch on its own.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-default-apps",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--password-store=basic",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The explicit driver path: Selenium Manager never runs (it would go to the network).
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_script_timeout(BROWSER_TIMEOUT)
    browser.set_page_load_timeout(BROWSER_TIMEOUT)
    try:
        yield browser
    finally:
        browser.quit()


def click_frame(driver, frame: dict) -> None:
    """Click the centre of a drawn frame with a real pointer (ActionChains), as a user does.

    Selenium 4 takes the offset from the element's in-view centre, so the frame is scrolled
    into view first and the offset computed from the canvas's visible part."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", "#flame")
    geometry = driver.execute_script(
        """
        const [canvas, fx, fy] = arguments;
        let r = canvas.getBoundingClientRect();
        const y = r.top + fy;
        if (y < 0 || y > window.innerHeight) {
            window.scrollBy(0, y - window.innerHeight / 2);
            r = canvas.getBoundingClientRect();
        }
        const left = Math.max(r.left, 0), right = Math.min(r.right, window.innerWidth);
        const top = Math.max(r.top, 0), bottom = Math.min(r.bottom, window.innerHeight);
        return {left: r.left, top: r.top, cx: (left + right) / 2, cy: (top + bottom) / 2};
        """,
        canvas,
        frame["x"] + frame["w"] / 2,
        frame["y"] + frame["h"] / 2,
    )
    target_x = geometry["left"] + frame["x"] + frame["w"] / 2
    target_y = geometry["top"] + frame["y"] + frame["h"] / 2
    # duration=0: no 250 ms pointer glide before the click.
    ActionChains(driver, duration=0).move_to_element_with_offset(
        canvas, int(target_x - geometry["cx"]), int(target_y - geometry["cy"])
    ).click().perform()
