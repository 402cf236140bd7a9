"""Custom profiles (pprof.NewProfile): Go's runtime/pprof semantics and error texts (spec 5.2),
their debug=0/1/2 forms read by `go tool pprof`, and how /debug/pprof/ serves them.

Custom profiles live in the process-wide registry for good, so every test uses its own name."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import re

import pytest
import requests
from support import go_pprof, pprof_traces, top_counts

import pyprofiler
from pyprofiler import PyprofilerError

MOD = __name__
TIMEOUT = 30
TEXT = "text/plain; charset=utf-8"
_serial = itertools.count()


def unique_name(stem: str, separator: str = "/") -> str:
    return f"test.custom{separator}{stem}-{os.getpid()}-{next(_serial)}"


def get(server, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT)


def written(profile, debug: int) -> bytes:
    buffer = io.BytesIO()
    profile.write_to(buffer, debug)
    return buffer.getvalue()


# Named call sites, so that stacks can be told apart by function.


def acquire_resource(profile, value, skip: int = 0) -> None:
    profile.add(value, skip=skip)


def open_connection(profile, value, skip: int = 0) -> None:
    acquire_resource(profile, value, skip)


def open_file(profile, value) -> None:
    profile.add(value)


# --- Go's API: NewProfile, Lookup, Profiles, Add, Remove, Count.


def test_new_profile_is_listed_with_its_count(server):
    profile = pyprofiler.new_profile("test/resources")
    try:
        assert profile.name == "test/resources"
        assert pyprofiler.lookup("test/resources") is profile
        names = [p.name for p in pyprofiler.profiles()]
        assert "test/resources" in names
        assert names == sorted(names)
        open_file(profile, "a.txt")
        open_file(profile, "b.txt")
        page = get(server, "").text
        assert (
            "<tr><td>2</td><td><a href='test/resources?debug=1'>test/resources</a></td></tr>\n"
            in page
        )
        # Listed with an empty description, as Go lists custom profiles.
        assert "<li><div class=profile-name>test/resources: </div> </li>\n" in page
        profile.remove("a.txt")
        assert "<tr><td>1</td><td><a href='test/resources?debug=1'>" in get(server, "").text
    finally:
        profile.remove("a.txt")
        profile.remove("b.txt")


def test_add_remove_count():
    profile = pyprofiler.new_profile(unique_name("count"))
    assert profile.count() == 0
    open_file(profile, "a")
    open_file(profile, ("tuple", 1))
    assert profile.count() == 2
    profile.remove("a")
    assert profile.count() == 1
    profile.remove("never added")  # A no-op, as in Go.
    profile.remove("a")  # Already removed: a no-op too.
    assert profile.count() == 1
    open_file(profile, "a")  # A removed value can be added again.
    assert profile.count() == 2


def test_add_of_a_duplicate_value_raises():
    profile = pyprofiler.new_profile(unique_name("duplicate"))
    open_file(profile, 42)
    with pytest.raises(PyprofilerError) as raised:
        open_file(profile, 42)
    assert str(raised.value) == "pprof: Profile.Add of duplicate value"
    assert profile.count() == 1


def test_new_profile_with_a_name_in_use_raises():
    name = unique_name("taken")
    first = pyprofiler.new_profile(name)
    with pytest.raises(PyprofilerError, match="pprof: NewProfile name already in use"):
        pyprofiler.new_profile(name)
    assert pyprofiler.lookup(name) is first


@pytest.mark.parametrize("name", ["goroutine", "threadcreate", "heap"])
def test_new_profile_cannot_take_a_built_in_name(name):
    built_in = pyprofiler.lookup(name)
    with pytest.raises(PyprofilerError, match=f"pprof: NewProfile name already in use: {name}"):
        pyprofiler.new_profile(name)
    assert pyprofiler.lookup(name) is built_in


def test_new_profile_with_an_empty_name_raises():
    count = len(pyprofiler.profiles())
    with pytest.raises(PyprofilerError, match="empty name"):
        pyprofiler.new_profile("")
    assert len(pyprofiler.profiles()) == count


@pytest.mark.parametrize("name", ["goroutine", "threadcreate"])
def test_add_on_a_built_in_profile_raises(name):
    with pytest.raises(PyprofilerError, match=f"Add called on built-in Profile {name}"):
        pyprofiler.lookup(name).add(1)


def test_skip_attributes_the_stack_to_callers(tmp_path):
    profile = pyprofiler.new_profile(unique_name("skip"))
    open_connection(profile, "skip0", skip=0)
    open_connection(profile, "skip1", skip=1)
    path = tmp_path / "skip.pb.gz"
    path.write_bytes(written(profile, 0))
    leaves = sorted(functions[0] for _, _, functions in pprof_traces(go_pprof(["-traces"], path)))
    # skip=0: the stack starts in add's caller; skip=1: one frame further up.
    assert leaves == [f"{MOD}.acquire_resource", f"{MOD}.open_connection"]
    for _, _, functions in pprof_traces(go_pprof(["-traces"], path)):
        assert f"{MOD}.test_skip_attributes_the_stack_to_callers" in functions
    top = top_counts(go_pprof(["-top"], path))
    assert top[f"{MOD}.acquire_resource"] == (1, 1)
    assert top[f"{MOD}.open_connection"] == (1, 2)


def test_add_with_a_skip_past_the_whole_stack_is_counted():
    """Go's TestEmptyCallStack: Add("foo", 47674) records the value under a lost-event stack
    instead of failing, and the profile says total 1."""
    name = unique_name("empty-stack")
    profile = pyprofiler.new_profile(name)
    profile.add("foo", skip=47674)
    text = written(profile, 1).decode()
    profile.remove("foo")
    assert text.startswith(f"{name} profile: total 1\n"), text
    assert "lost" in text.lower(), text


# --- write_to and the HTTP routes.


def test_write_to_at_every_debug_level(tmp_path):
    name = unique_name("levels")
    profile = pyprofiler.new_profile(name)
    for i in range(3):
        open_file(profile, f"file-{i}")
    open_connection(profile, "conn")

    proto = written(profile, 0)
    assert gzip.decompress(proto)  # profile.proto is gzipped.
    path = tmp_path / "custom.pb.gz"
    path.write_bytes(proto)
    raw = go_pprof(["-raw"], path)
    assert f"PeriodType: {name} count\n" in raw
    assert f"\n{name}/count\n" in raw
    assert "Period: 1\n" in raw
    top = top_counts(go_pprof(["-top"], path))
    assert top[f"{MOD}.open_file"] == (3, 3)
    assert top[f"{MOD}.acquire_resource"] == (1, 1)
    assert all(not labels for _, labels, _ in pprof_traces(go_pprof(["-traces"], path)))

    text = written(profile, 1).decode()
    assert text.startswith(f"{name} profile: total 4\n"), text
    records = re.findall(r"^(\d+) @((?: 0x[0-9a-f]+)+)\n((?:#.*\n)+)\n", text, re.M)
    assert [int(count) for count, _, _ in records] == [3, 1]  # Largest first.
    leaf = records[0][2].splitlines()[0]
    assert re.match(rf"^#\t0x[0-9a-f]+\t{MOD}\.open_file\t+{re.escape(__file__)}:\d+$", leaf)
    for _, addresses, frames in records:
        assert len(addresses.split()) == len(frames.splitlines())
    # Only goroutine has a debug=2 form; every other profile treats debug>0 as 1.
    assert written(profile, 2).decode() == text


def test_served_at_its_name_even_with_slashes(server, tmp_path):
    name = unique_name("served")
    assert "/" in name
    profile = pyprofiler.new_profile(name)
    open_file(profile, "x")
    open_connection(profile, "y")

    response = get(server, name)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    raw = go_pprof(["-raw"], server.url + name)
    assert f"PeriodType: {name} count\n" in raw
    top = top_counts(go_pprof(["-top"], server.url + name))
    assert top[f"{MOD}.open_file"] == (1, 1)
    assert top[f"{MOD}.open_connection"] == (0, 1)

    for debug in (1, 2):
        response = get(server, f"{name}?debug={debug}")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == TEXT
        assert "Content-Disposition" not in response.headers
        assert response.text.startswith(f"{name} profile: total 2\n")


def test_pprof_reads_debug1_through_the_symbol_endpoint(server):
    """`go tool pprof URL?debug=1` parses the count layout, takes one off each `@` address
    (Go writes return PCs there) and names them through /debug/pprof/symbol (spec 2.1). No
    '/' in this name: pprof finds the symbol endpoint at URL/../symbol."""
    name = unique_name("legacy", separator=".")
    profile = pyprofiler.new_profile(name)
    open_file(profile, "x")
    open_file(profile, "y")
    top = top_counts(go_pprof(["-top"], server.url + f"{name}?debug=1"))
    assert "<unknown>" not in top
    assert top.get(f"{MOD}.open_file") == (2, 2)


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("seconds=1", '"seconds" parameter is not supported for this profile type\n'),
        ("seconds=5&debug=1", '"seconds" parameter is not supported for this profile type\n'),
        ("seconds=abc", 'invalid value for "seconds" - must be a positive integer\n'),
        ("seconds=0", 'invalid value for "seconds" - must be a positive integer\n'),
    ],
)
def test_seconds_is_not_supported(server, query, body):
    name = unique_name("no-delta")
    profile = pyprofiler.new_profile(name)
    open_file(profile, "x")
    response = get(server, f"{name}?{query}")
    assert response.status_code == 400
    assert response.text == body
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["X-Go-Pprof"] == "1"
    assert "Content-Disposition" not in response.headers


def test_unknown_custom_name_is_404(server):
    response = get(server, unique_name("never-registered"))
    assert response.status_code == 404
    assert response.text == "Unknown profile\n"
