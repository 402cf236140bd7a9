"""`python -m pyprofiler ui FILE [--base BASE] [--port P]`: the built-in viewer for profile
files on disk (any pprof file, Go's included), served on 127.0.0.1 until interrupted.

It serves the page of the live viewer at /ui/, the files as /ui/file/0 (FILE) and /ui/file/1
(BASE), and the source of files that those profiles name, and nothing else.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import os
import sys
import threading
import urllib.parse
import zlib

from pyprofiler._proto import profile_pb2
from pyprofiler.guards import Guards, loopback_hosts
from pyprofiler.ui import SourceUnavailable, asset, profiles_json, read_source

HOST = "127.0.0.1"
# Profiles larger than this are not profiles a browser could show.
MAX_PROFILE_BYTES = 512 << 20


class ProfileFileError(Exception):
    """A file that is not a pprof profile; the message says why."""


def named_files(data: bytes) -> set[str]:
    """The file names that the functions of a pprof profile (gzipped or not) carry."""
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        profile = profile_pb2.Profile.FromString(raw)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ProfileFileError(f"not a pprof profile: {exc}") from None
    strings = profile.string_table
    try:
        return {strings[f.filename] for f in profile.function if f.filename}
    except IndexError:
        raise ProfileFileError("not a pprof profile: a string index out of range") from None


class Viewer:
    """What the offline viewer serves: the profiles read from disk, and which files they name."""

    def __init__(self, paths: list[str]) -> None:
        self.names = [os.path.basename(path) for path in paths]
        self.data: list[bytes] = []
        self.files: set[str] = set()
        for path in paths:
            with open(path, "rb") as file:
                data = file.read(MAX_PROFILE_BYTES + 1)
            if len(data) > MAX_PROFILE_BYTES:
                raise ProfileFileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes")
            try:
                self.files |= named_files(data)
            except ProfileFileError as exc:
                raise ProfileFileError(f"{path}: {exc}") from None
            self.data.append(data)

    def profiles(self) -> bytes:
        entry: dict[str, object] = {
            "name": self.names[0],
            "description": "a profile read from disk",
            "timed": False,
            "delta": False,
            "url": "file/0",
        }
        if len(self.data) > 1:
            entry["base_url"] = "file/1"
            entry["description"] = f"{self.names[0]} against {self.names[1]}"
        return profiles_json("files", " ".join(self.names), [entry])

    def answer(self, path: str, query: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path in ("/", "/ui"):
            return 301, "/ui/", b""
        if not path.startswith("/ui/"):
            return _text(404, "404 page not found")
        name = path[len("/ui/") :]
        if name == "profiles":
            return 200, "application/json", self.profiles()
        if name in ("file/0", "file/1") and int(name[-1]) < len(self.data):
            return 200, "application/octet-stream", self.data[int(name[-1])]
        if name == "source":
            return self._source(urllib.parse.parse_qs(query).get("file", [""])[0])
        found = asset(name)
        if found is None:
            return _text(404, "404 page not found")
        data, content_type = found
        return 200, content_type, data

    def _source(self, filename: str) -> tuple[int, str, bytes]:
        if not filename:
            return _text(400, 'missing "file" parameter: the source file to show')
        if filename not in self.files:
            return _text(
                403,
                f"{filename[:300]!r} is not named by the profiles shown: the source view reads "
                "only those files",
            )
        try:
            return 200, "text/plain; charset=utf-8", read_source(filename).encode()
        except SourceUnavailable as exc:
            return _text(404, str(exc))


def _text(status: int, text: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", (text + "\n").encode()


def _handler(viewer: Viewer, guards: Guards) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "pyprofiler"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            path, _, query = self.path.partition("?")
            if guards.host_refused(self.headers.get("Host")):
                status, content_type, body = _text(403, "this viewer answers localhost only")
            else:
                status, content_type, body = viewer.answer(urllib.parse.unquote(path), query)
            self.send_response(status)
            if status == 301:
                self.send_header("Location", content_type)
                content_type, body = "text/plain; charset=utf-8", b""
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the viewer prints its URL and nothing per request."""

    return Handler


def serve(paths: list[str], port: int = 0) -> http.server.ThreadingHTTPServer:
    """Start the viewer for `paths` (the profile, then its base) in a background thread."""
    viewer = Viewer(paths)
    guards = Guards(allowed_hosts=loopback_hosts(HOST))
    server = http.server.ThreadingHTTPServer((HOST, port), _handler(viewer, guards))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pyprofiler-ui", daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyprofiler ui",
        description="View pprof profile files (Go's too) in the browser: flame graph, top, "
        "source and diff. Serves on 127.0.0.1 until interrupted.",
    )
    parser.add_argument("file", help="a pprof profile, gzipped or not")
    parser.add_argument("--base", help="a profile to compare FILE with (the diff view)")
    parser.add_argument("--port", type=int, default=0, help="the port (default: any free one)")
    args = parser.parse_args(argv)
    paths = [args.file] + ([args.base] if args.base else [])
    try:
        server = serve(paths, args.port)
    except (OSError, ProfileFileError) as exc:
        print(f"python -m pyprofiler ui: {exc}", file=sys.stderr)
        return 1
    view = "#view=diff" if args.base else ""
    print(f"http://{HOST}:{server.server_address[1]}/ui/{view}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
