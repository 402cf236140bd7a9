"""The /debug/pprof/ routes as a Flask blueprint, with Go's status codes, headers and texts.

This layer only parses parameters and calls profiles by name through the registry, or, on the
process that serves a group's port, asks the group for them (fanout.py).
"""

from __future__ import annotations

import gc
import html
import logging
import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

from flask import Blueprint, Response, request

from pyprofiler import proto, registry, symbols
from pyprofiler.errors import ProfilerBusyError, ProfileUnavailableError
from pyprofiler.fanout import ANSWER_GRACE, Answer, Fanout, Worker

log = logging.getLogger("pyprofiler")

DEFAULT_SECONDS = 30
DEFAULT_MAX_SECONDS = 300
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]

_CMDLINE_DESCRIPTION = "The command line invocation of the current program"
_GOROUTINE_DUMP_LINK = '<a href="goroutine?debug=2">full goroutine stack dump</a>\n<br>\n'


class BadRequest(Exception):
    """A request parameter that cannot be honoured; the message is the 400 body."""


class NoSuchMember(Exception):
    """`?pid=N` naming no process of this port's group; the message is the 404 body."""


class Members(NamedTuple):
    """Whom a request on a group's port asks: every member (`pids` None), or `pids`."""

    group: Fanout
    pids: list[int] | None


def _headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def serve_error(status: int, text: str) -> Response:
    """Go's serveError: a plain-text body that `go tool pprof` prints as the reason."""
    response = Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    response.headers["X-Go-Pprof"] = "1"
    return _headers(response)


class _Chunks(list):
    """A file-like sink whose chunks become the response body without ever being joined: one
    copy of a large dump would hold the GIL for as long as it takes."""

    write = list.append


def _profile_response(data: bytes | Iterable[bytes], filename: str) -> Response:
    response = Response(data, content_type="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return _headers(response)


def _text_response(
    text: str | Iterable[str], content_type: str = "text/plain; charset=utf-8"
) -> Response:
    return _headers(Response(text, content_type=content_type))


def _int_param(name: str) -> int:
    raw = request.args.get(name, "")
    try:
        return int(raw, 10) if raw != "" else 0
    except ValueError:
        raise BadRequest(f'invalid value for "{name}" - must be an integer') from None


def _seconds_param(max_seconds: int) -> int:
    raw = request.args.get("seconds", "")
    if raw == "":
        return DEFAULT_SECONDS
    try:
        seconds = int(raw, 10)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise BadRequest('invalid value for "seconds" - must be a positive integer')
    if seconds > max_seconds:
        raise BadRequest(
            f'invalid value for "seconds" - must be at most {max_seconds} '
            "(this server's maximum profile duration)"
        )
    return seconds


def _pid_param() -> int | None:
    raw = request.args.get("pid", "")
    if raw == "":
        return None
    try:
        pid = int(raw, 10)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise BadRequest('invalid value for "pid" - must be a positive integer')
    return pid


def _members(group: Fanout | None) -> Members | None:
    """Whom a request is for: `?pid=N` names one member; without it, every member when this
    process serves a group's port and others are in the group; None: this process alone."""
    pid = _pid_param()
    if group is not None:
        members = group.members()
        if pid is None and any(member != os.getpid() for member in members):
            return Members(group, None)
        if pid in members:
            return Members(group, [pid])
    if pid is None or pid == os.getpid():
        return None
    raise NoSuchMember(f"no process with pid {pid} serves this port")


def _member_target(name: str) -> str:
    """The path and query to ask a member for: this request's, without `pid`."""
    query = "&".join(
        part
        for part in request.query_string.decode("latin-1").split("&")
        if part and not part.startswith("pid=")
    )
    return f"/debug/pprof/{name}" + (f"?{query}" if query else "")


def _answer_response(answer: Answer) -> Response:
    if answer.status != 200:
        return serve_error(answer.status, answer.text.rstrip("\n"))
    if answer.filename is not None:
        return _profile_response(answer.body, answer.filename)
    return _text_response(answer.body, answer.content_type)


def _age(seconds: float) -> str:
    """Go's duration layout, to the second: 45s, 12m3s, 3h0m12s."""
    minutes, secs = divmod(max(int(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _workers_table(workers: list[Worker]) -> str:
    rows = "".join(
        f"<tr><td><a href='?pid={w.pid}'>{w.pid}</a></td><td>{_age(w.age_seconds)}</td>"
        f"<td>{'yes' if w.holds_port else ''}</td><td>{html.escape(w.cmdline)}</td></tr>\n"
        for w in workers
    )
    return (
        f"<p>\nProcesses serving this port: {len(workers)}. Profiles are of all of them, each "
        "sample labelled with its pid; add pid=N for one.\n<table>\n"
        "<thead><td>Pid</td><td>Age</td><td>Holds port</td><td>Command line</td></thead>\n"
        f"{rows}</table>\n</p>\n"
    )


def index_page(counts: dict[str, int] | None = None, workers: list[Worker] | None = None) -> str:
    """Go's /debug/pprof/ page: a row per profile with its count, then the descriptions; for a
    group, the counts summed over its `workers`, which are listed below the table."""
    entries = [
        (p.name, p.count() if counts is None else counts.get(p.name, 0), p.description)
        for p in registry.profiles()
    ]
    entries.append(("cmdline", 0, _CMDLINE_DESCRIPTION))
    entries.sort()
    rows = "".join(
        f"<tr><td>{count}</td><td><a href='{html.escape(name)}?debug=1'>"
        f"{html.escape(name)}</a></td></tr>\n"
        for name, count, _ in entries
    )
    descriptions = "".join(
        f"<li><div class=profile-name>{html.escape(name)}: </div> {html.escape(text)}</li>\n"
        for name, _, text in entries
    )
    dump_link = _GOROUTINE_DUMP_LINK if registry.lookup("goroutine") else ""
    workers_table = _workers_table(workers) if workers else ""
    return (
        "<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{\n"
        "\tdisplay:inline-block;\n\twidth:6rem;\n}\n</style>\n</head>\n<body>\n/debug/pprof/\n"
        "<br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\n"
        "Types of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n"
        f"{rows}</table>\n{dump_link}{workers_table}<p>\nProfile Descriptions:\n<ul>\n"
        f"{descriptions}</ul>\n</p>\n</body>\n</html>"
    )


def _cmdline() -> str:
    argv = getattr(sys, "orig_argv", None)  # Python 3.10+
    if argv is None:
        try:
            with open("/proc/self/cmdline", "rb") as file:
                argv = [os.fsdecode(arg) for arg in file.read().rstrip(b"\0").split(b"\0")]
        except OSError:
            argv = [sys.executable, *sys.argv]
    return "\x00".join(argv)


def _symbol(group: Fanout | None) -> Response:
    # Go's format: words joined by '+', in the POST body or the raw query string.
    if request.method == "POST":
        raw = request.get_data(as_text=True)
    else:
        raw = request.query_string.decode("latin-1")
    addresses = []
    for word in raw.split("+"):
        try:
            addresses.append(int(word, 0))
        except ValueError:
            continue
    names = {address: symbols.lookup(address) for address in addresses}
    unknown = [hex(address) for address, name in names.items() if name is None]
    if group is not None and unknown:
        # Addresses are hashes of function and line (symbols.py): another member knows those
        # of profiles it encoded that this process never encoded itself.
        names.update(group.symbols(unknown))
    lines = ["num_symbols: 1"]
    lines.extend(f"{a:#x} {names[a]}" for a in addresses if names.get(a) is not None)
    return _text_response("\n".join(lines) + "\n")


def _named_profile(name: str, max_seconds: int, members: Members | None) -> Response:
    profile = registry.lookup(name)
    if profile is None:
        return serve_error(404, "Unknown profile")
    if profile.timed:
        seconds = _seconds_param(max_seconds)
        if members is not None:
            return _gathered(name, members, seconds)
        try:
            snapshot = profile.snapshot(seconds)
        except ProfilerBusyError as exc:
            return serve_error(500, f"Could not enable {profile.title} profiling: {exc}")
        return _profile_response(proto.encode(snapshot), name)
    if request.args.get("seconds", "") != "":
        seconds = _seconds_param(max_seconds)
        if not profile.supports_delta:
            return serve_error(400, '"seconds" parameter is not supported for this profile type')
        if _int_param("debug") != 0:
            return serve_error(400, "seconds and debug params are incompatible")
        if members is not None:
            return _gathered(name, members, seconds)
        body = _Chunks()
        profile.write_delta(body, seconds)
        return _profile_response(body, f"{name}-delta")
    collect = name == "heap" and _int_param("gc") > 0
    debug = _int_param("debug")
    if members is not None:
        return _gathered(name, members, 0)  # Each member collects for itself.
    if collect:
        gc.collect()
    body = _Chunks()
    profile.write_to(body, debug=debug)
    if debug > 0:
        return _text_response(body)
    return _profile_response(body, name)


def _gathered(name: str, members: Members, seconds: int) -> Response:
    target, timeout = _member_target(name), seconds + ANSWER_GRACE
    return _answer_response(members.group.gather(target, timeout, pids=members.pids))


def _forwarded(name: str, members: Members) -> Response:
    """One member's own answer to a request that is not a profile (index, cmdline, symbol)."""
    return _answer_response(
        members.group.forward(
            members.pids[0],
            _member_target(name),
            ANSWER_GRACE,
            method=request.method if request.method == "POST" else "GET",
            body=request.get_data() if request.method == "POST" else b"",
        )
    )


def _index(members: Members | None) -> Response:
    if members is None:
        page = index_page()
    else:
        workers, counts = members.group.workers()
        page = index_page(counts, workers)
    return _text_response(page, "text/html; charset=utf-8")


def blueprint(
    max_seconds: int = DEFAULT_MAX_SECONDS, url_prefix: str = "/debug/pprof"
) -> Blueprint:
    """The /debug/pprof/ routes, for `app.register_blueprint(pyprofiler.blueprint())`.

    `max_seconds` caps the duration that /profile and /wall accept.
    """
    return group_blueprint(max_seconds, url_prefix, group=None)


def group_blueprint(max_seconds: int, url_prefix: str, group: Fanout | None) -> Blueprint:
    """The routes of blueprint(); with a `group`, those of the process that serves the group's
    port, which answer for every member."""
    routes = Blueprint("pyprofiler", __name__, url_prefix=url_prefix)

    def handle(name: str | None) -> Response:
        allowed = ("GET", "HEAD", "POST") if name == "symbol" else ("GET", "HEAD")
        if request.method not in allowed:
            methods = " or ".join(allowed)
            response = serve_error(405, f"method {request.method} not allowed; use {methods}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        try:
            members = _members(group)
            one = members is not None and members.pids is not None
            if one and (not name or name in ("cmdline", "symbol")):
                return _forwarded(name or "", members)
            if not name:
                return _index(members)
            if name == "cmdline":  # The holder's own, as Go's.
                return _text_response(_cmdline())
            if name == "symbol":
                return _symbol(members.group if members is not None else None)
            return _named_profile(name, max_seconds, members)
        except BadRequest as exc:
            return serve_error(400, str(exc))
        except NoSuchMember as exc:
            return serve_error(404, str(exc))
        except ProfileUnavailableError as exc:
            return serve_error(501, str(exc))
        except Exception as exc:  # The host application never sees a traceback page.
            log.exception("pyprofiler: %s failed", request.path)
            return serve_error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes.add_url_rule("/", "index", lambda: handle(None), methods=_ALL_METHODS)
    routes.add_url_rule("/<path:name>", "profile", handle, methods=_ALL_METHODS)
    return routes
