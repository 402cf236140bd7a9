"""What the built-in viewer's server side answers (issue 14), live and offline: the page's files,
the list of profiles, the source view's file rule, the index's links, and clear 4xx texts for
bad input. What the page does with them is tested in headless Chromium (test_ui.py)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from support import read_line, running_server, spin, threads_running

import pyprofiler
from pyprofiler import registry
from pyprofiler._proto import profile_pb2

TIMEOUT = 30
TEXT = "text/plain; charset=utf-8"
THIS_FILE = os.path.abspath(__file__)


def no_traceback(response: requests.Response) -> None:
    assert "Traceback" not in response.text
    assert response.headers["Content-Type"].startswith(("text/plain", "application/json"))


def test_the_page_and_its_files_are_served_at_any_mount(tmp_path):
    with running_server() as server:
        page = requests.get(server.url + "ui/", timeout=TIMEOUT)
        assert page.status_code == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        for name in ("app.js", "flame.js", "pprof.js", "style.css"):
            assert f'"{name}"' in page.text or f"'{name}'" in page.text or name in page.text
            asset = requests.get(server.url + "ui/" + name, timeout=TIMEOUT)
            assert asset.status_code == 200, name
            assert asset.headers["X-Content-Type-Options"] == "nosniff"
        # Every URL the page uses is relative, so that the viewer works under any mount prefix.
        assert "/debug/pprof" not in page.text
        redirected = requests.get(server.url + "ui", timeout=TIMEOUT, allow_redirects=False)
        assert redirected.status_code == 301
        assert redirected.headers["Location"] == "ui/"


def test_the_list_of_profiles_holds_every_profile_of_the_registry():
    name = f"uitest/conns-{time.monotonic_ns()}"  # Profiles stay registered: a name of its own.
    pyprofiler.new_profile(name)
    with running_server() as server:
        response = requests.get(server.url + "ui/profiles", timeout=TIMEOUT)
    assert response.status_code == 200
    document = response.json()
    assert document["mode"] == "live"
    entries = {entry["name"]: entry for entry in document["profiles"]}
    assert set(entries) == {profile.name for profile in registry.profiles() if profile.mergeable}
    assert "trace" not in entries  # Chrome trace-event JSON, not a profile the page decodes.
    assert entries["profile"]["timed"] is True
    assert entries["heap"]["delta"] is True
    assert entries[name]["url"] == f"../{name}"


def test_the_index_links_each_profile_to_its_view():
    with running_server() as server:
        page = requests.get(server.url, timeout=TIMEOUT).text
    for profile in registry.profiles():
        link = f"<a href='ui/#profile={profile.name}'>{profile.name}</a>"
        assert (link in page) == profile.mergeable, profile.name
    assert "<a href='ui/'>" in page


def test_the_source_view_reads_only_files_a_profile_named():
    def hot_in_this_file(stop: threading.Event) -> None:
        spin(stop)

    with running_server() as server, threads_running(("ui-hot", hot_in_this_file)):
        for name in ("/etc/passwd", THIS_FILE, "../../etc/passwd", "/proc/self/environ"):
            refused = requests.get(server.url + "ui/source", params={"file": name}, timeout=30)
            assert refused.status_code == 403, name
            assert "not named by a profile" in refused.text
            assert "root:" not in refused.text
            no_traceback(refused)
        profile = requests.get(server.url + "profile", params={"seconds": 1}, timeout=TIMEOUT)
        assert profile.status_code == 200
        shown = requests.get(server.url + "ui/source", params={"file": THIS_FILE}, timeout=30)
        assert shown.status_code == 200
        assert shown.headers["Content-Type"] == TEXT
        assert "def test_the_source_view_reads_only_files_a_profile_named" in shown.text
        missing = requests.get(server.url + "ui/source", timeout=TIMEOUT)
        assert missing.status_code == 400
        assert 'missing "file"' in missing.text


def test_named_files_that_are_not_source_get_a_404_text():
    from pyprofiler import symbols

    with running_server() as server:
        symbols.remember_file("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap>")
        symbols.remember_file("/dev/zero", "/dev/zero")
        for name in ("<frozen importlib._bootstrap>", "/dev/zero"):
            response = requests.get(server.url + "ui/source", params={"file": name}, timeout=30)
            assert response.status_code == 404, name
            no_traceback(response)


def test_bad_requests_under_ui_get_clear_texts():
    with running_server() as server:
        cases = [
            ("GET", "ui/nothing.js", 404),
            ("GET", "ui/static/index.html", 404),
            ("GET", "ui/.hidden.js", 404),
            ("POST", "ui/app.js", 405),
            ("POST", "ui/profiles", 405),
            ("GET", "ui/source?file=%ff%fe", 403),
        ]
        for method, path, status in cases:
            response = requests.request(method, server.url + path, timeout=TIMEOUT)
            assert response.status_code == status, path
            no_traceback(response)


def test_the_token_guards_data_but_not_the_page_files():
    with running_server(token="ui-token") as server:
        assert requests.get(server.url + "ui/", timeout=TIMEOUT).status_code == 200
        assert requests.get(server.url + "ui/app.js", timeout=TIMEOUT).status_code == 200
        for name in ("ui/profiles", "ui/source?file=x", "heap"):
            assert requests.get(server.url + name, timeout=TIMEOUT).status_code == 401, name
        with_token = requests.get(
            server.url + "ui/profiles", params={"token": "ui-token"}, timeout=TIMEOUT
        )
        assert with_token.status_code == 200


def go_like_profile(path: Path, filename: str) -> None:
    """A small profile with one function in `filename`, written with the protobuf classes."""
    profile = profile_pb2.Profile()
    profile.string_table.extend(["", "samples", "count", "main.work", filename])
    profile.sample_type.add(type=1, unit=2)
    profile.function.add(id=1, name=3, system_name=3, filename=4, start_line=1)
    location = profile.location.add(id=1, address=0x1000)
    location.line.add(function_id=1, line=3)
    profile.sample.add(location_id=[1], value=[7])
    path.write_bytes(gzip.compress(profile.SerializeToString()))


@pytest.fixture
def offline_viewer(tmp_path):
    """Start `python -m pyprofiler ui ...`; returns a function of the arguments that gives the
    URL it prints. Every viewer started is stopped (by pid)."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyprofiler", "ui", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return read_line(process, timeout=TIMEOUT).strip()

    yield start
    for process in started:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_the_offline_viewer_serves_the_files_and_their_sources_only(tmp_path, offline_viewer):
    source = tmp_path / "work.go"
    source.write_text("package main\n\nfunc work() {}\n")
    current, base = tmp_path / "cpu.pb.gz", tmp_path / "base.pb.gz"
    go_like_profile(current, str(source))
    go_like_profile(base, str(source))
    url = offline_viewer(str(current), "--base", str(base))
    assert url.startswith("http://127.0.0.1:") and url.endswith("/ui/#view=diff")
    root = url.split("#")[0]
    document = requests.get(root + "profiles", timeout=TIMEOUT).json()
    assert document["mode"] == "files"
    assert document["profiles"][0]["url"] == "file/0"
    assert document["profiles"][0]["base_url"] == "file/1"
    assert requests.get(root + "file/0", timeout=TIMEOUT).content == current.read_bytes()
    assert requests.get(root, timeout=TIMEOUT).headers["Content-Type"].startswith("text/html")
    shown = requests.get(root + "source", params={"file": str(source)}, timeout=TIMEOUT)
    assert shown.status_code == 200 and "func work()" in shown.text
    refused = requests.get(root + "source", params={"file": "/etc/passwd"}, timeout=TIMEOUT)
    assert refused.status_code == 403 and "root:" not in refused.text
    assert requests.get(root + "file/2", timeout=TIMEOUT).status_code == 404
    rebound = requests.get(root + "profiles", headers={"Host": "evil.example"}, timeout=TIMEOUT)
    assert rebound.status_code == 403


def test_the_offline_viewer_refuses_a_file_that_is_not_a_profile(tmp_path):
    junk = tmp_path / "junk.pb.gz"
    junk.write_bytes(b"\x1f\x8b not gzip at all")
    result = subprocess.run(
        [sys.executable, "-m", "pyprofiler", "ui", str(junk), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "not a pprof profile" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "pyprofiler", "ui", str(tmp_path / "none.pb.gz")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_the_command_names_both_commands():
    result = subprocess.run(
        [sys.executable, "-m", "pyprofiler", "nothing"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "python -m pyprofiler ui FILE" in result.stderr
