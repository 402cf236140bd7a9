"""The guards of issue 11 and what any client on the port can and cannot do to the host: token,
Unix socket, the warning on a public bind, the bound on profiles at once, the body cap, CORS,
the Host check, Go's parameter syntax, idle connections, the default duration under
max_seconds, and the host's stderr. Every error answer is checked as a client sees it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from flask import Flask
from support import go_pprof, read_line, running_server, wait_until

import pyprofiler
from pyprofiler import httpserver, proto
from pyprofiler import server as server_module
from pyprofiler.guards import Guards

TESTS = Path(__file__).parent
HOST = TESTS / "host_workload.py"
TIMEOUT = 30
TEXT = "text/plain; charset=utf-8"
TOKEN = "s3cret-token"
BIG_BODY = 64 * 1024 * 1024
MEMORY_LIMIT_KB = 10 * 1024  # Acceptance: a 64 MB body moves the host's memory by < 10 MB.


def raw(port: int, data: bytes, timeout: float = TIMEOUT, half_close: bool = False) -> bytes:
    """Send `data` as it is (then close our sending side if `half_close`) and read the answer
    until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        return read_all(connection)


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.lower() == name.lower():
            return value.strip()
    return None


def get_line(port: int, target: str, headers: str = "Host: localhost\r\n") -> bytes:
    return raw(port, f"GET {target} HTTP/1.1\r\n{headers}\r\n".encode("latin-1"))


class Host:
    """A host application in a subprocess (host_workload.py) serving pyprofiler."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port

    def command(self, word: str) -> list[str]:
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        answer = read_line(self.process, TIMEOUT).split()
        assert answer[0] == word
        return answer[1:]

    def stats(self) -> dict[str, float]:
        hold_up, gap, hwm, rss, threads, own = self.command("stats")
        return {"hold_up_ms": float(hold_up), "gap_ms": float(gap), "hwm_kb": int(hwm),
                "rss_kb": int(rss), "threads": int(threads), "own_threads": int(own)}  # fmt: skip


@contextlib.contextmanager
def host_process(**settings):
    """Yield a Host; on exit, stop it and check that it wrote nothing to stderr."""
    process = subprocess.Popen(
        [sys.executable, str(HOST), json.dumps(settings)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=TESTS,
    )
    try:
        word, port = read_line(process, TIMEOUT).split()
        assert word == "ready"
        try:
            yield Host(process, int(port))
        except BaseException:
            if process.poll() is not None:  # Shown with the failure: why the host is gone.
                assert process.stderr is not None
                print(f"the host exited ({process.returncode}):", process.stderr.read()[-3000:])
            raise
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=TIMEOUT)
        assert process.stderr is not None
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


# --- Token.


def test_token_is_asked_for_and_checked():
    with running_server(token=TOKEN) as server:
        for kwargs in (
            {},
            {"headers": {"Authorization": "Bearer wrong"}},
            {"params": {"token": "x"}},
        ):
            response = requests.get(server.url + "cmdline", timeout=TIMEOUT, **kwargs)
            assert response.status_code == 401
            assert response.headers["Content-Type"] == TEXT
            assert response.headers["X-Go-Pprof"] == "1"
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="pyprofiler"'
            assert response.text == (
                "a token is needed: Authorization: Bearer <token>, or ?token=<token>\n"
            )
        by_header = requests.get(
            server.url + "cmdline", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
        )
        by_query = requests.get(server.url + f"cmdline?token={TOKEN}", timeout=TIMEOUT)
        assert by_header.status_code == by_query.status_code == 200
        # Nothing is told before the token: not even whether a profile exists.
        assert requests.get(server.url + "nope", timeout=TIMEOUT).status_code == 401


def test_go_tool_pprof_reads_a_profile_with_the_token_in_the_url():
    with running_server(token=TOKEN) as server:
        raw_profile = go_pprof(["-raw"], server.url + f"goroutine?token={TOKEN}")
    assert "goroutine/count" in raw_profile


def test_mounted_wsgi_apps_check_the_token():
    client = pyprofiler.create_app(token=TOKEN).test_client()
    assert client.get("/debug/pprof/cmdline").status_code == 401
    assert client.get(f"/debug/pprof/cmdline?token={TOKEN}").status_code == 200
    app = Flask("host")
    app.register_blueprint(pyprofiler.blueprint(token=TOKEN))
    client = app.test_client()
    assert client.get("/debug/pprof/").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/debug/pprof/", headers=headers).status_code == 200


# --- Unix socket.


def test_unix_socket_is_private_and_answers(tmp_path):
    path = str(tmp_path / "pprof.sock")
    server = pyprofiler.serve(unix_socket=path)
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert server.url.startswith("http+unix://") and server.url.endswith("/debug/pprof/")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(TIMEOUT)
            connection.connect(path)
            connection.sendall(b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = read_all(connection)
        assert status(answer) == 200
        assert body(answer).decode() == open("/proc/self/cmdline").read().rstrip("\0")
    finally:
        server.stop()
    assert not os.path.exists(path)


def test_unix_socket_never_takes_over_a_live_socket_or_another_file(tmp_path):
    live = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(live)
        listening.listen(1)
        with pytest.raises(pyprofiler.PyprofilerError, match="another process listens there"):
            pyprofiler.serve(unix_socket=live)
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(pyprofiler.PyprofilerError, match="exists and is not a socket"):
        pyprofiler.serve(unix_socket=str(regular))
    assert regular.read_text() == "keep me"
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(stale)  # Bound, then closed: a file nobody listens on, as after a crash.
    pyprofiler.serve(unix_socket=stale).stop()


# --- The warning on a public bind.


def test_a_public_bind_without_a_token_is_warned_about(monkeypatch, caplog):
    # Bound to loopback all the same: the test makes the address count as public.
    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING, logger="pyprofiler"):
        with running_server():
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("without a token" in message for message in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pyprofiler"):
        with running_server(token=TOKEN):
            pass
    assert not [r for r in caplog.records if "without a token" in r.getMessage()]


# --- How many profiles at once.


def test_profiles_beyond_max_concurrent_get_429_with_retry_after():
    with running_server(max_concurrent=2) as server:
        answers: list[requests.Response] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(
                    requests.get(server.url + "wall?seconds=3", timeout=TIMEOUT)
                )
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            refused = requests.get(server.url + "heap", timeout=TIMEOUT)
            cheap = requests.get(server.url + "cmdline", timeout=TIMEOUT)
        finally:
            for thread in threads:
                thread.join(timeout=TIMEOUT)
        assert refused.status_code == 429
        assert refused.headers["Content-Type"] == TEXT
        assert refused.headers["X-Go-Pprof"] == "1"
        assert 1 <= int(refused.headers["Retry-After"]) <= 3
        assert refused.text == (
            "2 profiles are being taken already; try again when one has finished\n"
        )
        assert cheap.status_code == 200  # The index, cmdline and symbol are not counted.
        assert [a.status_code for a in answers] == [200, 200]
        assert requests.get(server.url + "heap", timeout=TIMEOUT).status_code == 200


def test_a_delta_stops_and_frees_its_place_when_its_client_hangs_up():
    # With one profile allowed at once, the next request gets 429 until the delta has ended.
    with running_server(max_concurrent=1) as server:

        def refused() -> bool:
            return requests.get(server.url + "goroutine", timeout=TIMEOUT).status_code == 429

        connection = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        try:
            connection.sendall(
                b"GET /debug/pprof/heap?seconds=10 HTTP/1.1\r\nHost: localhost\r\n\r\n"
            )
            assert wait_until(refused, timeout=10)
            time.sleep(0.5)
        finally:
            connection.close()
        hung_up = time.monotonic()
        assert wait_until(lambda: not refused(), timeout=5, interval=0.01)
        assert time.monotonic() - hung_up < 0.35


# --- The body of /symbol.


def stream_body(port: int, head: bytes, pieces: int, piece: bytes) -> bytes:
    """Send `head` then `pieces` × `piece` (stopping if the server stops reading), and read
    the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        connection.sendall(head)
        with contextlib.suppress(OSError):
            for _ in range(pieces):
                connection.sendall(piece)
        return read_all(connection)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_64_mb_symbol_body_is_refused_without_memory(chunked):
    megabyte = b"0x1+" * (256 * 1024)
    if chunked:
        head = b"Transfer-Encoding: chunked\r\n"
        piece = b"%x\r\n" % len(megabyte) + megabyte + b"\r\n"
    else:
        head = b"Content-Length: %d\r\n" % BIG_BODY
        piece = megabyte
    with host_process() as host:
        host.command("reset")
        before = host.stats()
        answer = stream_body(
            host.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n",
            BIG_BODY // len(megabyte),
            piece,
        )
        after = host.stats()
    assert status(answer) == 413
    assert body(answer) == b"request body too large: at most 1048576 bytes\n"
    assert header(answer, "X-Go-Pprof") == "1"
    assert after["hwm_kb"] - before["hwm_kb"] < MEMORY_LIMIT_KB, (before, after)


def test_a_body_announced_too_large_is_refused_before_100_continue():
    with running_server() as server:
        answer = raw(
            server.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % BIG_BODY,
        )
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_bodies_that_cannot_be_read_are_4xx():
    with running_server() as server:
        truncated = raw(
            server.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n10\r\n0x1+0x2",
            half_close=True,
        )
        malformed = raw(
            server.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n0x1\r\n0\r\n\r\n",
        )
        other_encoding = raw(
            server.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: gzip\r\n\r\n",
        )
        ok = raw(
            server.port,
            b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\n0x1\r\n0\r\n\r\n",
        )
    # The client half-closes after the truncated body: an EOF where the chunk goes on.
    assert status(truncated) == 400
    assert body(truncated) == b"reading request: unexpected EOF\n"
    assert status(malformed) == 400
    assert body(malformed) == b"reading request: malformed chunked encoding\n"
    assert status(other_encoding) == 501
    assert status(ok) == 200 and body(ok) == b"num_symbols: 1\n"


# --- Headers.


def test_no_server_header_tells_a_version():
    with running_server() as server:
        for path in ("cmdline", "nope", "/elsewhere"):
            target = path if path.startswith("/") else f"/debug/pprof/{path}"
            head = get_line(server.port, target).split(b"\r\n\r\n", 1)[0]
            assert header(head + b"\r\n\r\n", "Server") is None
            assert b"Python" not in head and b"Werkzeug" not in head


def test_cors_is_off_by_default_and_allows_only_the_origins_given():
    origin = "https://www.speedscope.app"
    with running_server() as server:
        response = requests.get(server.url + "cmdline", headers={"Origin": origin}, timeout=30)
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response.headers
        preflight = requests.options(server.url + "heap", headers={"Origin": origin}, timeout=30)
        assert preflight.status_code == 405
    with running_server(allow_origins=[origin]) as server:
        allowed = requests.get(server.url + "cmdline", headers={"Origin": origin}, timeout=30)
        assert allowed.headers["Access-Control-Allow-Origin"] == origin
        assert allowed.headers["Vary"] == "Origin"
        other = requests.get(
            server.url + "cmdline", headers={"Origin": "https://evil.example"}, timeout=30
        )
        assert other.status_code == 200
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = requests.options(
            server.url + "heap",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
            timeout=30,
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization"
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        refused = requests.options(
            server.url + "heap", headers={"Origin": "https://evil.example"}, timeout=30
        )
        assert refused.status_code == 405
    # With a token, the preflight (which carries none) is answered; the request needs it.
    with running_server(allow_origins=origin, token=TOKEN) as server:
        preflight = requests.options(server.url + "heap", headers={"Origin": origin}, timeout=30)
        assert preflight.status_code == 204
        denied = requests.get(server.url + "heap", headers={"Origin": origin}, timeout=30)
        assert denied.status_code == 401
        assert denied.headers["Access-Control-Allow-Origin"] == origin


# --- The Host check (DNS rebinding).


def test_a_loopback_server_answers_only_loopback_host_names():
    with running_server() as server:
        port = server.port
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            answer = get_line(port, "/debug/pprof/cmdline", f"Host: {host}\r\n")
            assert status(answer) == 200, host
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "[::2]"):
            answer = get_line(port, "/debug/pprof/cmdline", f"Host: {host}\r\n")
            assert status(answer) == 403, host
            assert header(answer, "Content-Type") == TEXT
            assert header(answer, "X-Go-Pprof") == "1"
            assert (
                body(answer)
                == (
                    f"Host {host!r} is not allowed: this server answers requests for localhost, "
                    "127.0.0.1 and [::1] only (a defence against DNS rebinding)\n"
                ).encode()
            )
        # HTTP/1.0 clients may send no Host; HTTP/1.1 must send one, as Go requires.
        assert status(raw(port, b"GET /debug/pprof/cmdline HTTP/1.0\r\n\r\n")) == 200
        assert status(raw(port, b"GET /debug/pprof/cmdline HTTP/1.1\r\n\r\n")) == 400


def test_without_an_allowed_list_any_host_is_answered():
    assert not Guards().host_refused("evil.example")


# --- Go's parameter syntax.

POSITIVE = 'invalid value for "seconds" - must be a positive integer\n'


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("profile?seconds=1_0", POSITIVE),
        ("profile?seconds=%201", POSITIVE),  # " 1"
        ("profile?seconds=1%20", POSITIVE),
        ("profile?seconds=%D9%A1", POSITIVE),  # An Arabic-Indic digit one.
        ("profile?seconds=0x1", POSITIVE),
        ("profile?seconds=%EF%BC%91", POSITIVE),  # A full-width digit one.
        ("heap?seconds=1_0", POSITIVE),
        ("heap?debug=1_0", 'invalid value for "debug" - must be an integer\n'),
        ("heap?debug=%D9%A1", 'invalid value for "debug" - must be an integer\n'),
        ("heap?gc=%201", 'invalid value for "gc" - must be an integer\n'),
        ("heap?debug=99999999999999999999", 'invalid value for "debug" - must be an integer\n'),
        ("heap?pid=1_0", 'invalid value for "pid" - must be a positive integer\n'),
        ("goroutine?include_self=x", 'invalid value for "include_self" - must be an integer\n'),
    ],
)
def test_parameters_follow_gos_syntax(query, text):
    with running_server() as server:
        response = requests.get(server.url + query, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.text == text


def test_a_sign_is_part_of_gos_syntax():
    with running_server() as server:
        text = requests.get(server.url + "heap?debug=%2B1", timeout=TIMEOUT)
    assert text.status_code == 200
    assert text.headers["Content-Type"] == TEXT  # debug=+1 is debug=1, as strconv.Atoi reads it.


def test_symbol_words_are_read_as_go_reads_them():
    # Words that strconv.ParseUint(word, 0, 64) refuses resolve to nothing, as in Go.
    words = ["%200x1", "0x1%20", "1__0", "0x", "08", "%D9%A1", "18446744073709551616"]
    with running_server() as server:
        response = requests.get(server.url + "symbol?" + "+".join(words), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.text == "num_symbols: 1\n"


# --- Resources anyone on the port could take.


@pytest.fixture
def many_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def own_http_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pyprofiler-http")]


def test_idle_connections_cost_one_thread_and_are_closed(many_descriptors):
    with running_server() as server:
        connections = []
        try:
            for _ in range(1000):
                connections.append(socket.create_connection(("127.0.0.1", server.port), 5))
            time.sleep(1.0)
            assert own_http_threads() == ["pyprofiler-http"]
            # The port still answers: the oldest idle connections make room.
            assert requests.get(server.url + "cmdline", timeout=TIMEOUT).status_code == 200
            deadline = time.monotonic() + httpserver.IDLE_TIMEOUT + 5
            for connection in connections:
                connection.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    assert connection.recv(1) == b""
            assert time.monotonic() < deadline
        finally:
            for connection in connections:
                connection.close()
        assert wait_until(lambda: len(own_http_threads()) == 1, timeout=15)


@pytest.mark.parametrize("name", ["profile", "wall"])
def test_max_seconds_caps_the_default_duration(name):
    with running_server(max_seconds=1) as server:
        started = time.monotonic()
        response = requests.get(server.url + name, timeout=TIMEOUT)
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.9 < elapsed < 5
    assert 0.9e9 < proto.decode(response.content).duration_nanos < 2e9


BAD_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"GET /debug/pprof/\x1b[31mred HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Junk: \x1b]0;title\x07\r\n" * 10 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /debug/pprof/ HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(11, 256)),
    b"GET /debug/pprof/heap?debug=%zz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
    b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /debug/pprof/ HTTP/1.1\r\nHost: localhost\r\nExpect: 200-ok\r\n\r\n",
]


def test_nothing_a_client_sends_reaches_the_hosts_stderr():
    # host_process() checks the host's stderr when it has exited.
    with host_process() as host:
        answers = [raw(host.port, request, timeout=15) for request in BAD_REQUESTS]
    statuses = [status(answer) if answer else None for answer in answers]
    # As Go's server: 400 for what is not HTTP/1.x, 431 for a head over its limit, 505 for
    # HTTP/2's preface, 417 for an expectation it cannot meet; a TLS handshake gets no answer
    # (nothing that ends a head arrives); a bad escape drops that parameter (url.ParseQuery).
    assert statuses == [400, 400, 431, 400, 404, 505, 400, None, 200, 400, 400, 417]
