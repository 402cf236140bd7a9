"""The one list of profiles, as Go's pprof.Lookup / pprof.Profiles.

The index page, the HTTP routes and everything else that enumerates profiles iterate this
registry; adding a profile is one `register` call. Every profile that leaves the process is
encoded here (`Profile.write_to`, `write_snapshot`): HTTP, the periodic writer, the group's
merged profiles and start/stop_cpu_profile share the one path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO

from pyprofiler import hangup, proto, symbols, turns
from pyprofiler.errors import PyprofilerError
from pyprofiler.render_text import encode_text
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.snapshot import Snapshot
from pyprofiler.stalls import gc_paused, pack, release_gradually, unpack

# What serves profiles takes turns with every other build (turns.py) through the registry.
from pyprofiler.turns import turn, waiting  # noqa: E402, F401, I001


class Profile:
    """A named profile: it knows its description, its count and how to write itself.

    An instant profile (heap, goroutine, ...) describes the process now. A timed profile (CPU,
    wall) is collected over `seconds`; its `write_to` blocks that long, and at most one of each
    runs at a time.
    """

    name: str = ""
    description: str = ""
    timed: bool = False
    supports_delta: bool = False  # Go's `?seconds=N` on an instant profile.
    # Profiles that can be very large are built with the cyclic GC paused (see stalls).
    pauses_gc: bool = False
    # A profile that sees pyprofiler's own threads (CPU, wall, goroutine, threadcreate; what
    # they allocate in heap and allocs): they are left out unless asked for (`include_self`),
    # and its snapshot() and text() take that.
    sees_own_threads: bool = False
    # A timed profile's choices besides its duration, as query parameters: each one's values,
    # its default first. The HTTP layer refuses others; write_to gets the values chosen.
    options: Mapping[str, tuple[str, ...]] = {}
    # A timed profile's duration when none is asked for; None: the server's (30 s).
    default_seconds: int | None = None
    # What Go's "Could not enable ..." names when it runs already; "" for "<name> profiling".
    activity: str = ""
    # profile.proto, which a group's members' answers merge into one; False for one process's
    # document (the trace's timeline), which a group's port passes on from the member asked.
    mergeable: bool = True

    def count(self) -> int:
        return 0

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        raise NotImplementedError

    def _snapshot(self, seconds: float | None, include_self: bool) -> Snapshot:
        if self.sees_own_threads:
            return self.snapshot(seconds, include_self=include_self)  # type: ignore[call-arg]
        return self.snapshot(seconds)

    def _text(self, debug: int, include_self: bool) -> Iterable[str]:
        if self.sees_own_threads:
            return self.text(debug, include_self=include_self)  # type: ignore[call-arg]
        return self.text(debug)

    def add(self, value: object, skip: int = 0) -> None:
        """Only custom profiles (new_profile) take entries, as in Go."""
        raise PyprofilerError(f"pprof: Add called on built-in Profile {self.name}")

    def remove(self, value: object) -> None:
        """Nothing to remove from a built-in profile: a no-op, as in Go."""

    def _building(self) -> AbstractContextManager[None]:
        return _one_build(self.pauses_gc)

    def filename(self, options: Mapping[str, str]) -> str:
        """The name a download of the profile is saved under, in the form `options` choose."""
        return self.name

    def text(self, debug: int) -> Iterable[str]:
        """Go's legacy text form (`debug=1`, and `debug=2` where a profile has one), in chunks
        so that a large dump is written out piece by piece."""
        raise NotImplementedError

    def write_to(
        self,
        file: IO[bytes],
        debug: int = 0,
        seconds: float | None = None,
        include_self: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> None:
        """Write the profile to `file`: gzipped profile.proto, or Go's text form when `debug` > 0
        (timed profiles ignore `debug`, as Go's CPU profile does). Profiles of threads leave
        pyprofiler's own (`pyprofiler-*`) out unless `include_self`. `options`: the values
        chosen of those the profile offers, defaults where absent."""
        if self.timed:
            write_snapshot(self._snapshot(seconds, include_self), file)
            return
        with self._building():
            if debug > 0:
                for chunk in self._text(debug, include_self):
                    file.write(encode_text(chunk))
            else:
                self._write_and_release(self._snapshot(None, include_self), file)

    def _write_and_release(self, snapshot: Snapshot, file: IO[bytes]) -> None:
        write_snapshot(snapshot, file)
        release_gradually(snapshot.samples)

    def write_delta(self, file: IO[bytes], seconds: float, include_self: bool = False) -> None:
        """Write what changed over `seconds`: two snapshots, the first subtracted from the
        second, as Go's `?seconds=N` on a named profile."""
        with self._building():
            before = self._snapshot(None, include_self)
            # Kept as bytes while waiting: the collections that run meanwhile would otherwise
            # traverse every sample of a large profile, holding the GIL for tens of ms.
            packed = pack(before.samples)
        if hangup.sleep(seconds):
            return  # The client went away: nothing to write, nothing more to build.
        with self._building():
            before.samples = unpack(packed)
            after = self._snapshot(None, include_self)
            self._write_and_release(after.subtract(before), file)
            release_gradually(after.samples)
            release_gradually(before.samples)


def write(
    profile: Profile,
    file: IO[bytes],
    debug: int = 0,
    seconds: float = 0,
    include_self: bool = False,
    hangup_signal: hangup.Signal | None = None,
    options: Mapping[str, str] | None = None,
) -> bool:
    """Write `profile` as a request asks for it: a timed profile over `seconds` with the
    `options` chosen, the delta over `seconds` of an instant one, or the instant one now (Go's
    text form if `debug` > 0). Set, `hangup_signal` cuts the waiting short when the client goes
    away; False: it went away during a delta, of which nothing was written."""
    with hangup.watching(hangup_signal):
        if profile.timed:
            profile.write_to(file, seconds=seconds, include_self=include_self, options=options)
        elif seconds:
            profile.write_delta(file, seconds, include_self=include_self)
        else:
            profile.write_to(file, debug=debug, include_self=include_self)
        return profile.timed or not seconds or not hangup.client_gone()


def symbol(address: int) -> str | None:
    """The function name behind an address of a profile this process encoded."""
    return symbols.lookup(address)


def named_file(name: str) -> str | None:
    """The file on disk behind a file name that a profile this process encoded carries, or None:
    the only files the built-in UI's source view may read."""
    return symbols.named_file(name)


def write_snapshot(snapshot: Snapshot, file: IO[bytes]) -> None:
    """Write a finished profile to `file` as gzipped profile.proto."""
    proto.write(snapshot, file)


_lock = OwnLock()
_profiles: dict[str, Profile] = {}


@contextlib.contextmanager
def _one_build(pauses_gc: bool) -> Iterator[None]:
    # One build at a time (turns.py), with the collector held off for the large ones (stalls.py).
    with turns.turn(), gc_paused() if pauses_gc else contextlib.nullcontext():
        yield


def register(profile: Profile) -> Profile:
    with _lock:
        if profile.name in _profiles:
            raise PyprofilerError(f"pprof: NewProfile name already in use: {profile.name}")
        _profiles[profile.name] = profile
    return profile


def lookup(name: str) -> Profile | None:
    """The profile with this name, or None."""
    with _lock:
        return _profiles.get(name)


def profiles() -> list[Profile]:
    """All profiles, sorted by name."""
    with _lock:
        return [_profiles[name] for name in sorted(_profiles)]
