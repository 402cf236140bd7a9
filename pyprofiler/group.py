"""Where the processes serving one port find each other, and which processes may join them.

Every process that serves a port is a member of that port's group: it listens on a Unix socket
`<pid>.sock` in `port-<P>/` of a directory private to the user (`$XDG_RUNTIME_DIR/pyprofiler`,
else `/tmp/pyprofiler-<uid>`). The member that holds the TCP port (the leader) asks the others
over those sockets (fanout.py). A process may join only a group of the same user's processes
it is related to: an ancestor or descendant of a member, a sibling worker started with the same
command line, or a sibling `multiprocessing` child.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct

import psutil

log = logging.getLogger("pyprofiler")

_SOCKET_SUFFIX = ".sock"
# A member binds its socket under this name and renames it into place once it listens, so that
# nobody ever finds a `<pid>.sock` that refuses connections because it is not listening yet.
_BINDING_SUFFIX = ".binding"
_MULTIPROCESSING_CHILD = "--multiprocessing-fork"
_SWEEP_LIMIT = 256  # Port directories looked at per sweep: cleaning up must stay cheap.

_warned: set[str] = set()


class MemberGone(Exception):
    """A socket file whose process no longer listens on it (removed when met)."""


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("pyprofiler: %s", message)


def private_directory() -> str | None:
    """The user's group directory, created mode 0700; None (grouping off) if it cannot be made
    or is not private: not a directory of this user, or open to the group or to others."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(runtime, "pyprofiler") if runtime else f"/tmp/pyprofiler-{os.getuid()}"
    return path if _private(path) else None


def _private(path: str) -> bool:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        _warn_once(f"worker processes cannot be grouped: cannot create {path}: {exc}")
        return False
    try:
        info = os.lstat(path)
    except OSError as exc:
        _warn_once(f"worker processes cannot be grouped: {path}: {exc}")
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        _warn_once(
            f"worker processes cannot be grouped: {path} is not a directory private to uid "
            f"{os.getuid()} (owner {info.st_uid}, mode {stat.filemode(info.st_mode)})"
        )
        return False
    return True


def exited(pid: int) -> bool:
    """Whether the process has ended: gone, a zombie its parent has not reaped yet, or its pid
    reused by another user's process (members are this user's)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False


def _unlink_if_same(path: str, inode: int) -> None:
    # Only the file that was found stale: its process may have put a fresh socket in its place.
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


class PortGroup:
    """The directory of one port's group: a Unix socket per member process."""

    def __init__(self, directory: str, port: int) -> None:
        self.port = port
        self.path = os.path.join(directory, f"port-{port}")

    def __repr__(self) -> str:
        return f"<PortGroup {self.path}>"

    def socket_path(self, pid: int) -> str:
        return os.path.join(self.path, f"{pid}{_SOCKET_SUFFIX}")

    def members(self) -> list[int]:
        """Pids of the members, in order; files of processes that have exited are removed."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        pids = []
        for name in names:
            stem, dot, suffix = name.partition(".")
            if not stem.isdigit() or dot + suffix not in (_SOCKET_SUFFIX, _BINDING_SUFFIX):
                continue
            if exited(int(stem)):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass
            elif dot + suffix == _SOCKET_SUFFIX:
                pids.append(int(stem))
        return sorted(pids)

    def listen(self) -> socket.socket:
        """This process's member socket, listening, under its final name (mode 0600)."""
        retries = 2
        while True:
            try:
                return self._listen_once()
            except FileNotFoundError:
                # Another process removed the directory as empty between mkdir and bind.
                if retries == 0:
                    raise
                retries -= 1

    def _listen_once(self) -> socket.socket:
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(errno.EPERM, f"{self.path} is not this user's directory")
        pid = os.getpid()
        binding = os.path.join(self.path, f"{pid}{_BINDING_SUFFIX}")
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(binding)
            except FileNotFoundError:
                pass
            listening.bind(binding)
            os.chmod(binding, 0o600)
            listening.listen(64)
            os.replace(binding, self.socket_path(pid))
        except BaseException:
            listening.close()
            raise
        return listening

    def remove(self, pid: int) -> None:
        """Remove `pid`'s socket file (only ever called by that process), and the directory if
        that left it empty."""
        try:
            os.unlink(self.socket_path(pid))
        except OSError:
            pass
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        if self.members():
            return
        try:
            os.rmdir(self.path)
        except OSError:
            pass  # Not empty after all (a member arrived), or already gone.

    def connect(self, pid: int, timeout: float) -> socket.socket:
        """A connection to `pid`'s socket, checked to be served by that very process of this
        user. Raises MemberGone (and removes the file) if nobody listens there any more."""
        path = self.socket_path(pid)
        try:
            inode = os.lstat(path).st_ino
        except FileNotFoundError:
            raise MemberGone(f"pid {pid} has no socket") from None
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(timeout)
        try:
            connection.connect(path)
            peer_pid, peer_uid, _ = struct.unpack(
                "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
        except (ConnectionRefusedError, FileNotFoundError):
            connection.close()
            _unlink_if_same(path, inode)
            raise MemberGone(f"pid {pid} no longer listens") from None
        except BaseException:
            connection.close()
            raise
        if peer_pid != pid or peer_uid != os.getuid():
            connection.close()
            raise MemberGone(f"{path} is served by pid {peer_pid}, uid {peer_uid}")
        return connection


def sweep(directory: str) -> None:
    """Remove the sockets of exited processes and the port directories they leave empty."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names[:_SWEEP_LIMIT]:
        if name.startswith("port-") and name[5:].isdigit():
            PortGroup(directory, int(name[5:])).remove_if_empty()


def relation(member_pid: int, joiner_pid: int | None = None) -> str | None:
    """How the joiner (this process by default) is related to a member, or None if it is not:
    the member is its ancestor, it is the member's ancestor, or both have the same parent and
    either the same command line or are both `multiprocessing` children. Same user only."""
    try:
        joiner = psutil.Process(joiner_pid)
        member = psutil.Process(member_pid)
        if joiner.pid == member.pid or joiner.uids().real != member.uids().real:
            return None
        if member_pid in {p.pid for p in joiner.parents()}:
            return f"a descendant of pid {member_pid}"
        if joiner.pid in {p.pid for p in member.parents()}:
            return f"an ancestor of pid {member_pid}"
        if joiner.ppid() != member.ppid():
            return None
        joiner_cmdline, member_cmdline = joiner.cmdline(), member.cmdline()
        if joiner_cmdline == member_cmdline:
            return f"a sibling of pid {member_pid} with the same command line"
        if _MULTIPROCESSING_CHILD in joiner_cmdline and _MULTIPROCESSING_CHILD in member_cmdline:
            return f"a multiprocessing sibling of pid {member_pid}"
    except (psutil.Error, OSError):
        return None
    return None


def describe_process(pid: int) -> str:
    """`pid 123 (python app.py)`, or just the pid if its command line cannot be read."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return f"pid {pid}"
    return f"pid {pid} ({cmdline})" if cmdline else f"pid {pid}"


def port_holder(port: int) -> int | None:
    """The pid of the process listening on TCP `port`, where it can be seen (this user's
    processes: the socket's inode in /proc/net/tcp, found among /proc/<pid>/fd)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid
        ):
            return connection.pid
    return None
