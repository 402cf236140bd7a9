"""The /debug/pprof/ routes, with Go's parameters, status codes, headers and texts, whichever
server or framework carries them (wsgi.py, asgi.py).

This layer only parses parameters, applies the guards (guards.py) and calls profiles by name
through the registry, or, on the process that serves a group's port, asks the group for them
(fanout.py). The guards and the group are handed to it; of pyprofiler it imports only the
registry and the errors. Every request gets an answer here, never an exception.
"""

from __future__ import annotations

import gc
import html
import http
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, NamedTuple

from pyprofiler import registry, ui
from pyprofiler.errors import ProfilerBusyError, ProfileUnavailableError

if TYPE_CHECKING:
    from pyprofiler.fanout import Answer, Fanout, Worker
    from pyprofiler.guards import Guards
    from pyprofiler.hangup import Signal

log = logging.getLogger("pyprofiler")

PREFIX = "/debug/pprof"
DEFAULT_SECONDS = 30
DEFAULT_MAX_SECONDS = 300
# /symbol's body: pprof posts 19 bytes or so per address; this is about 55 000 of them.
MAX_SYMBOL_BODY = 1 << 20
_READ_CHUNK = 64 * 1024
_ALLOWED = {"symbol": ("GET", "HEAD", "POST")}
_GET = ("GET", "HEAD")

_CMDLINE_DESCRIPTION = "The command line invocation of the current program"
_GOROUTINE_DUMP_LINK = '<a href="goroutine?debug=2">full goroutine stack dump</a>\n<br>\n'
_TEXT = "text/plain; charset=utf-8"

# Go's strconv.Atoi / ParseInt(s, 10, 64): ASCII digits, an optional sign, nothing else.
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
# strconv.ParseUint(s, 0, 64) as /symbol reads its words: a Go integer literal.
_GO_UINT = re.compile(r"(0[xX][_0-9a-fA-F]+|0[oO][_0-7]+|0[bB][_01]+|0[_0-7]*|[1-9][_0-9]*)\Z")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_INT64 = 1 << 63


@dataclass
class Request:
    """A request as the routes see it, made by the server or framework that received it."""

    method: str
    name: str  # The path below /debug/pprof/: "" is the index, "heap", "myapp/conns", ...
    query: str  # The raw query string, its bytes as latin-1.
    headers: Mapping[str, str]  # Lower-case names.
    body: IO[bytes] | None = None
    content_length: int | None = None
    hangup: Signal | None = None  # Set when the client goes away.
    args: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.args = form_values(self.query)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]

    @property
    def status_line(self) -> str:
        try:
            return f"{self.status} {http.HTTPStatus(self.status).phrase}"
        except ValueError:
            return f"{self.status} Unknown"


class BadRequest(Exception):
    """A request parameter that cannot be honoured; the message is the 400 body."""


class NoSuchMember(Exception):
    """`?pid=N` naming no process of this port's group; the message is the 404 body."""


class Members(NamedTuple):
    """Whom a request on a group's port asks: every member (`pids` None), or `pids`."""

    group: Fanout
    pids: list[int] | None


def form_values(query: str) -> dict[str, str]:
    """Go's r.FormValue for each name of a query string: its first value, `+` and `%XX`
    decoded; a pair with a bad escape or a `;` is skipped, as url.ParseQuery skips it."""
    values: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        name, _, value = pair.partition("=")
        name, value = _unescape(name), _unescape(value)
        if name is not None and value is not None:
            values.setdefault(name, value)
    return values


def _unescape(text: str) -> str | None:
    if text.count("%") != len(_PERCENT.findall(text)):
        return None
    raw = _PERCENT.sub(lambda m: chr(int(m[1], 16)), text.replace("+", " "))
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def go_atoi(text: str) -> int | None:
    """strconv.Atoi on a 64-bit platform, or None where it fails."""
    if not _GO_INT.match(text):
        return None
    value = int(text, 10)
    return value if -_INT64 <= value < _INT64 else None


def go_parse_uint(word: str) -> int | None:
    """strconv.ParseUint(word, 0, 64), or None where it fails."""
    if not _GO_UINT.match(word):
        return None
    octal = word[0] == "0" and len(word) > 1 and word[1] not in "xXoObB"  # Go's 017.
    try:
        value = int("0o" + word[1:] if octal else word, 0)
    except ValueError:  # Python's rules for `_` are Go's.
        return None
    return value if value < 1 << 64 else None


def serve_error(status: int, text: str) -> Reply:
    """Go's serveError: a plain-text body that `go tool pprof` prints as the reason."""
    headers = [("Content-Type", _TEXT), ("X-Go-Pprof", "1"), ("X-Content-Type-Options", "nosniff")]
    return Reply(status, headers, [(text + "\n").encode()])


class _Chunks(list):
    """A file-like sink whose chunks become the response body without ever being joined: one
    copy of a large dump would hold the GIL for as long as it takes."""

    write = list.append


def _profile_reply(data: bytes | Iterable[bytes], filename: str) -> Reply:
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Disposition", f'attachment; filename="{filename}"'),
        ("X-Content-Type-Options", "nosniff"),
    ]
    return Reply(200, headers, [data] if isinstance(data, bytes) else data)


def _text_reply(text: str | Iterable[bytes], content_type: str = _TEXT) -> Reply:
    body = [text.encode("utf-8", "surrogateescape")] if isinstance(text, str) else text
    return Reply(200, [("Content-Type", content_type), ("X-Content-Type-Options", "nosniff")], body)


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
    # Go's rows stay as they are (tools read them); the viewer's links get a paragraph below.
    views = " ".join(
        f"<a href='ui/#profile={html.escape(p.name)}'>{html.escape(p.name)}</a>"
        for p in registry.profiles()
        if p.mergeable
    )
    ui_links = (
        "<p>\nView in the browser, with no Go and no graphviz: <a href='ui/'>flame graph, top, "
        f"source and diff</a>.\n<br>\n{views}\n</p>\n"
    )
    return (
        "<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{\n"
        "\tdisplay:inline-block;\n\twidth:6rem;\n}\n</style>\n</head>\n<body>\n/debug/pprof/\n"
        "<br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\n"
        "Types of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n"
        f"{rows}</table>\n{dump_link}{ui_links}{workers_table}<p>\nProfile Descriptions:\n<ul>\n"
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


class Routes:
    """The /debug/pprof/ routes of one app or server: `answer(request)` for every request.

    `max_seconds` caps the duration of CPU, wall and delta profiles, the default 30 s too.
    With a `group`, these are the routes of the process that serves the group's port, which
    answer for every member.
    """

    def __init__(
        self,
        max_seconds: int,
        guards: Guards,
        group: Fanout | None = None,
    ) -> None:
        self.max_seconds = max_seconds
        self.guards = guards
        self.group = group

    def answer(self, request: Request) -> Reply:
        try:
            with registry.turn():  # See turns.py: the application's threads come first.
                reply = self._guarded(request)
        except Exception as exc:  # The host application never sees a traceback.
            # The name only where it is a profile's: what a client sends is not logged.
            known = request.name if registry.lookup(request.name) else "?"
            log.exception("pyprofiler: /debug/pprof/%s failed", known)
            reply = serve_error(500, f"internal error: {type(exc).__name__}")
        reply.headers.extend(self.guards.cors_headers(request.headers))
        return reply

    def _guarded(self, request: Request) -> Reply:
        guards = self.guards
        if guards.host_refused(request.headers.get("host")):
            host = request.headers.get("host", "")[:100]
            return serve_error(
                403,
                f"Host {host!r} is not allowed: this server answers requests for localhost, "
                "127.0.0.1 and [::1] only (a defence against DNS rebinding)",
            )
        if request.method == "OPTIONS" and guards.origin_allowed(request.headers.get("origin")):
            return Reply(
                204,
                [
                    ("Access-Control-Allow-Methods", "GET, HEAD, POST"),
                    ("Access-Control-Allow-Headers", "Authorization"),
                    ("Access-Control-Max-Age", "600"),
                ],
                [],
            )
        if request.name == "ui" or (request.name.startswith("ui/") and _is_ui_asset(request.name)):
            # The page's own files hold nothing of the process: they load without the token,
            # which the page then sends with every request for data.
            return _ui_asset_reply(request)
        token = request.args.get("token")
        if not guards.token_accepted(request.headers.get("authorization"), token):
            reply = serve_error(
                401, "a token is needed: Authorization: Bearer <token>, or ?token=<token>"
            )
            reply.headers.append(("WWW-Authenticate", 'Bearer realm="pyprofiler"'))
            return reply
        allowed = _ALLOWED.get(request.name, _GET)
        if request.method not in allowed:
            reply = serve_error(
                405, f"method {request.method} not allowed; use {' or '.join(allowed)}"
            )
            reply.headers.append(("Allow", ", ".join(allowed)))
            return reply
        try:
            return self._route(request)
        except BadRequest as exc:
            return serve_error(400, str(exc))
        except NoSuchMember as exc:
            return serve_error(404, str(exc))
        except ProfileUnavailableError as exc:
            return serve_error(501, str(exc))

    def _route(self, request: Request) -> Reply:
        name = request.name
        members = self._members(request)
        one = members is not None and members.pids is not None
        if one and name in ("", "cmdline", "symbol"):
            return self._forwarded(request, members)
        if not name:
            return self._index(members)
        if name == "cmdline":  # The holder's own, as Go's.
            return _text_reply(_cmdline())
        if name == "symbol":
            return self._symbol(request, members.group if members is not None else None)
        if name == "ui/profiles":
            return _ui_profiles()
        if name == "ui/source":
            return _ui_source(request)
        if name.startswith("ui/"):
            return not_found()
        profile = registry.lookup(name)
        if profile is None:
            return serve_error(404, "Unknown profile")
        seconds = self._duration(request, profile)
        options = self._options(request, profile)
        ticket = self.guards.limiter.enter(seconds)
        if ticket is None:
            reply = serve_error(
                429,
                f"{self.guards.limiter.limit} profiles are being taken already; "
                "try again when one has finished",
            )
            reply.headers.append(("Retry-After", str(self.guards.limiter.retry_after())))
            return reply
        try:
            return self._profile(request, profile, seconds, options, members)
        finally:
            self.guards.limiter.leave(ticket)

    def _duration(self, request: Request, profile: registry.Profile) -> int:
        """How long the profile asked for runs (0: an instant one); a bad request raises."""
        self._int_param(request, "include_self")
        if profile.timed:
            default = profile.default_seconds or DEFAULT_SECONDS
            return self._seconds(request.args.get("seconds", ""), default=default)
        if request.args.get("seconds", "") == "":
            self._int_param(request, "debug")
            self._int_param(request, "gc")
            return 0
        seconds = self._seconds(request.args["seconds"])
        if not profile.supports_delta:
            raise BadRequest('"seconds" parameter is not supported for this profile type')
        if self._int_param(request, "debug") != 0:
            raise BadRequest("seconds and debug params are incompatible")
        return seconds

    def _seconds(self, raw: str, default: int | None = None) -> int:
        if raw == "" and default is not None:
            # Go users expect a profile from a bare /profile: the default, within the cap.
            return min(default, self.max_seconds)
        seconds = int(raw, 10) if _GO_INT.match(raw) else 0
        if seconds <= 0:
            raise BadRequest('invalid value for "seconds" - must be a positive integer')
        if seconds > self.max_seconds:
            raise BadRequest(
                f'invalid value for "seconds" - must be at most {self.max_seconds} '
                "(this server's maximum profile duration)"
            )
        return seconds

    @staticmethod
    def _options(request: Request, profile: registry.Profile) -> dict[str, str]:
        """The value of each option the profile offers: the request's, or the default."""
        chosen = {}
        for name, values in profile.options.items():
            raw = request.args.get(name, "")
            if raw != "" and raw not in values:
                raise BadRequest(f'invalid value for "{name}" - must be one of {", ".join(values)}')
            chosen[name] = raw or values[0]
        return chosen

    @staticmethod
    def _int_param(request: Request, name: str) -> int:
        raw = request.args.get(name, "")
        value = go_atoi(raw) if raw != "" else 0
        if value is None:
            raise BadRequest(f'invalid value for "{name}" - must be an integer')
        return value

    def _profile(
        self,
        request: Request,
        profile: registry.Profile,
        seconds: int,
        options: dict[str, str],
        members: Members | None,
    ) -> Reply:
        if members is not None:
            if not profile.mergeable:
                return self._one_member(request, profile, members, seconds)
            if options.get("format", "pprof") != "pprof":
                # Members' profiles are merged, which only profile.proto can be.
                raise BadRequest(
                    f"format={options['format']} is one process's profile and several serve "
                    "this port: ask for the default pprof format, each sample labelled with "
                    "its pid"
                )
            return self._gathered(request, members, seconds)
        name = profile.filename(options) if profile.timed else profile.name
        debug = self._int_param(request, "debug")
        include_self = self._int_param(request, "include_self") > 0
        body = _Chunks()
        if seconds and not profile.timed:
            name += "-delta"
        elif name == "heap" and self._int_param(request, "gc") > 0:
            gc.collect()
        try:
            written = registry.write(
                profile, body, debug, seconds, include_self, request.hangup, options
            )
        except ProfilerBusyError as exc:  # A profiler that runs one window at a time.
            activity = profile.activity or f"{profile.name} profiling"
            return serve_error(500, f"Could not enable {activity}: {exc}")
        if not written:
            # Go's answer to a delta whose client went away; a CPU or wall profile cut short is
            # sent as it is, as Go sends it.
            return serve_error(500, "context canceled")
        if debug > 0 and not profile.timed and not seconds:
            return _text_reply(body)
        return _profile_reply(body, name)

    def _members(self, request: Request) -> Members | None:
        """Whom a request is for: `?pid=N` names one member; without it, every member when
        this process serves a group's port and others are in the group; None: this process."""
        raw = request.args.get("pid", "")
        pid = go_atoi(raw) if raw != "" else None
        if raw != "" and (pid is None or pid <= 0):
            raise BadRequest('invalid value for "pid" - must be a positive integer')
        if self.group is not None:
            members = self.group.members()
            if pid is None and any(member != os.getpid() for member in members):
                return Members(self.group, None)
            if pid in members:
                return Members(self.group, [pid])
        if pid is None or pid == os.getpid():
            return None
        raise NoSuchMember(f"no process with pid {pid} serves this port")

    def _one_member(
        self, request: Request, profile: registry.Profile, members: Members, seconds: int
    ) -> Reply:
        """A profile that cannot be merged, on a group's port: the one member's, as it is."""
        if members.pids is None:
            raise BadRequest(
                f"the {profile.name} is one process's and several serve this port: add pid=N "
                "for one of them (the index lists them)"
            )
        timeout = seconds + members.group.answer_grace
        target = _member_target(request)
        return _answer_reply(members.group.forward(members.pids[0], target, timeout))

    def _gathered(self, request: Request, members: Members, seconds: int) -> Reply:
        answer = members.group.gather(
            _member_target(request),
            seconds + members.group.answer_grace,
            pids=members.pids,
            stop=request.hangup,
        )
        return _answer_reply(answer)

    def _forwarded(self, request: Request, members: Members) -> Reply:
        """One member's own answer to a request that is not a profile (index, cmdline,
        symbol)."""
        assert members.pids is not None
        body = b""
        if request.method == "POST":
            body, refused = _read_body(request)
            if refused is not None:
                return refused
        return _answer_reply(
            members.group.forward(
                members.pids[0],
                _member_target(request),
                members.group.answer_grace,
                method="POST" if request.method == "POST" else "GET",
                body=body,
            )
        )

    def _index(self, members: Members | None) -> Reply:
        if members is None:
            page = index_page()
        else:
            workers, counts = members.group.workers()
            page = index_page(counts, workers)
        return _text_reply(page, "text/html; charset=utf-8")

    def _symbol(self, request: Request, group: Fanout | None) -> Reply:
        # Go's format: words joined by '+', in the POST body or the raw query string.
        if request.method == "POST":
            data, refused = _read_body(request)
            if refused is not None:
                return refused
            raw = data.decode("latin-1")
        else:
            raw = request.query
        addresses = [a for a in map(go_parse_uint, raw.split("+")) if a]  # Go skips 0 too.
        names = {address: registry.symbol(address) for address in addresses}
        unknown = [hex(address) for address, name in names.items() if name is None]
        if group is not None and unknown:
            # Addresses are hashes of function and line (symbols.py): another member knows
            # those of profiles it encoded that this process never encoded itself.
            names.update(group.symbols(unknown))
        lines = ["num_symbols: 1"]
        lines.extend(f"{a:#x} {names[a]}" for a in addresses if names.get(a) is not None)
        return _text_reply("\n".join(lines) + "\n")


def _is_ui_asset(name: str) -> bool:
    return name not in ("ui/profiles", "ui/source")


def _ui_asset_reply(request: Request) -> Reply:
    if request.method not in _GET:
        reply = serve_error(405, f"method {request.method} not allowed; use GET or HEAD")
        reply.headers.append(("Allow", ", ".join(_GET)))
        return reply
    if request.name == "ui":
        return redirect("ui/" + (f"?{request.query}" if request.query else ""))
    found = ui.asset(request.name[len("ui/") :])
    if found is None:
        return not_found()
    data, content_type = found
    return Reply(
        200,
        [
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-cache"),
        ],
        [data],
    )


def _ui_profiles() -> Reply:
    entries: list[dict[str, object]] = [
        {
            "name": p.name,
            "description": p.description,
            "timed": p.timed,
            "delta": p.supports_delta,
            "url": f"../{p.name}",
        }
        for p in registry.profiles()
        if p.mergeable  # profile.proto, which the page decodes; not the trace's JSON.
    ]
    title = f"{_cmdline().replace(chr(0), ' ')[:200]} (pid {os.getpid()})"
    return _text_reply([ui.profiles_json("live", title, entries)], "application/json")


def _ui_source(request: Request) -> Reply:
    name = request.args.get("file", "")
    if not name:
        return serve_error(400, 'missing "file" parameter: the source file to show')
    filename = registry.named_file(name)
    if filename is None:
        return serve_error(
            403,
            f"{name[:300]!r} is not named by a profile this process has served: the source view "
            "reads only those files",
        )
    try:
        text = ui.read_source(filename)
    except ui.SourceUnavailable as exc:
        return serve_error(404, str(exc))
    return _text_reply(text)


def _read_body(request: Request) -> tuple[bytes, Reply | None]:
    """The request's body, read a chunk at a time up to MAX_SYMBOL_BODY, or the reply that
    refuses it: 413 beyond the limit (at once when Content-Length says so), 400 when it cannot
    be read (a truncated chunked body, a client that went away)."""
    too_large = serve_error(413, f"request body too large: at most {MAX_SYMBOL_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_SYMBOL_BODY:
        return b"", too_large
    if request.body is None:
        return b"", None
    chunks, size = [], 0
    try:
        with registry.waiting():  # On the client, which may be slow.
            while True:
                chunk = request.body.read(min(_READ_CHUNK, MAX_SYMBOL_BODY + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_SYMBOL_BODY:
                    return b"", too_large
    except Exception as exc:  # Whatever the server raises for a body it could not read.
        return b"", serve_error(400, f"reading request: {exc or type(exc).__name__}")
    return b"".join(chunks), None


def _member_target(request: Request) -> str:
    """The path and query to ask a member for: this request's, without `pid` and `token`."""
    query = "&".join(
        part
        for part in request.query.split("&")
        if part and not part.startswith(("pid=", "token="))
    )
    return f"{PREFIX}/{request.name}" + (f"?{query}" if query else "")


def _answer_reply(answer: Answer) -> Reply:
    if answer.status != 200:
        return serve_error(answer.status, answer.text.rstrip("\n"))
    if answer.filename is not None:
        return _profile_reply(answer.body, answer.filename)
    return _text_reply([answer.body], answer.content_type)


def locate(path: str, mounted: bool) -> tuple[str | None, bool]:
    """What a path relative to the app's mount point asks for: (the name below /debug/pprof/,
    or None if the path is not the app's; whether it is the index without its trailing slash,
    to be redirected). Served at the root, the pages are under /debug/pprof/; mounted at a
    prefix (`/debug/pprof` itself, `/admin/pprof`), directly under it."""
    if path == PREFIX or (mounted and path == ""):
        return "", True
    if path.startswith(PREFIX + "/"):
        path = path[len(PREFIX) :]
    elif not mounted:
        return None, False
    if not path.startswith("/"):
        return None, False
    return path[1:].encode("latin-1", "replace").decode("utf-8", "replace"), False


def redirect(location: str) -> Reply:
    """Go's ServeMux answer for the index asked for without its trailing slash."""
    headers = [("Location", location), ("Content-Type", "text/html; charset=utf-8")]
    body = f'<a href="{html.escape(location)}">Moved Permanently</a>.\n\n'
    return Reply(301, headers, [body.encode()])


def not_found() -> Reply:
    """Go's ServeMux answer for a path it has no handler for."""
    return serve_error(404, "404 page not found")
