"""serve()/Server lifecycle: one server per process, stop() frees the port, max_seconds, a list
of ports, and a host that goes on whatever serve() meets.

These tests start their own servers, so they cannot share the module server of test_http.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import running_server, wait_until

import pyprofiler
from pyprofiler.samplers import native

TIMEOUT = 30


def get(server, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT)


def test_server_url():
    with running_server() as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/debug/pprof/"
        assert repr(server) == f"<pyprofiler.Server {server.url}>"


def test_serve_twice_names_the_running_server():
    with running_server() as server:
        with pytest.raises(pyprofiler.PyprofilerError, match=re.escape(server.url)):
            pyprofiler.serve(port=0)
        # The refused call must not disturb the running server.
        assert get(server, "cmdline").status_code == 200


def test_stop_frees_the_port():
    first = pyprofiler.serve(port=0)
    try:
        port = first.port
        assert get(first, "cmdline").status_code == 200
    finally:
        first.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/debug/pprof/cmdline", timeout=TIMEOUT)
    second = pyprofiler.serve(port=port)
    try:
        assert second.port == port
        assert get(second, "cmdline").status_code == 200
    finally:
        second.stop()


def test_max_seconds():
    with running_server(max_seconds=5) as server:
        for name in ("profile", "wall"):
            response = get(server, f"{name}?seconds=6")
            assert response.status_code == 400
            assert response.headers["X-Go-Pprof"] == "1"
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert "at most 5" in response.text


# --- serve() never ends the host, and raises nothing but PyprofilerError (issue 11, item 1).


@contextlib.contextmanager
def ports_held(count: int):
    """Ports held by plain listening sockets of this process: another program, to serve()."""
    holders = []
    try:
        for _ in range(count):
            holder = socket.socket()
            holders.append(holder)
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
        yield [holder.getsockname()[1] for holder in holders]
    finally:
        for holder in holders:
            holder.close()


def test_a_list_of_ports_falls_back_to_the_next_one():
    with ports_held(1) as (taken,):
        server = pyprofiler.serve(port=[taken, 0])
        try:
            assert server.port not in (0, taken)
            assert get(server, "cmdline").status_code == 200
        finally:
            server.stop()


def test_when_every_port_is_taken_the_error_names_each_one():
    with ports_held(2) as taken:
        with pytest.raises(pyprofiler.PyprofilerError) as refused:
            pyprofiler.serve(port=taken)
    message = str(refused.value)
    assert f"cannot serve on any of the ports {taken[0]}, {taken[1]}" in message
    assert message.count("is in use by another program") == 2
    assert f"(pid {os.getpid()} " in message  # The holder, as /proc shows it.


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"port": -1},
        {"port": "6060"},
        {"port": []},
        {"port": True},
        {"port": 6060.0},
        {"host": None},
        {"max_seconds": 0},
        {"token": ""},
        {"max_concurrent": 0},
        {"allow_origins": [3]},
        {"port": 0, "block_profile_rate": "often"},
    ],
    ids=repr,
)
def test_misuse_is_a_pyprofiler_error_and_leaves_nothing_serving(kwargs):
    with pytest.raises(pyprofiler.PyprofilerError):
        pyprofiler.serve(**kwargs)
    with running_server() as server:  # Nothing was left serving.
        assert get(server, "cmdline").status_code == 200


def test_an_address_this_machine_does_not_have_is_a_pyprofiler_error():
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind() fails, nothing is sent.
    with pytest.raises(pyprofiler.PyprofilerError, match=r"cannot serve on 192\.0\.2\.1:0"):
        pyprofiler.serve(host="192.0.2.1", port=0)


_ENDS_PYTHON = re.compile(
    r"(?<![\w.])(sys\.exit|os\._exit|os\.abort|exit|quit)\s*\(|raise\s+SystemExit"
)
_ENDS_C = re.compile(r"(?<![\w.])(exit|_exit|_Exit|abort|quick_exit|Py_Exit|Py_FatalError)\s*\(")


def test_no_code_path_of_pyprofiler_ends_the_process():
    package = Path(pyprofiler.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*")):
        # `python -m pyprofiler run` is a program of its own: its exit status is the point.
        if path.name == "__main__.py" or path.suffix not in (".py", ".c", ".h"):
            continue
        pattern = _ENDS_PYTHON if path.suffix == ".py" else _ENDS_C
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line.split("#")[0] if path.suffix == ".py" else line):
                offenders.append(f"{path.relative_to(package)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert len(list(package.glob("*.py"))) > 20  # The scan saw the package.


HOST_SCRIPT = """
import sys
import pyprofiler
try:
    pyprofiler.serve(port=int(sys.argv[1]))
except pyprofiler.PyprofilerError as error:
    print("refused:", error, flush=True)
print("the program went on", flush=True)
"""


def test_a_taken_port_raises_and_a_plain_script_goes_on():
    with ports_held(1) as (taken,):
        result = subprocess.run(
            [sys.executable, "-c", HOST_SCRIPT, str(taken)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert f"refused: port {taken} is in use by another program" in result.stdout
    assert "the program went on" in result.stdout


APP_MODULE = """
import os
import pyprofiler

try:
    pyprofiler.serve(port=int(os.environ["TAKEN_PORT"]))
except pyprofiler.PyprofilerError as error:
    print("pyprofiler:", error, flush=True)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the app answers"]
"""

FLASK_RELOADER_APP = """
import os
import pyprofiler
from flask import Flask

try:
    pyprofiler.serve(port=int(os.environ["TAKEN_PORT"]))
except pyprofiler.PyprofilerError as error:
    print("pyprofiler:", error, flush=True)

app = Flask(__name__)


@app.route("/")
def home():
    return "the app answers"


app.run(host="127.0.0.1", port=int(os.environ["APP_PORT"]), debug=True, use_reloader=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_host_until_it_answers(command: list[str], cwd: Path, env: dict, app_port: int) -> str:
    """Start a host server in a session of its own, wait until its app answers on
    `app_port`, stop it, and return what it printed."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        def answers() -> bool:
            try:
                response = requests.get(f"http://127.0.0.1:{app_port}/", timeout=5)
            except requests.RequestException:
                return False
            return response.text == "the app answers"

        assert wait_until(answers, timeout=60, interval=0.2), "the host app never answered"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=20)
    return output


@pytest.mark.deployment
def test_a_taken_port_raises_and_gunicorn_workers_go_on(tmp_path):
    (tmp_path / "app_module.py").write_text(APP_MODULE)
    app_port = free_port()
    with ports_held(1) as (taken,):
        output = run_host_until_it_answers(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{app_port}",
             "app_module:app"],
            tmp_path,
            {"TAKEN_PORT": str(taken)},
            app_port,
        )  # fmt: skip
    assert f"pyprofiler: port {taken} is in use by another program" in output
    assert "Worker failed to boot" not in output


@pytest.mark.deployment
def test_a_taken_port_raises_and_the_flask_reloader_goes_on(tmp_path):
    (tmp_path / "reloader_app.py").write_text(FLASK_RELOADER_APP)
    app_port = free_port()
    with ports_held(1) as (taken,):
        output = run_host_until_it_answers(
            [sys.executable, "reloader_app.py"],
            tmp_path,
            {"TAKEN_PORT": str(taken), "APP_PORT": str(app_port)},
            app_port,
        )
    # The reloader's process and the server process it starts both went on.
    assert output.count(f"pyprofiler: port {taken} is in use by another program") == 2, output


# --- Without the extension, what is missing is said as it is (issue 11, "Smaller").


def test_a_missing_extension_is_explained_by_what_is_actually_missing(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    package = checkout / "pyprofiler"
    (package / "samplers").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\n")
    (package / "samplers" / "_native.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.setattr(native, "_PACKAGE", str(package))
    reason = native._reason(ImportError("cannot import name '_native'"))
    assert "compiler" not in reason
    assert f"is not built for Python {sys.version_info[0]}.{sys.version_info[1]}" in reason
    assert f"in the source tree {package}" in reason
    assert "_native.cpython-399-x86_64-linux-gnu.so" in reason
    installed = tmp_path / "site-packages" / "pyprofiler"
    installed.mkdir(parents=True)
    monkeypatch.setattr(native, "_PACKAGE", str(installed))
    assert "C compiler" in native._reason(ImportError("no module"))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pyprofiler.samplers import native; print(native.unavailable_reason)",
        ],
        env=dict(os.environ, PYPROFILER_NATIVE="0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "is ignored (PYPROFILER_NATIVE=0 is set)", result.stderr
