"""What stands between the port and the profiles: a token, the Host check against DNS rebinding,
CORS for the origins allowed, and a bound on how many profiles are taken at once.

The routes (http.py) apply these to every request, whichever server or framework carries them.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyprofiler.samplers.own_locks import OwnLock

DEFAULT_MAX_CONCURRENT = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Limiter:
    """At most `limit` profiles being taken at once; the others are refused (429) with the
    seconds until the first running one ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = OwnLock()
        self._ends: dict[int, float] = {}  # Ticket -> when its profile should end (monotonic).
        self._next = 0
        _limiters.add(self)

    def _forget(self) -> None:
        """In a forked child: the profiles being taken are the parent's."""
        self._ends.clear()

    def enter(self, seconds: float) -> int | None:
        """A ticket for a profile of `seconds` (0 for an instant one), or None if `limit`
        run already."""
        with self._lock:
            if len(self._ends) >= self.limit:
                return None
            self._next += 1
            self._ends[self._next] = time.monotonic() + seconds
            return self._next

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._ends.pop(ticket, None)

    def retry_after(self) -> int:
        """Whole seconds until the first running profile should end, at least 1."""
        with self._lock:
            first = min(self._ends.values(), default=time.monotonic())
        return max(1, math.ceil(first - time.monotonic()))


_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()


def after_fork_in_child() -> None:
    for limiter in list(_limiters):
        limiter._forget()


@dataclass
class Guards:
    """The guards of one app or server. `allowed_hosts`: the Host header values accepted (with
    or without a port), None for no check."""

    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    allowed_hosts: frozenset[str] | None = None
    limiter: Limiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.max_concurrent)

    def host_refused(self, host: str | None) -> bool:
        """Whether the Host header names something other than this machine's loopback, as a
        page on another site whose name was rebound to 127.0.0.1 would."""
        if self.allowed_hosts is None or host is None:
            return False  # HTTP/1.0 clients may send none; browsers always do.
        # Any port: an SSH tunnel or a local proxy may forward from a port of its own.
        name, port = host.lower(), ""
        if name.startswith("["):
            end = name.find("]") + 1
            name, port = name[:end], name[end:]
        elif ":" in name:
            name, colon, number = name.partition(":")
            port = colon + number
        if port and not (port[0] == ":" and port[1:].isascii() and port[1:].isdigit()):
            return True
        return name not in self.allowed_hosts

    def token_accepted(self, authorization: str | None, query_token: str | None) -> bool:
        if self.token is None:
            return True
        expected = self.token.encode()
        given = []
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given.append(credentials.strip())
        if query_token is not None:
            given.append(query_token)
        # Every candidate is compared in full, so the time taken says nothing about the token.
        accepted = False
        for candidate in given:
            encoded = candidate.encode("utf-8", "surrogateescape")
            accepted |= hmac.compare_digest(encoded, expected)
        return accepted

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return False
        return "*" in self.allow_origins or origin in self.allow_origins

    def cors_headers(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        """The headers that let a page of an allowed origin read the answer."""
        origin = headers.get("origin")
        if not self.allow_origins:
            return []
        if not self.origin_allowed(origin):
            return [("Vary", "Origin")]
        return [
            ("Access-Control-Allow-Origin", origin or ""),
            ("Access-Control-Expose-Headers", "Content-Disposition, X-Go-Pprof"),
            ("Vary", "Origin"),
        ]


def loopback_hosts(bind_host: str) -> frozenset[str]:
    """The Host names accepted on a loopback bind: the loopback names and the bind address."""
    bound = f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host
    return frozenset((*LOOPBACK_NAMES, bound.lower()))


def origins(allow_origins: Iterable[str] | str | None) -> tuple[str, ...]:
    if allow_origins is None:
        return ()
    if isinstance(allow_origins, str):
        return (allow_origins,)
    return tuple(allow_origins)
