"""`serve()`: the /debug/pprof/ routes on pyprofiler's own HTTP server (httpserver.py), in
daemon threads, on a TCP port or a Unix socket.

Processes of one service that serve the same port (gunicorn or uvicorn workers, a master and
the workers it forks, a multiprocessing pool under a serving parent) serve it together: the one
that holds the port answers for all of them (fanout.py), every one is a member of the port's
group (group.py), and when the holder exits another member takes the port over.

Nothing here ends the host process or raises into it anything but PyprofilerError.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from pyprofiler import group, heap, registry
from pyprofiler.errors import PyprofilerError
from pyprofiler.fanout import Fanout, describe_self, find_holder, member_app
from pyprofiler.guards import DEFAULT_MAX_CONCURRENT, Guards, is_loopback, loopback_hosts, origins
from pyprofiler.http import DEFAULT_MAX_SECONDS, Routes
from pyprofiler.httpserver import HTTPServer
from pyprofiler.samplers import locks
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.wsgi import WSGIApp

log = logging.getLogger("pyprofiler")

# How often a member that does not hold the port tries to take it (one bind() call).
TAKEOVER_INTERVAL = 1.0
# How long a process that finds the port taken waits for a member of the group to say that it
# holds the port (workers start together; the first to bind shows up in the group just after).
JOIN_WAIT = 3.0
_JOIN_POLL = 0.05
# How long stop() waits for the takeover thread (it wakes within TAKEOVER_INTERVAL).
_STOP_TIMEOUT = 10.0
LISTEN_QUEUE = 128

_lock = OwnLock()
_current: Server | None = None


@dataclass(frozen=True)
class Settings:
    """What serve() was asked for, beyond where to listen."""

    max_seconds: int = DEFAULT_MAX_SECONDS
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def routes(self, host: str | None, fanout: Fanout | None) -> Routes:
        """The routes of a server bound to `host` (None: a Unix socket): a loopback bind
        checks the Host header, against DNS rebinding."""
        allowed = loopback_hosts(host) if host is not None and is_loopback(host) else None
        guards = Guards(self.token, self.allow_origins, self.max_concurrent, allowed)
        return Routes(self.max_seconds, guards, fanout)

    @property
    def max_workers(self) -> int:
        # Room for the cheap requests (index, cmdline, symbol) beside every profile allowed.
        return self.max_concurrent + 16


_local_apps: dict[int, WSGIApp] = {}


def _local_app(max_seconds: int) -> WSGIApp:
    """The app of a member's socket (asked by the holder only, which applied the guards),
    made once per process and inherited by forked children."""
    app = _local_apps.get(max_seconds)
    if app is None:
        app = _local_apps[max_seconds] = WSGIApp(Routes(max_seconds, Guards()))
    return app


def _same_user(connection: socket.socket) -> bool:
    """A member's socket answers only this user's processes (the directory is private too,
    but does not stop root)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return struct.unpack("3i", credentials)[1] == os.getuid()


def _listen_tcp(host: str, port: int) -> socket.socket | None:
    """A TCP socket listening on host:port, or None if another socket listens there."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        raise PyprofilerError(f"cannot serve on {host}:{port}: {exc}") from None
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(LISTEN_QUEUE)
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise PyprofilerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return listening


def _listen_unix(path: str) -> socket.socket:
    """A Unix socket listening at `path`, mode 0600; a stale socket file there is replaced, a
    live one or any other file is not."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise PyprofilerError(f"cannot serve on {path}: {exc.strerror or exc}") from None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise PyprofilerError(f"cannot serve on {path}: it exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            if probe.connect_ex(path) == 0:
                raise PyprofilerError(
                    f"cannot serve on {path}: another process listens there; stop it, or "
                    "serve on another path"
                )
    # Bound under a temporary name and renamed once private, so that nobody can connect to
    # it before its mode is 0600 (the umask is the whole process's, not ours to change).
    binding = f"{path}.{os.getpid()}.binding"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(binding):
            os.unlink(binding)
        listening.bind(binding)
        os.chmod(binding, 0o600)
        listening.listen(LISTEN_QUEUE)
        os.replace(binding, path)
    except OSError as exc:
        listening.close()
        try:
            os.unlink(binding)
        except OSError:
            pass
        raise PyprofilerError(f"cannot serve on {path}: {exc.strerror or exc}") from None
    return listening


class Server:
    """This process's part in serving /debug/pprof/ on a port.

    The process that holds the port (`holds_port`) serves it over TCP and answers for every
    process of its group; every serving process, that one included, is a member of the group
    and answers for itself on its Unix socket. A member that does not hold the port tries to
    take it over every TAKEOVER_INTERVAL seconds, so that the port answers again soon after
    its holder exits.
    """

    def __init__(
        self,
        host: str,
        port: int,
        settings: Settings,
        directory: str | None,
        unix_socket: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self._unix_inode = 0  # The socket file's, removed at stop() only if still ours.
        self._settings = settings
        self._pid = os.getpid()
        self._group = group.PortGroup(directory, port) if directory else None
        self._state = threading.Lock()
        self._http: HTTPServer | None = None
        self._member: HTTPServer | None = None
        self._stopping = threading.Event()
        self._takeover: threading.Thread | None = None
        # A child forked from a serving process is a member without having called serve().
        self.inherited = False

    @property
    def url(self) -> str:
        if self.unix_socket is not None:  # The form of requests-unixsocket and others.
            return f"http+unix://{quote(self.unix_socket, safe='')}/debug/pprof/"
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
        bound = None if self.unix_socket is not None else self.host
        serving = HTTPServer(
            listening,
            WSGIApp(self._settings.routes(bound, fanout)),
            "pyprofiler-http",
            max_workers=self._settings.max_workers,
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
            self._member = HTTPServer(
                listening,
                member_app(_local_app(self._settings.max_seconds), self._describe),
                "pyprofiler-group-member",
                max_workers=self._settings.max_workers,
                accept=_same_user,
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
        for serving in servings:
            serving.shutdown()
        if self.unix_socket is not None:
            _remove_socket_file(self.unix_socket, self._unix_inode)
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
        child = Server(self.host, self.port, self._settings, os.path.dirname(self._group.path))
        child.inherited = True
        child._join_group()
        if child._group is None:
            return None
        child._start_takeover()
        return child


def serve(
    host: str = "127.0.0.1",
    port: int | Sequence[int] = 6060,
    max_seconds: int = DEFAULT_MAX_SECONDS,
    block_profile_rate: int | None = None,
    mutex_profile_fraction: int | None = None,
    *,
    token: str | None = None,
    unix_socket: str | os.PathLike | None = None,
    allow_origins: Sequence[str] | str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> Server:
    """Serve /debug/pprof/ from daemon threads and return at once.

    Binds loopback unless told otherwise; port 0 picks a free port, and a list of ports is
    tried in turn (the first that this process can serve or join wins). If another process of
    the same service (a worker started the same way, a parent, a child) already serves the
    port, this process joins it: that port's profiles then cover both (see "Worker processes
    as one service" in docs/index.md). `unix_socket` serves on that path instead (mode 0600;
    one process per path). One server per process: call `.stop()` before serving again.

    `max_seconds` caps the duration of CPU, wall and delta profiles, the default 30 s too.
    The guards (docs/production.md): `token`, asked for as `Authorization: Bearer <token>` or
    `?token=`; `allow_origins`, the web origins whose pages may read the profiles (CORS, none
    by default); `max_concurrent`, how many profiles may be taken at once (others get 429).
    A loopback bind answers only requests for a loopback Host name (DNS rebinding).

    Heap sampling starts at Go's default rate unless the program set a rate.
    `block_profile_rate` and `mutex_profile_fraction`, when given, are passed to
    set_block_profile_rate and set_mutex_profile_fraction (both off by default, as in Go).

    Never ends the process: whatever fails is raised as PyprofilerError, for example a port
    held by an unrelated program (the message names it where it can be seen).
    """
    try:
        return _serve(
            host,
            _ports(port),
            _settings(max_seconds, token, allow_origins, max_concurrent),
            None if unix_socket is None else os.fspath(unix_socket),
            block_profile_rate,
            mutex_profile_fraction,
        )
    except PyprofilerError:
        raise
    except Exception as exc:
        raise PyprofilerError(f"pyprofiler could not serve: {type(exc).__name__}: {exc}") from exc


def _ports(port: int | Sequence[int]) -> list[int]:
    ports = [port] if isinstance(port, int) else list(port) if isinstance(port, Sequence) else []
    if not ports or any(
        isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535 for p in ports
    ):
        raise PyprofilerError(
            f"port must be a port number (0 to 65535) or a list of them, not {port!r}"
        )
    return ports


def _settings(
    max_seconds: int,
    token: str | None,
    allow_origins: Sequence[str] | str | None,
    max_concurrent: int,
) -> Settings:
    if not _positive_int(max_seconds):
        raise PyprofilerError(f"max_seconds must be a positive integer, not {max_seconds!r}")
    if token is not None and (not isinstance(token, str) or not token):
        raise PyprofilerError("token must be a non-empty string (or None for no token)")
    allowed = origins(allow_origins)
    if not all(isinstance(origin, str) and origin for origin in allowed):
        raise PyprofilerError(
            f"allow_origins must be origins such as 'https://example.com', not {allow_origins!r}"
        )
    if not _positive_int(max_concurrent):
        raise PyprofilerError(f"max_concurrent must be a positive integer, not {max_concurrent!r}")
    return Settings(max_seconds, token, allowed, max_concurrent)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _serve(
    host: str,
    ports: list[int],
    settings: Settings,
    unix_socket: str | None,
    block_profile_rate: int | None,
    mutex_profile_fraction: int | None,
) -> Server:
    global _current
    if not isinstance(host, str):
        raise PyprofilerError(f"host must be a string such as '127.0.0.1', not {host!r}")
    with _lock:
        _continue_after_fork()
        server = _current
        if server is not None and not server.inherited:
            raise PyprofilerError(
                f"pyprofiler is already serving at {server.url}; "
                "call stop() on that server before serving again"
            )
        if server is not None and (unix_socket or server.port not in ports or 0 in ports):
            server._leave()  # A forked child serving on a port of its own.
            server = None
        if server is None:
            if unix_socket is not None:
                server = Server("", 0, settings, None, unix_socket)
                server._serve_port(_listen_unix(unix_socket))
                server._unix_inode = os.lstat(unix_socket).st_ino
            else:
                server = _start_on_any(host, ports, settings)
        server.inherited = False
        _current = server
    if unix_socket is None and settings.token is None and not is_loopback(host):
        log.warning(
            "pyprofiler: serving %s without a token on an address that is not loopback: "
            "anyone who can reach it can read this process's profiles and command line. "
            "Pass serve(token=...) or bind 127.0.0.1 (docs/production.md).",
            server.url,
        )
    try:
        heap.enable_default()
        if block_profile_rate is not None:
            locks.set_block_profile_rate(block_profile_rate)
        if mutex_profile_fraction is not None:
            locks.set_mutex_profile_fraction(mutex_profile_fraction)
    except BaseException:
        server.stop()  # A serve() that raises leaves nothing serving.
        raise
    return server


def _start_on_any(host: str, ports: list[int], settings: Settings) -> Server:
    """Serve (or join the group of) the first of `ports` that this process can."""
    refusals = []
    for port in ports:
        try:
            return _start(host, port, settings)
        except PyprofilerError as exc:
            if len(ports) == 1:
                raise
            refusals.append(str(exc))
    raise PyprofilerError(
        f"cannot serve on any of the ports {', '.join(map(str, ports))}: " + " / ".join(refusals)
    )


def _start(host: str, port: int, settings: Settings) -> Server:
    directory = group.private_directory()
    if directory is not None:
        group.sweep(directory)
    listening = _listen_tcp(host, port)
    if listening is not None:
        return _lead(listening, host, settings, directory)
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
            server = Server(host, port, settings, directory)
            server._join_group()
            if server._group is None:
                raise PyprofilerError(_port_in_use(port))
            server._start_takeover()
            return server
        listening = _listen_tcp(host, port)  # The holder may have exited meanwhile.
        if listening is not None:
            return _lead(listening, host, settings, directory)
        if time.monotonic() >= deadline or _held_by_a_stranger(port, members):
            raise PyprofilerError(_port_in_use(port))
        time.sleep(_JOIN_POLL)


def _lead(listening: socket.socket, host: str, settings: Settings, directory: str | None) -> Server:
    server = Server(host, listening.getsockname()[1], settings, directory)
    server._join_group()  # Before serving: a process that finds the port taken looks here.
    server._serve_port(listening)
    return server


def _remove_socket_file(path: str, inode: int) -> None:
    """Remove our socket file, not one that another process has put in its place since."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


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


def after_fork_in_child() -> None:
    _continue_after_fork()


def _remove_socket_at_exit() -> None:
    server = _current
    if server is None or server._pid != os.getpid():
        return
    if server._group is not None:
        server._group.remove(server._pid)
    if server.unix_socket is not None:
        _remove_socket_file(server.unix_socket, server._unix_inode)


atexit.register(_remove_socket_at_exit)
