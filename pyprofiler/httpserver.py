"""pyprofiler's own HTTP/1.1 server, which carries the WSGI app of `serve()` and of the group
members' sockets inside the host process, at a bounded cost whatever clients do.

- Threads: one thread accepts connections and watches those that have sent nothing yet (an
  idle connection costs a file descriptor, never a thread); a connection whose request starts
  to arrive goes to a worker thread, of which at most `max_workers` run, started on demand and
  ended after WORKER_LINGER idle seconds. So 1 000 idle connections cost one thread.
- Time: a connection must start its request within IDLE_TIMEOUT seconds and finish its head
  within HEAD_TIMEOUT, its body within BODY_TIMEOUT; each write may take WRITE_TIMEOUT.
  Every connection is closed after one answer (`Connection: close`).
- Memory: at most MAX_CONNECTIONS open at once (the oldest idle one is closed to make room), a
  head of at most MAX_HEAD bytes, bodies read by the app a chunk at a time.
- Nothing reaches the host's stderr: malformed requests get Go's plain 4xx answers, errors
  are logged on the `pyprofiler` logger at debug level without what the client sent.
- The app can tell when the client hangs up (`pyprofiler.hangup` in the environ), and there is
  no `Server` header.
"""

from __future__ import annotations

import collections
import email.utils
import errno
import logging
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Callable
from urllib.parse import unquote_to_bytes

from pyprofiler.hangup import SocketHangup
from pyprofiler.samplers.own_locks import OwnLock

log = logging.getLogger("pyprofiler")

WSGIApp = Callable  # (environ, start_response) -> iterable of bytes

IDLE_TIMEOUT = 10.0
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0
MAX_HEAD = 64 * 1024
MAX_HEADER_LINES = 100
MAX_CONNECTIONS = 128
WORKER_LINGER = 5.0
# After an answer, what the client still sends (a body nobody read) is read and dropped for at
# most this long, so that it sees the answer rather than a reset.
DRAIN_SECONDS = 2.0
_ACCEPT_PAUSE = 0.5  # Out of file descriptors: accept nothing for this long.
_RECV = 64 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET_CONTROL = re.compile(rb"[\x00-\x20\x7f]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_ACCEPTING, _WAKE = object(), object()


class BodyError(OSError):
    """A request body that cannot be read: truncated, malformed, or too slow."""


class _BadRequest(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _DiscardedErrors:
    """wsgi.errors: what an app writes there is not for the host's stderr."""

    def write(self, text: str) -> None:
        pass

    def writelines(self, lines: Iterable[str]) -> None:
        pass

    def flush(self) -> None:
        pass


class _Reader:
    """A connection's bytes, read through a buffer, each read within `deadline`."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = bytearray()
        self.deadline = time.monotonic() + HEAD_TIMEOUT

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self.connection.settimeout(remaining)
        data = self.connection.recv(_RECV)
        self.buffer += data
        return bool(data)

    def head(self) -> bytes | None:
        """The request's head up to its blank line, or None if the client sent nothing."""
        while True:
            while self.buffer[:2] == b"\r\n" or self.buffer[:1] == b"\n":  # RFC 9112 2.2.
                del self.buffer[: 2 if self.buffer[:1] == b"\r" else 1]
            end = _head_end(self.buffer)
            if end is not None and end > MAX_HEAD:
                raise _BadRequest("431 Request Header Fields Too Large")
            if end is not None:
                head = bytes(self.buffer[:end])
                del self.buffer[:end]
                return head
            if len(self.buffer) > MAX_HEAD:
                raise _BadRequest("431 Request Header Fields Too Large")
            if not self._fill():
                if self.buffer:
                    raise _BadRequest("400 Bad Request")
                return None

    def read(self, size: int) -> bytes:
        if not self.buffer and not self._fill():
            raise BodyError("unexpected EOF")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def line(self, limit: int) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise BodyError("line too long in chunked encoding")
            if not self._fill():
                raise BodyError("unexpected EOF")
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line


def _head_end(buffer: bytearray) -> int | None:
    ends = [i + len(m) for m in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(m)) >= 0]
    return min(ends) if ends else None


class _Body:
    """wsgi.input: the body, of a Content-Length or chunked; `100 Continue` is sent at the
    first read when the client waits for it, so a body the app refuses is never asked for."""

    def __init__(self, reader: _Reader, length: int | None, send_continue: bool) -> None:
        self._reader = reader
        self._left = length  # None: chunked, and `_chunk_left` of the current chunk.
        self._chunk_left = 0
        self._done = length == 0
        self._send_continue = send_continue
        self._started = False

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if self._send_continue:
            self._send_continue = False
            self._reader.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self._started:
            self._started = True
            self._reader.deadline = time.monotonic() + BODY_TIMEOUT
        out = bytearray()
        while not self._done and (size < 0 or len(out) < size):
            want = _RECV if size < 0 else size - len(out)
            if self._left is not None:
                data = self._reader.read(min(want, self._left))
                self._left -= len(data)
                self._done = self._left == 0
            else:
                data = self._chunk(want)
            out += data
        return bytes(out)

    def _chunk(self, want: int) -> bytes:
        reader = self._reader
        if self._chunk_left == 0:
            size = reader.line(1024).split(b";", 1)[0].strip(b" \t\r\n")
            if not _CHUNK_SIZE.match(size):
                raise BodyError("malformed chunked encoding")
            self._chunk_left = int(size, 16)
            if self._chunk_left == 0:
                for _ in range(MAX_HEADER_LINES):  # Trailers, ignored.
                    if reader.line(8192).strip(b"\r\n") == b"":
                        self._done = True
                        return b""
                raise BodyError("too many trailers")
        data = reader.read(min(want, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and reader.line(2).rstrip(b"\r\n") != b"":
            raise BodyError("malformed chunked encoding")
        return data


class HTTPServer:
    """HTTP/1.1 on a listening socket, served by daemon threads named after `name`.

    `accept(connection)` may refuse a connection before anything is read from it.
    """

    def __init__(
        self,
        listening: socket.socket,
        app: WSGIApp,
        name: str,
        max_workers: int = 32,
        accept: Callable[[socket.socket], bool] | None = None,
    ) -> None:
        self._listening = listening
        self._app = app
        self._name = name
        self._max_workers = max_workers
        self._accept_check = accept
        address = listening.getsockname()
        if listening.family == socket.AF_UNIX:
            self._server_name, self._server_port = str(address), "0"
        else:
            self._server_name, self._server_port = address[0], str(address[1])
        listening.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._lock = OwnLock()
        self._work = threading.Condition(self._lock)
        self._idle: dict[socket.socket, float] = {}  # In deadline order: one timeout for all.
        self._ready: collections.deque[socket.socket] = collections.deque()
        self._open: set[socket.socket] = set()
        self._workers = 0
        self._waiting = 0
        self._stopping = False
        self._accepting_again = 0.0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket and the idle connections; requests
        being answered finish on their own."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._close_all(close_active=False)

    def abandon(self) -> None:
        """In a forked child: the threads stayed in the parent; close this process's copies
        of the sockets only (shutting them down would end the parent's connections)."""
        self._work = threading.Condition(self._lock)  # Its waiters were the parent's threads.
        self._stopping = True
        self._close_all(close_active=True)

    def _close_all(self, close_active: bool) -> None:
        with self._lock:
            connections = list(self._idle) + list(self._ready)
            if close_active:
                connections += list(self._open)
            self._idle.clear()
            self._ready.clear()
        for sock in (*connections, self._listening, self._wake_reader, self._wake_writer):
            sock.close()
        self._selector.close()

    def _serve(self) -> None:
        selector = self._selector
        try:
            selector.register(self._listening, selectors.EVENT_READ, _ACCEPTING)
            selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
            while not self._stopping:
                for key, _ in selector.select(self._next_timeout()):
                    if key.data is _ACCEPTING:
                        self._accept()
                    elif key.data is _WAKE:
                        self._wake_reader.recv(64)
                    else:
                        self._dispatch(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        except (OSError, ValueError):
            if not self._stopping:  # Sockets closed under it by shutdown() are the normal end.
                log.debug("pyprofiler: %s stopped serving", self._name, exc_info=True)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = IDLE_TIMEOUT
        if self._idle:
            timeout = next(iter(self._idle.values())) - now
        if self._accepting_again:
            timeout = min(timeout, self._accepting_again - now)
        return max(0.0, timeout)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                connection, _ = self._listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the host's own needs come first; try again later.
                    self._selector.unregister(self._listening)
                    self._accepting_again = time.monotonic() + _ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and the like: that client is gone.
            if self._accept_check is not None and not self._accept_check(connection):
                connection.close()
                continue
            with self._lock:
                if len(self._open) >= MAX_CONNECTIONS:
                    oldest = next(iter(self._idle), None)
                    if oldest is None:
                        connection.close()
                        continue
                    self._forget_idle(oldest)
                    oldest.close()
                self._open.add(connection)
                self._idle[connection] = time.monotonic() + IDLE_TIMEOUT
            self._selector.register(connection, selectors.EVENT_READ, connection)

    def _forget_idle(self, connection: socket.socket) -> None:
        """Under the lock: stop watching an idle connection."""
        del self._idle[connection]
        self._open.discard(connection)
        self._selector.unregister(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accepting_again and now >= self._accepting_again:
            self._accepting_again = 0.0
            self._selector.register(self._listening, selectors.EVENT_READ, _ACCEPTING)
        expired = []
        with self._lock:
            for connection, deadline in self._idle.items():
                if deadline > now:
                    break
                expired.append(connection)
            for connection in expired:
                self._forget_idle(connection)
        for connection in expired:
            connection.close()

    def _dispatch(self, connection: socket.socket) -> None:
        with self._lock:
            del self._idle[connection]
            self._selector.unregister(connection)
            self._ready.append(connection)
            # A worker already woken for an earlier connection may not have taken it yet.
            if len(self._ready) > self._waiting and self._workers < self._max_workers:
                self._workers += 1
                threading.Thread(
                    target=self._work_loop, name=f"{self._name}-request", daemon=True
                ).start()
            else:
                self._work.notify()

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
                while not self._ready and not self._stopping:
                    if not self._work.wait(WORKER_LINGER):
                        break
                self._waiting -= 1
                if not self._ready or self._stopping:
                    self._workers -= 1
                    return
                connection = self._ready.popleft()
            try:
                # A profile function set over every thread (yappi's in a /calls window, a
                # program's threading.setprofile) leaves ours: the program's profile would show
                # our requests' calls and slow them down.
                sys.setprofile(None)
                _Exchange(self, connection).run()
            except Exception:  # A bug of ours: logged, and the next connection is served.
                log.debug("pyprofiler: request failed", exc_info=True)
            finally:
                connection.close()
                with self._lock:
                    self._open.discard(connection)

    def environ_base(self) -> dict:
        return {
            "SERVER_NAME": self._server_name,
            "SERVER_PORT": self._server_port,
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": _DiscardedErrors(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }

    @property
    def app(self) -> WSGIApp:
        return self._app


class _Exchange:
    """One request and its answer on one connection."""

    def __init__(self, server: HTTPServer, connection: socket.socket) -> None:
        self.server = server
        self.connection = connection
        self.reader = _Reader(connection)
        self.version = "HTTP/1.1"
        self.head_only = False

    def run(self) -> None:
        try:
            head = self.reader.head()
            if head is None:
                return
            environ = self._environ(head)
        except _BadRequest as exc:
            self._plain(exc.status)
            return
        except OSError:  # Timed out, reset: nobody to answer.
            return
        self._respond(environ)
        self._finish()

    def _environ(self, head: bytes) -> dict:
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]):
            raise _BadRequest("400 Bad Request")
        method, target, version = parts
        if not _VERSION.match(version):
            raise _BadRequest("400 Bad Request")
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _BadRequest("505 HTTP Version Not Supported")
        self.version = version.decode()
        self.head_only = method == b"HEAD"
        if _TARGET_CONTROL.search(target):
            raise _BadRequest("400 Bad Request")
        if target.startswith((b"http://", b"https://")):
            target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
        elif not target.startswith(b"/") and target != b"*":
            raise _BadRequest("400 Bad Request")
        path, _, query = target.split(b"#", 1)[0].partition(b"?")
        environ = self.server.environ_base()
        environ.update(
            {
                "REQUEST_METHOD": method.decode("latin-1"),
                "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
                "QUERY_STRING": query.decode("latin-1"),
                "REQUEST_URI": target.decode("latin-1"),
                "SERVER_PROTOCOL": self.version,
                "REMOTE_ADDR": _peer(self.connection),
                "pyprofiler.hangup": SocketHangup(self.connection),
            }
        )
        headers = self._headers(lines[1:], environ)
        environ["wsgi.input"] = self._body(headers)
        return environ

    def _headers(self, lines: list[bytes], environ: dict) -> dict[str, str]:
        headers: dict[str, str] = {}
        hosts = 0
        for line in lines:
            if not line:
                continue
            if len(headers) >= MAX_HEADER_LINES:
                raise _BadRequest("431 Request Header Fields Too Large")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name) or _CONTROL.search(value):
                raise _BadRequest("400 Bad Request")  # Folded lines too (RFC 9112 5.2).
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            hosts += key == "host"
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if "_" in key:
                continue  # Such names could pass for another's once made CGI-style.
            cgi = key.upper().replace("-", "_")
            if cgi not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                cgi = "HTTP_" + cgi
            environ[cgi] = headers[key]
        if hosts > 1 or (hosts == 0 and self.version == "HTTP/1.1"):
            raise _BadRequest("400 Bad Request")  # As Go: exactly one Host in HTTP/1.1.
        return headers

    def _body(self, headers: dict[str, str]) -> _Body:
        expect = headers.get("expect", "").lower()
        if expect not in ("", "100-continue"):
            raise _BadRequest("417 Expectation Failed")
        send_continue = expect == "100-continue" and self.version == "HTTP/1.1"
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if encoding is not None:
            if length is not None:
                raise _BadRequest("400 Bad Request")
            if encoding.lower() != "chunked":
                raise _BadRequest("501 Not Implemented")
            return _Body(self.reader, None, send_continue)
        if length is None:
            return _Body(self.reader, 0, False)
        values = {value.strip() for value in length.split(",")}
        value = values.pop()
        if values or not value.isascii() or not value.isdigit() or len(value) > 18:
            raise _BadRequest("400 Bad Request")
        return _Body(self.reader, int(value), send_continue and int(value) > 0)

    def _respond(self, environ: dict) -> None:
        started: list = []

        def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None  # The legacy write(); our apps return their bodies.

        try:
            body = self.server.app(environ, start_response)
        except Exception:
            log.debug("pyprofiler: app failed", exc_info=True)
            self._plain("500 Internal Server Error")
            return
        try:
            self.connection.settimeout(WRITE_TIMEOUT)
            self._send(started[0], started[1], body)
        except OSError:
            pass  # The client went away.
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _send(self, status: str, headers: list, body: Iterable[bytes]) -> None:
        names = {name.lower() for name, _ in headers}
        code = int(status.split(" ", 1)[0])
        has_body = not self.head_only and code >= 200 and code not in (204, 304)
        if "content-length" not in names and isinstance(body, list) and code not in (204, 304):
            headers = [*headers, ("Content-Length", str(sum(len(chunk) for chunk in body)))]
            names.add("content-length")
        chunked = has_body and "content-length" not in names and self.version == "HTTP/1.1"
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
        lines += [f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close"]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not has_body:
            return
        pending = bytearray()
        for chunk in body:
            pending += chunk
            if len(pending) >= _RECV:
                self._write(pending, chunked)
                pending = bytearray()
        self._write(pending, chunked)
        if chunked:
            self.connection.sendall(b"0\r\n\r\n")

    def _write(self, data: bytearray, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            self.connection.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.connection.sendall(data)

    def _plain(self, status: str) -> None:
        body = status.encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"X-Content-Type-Options: nosniff\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.connection.settimeout(WRITE_TIMEOUT)
            self.connection.sendall(head.encode() + body)
        except OSError:
            return
        self._finish()

    def _finish(self) -> None:
        """Say we are done (FIN), then read and drop what the client still sends until it
        closes too, so that an unread body does not turn our answer into a reset."""
        deadline = time.monotonic() + DRAIN_SECONDS
        sink = bytearray(_RECV)
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv_into(sink):
                    return
        except OSError:
            return


def _peer(connection: socket.socket) -> str:
    try:
        address = connection.getpeername()
    except OSError:
        return ""
    return address[0] if isinstance(address, tuple) else "unix"
