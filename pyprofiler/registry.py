"""The one list of profiles, as Go's pprof.Lookup / pprof.Profiles.

The index page, the HTTP routes and everything else that enumerates profiles iterate this
registry; adding a profile is one `register` call.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import IO

from pyprofiler import hangup, proto, turns
from pyprofiler.errors import PyprofilerError
from pyprofiler.render_text import encode_text
from pyprofiler.snapshot import Snapshot
from pyprofiler.stalls import gc_paused, pack, release_gradually, unpack


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
    # A profile of threads (CPU, wall, goroutine, threadcreate): pyprofiler's own threads are
    # left out unless asked for (`include_self`), and its snapshot() and text() take that.
    lists_threads: bool = False

    def count(self) -> int:
        return 0

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        raise NotImplementedError

    def _snapshot(self, seconds: float | None, include_self: bool) -> Snapshot:
        if self.lists_threads:
            return self.snapshot(seconds, include_self=include_self)  # type: ignore[call-arg]
        return self.snapshot(seconds)

    def _text(self, debug: int, include_self: bool) -> Iterable[str]:
        if self.lists_threads:
            return self.text(debug, include_self=include_self)  # type: ignore[call-arg]
        return self.text(debug)

    def add(self, value: object, skip: int = 0) -> None:
        """Only custom profiles (new_profile) take entries, as in Go."""
        raise PyprofilerError(f"pprof: Add called on built-in Profile {self.name}")

    def remove(self, value: object) -> None:
        """Nothing to remove from a built-in profile: a no-op, as in Go."""

    def _building(self) -> AbstractContextManager[None]:
        return _one_build(self.pauses_gc)

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
    ) -> None:
        """Write the profile to `file`: gzipped profile.proto, or Go's text form when `debug` > 0
        (timed profiles ignore `debug`, as Go's CPU profile does). Profiles of threads leave
        pyprofiler's own (`pyprofiler-*`) out unless `include_self`."""
        if self.timed:
            proto.write(self._snapshot(seconds, include_self), file)
            return
        with self._building():
            if debug > 0:
                for chunk in self._text(debug, include_self):
                    file.write(encode_text(chunk))
            else:
                self._write_and_release(self._snapshot(None, include_self), file)

    def _write_and_release(self, snapshot: Snapshot, file: IO[bytes]) -> None:
        proto.write(snapshot, file)
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


_lock = threading.Lock()
_profiles: dict[str, Profile] = {}


@contextlib.contextmanager
def _one_build(pauses_gc: bool) -> Iterator[None]:
    # One build at a time (turns.py), with the collector held off for the large ones (stalls.py).
    with turns.turn(), gc_paused() if pauses_gc else contextlib.nullcontext():
        yield


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # Another thread may have held it at fork; it does not exist here.


os.register_at_fork(after_in_child=_after_fork_in_child)


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
