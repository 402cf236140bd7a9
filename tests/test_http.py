"""The /debug/pprof/ HTTP surface against a real `serve(port=0)` server, compared with what Go's
net/http/pprof answers (spec section 1), and read by `go tool pprof` over HTTP."""

from __future__ import annotations

import gzip
import re
import socket
import threading
import time

import pytest
import requests
from flask import Flask
from support import (
    go_pprof,
    go_pprof_error,
    raw_samples,
    spin,
    threads_running,
    top_table,
    wait_until,
)

import pyprofiler
from pyprofiler import cpu, proto
from pyprofiler._proto import profile_pb2

TIMEOUT = 30  # Per request; profiles asked for here last 1-2 s.
TEXT = "text/plain; charset=utf-8"
POSITIVE_INTEGER = 'invalid value for "seconds" - must be a positive integer\n'


def get(server, path: str, method: str = "GET", **kwargs) -> requests.Response:
    """Request `path` relative to /debug/pprof/, or from the root if it starts with "/"."""
    url = f"http://127.0.0.1:{server.port}{path}" if path.startswith("/") else server.url + path
    return requests.request(method, url, timeout=TIMEOUT, **kwargs)


def own_cmdline() -> str:
    # The kernel's view of this process's argv, the Python equivalent of Go's os.Args.
    with open("/proc/self/cmdline", "rb") as file:
        return file.read().rstrip(b"\0").decode()


# (path, status, content type, exact body or regex for the body or None)
OK_CASES = [
    ("cmdline", 200, TEXT, None),
    ("cmdline?seconds=5", 200, TEXT, None),  # Go ignores every parameter on cmdline.
    ("symbol", 200, TEXT, "num_symbols: 1\n"),
    ("", 200, "text/html; charset=utf-8", re.compile(r"\A<html>\n.*</html>\Z", re.S)),
]

ERROR_CASES = [
    ("profile?seconds=abc", 400, POSITIVE_INTEGER),
    ("profile?seconds=-1", 400, POSITIVE_INTEGER),
    ("profile?seconds=0", 400, POSITIVE_INTEGER),
    ("profile?seconds=1.5", 400, POSITIVE_INTEGER),
    ("profile?seconds=99999999999999999999", 400, re.compile(r'"seconds" - must be at most 300')),
    ("wall?seconds=abc", 400, POSITIVE_INTEGER),
    ("wall?seconds=0", 400, POSITIVE_INTEGER),
    ("wall?seconds=99999999999999999999", 400, re.compile(r'"seconds" - must be at most 300')),
    ("no-such-profile", 404, "Unknown profile\n"),
    ("no-such-profile?debug=1", 404, "Unknown profile\n"),
    # Absolute paths: outside /debug/pprof/.
    ("/elsewhere", 404, "404 page not found\n"),
    ("/debug/other", 404, "404 page not found\n"),
]


def check_body(body: str, expected) -> None:
    if isinstance(expected, re.Pattern):
        assert expected.search(body), body
    elif expected is not None:
        assert body == expected


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"), OK_CASES, ids=[c[0] or "index" for c in OK_CASES]
)
def test_ok_responses(server, path, status, content_type, body):
    response = get(server, path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Disposition" not in response.headers
    check_body(response.text, body)


@pytest.mark.parametrize(("path", "status", "body"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_responses(server, path, status, body):
    response = get(server, path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == TEXT
    # X-Go-Pprof makes `go tool pprof` print the body as the reason.
    assert response.headers["X-Go-Pprof"] == "1"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Disposition" not in response.headers
    assert "Traceback" not in response.text
    check_body(response.text, body)


def test_no_profile_runs_after_a_rejected_request(server):
    # A 400 must be answered before profiling starts, leaving the CPU slot free.
    assert get(server, "profile?seconds=abc").status_code == 400
    assert cpu.windows_open("cpu") == 0


@pytest.mark.parametrize("path", ["profile", "wall", "cmdline", ""])
def test_post_is_405(server, path):
    response = get(server, path, method="POST")
    assert response.status_code == 405
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["X-Go-Pprof"] == "1"
    assert "Traceback" not in response.text
    assert "POST" in response.text


def test_405_names_allowed_methods_in_allow_header(server):
    # RFC 9110 15.5.6: a 405 response MUST carry Allow; Go's ServeMux sends "GET, HEAD".
    response = get(server, "profile", method="POST")
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
    assert {"GET", "HEAD"} <= allowed


def test_symbol_accepts_post(server):
    response = get(server, "symbol", method="POST", data="0x1")
    assert response.status_code == 200
    assert response.text == "num_symbols: 1\n"


def test_index_page_rows(server):
    response = get(server, "")
    page = response.text
    rows = re.findall(r"<tr><td>(\d+)</td><td><a href='([^']*)'>([^<]*)</a></td></tr>", page)
    names = [name for _, _, name in rows]
    assert {"cmdline", "profile", "wall"} <= set(names)
    assert names == sorted(names)
    assert "<tr><td>0</td><td><a href='profile?debug=1'>profile</a></td></tr>\n" in page
    assert "<tr><td>0</td><td><a href='wall?debug=1'>wall</a></td></tr>\n" in page
    assert "<tr><td>0</td><td><a href='cmdline?debug=1'>cmdline</a></td></tr>\n" in page
    assert all(href == f"{name}?debug=1" for _, href, name in rows)


def test_index_page_layout_matches_go(server):
    page = get(server, "").text
    assert page.startswith(
        "<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{\n"
        "\tdisplay:inline-block;\n\twidth:6rem;\n}\n</style>\n</head>\n<body>\n/debug/pprof/\n"
    )
    assert "<thead><td>Count</td><td>Profile</td></thead>\n" in page
    assert (
        "<li><div class=profile-name>profile: </div> CPU profile. You can specify the duration "
        "in the seconds GET parameter. After you get the profile file, use the go tool pprof "
        "command to investigate the profile.</li>\n"
    ) in page
    assert (
        "<li><div class=profile-name>cmdline: </div> The command line invocation of the "
        "current program</li>\n"
    ) in page
    # Go's template output has no trailing newline.
    assert page.endswith("</ul>\n</p>\n</body>\n</html>")


def test_index_without_trailing_slash_reaches_the_index(server):
    response = requests.get(server.url.rstrip("/"), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.url == server.url
    assert "Types of profiles available:" in response.text


def test_cmdline_is_nul_joined_argv(server):
    response = get(server, "cmdline")
    assert response.text == own_cmdline()
    assert not response.text.endswith("\n")


@pytest.mark.parametrize(("name", "sample_type"), [("profile", "cpu"), ("wall", "wall")])
def test_timed_profile_response(server, tmp_path, name, sample_type):
    with threads_running(("busy", spin)):
        response = get(server, f"{name}?seconds=1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.content[:2] == b"\x1f\x8b"
    path = tmp_path / name
    path.write_bytes(response.content)
    raw = go_pprof(["-raw"], path)
    assert f"samples/count {sample_type}/nanoseconds" in raw
    assert f"PeriodType: {sample_type} nanoseconds" in raw
    assert "support.spin" in top_table(go_pprof(["-top"], path))


def test_concurrent_profiles_are_both_answered(server):
    # Two scrapers (Grafana Alloy and Parca, say) asking at once both get a profile of their
    # own window, where Go refuses the second with a 500.
    first = {}
    thread = threading.Thread(target=lambda: first.update(r=get(server, "profile?seconds=2")))
    with threads_running(("spinner", spin)):
        thread.start()
        try:
            assert wait_until(lambda: cpu.windows_open("cpu") == 1, timeout=10)
            second = get(server, "profile?seconds=1")
        finally:
            thread.join(timeout=TIMEOUT)
    assert first["r"].status_code == 200 and second.status_code == 200, second.text
    profiles = [proto.decode(r.content) for r in (first["r"], second)]
    assert 1.9e9 < profiles[0].duration_nanos < 3e9
    assert 0.9e9 < profiles[1].duration_nanos < 1.5e9
    for profile in profiles:
        assert "support.spin" in {f.function for s in profile.samples for f in s.frames}


def test_profile_while_api_profile_runs_is_answered(server):
    import io

    output = io.BytesIO()
    with threads_running(("spinner", spin)):
        pyprofiler.start_cpu_profile(output)
        try:
            response = get(server, "profile?seconds=1")
        finally:
            pyprofiler.stop_cpu_profile()
    assert response.status_code == 200
    for data in (response.content, output.getvalue()):
        assert "support.spin" in {f.function for s in proto.decode(data).samples for f in s.frames}


def location_addresses(data: bytes) -> dict[int, str]:
    """Address -> function name, straight from the protobuf (decode() drops addresses)."""
    profile = profile_pb2.Profile.FromString(gzip.decompress(data))
    strings = profile.string_table
    names = {f.id: strings[f.name] for f in profile.function}
    return {loc.address: names[loc.line[0].function_id] for loc in profile.location}


def test_symbol_resolves_addresses_from_a_fetched_profile(server):
    with threads_running(("busy", spin)):
        data = get(server, "profile?seconds=1").content
    addresses = location_addresses(data)
    assert "support.spin" in addresses.values()
    # 0x1 is never a location address: unknown addresses are left out, as in Go.
    words = [hex(a) for a in addresses] + ["0x1"]
    response = get(server, "symbol", method="POST", data="+".join(words))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    lines = response.text.splitlines()
    assert lines[0] == "num_symbols: 1"
    assert sorted(lines[1:]) == sorted(f"{a:#x} {name}" for a, name in addresses.items())
    # GET carries the words in the raw query string.
    some = next(iter(addresses))
    response = get(server, f"symbol?{some:#x}")
    assert response.text == f"num_symbols: 1\n{some:#x} {addresses[some]}\n"


@pytest.mark.parametrize(
    "args_and_path",
    [
        (["-top"], "profile?seconds=1"),
        # pprof's own -seconds flag appends ?seconds=N to the URL.
        (["-top", "-seconds", "1"], "profile"),
    ],
)
def test_go_pprof_fetches_from_url(server, args_and_path):
    args, path = args_and_path
    with threads_running(("busy", spin)):
        top = go_pprof(args, server.url + path)
    assert "Type: cpu" in top
    assert "support.spin" in top_table(top)


def test_go_pprof_raw_over_http_has_thread_labels(server):
    with threads_running(("busy-thread", spin)):
        raw = go_pprof(["-raw"], server.url + "profile?seconds=1")
    assert "busy-thread" in {labels.get("thread") for _, labels in raw_samples(raw)}


def test_go_pprof_shows_our_error_text(server):
    # pprof prints the body only when X-Go-Pprof and text/plain are both present.
    stderr = go_pprof_error(["-raw"], server.url + "no-such-profile")
    # The reason phrase's case is the server library's ("NOT FOUND" from Werkzeug).
    assert "server response: 404 not found - unknown profile" in stderr.lower()


def user_app(**blueprint_args) -> Flask:
    app = Flask("user_app")
    app.register_blueprint(pyprofiler.blueprint(**blueprint_args))

    @app.route("/")
    def home():
        return "user home"

    return app


def test_blueprint_in_user_app():
    client = user_app().test_client()
    index = client.get("/debug/pprof/")
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<a href='profile?debug=1'>profile</a>" in index.get_data(as_text=True)
    cmdline = client.get("/debug/pprof/cmdline")
    assert cmdline.status_code == 200
    assert cmdline.headers["Content-Type"] == TEXT
    assert cmdline.get_data(as_text=True) == own_cmdline()
    # The user's own routes keep working next to the blueprint.
    assert client.get("/").get_data(as_text=True) == "user home"
    unknown = client.get("/debug/pprof/nope")
    assert unknown.status_code == 404
    assert unknown.get_data(as_text=True) == "Unknown profile\n"


def test_blueprint_with_prefix_and_max_seconds():
    client = user_app(url_prefix="/admin/pprof", max_seconds=2).test_client()
    assert client.get("/admin/pprof/").status_code == 200
    assert client.get("/debug/pprof/").status_code == 404
    too_long = client.get("/admin/pprof/profile?seconds=3")
    assert too_long.status_code == 400
    assert "at most 2" in too_long.get_data(as_text=True)


def test_create_app_profile_with_test_client(tmp_path):
    client = pyprofiler.create_app().test_client()
    with threads_running(("busy", spin)):
        response = client.get("/debug/pprof/profile?seconds=1")
    assert response.status_code == 200
    path = tmp_path / "profile"
    path.write_bytes(response.data)
    assert "support.spin" in top_table(go_pprof(["-top"], path))


# --- A client that hangs up (issue 11, item 2): its profile stops and frees the profiler.

HANGUP_LIMIT = 0.25  # Seconds from the client's close to the profile's window closing.


def ask_and_hang_up(port: int, path: str, started, after: float = 0.5) -> float:
    """Ask for `path` on a raw connection, close it once `started()` and `after` seconds
    more have passed; return the monotonic time of the close."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert wait_until(started, timeout=10)
        time.sleep(after)
    finally:
        connection.close()
    return time.monotonic()


@pytest.mark.parametrize(("name", "kind"), [("profile", "cpu"), ("wall", "wall")])
def test_a_timed_profile_stops_when_its_client_hangs_up(server, name, kind):
    hung_up = ask_and_hang_up(
        server.port, f"/debug/pprof/{name}?seconds=10", lambda: cpu.windows_open(kind) == 1
    )
    assert wait_until(lambda: cpu.windows_open(kind) == 0, timeout=5, interval=0.002)
    assert time.monotonic() - hung_up < HANGUP_LIMIT
    started = time.monotonic()
    response = get(server, f"{name}?seconds=1")
    assert response.status_code == 200
    assert time.monotonic() - started < 1 + 1  # The next one runs at once, for its second.


def test_the_members_of_a_group_stop_when_the_client_hangs_up(server):
    # This process holds the port; a member in a subprocess joins it. A profile asked of the
    # port runs in both; once the client hangs up, the member's request ends too.
    from test_group import member_command, ready, sessions, wait_for_workers

    with sessions(member_command(server.port)) as (member,):
        pid, _ = ready(member)
        wait_for_workers(server.port, lambda seen: len(seen) == 2)

        def member_profiling() -> bool:
            dump = get(server, f"goroutine?debug=2&pid={pid}&include_self=1").text
            return "pyprofiler/hangup.py" in dump

        hung_up = ask_and_hang_up(server.port, "/debug/pprof/wall?seconds=10", member_profiling)
        assert wait_until(lambda: not member_profiling(), timeout=5, interval=0.01)
        assert time.monotonic() - hung_up < 1.0
        assert wait_until(lambda: cpu.windows_open("wall") == 0, timeout=1)
