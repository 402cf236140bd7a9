"""The leader's requests to the members of its group, and their answers made one.

Members answer plain HTTP on their Unix sockets (group.py) with the /debug/pprof/ routes for
their own process, plus `MEMBER_PATH`, what the member says about itself. The leader asks every
member at once, in threads, so that timed profiles cover the same seconds everywhere; protobuf
answers are merged into one profile whose samples carry a `pid` label, text answers are put one
after the other under a header naming each pid. A member that fails or exits while it is asked
is left out and named in the answer; one member never fails the request.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Callable, NamedTuple

import psutil

from pyprofiler import hangup, proto, registry, turns
from pyprofiler.group import MemberGone, PortGroup, exited
from pyprofiler.snapshot import Snapshot, merge
from pyprofiler.stalls import gc_paused

MEMBER_PATH = "/pyprofiler/member"
# How long a member may take to answer beyond the seconds its profile runs for.
ANSWER_GRACE = 30.0
# How long a member may take to say who it is, or to look up symbols (a stopped member must
# not hold up the index page for long).
_QUICK_ANSWER = 5.0
# How often a request to the members checks whether its own client has gone away.
_HANGUP_POLL = 0.05
_PROFILE_CONTENT_TYPE = "application/octet-stream"
_FILENAME = re.compile(r'filename="([^"]*)"')

WSGIApp = Callable  # (environ, start_response) -> iterable of bytes


class Answer(NamedTuple):
    """A member's HTTP answer, or the leader's combined one."""

    status: int
    content_type: str
    body: bytes
    filename: str | None = None  # Content-Disposition's, for a profile.

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Worker(NamedTuple):
    """A member as the index page lists it."""

    pid: int
    age_seconds: float
    cmdline: str
    holds_port: bool


class MemberLost(Exception):
    """A member that failed or exited while it was being asked; the message says how."""


def member_app(local_app: WSGIApp, describe: Callable[[bool], dict]) -> WSGIApp:
    """The app on a member's socket: `local_app` (this process's /debug/pprof/), and
    MEMBER_PATH, `describe(with_counts)` as JSON."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != MEMBER_PATH:
            return local_app(environ, start_response)
        body = json.dumps(describe("counts=1" in environ.get("QUERY_STRING", ""))).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def describe_self(holds_port: bool, counts: dict[str, int] | None = None) -> dict:
    """What a member says about itself at MEMBER_PATH."""
    process = psutil.Process()
    info = {
        "pid": os.getpid(),
        "holds_port": holds_port,
        "started": process.create_time(),
        "cmdline": " ".join(process.cmdline()),
    }
    if counts is not None:
        info["counts"] = counts
    return info


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, group: PortGroup, pid: int, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._group = group
        self._pid = pid
        self._lock = threading.Lock()
        self._aborted = False

    def connect(self) -> None:
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("the client of this request went away")
            self.sock = self._group.connect(self._pid, self.timeout)

    def abort(self) -> None:
        """From another thread: end the request (the member sees its client go away)."""
        with self._lock:
            self._aborted = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def ask(
    group: PortGroup,
    pid: int,
    target: str,
    timeout: float,
    method: str = "GET",
    body: bytes | None = None,
    connection: _UnixHTTPConnection | None = None,
) -> Answer:
    """One request to one member. Raises MemberGone if it no longer listens (a stale socket,
    not worth reporting), MemberLost if it fails or exits while answering."""
    if connection is None:
        connection = _UnixHTTPConnection(group, pid, timeout)
    try:
        connection.request(method, target, body=body)
        response = connection.getresponse()
        data = response.read()
    except MemberGone:
        raise
    except (OSError, http.client.HTTPException) as exc:
        how = "exited: " if exited(pid) else ""
        raise MemberLost(f"{how}{type(exc).__name__}: {exc}".rstrip(": ")) from None
    finally:
        connection.close()
    filename = _FILENAME.search(response.getheader("Content-Disposition", ""))
    return Answer(
        response.status,
        response.getheader("Content-Type", ""),
        data,
        filename[1] if filename else None,
    )


def find_holder(group: PortGroup, timeout: float = _QUICK_ANSWER) -> tuple[int | None, list[int]]:
    """Ask every member whether it holds the port: (the holder's pid or None, the members that
    answered)."""
    holder, answered = None, []
    for pid, result in _ask_all(group, group.members(), MEMBER_PATH, timeout).items():
        if isinstance(result, Answer) and result.status == 200:
            answered.append(pid)
            try:
                if json.loads(result.body).get("holds_port"):
                    holder = pid
            except ValueError:
                pass
    return holder, sorted(answered)


def _ask_all(
    group: PortGroup,
    pids: list[int],
    target: str,
    timeout: float,
    method: str = "GET",
    body: bytes | None = None,
    stop: hangup.Signal | None = None,
) -> dict[int, Answer | str | None]:
    """Ask `pids` at once: pid -> its Answer, the reason it was lost, or None if it is gone.
    When `stop` is set (the client went away), every request is ended."""
    results: dict[int, Answer | str | None] = {}
    connections = {pid: _UnixHTTPConnection(group, pid, timeout) for pid in pids}

    def ask_one(pid: int) -> None:
        try:
            results[pid] = ask(group, pid, target, timeout, method, body, connections[pid])
        except MemberGone:
            results[pid] = None
        except MemberLost as exc:
            results[pid] = str(exc)
        except Exception as exc:  # Whatever it was, it must not fail the other members.
            results[pid] = f"{type(exc).__name__}: {exc}"

    threads = [
        threading.Thread(target=ask_one, args=(pid,), name="pyprofiler-group-ask", daemon=True)
        for pid in pids
    ]
    for thread in threads:
        thread.start()
    # Each request is bounded by its socket timeout; this bound is for what no timeout covers.
    deadline = time.monotonic() + timeout + 10
    with turns.waiting():  # On the members.
        _wait_for(threads, deadline, connections, stop)
    for pid in pids:
        results.setdefault(pid, f"no answer within {timeout + 10:.0f} s")
    return results


def _wait_for(
    threads: list[threading.Thread],
    deadline: float,
    connections: dict[int, _UnixHTTPConnection],
    stop: hangup.Signal | None,
) -> None:
    for thread in threads:
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(min(_HANGUP_POLL, max(0.0, deadline - time.monotonic())))
            if stop is not None and stop.is_set():
                for connection in connections.values():
                    connection.abort()
                stop = None


class Fanout:
    """What the leader's /debug/pprof/ routes ask of the group (http.py calls these)."""

    # Seconds a member has to answer beyond the duration of what it was asked for.
    answer_grace = ANSWER_GRACE

    def __init__(self, group: PortGroup) -> None:
        self.group = group

    def members(self) -> list[int]:
        return self.group.members()

    def has_others(self) -> bool:
        return any(pid != os.getpid() for pid in self.group.members())

    def forward(
        self, pid: int, target: str, timeout: float, method: str = "GET", body: bytes = b""
    ) -> Answer:
        """One member's own answer to `target`, passed through (a lost member is a 500)."""
        try:
            with turns.waiting():  # On the member.
                return ask(self.group, pid, target, timeout, method, body or None)
        except (MemberGone, MemberLost) as exc:
            return _lost_answer([(pid, str(exc))])

    def gather(
        self,
        target: str,
        timeout: float,
        pids: list[int] | None = None,
        stop: hangup.Signal | None = None,
    ) -> Answer:
        """Every member's (or `pids`') answer to a profile request, made one; every member's
        profile ends when `stop` is set."""
        pids = self.group.members() if pids is None else pids
        results = _ask_all(self.group, pids, target, timeout, stop=stop)
        answered: list[tuple[int, Answer]] = []
        failed: list[tuple[int, Answer]] = []
        lost: list[tuple[int, str]] = []
        for pid in pids:
            result = results[pid]
            if result is None:
                continue
            if isinstance(result, str):
                lost.append((pid, result))
            elif result.status != 200:
                failed.append((pid, result))
                lost.append((pid, f"{result.status} {result.text.strip()}"))
            else:
                answered.append((pid, result))
        if not answered:
            # The same refusal everywhere (a profile already running, one this Python cannot
            # produce) is passed on as it is, this process's own in preference.
            own = [answer for pid, answer in failed if pid == os.getpid()]
            if own or failed:
                return (own or [failed[0][1]])[0]
            return _lost_answer(lost)
        if answered[0][1].content_type == _PROFILE_CONTENT_TYPE:
            return _merged_profiles(answered, lost)
        return _texts_in_turn(answered, lost)

    def workers(self) -> tuple[list[Worker], dict[str, int]]:
        """The members as the index page lists them, and their profile counts summed."""
        pids = self.group.members()
        results = _ask_all(self.group, pids, MEMBER_PATH + "?counts=1", _QUICK_ANSWER)
        workers, counts = [], {}
        now = time.time()
        for pid in pids:
            result = results[pid]
            if not isinstance(result, Answer) or result.status != 200:
                continue
            try:
                info = json.loads(result.body)
                workers.append(
                    Worker(pid, now - info["started"], info["cmdline"], info["holds_port"])
                )
                for name, count in info.get("counts", {}).items():
                    counts[name] = counts.get(name, 0) + count
            except (ValueError, KeyError, TypeError):
                continue
        return workers, counts

    def symbols(self, words: list[str]) -> dict[int, str]:
        """Names the other members know for synthetic addresses (symbols.py): those of
        profiles they encoded that this process never encoded itself."""
        others = [pid for pid in self.group.members() if pid != os.getpid()]
        body = "+".join(words).encode()
        results = _ask_all(
            self.group, others, "/debug/pprof/symbol", _QUICK_ANSWER, method="POST", body=body
        )
        names = {}
        for result in results.values():
            if isinstance(result, Answer) and result.status == 200:
                for line in result.text.splitlines()[1:]:
                    address, _, name = line.partition(" ")
                    try:
                        names[int(address, 16)] = name
                    except ValueError:
                        continue
        return names


def _lost_line(pid: int, reason: str) -> str:
    return f"pyprofiler: worker pid {pid} lost: {reason}"


def _lost_answer(lost: list[tuple[int, str]]) -> Answer:
    text = "\n".join(_lost_line(pid, reason) for pid, reason in lost) or "no worker answered"
    return Answer(500, "text/plain; charset=utf-8", (text + "\n").encode())


def _merged_profiles(answered: list[tuple[int, Answer]], lost: list[tuple[int, str]]) -> Answer:
    snapshots: list[Snapshot] = []
    with gc_paused():  # Large profiles: see stalls.py.
        for pid, answer in answered:
            try:
                snapshot = proto.decode(answer.body)
            except Exception as exc:
                lost.append((pid, f"unreadable profile: {type(exc).__name__}: {exc}"))
                continue
            if snapshots and (snapshot.sample_types, snapshot.period_type) != (
                snapshots[0].sample_types,
                snapshots[0].period_type,
            ):
                lost.append((pid, f"its profile has other sample types: {snapshot.sample_types}"))
                continue
            labelled = snapshot.with_labels((("pid", str(pid)),))
            snapshots.append(
                replace(labelled, comments=tuple(f"pid {pid}: {c}" for c in snapshot.comments))
            )
        if not snapshots:
            return _lost_answer(lost)
        merged = merge(snapshots)
        merged.comments += tuple(_lost_line(pid, reason) for pid, reason in lost)
        encoded = io.BytesIO()
        registry.write_snapshot(merged, encoded)
        body = encoded.getvalue()
    return Answer(200, _PROFILE_CONTENT_TYPE, body, answered[0][1].filename)


def _texts_in_turn(answered: list[tuple[int, Answer]], lost: list[tuple[int, str]]) -> Answer:
    parts = []
    for pid, answer in answered:
        text = answer.text
        parts.append(f"# pyprofiler: worker pid {pid}\n{text}")
        parts.append("\n" if text.endswith("\n") else "\n\n")
    parts.extend(f"# {_lost_line(pid, reason)}\n" for pid, reason in lost)
    return Answer(200, answered[0][1].content_type, "".join(parts).encode())
