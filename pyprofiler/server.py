"""`serve()`: the /debug/pprof/ routes on a threaded WSGI server in a daemon thread.

Processes of one service that serve the same port (gunicorn or uvicorn workers, a master and
the workers it forks, a multiprocessing pool under a serving parent) serve it together: the one
that holds the port answers for all of them (fanout.py), every one is a member of the port's
group (group.py), and when the holder exits another member takes the port over.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import socket
import struct
import threading
import time
from typing import Callable

from flask import Flask
from werkzeug.serving import (
    LISTEN_QUEUE,
    ThreadedWSGIServer,
    WSGIRequestHandler,
    get_sockaddr,
    select_address_family,
)

from pyprofiler import group, heap, locks, registry
from pyprofiler.errors import PyprofilerError
from pyprofiler.fanout import Fanout, describe_self, find_holder, member_app
from pyprofiler.http import DEFAULT_MAX_SECONDS, group_blueprint, serve_error

log = logging.getLogger("pyprofiler")

# How often a member that does not hold the port tries to take it (one bind() call).
TAKEOVER_INTERVAL = 1.0
# How long a process that finds the port taken waits for a member of the group to say that it
# holds the port (workers start together; the first to bind shows up in the group just after).
JOIN_WAIT = 3.0
_JOIN_POLL = 0.05
# A serving loop notices a stop within its poll interval; this bound is for what else may come.
_STOP_TIMEOUT = 10.0

_lock = threading.Lock()
_current: Server | None = None


def create_app(max_seconds: int = DEFAULT_MAX_SECONDS) -> Flask:
    """A plain WSGI application serving /debug/pprof/, for mounting in any WSGI server."""
    return _create_app(max_seconds, None)


def _create_app(max_seconds: int, fanout: Fanout | None) -> Flask:
    app = Flask("pyprofiler")
    app.register_blueprint(group_blueprint(max_seconds, "/debug/pprof", fanout))
    app.register_error_handler(404, lambda _: serve_error(404, "404 page not found"))
    app.register_error_handler(405, lambda _: serve_error(405, "method not allowed"))
    return app


_local_apps: dict[int, Flask] = {}


def _local_app(max_seconds: int) -> Flask:
    """The app of a member's socket, made once per process and inherited by forked children
    (making a Flask app is most of the time a child takes to join its parent's group)."""
    app = _local_apps.get(max_seconds)
    if app is None:
        app = _local_apps[max_seconds] = _create_app(max_seconds, None)
    return app


class _QuietHandler(WSGIRequestHandler):
    # The host application's stderr is not ours to fill with access logs.
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class _WSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server; requests are served in daemon threads named for pyprofiler."""

    def process_request(self, request: socket.socket, client_address: object) -> None:
        threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="pyprofiler-http-request",
            daemon=True,
        ).start()


class _MemberWSGIServer(_WSGIServer):
    """The server on a member's Unix socket: only this user's processes are answered (the
    directory is private too, but does not stop root)."""

    def verify_request(self, request: socket.socket, client_address: object) -> bool:
        credentials = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        return struct.unpack("3i", credentials)[1] == os.getuid()


class _Serving:
    """A WSGI server on an already listening socket, served from a daemon thread."""

    def __init__(
        self,
        server_class: type[_WSGIServer],
        listening: socket.socket,
        host: str,
        app: Callable,
        thread_name: str,
        poll_interval: float,
    ) -> None:
        port = 0 if listening.family == socket.AF_UNIX else listening.getsockname()[1]
        try:
            # Given a descriptor, werkzeug neither binds nor exits the process when binding
            # fails (it calls sys.exit(1) then): the socket is bound and listening already.
            self.wsgi_server = server_class(host, port, app, _QuietHandler, fd=listening.fileno())
        finally:
            listening.close()  # werkzeug serves a duplicate of it.
        self.wsgi_server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.wsgi_server.serve_forever,
            args=(poll_interval,),
            name=thread_name,
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving and close the socket; requests being answered finish on their own."""
        if self._thread.is_alive():
            self.wsgi_server.shutdown()  # Waits for the serving loop to notice (a poll interval).
            self._thread.join(timeout=_STOP_TIMEOUT)
        self.wsgi_server.server_close()

    def abandon(self) -> None:
        """In a forked child: the serving thread stayed in the parent; close this process's
        copy of the socket only (no shutdown, which would stop the parent's too)."""
        self.wsgi_server.socket.close()


def _listen_tcp(host: str, port: int) -> socket.socket | None:
    """A TCP socket listening on host:port, or None if another socket listens there."""
    family = select_address_family(host, port)
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(get_sockaddr(host, port, family))
        listening.listen(LISTEN_QUEUE)
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise PyprofilerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return listening


class Server:
    """This process's part in serving /debug/pprof/ on a port.

    The process that holds the port (`holds_port`) serves it over TCP and answers for every
    process of its group; every serving process, that one included, is a member of the group
    and answers for itself on its Unix socket. A member that does not hold the port tries to
    take it over every TAKEOVER_INTERVAL seconds, so that the port answers again soon after
    its holder exits.
    """

    def __init__(self, host: str, port: int, max_seconds: int, directory: str | None) -> None:
        self.host = host
        self.port = port
        self._max_seconds = max_seconds
        self._pid = os.getpid()
        self._group = group.PortGroup(directory, port) if directory else None
        self._state = threading.Lock()
        self._http: _Serving | None = None
        self._member: _Serving | None = None
        self._stopping = threading.Event()
        self._takeover: threading.Thread | None = None
        # A child forked from a serving process is a member without having called serve().
        self.inherited = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/debug/pprof/"

    @property
    def holds_port(self) -> bool:
        """Whether this process serves the port (and answers for the group) right now."""
        return self._http is not None

    def stop(self) -> None:
        """Stop serving and leave the group, freeing the port if this process held it (another
        member then takes it over); profiles being taken finish on their own."""
        global _current
        self._leave()
        with _lock:
            if _current is self:
                _current = None

    def __repr__(self) -> str:
        return f"<pyprofiler.Server {self.url}>"

    def _serve_port(self, listening: socket.socket) -> None:
        fanout = Fanout(self._group) if self._group is not None else None
        serving = _Serving(
            _WSGIServer,
            listening,
            self.host,
            _create_app(self._max_seconds, fanout),
            "pyprofiler-http",
            0.1,  # A short poll interval: stop() waits for the serving loop to notice.
        )
        self._http = serving
        serving.start()

    def _join_group(self) -> None:
        """Listen on this process's socket in the group directory; without one (the
        directory is unusable), this process serves alone."""
        if self._group is None:
            return
        try:
            listening = self._group.listen()
            self._member = _Serving(
                _MemberWSGIServer,
                listening,
                "unix://" + self._group.socket_path(self._pid),
                member_app(_local_app(self._max_seconds), self._describe),
                "pyprofiler-group-member",
                0.25,
            )
        except OSError as exc:
            log.warning("pyprofiler: serving port %s alone: %s", self.port, exc)
            self._group = None
            return
        self._member.start()

    def _describe(self, with_counts: bool) -> dict:
        counts = {p.name: p.count() for p in registry.profiles()} if with_counts else None
        return describe_self(self.holds_port, counts)

    def _start_takeover(self) -> None:
        self._takeover = threading.Thread(
            target=self._take_over_when_free, name="pyprofiler-group-takeover", daemon=True
        )
        self._takeover.start()

    def _take_over_when_free(self) -> None:
        while not self._stopping.wait(TAKEOVER_INTERVAL):
            try:
                listening = _listen_tcp(self.host, self.port)
            except PyprofilerError:
                continue  # The address may come back (an interface being reconfigured).
            if listening is None:
                continue
            with self._state:
                if self._stopping.is_set():
                    listening.close()
                    return
                try:
                    self._serve_port(listening)
                except Exception:  # Logged, never raised into the host; tried again later.
                    log.exception("pyprofiler: could not serve port %s", self.port)
                    continue
            log.info("pyprofiler: pid %s took over port %s", self._pid, self.port)
            return

    def _leave(self) -> None:
        self._stopping.set()
        with self._state:
            servings = [s for s in (self._http, self._member) if s is not None]
            self._http = self._member = None
        # In parallel: each waits up to its serving loop's poll interval.
        stoppers = [
            threading.Thread(target=s.shutdown, name="pyprofiler-stop", daemon=True)
            for s in servings
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=_STOP_TIMEOUT)
        if self._takeover is not None and self._takeover is not threading.current_thread():
            self._takeover.join(timeout=_STOP_TIMEOUT)
        if self._group is not None:
            self._group.remove(self._pid)

    def _continue_in_child(self) -> Server | None:
        """In a child forked from this server's process: close the child's copies of the
        listening sockets (a copy of the TCP one would keep the port bound by a process that
        never accepts), and join the group as a member of its own."""
        for serving in (self._http, self._member):
            if serving is not None:
                serving.abandon()
        if self._group is None:
            return None
        child = Server(self.host, self.port, self._max_seconds, os.path.dirname(self._group.path))
        child.inherited = True
        child._join_group()
        if child._group is None:
            return None
        child._start_takeover()
        return child


def serve(
    host: str = "127.0.0.1",
    port: int = 6060,
    max_seconds: int = DEFAULT_MAX_SECONDS,
    block_profile_rate: int | None = None,
    mutex_profile_fraction: int | None = None,
) -> Server:
    """Serve /debug/pprof/ from a daemon thread and return at once.

    Binds loopback unless told otherwise; port 0 picks a free port. If another process of the
    same service (a worker started the same way, a parent, a child) already serves the port,
    this process joins it: that port's profiles then cover both (see "Worker processes as one
    service" in docs/index.md). Raises PyprofilerError if an unrelated program holds the port.
    `max_seconds` caps the duration of CPU, wall and delta profiles. One server per process:
    call `.stop()` before serving again. Heap sampling starts at Go's default rate unless the
    program set a rate. `block_profile_rate` and `mutex_profile_fraction`, when given, are
    passed to set_block_profile_rate and set_mutex_profile_fraction (both off by default, as in
    Go).
    """
    global _current
    with _lock:
        _continue_after_fork()
        server = _current
        if server is not None and not server.inherited:
            raise PyprofilerError(
                f"pyprofiler is already serving at {server.url}; "
                "call stop() on that server before serving again"
            )
        if server is not None and (port != server.port or port == 0):
            server._leave()  # A forked child serving on a port of its own.
            server = None
        if server is None:
            server = _start(host, port, max_seconds)
        server.inherited = False
        _current = server
    heap.enable_default()
    if block_profile_rate is not None:
        locks.set_block_profile_rate(block_profile_rate)
    if mutex_profile_fraction is not None:
        locks.set_mutex_profile_fraction(mutex_profile_fraction)
    return server


def _start(host: str, port: int, max_seconds: int) -> Server:
    directory = group.private_directory()
    if directory is not None:
        group.sweep(directory)
    listening = _listen_tcp(host, port)
    if listening is not None:
        return _lead(listening, host, max_seconds, directory)
    if directory is None:
        raise PyprofilerError(_port_in_use(port))
    port_group = group.PortGroup(directory, port)
    deadline = time.monotonic() + JOIN_WAIT
    while True:
        holder, members = find_holder(port_group)
        if holder is not None:
            if not any(group.relation(pid) for pid in members):
                raise PyprofilerError(
                    f"port {port} is served by pyprofiler in {group.describe_process(holder)}, "
                    f"which this process (pid {os.getpid()}) is not related to: only the "
                    "processes of one service (a process and the children it forks, or sibling "
                    "workers with the same command line) serve a port together. Serve this "
                    "program on a different port."
                )
            server = Server(host, port, max_seconds, directory)
            server._join_group()
            if server._group is None:
                raise PyprofilerError(_port_in_use(port))
            server._start_takeover()
            return server
        listening = _listen_tcp(host, port)  # The holder may have exited meanwhile.
        if listening is not None:
            return _lead(listening, host, max_seconds, directory)
        if time.monotonic() >= deadline or _held_by_a_stranger(port, members):
            raise PyprofilerError(_port_in_use(port))
        time.sleep(_JOIN_POLL)


def _lead(listening: socket.socket, host: str, max_seconds: int, directory: str | None) -> Server:
    server = Server(host, listening.getsockname()[1], max_seconds, directory)
    server._join_group()  # Before serving: a process that finds the port taken looks here.
    server._serve_port(listening)
    return server


def _held_by_a_stranger(port: int, members: list[int]) -> bool:
    """Whether the port is held by a process that is neither a member of its group nor one
    this process could join once it has shown up in the group (no point waiting for it)."""
    holder = group.port_holder(port)
    return holder is not None and holder not in members and group.relation(holder) is None


def _port_in_use(port: int) -> str:
    holder = group.port_holder(port)
    program = f"another program ({group.describe_process(holder)})" if holder else "another program"
    return (
        f"port {port} is in use by {program}. Either identify and stop that program, "
        "or serve on a different port."
    )


def _continue_after_fork() -> None:
    """The one place where a forked child takes over from the server of the process it was
    forked from. Run after every os.fork(), and by serve() for a fork that ran no at-fork
    handlers (a C-level fork, as uWSGI's)."""
    global _current
    parent = _current
    if parent is None or parent._pid == os.getpid():
        return
    _current = None
    try:
        _current = parent._continue_in_child()
    except Exception:  # The child must start whatever happens here.
        log.exception("pyprofiler: a forked child could not join its parent's group")


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # Another thread may have held it at fork.
    _continue_after_fork()


def _remove_socket_at_exit() -> None:
    server = _current
    if server is not None and server._pid == os.getpid() and server._group is not None:
        server._group.remove(server._pid)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_remove_socket_at_exit)
