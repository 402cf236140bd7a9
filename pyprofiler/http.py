"""The /debug/pprof/ routes as a Flask blueprint, with Go's status codes, headers and texts.

This layer only parses parameters and calls profiles by name through the registry.
"""

from __future__ import annotations

import gc
import html
import logging
import os
import sys
from collections.abc import Iterable

from flask import Blueprint, Response, request

from pyprofiler import proto, registry, symbols
from pyprofiler.errors import ProfilerBusyError, ProfileUnavailableError

log = logging.getLogger("pyprofiler")

DEFAULT_SECONDS = 30
DEFAULT_MAX_SECONDS = 300
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]

_CMDLINE_DESCRIPTION = "The command line invocation of the current program"
_GOROUTINE_DUMP_LINK = '<a href="goroutine?debug=2">full goroutine stack dump</a>\n<br>\n'


class BadRequest(Exception):
    """A request parameter that cannot be honoured; the message is the 400 body."""


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


def index_page() -> str:
    """Go's /debug/pprof/ page: a row per profile with its count, then the descriptions."""
    entries = [(p.name, p.count(), p.description) for p in registry.profiles()]
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
    return (
        "<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{\n"
        "\tdisplay:inline-block;\n\twidth:6rem;\n}\n</style>\n</head>\n<body>\n/debug/pprof/\n"
        "<br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\n"
        "Types of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n"
        f"{rows}</table>\n{dump_link}<p>\nProfile Descriptions:\n<ul>\n{descriptions}</ul>\n"
        "</p>\n</body>\n</html>"
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


def _symbol() -> Response:
    # Go's format: words joined by '+', in the POST body or the raw query string.
    if request.method == "POST":
        raw = request.get_data(as_text=True)
    else:
        raw = request.query_string.decode("latin-1")
    lines = ["num_symbols: 1"]
    for word in raw.split("+"):
        try:
            address = int(word, 0)
        except ValueError:
            continue
        name = symbols.lookup(address)
        if name is not None:
            lines.append(f"{address:#x} {name}")
    return _text_response("\n".join(lines) + "\n")


def _named_profile(name: str, max_seconds: int) -> Response:
    profile = registry.lookup(name)
    if profile is None:
        return serve_error(404, "Unknown profile")
    if profile.timed:
        seconds = _seconds_param(max_seconds)
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
        body = _Chunks()
        profile.write_delta(body, seconds)
        return _profile_response(body, f"{name}-delta")
    if name == "heap" and _int_param("gc") > 0:
        gc.collect()
    debug = _int_param("debug")
    body = _Chunks()
    profile.write_to(body, debug=debug)
    if debug > 0:
        return _text_response(body)
    return _profile_response(body, name)


def blueprint(
    max_seconds: int = DEFAULT_MAX_SECONDS, url_prefix: str = "/debug/pprof"
) -> Blueprint:
    """The /debug/pprof/ routes, for `app.register_blueprint(pyprofiler.blueprint())`.

    `max_seconds` caps the duration that /profile and /wall accept.
    """
    routes = Blueprint("pyprofiler", __name__, url_prefix=url_prefix)

    def handle(name: str | None) -> Response:
        allowed = ("GET", "HEAD", "POST") if name == "symbol" else ("GET", "HEAD")
        if request.method not in allowed:
            methods = " or ".join(allowed)
            response = serve_error(405, f"method {request.method} not allowed; use {methods}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        try:
            if not name:
                return _text_response(index_page(), "text/html; charset=utf-8")
            if name == "cmdline":
                return _text_response(_cmdline())
            if name == "symbol":
                return _symbol()
            return _named_profile(name, max_seconds)
        except BadRequest as exc:
            return serve_error(400, str(exc))
        except ProfileUnavailableError as exc:
            return serve_error(501, str(exc))
        except Exception as exc:  # The host application never sees a traceback page.
            log.exception("pyprofiler: %s failed", request.path)
            return serve_error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes.add_url_rule("/", "index", lambda: handle(None), methods=_ALL_METHODS)
    routes.add_url_rule("/<path:name>", "profile", handle, methods=_ALL_METHODS)
    return routes
