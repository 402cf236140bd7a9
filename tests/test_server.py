"""serve()/Server lifecycle: one server per process, stop() frees the port, max_seconds.

These tests start their own servers, so they cannot share the module server of test_http.py.
"""

from __future__ import annotations

import re

import pytest
import requests
from conftest import running_server

import pyprofiler

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
