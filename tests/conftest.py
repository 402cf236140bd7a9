"""The fixtures the tests share; the helpers are in support.py."""

from __future__ import annotations

import pytest
from support import _pprof_tmpdir, running_server

from pyprofiler import cpu


@pytest.fixture(autouse=True, scope="session")
def _pprof_session_tmpdir(tmp_path_factory):
    _pprof_tmpdir[0] = str(tmp_path_factory.mktemp("pprof"))


@pytest.fixture(scope="module")
def server():
    # Module scope: stop() waits out the WSGI poll loop (up to 0.5 s), too slow per test.
    with running_server() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _stop_leftover_profiles():
    yield
    # A failing test (or a pyprofiler bug) can leave a sampler running; without this every
    # later test would only report "cpu profiling already in use".
    cpu.stop_all()
