"""The built-in profile viewer at /debug/pprof/ui/: its static page (static/, which decodes the
profiles and draws them in the browser) and the two answers only it needs, the list of
profiles and the source of a file that a profile names. The live routes (http.py) and the
offline viewer (offline.py) serve both; what decides which files are named is theirs.
"""

from __future__ import annotations

import json
import os
from importlib import resources

# The source view shows a function's lines; a file larger than this is not a source file.
MAX_SOURCE_BYTES = 4 << 20

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


class SourceUnavailable(Exception):
    """A named file that cannot be shown; the message is the 404 body."""


def asset(name: str) -> tuple[bytes, str] | None:
    """A file of the page (`""` is the page itself) and its content type, or None."""
    name = name or "index.html"
    content_type = _CONTENT_TYPES.get(os.path.splitext(name)[1])
    if content_type is None or "/" in name or name.startswith("."):
        return None
    try:
        data = resources.files(__name__).joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return data, content_type


def profiles_json(mode: str, title: str, entries: list[dict[str, object]]) -> bytes:
    """The `profiles` answer: what the page offers to open (see static/app.js)."""
    document = {"mode": mode, "title": title, "profiles": entries}
    return json.dumps(document, ensure_ascii=True).encode()


def read_source(filename: str) -> str:
    """The text of a source file (undecodable bytes replaced), or SourceUnavailable."""
    if not os.path.isfile(filename):  # Never a FIFO or a device, whose open() could block.
        raise SourceUnavailable(f"not a regular file: {filename!r}")
    try:
        with open(filename, "rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {filename!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceUnavailable(f"{filename!r} is larger than {MAX_SOURCE_BYTES} bytes")
    return data.decode("utf-8", "replace")
