"""The one list of profiles, as Go's pprof.Lookup / pprof.Profiles.

The index page, the HTTP routes and everything else that enumerates profiles iterate this
registry; adding a profile is one `register` call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import IO

from pyprofiler import proto
from pyprofiler.errors import PyprofilerError
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

    def count(self) -> int:
        return 0

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        raise NotImplementedError

    def add(self, value: object, skip: int = 0) -> None:
        """Only custom profiles (new_profile) take entries, as in Go."""
        raise PyprofilerError(f"pprof: Add called on built-in Profile {self.name}")

    def remove(self, value: object) -> None:
        """Nothing to remove from a built-in profile: a no-op, as in Go."""

    def _building(self) -> AbstractContextManager[None]:
        return gc_paused() if self.pauses_gc else contextlib.nullcontext()

    def text(self, debug: int) -> Iterable[str]:
        """Go's legacy text form (`debug=1`, and `debug=2` where a profile has one), in chunks
        so that a large dump is written out piece by piece."""
        raise NotImplementedError

    def write_to(self, file: IO[bytes], debug: int = 0, seconds: float | None = None) -> None:
        """Write the profile to `file`: gzipped profile.proto, or Go's text form when `debug` > 0
        (timed profiles ignore `debug`, as Go's CPU profile does)."""
        if self.timed:
            proto.write(self.snapshot(seconds), file)
            return
        with self._building():
            if debug > 0:
                for chunk in self.text(debug):
                    file.write(chunk.encode("utf-8"))
            else:
                self._write_and_release(self.snapshot(), file)

    def _write_and_release(self, snapshot: Snapshot, file: IO[bytes]) -> None:
        proto.write(snapshot, file)
        release_gradually(snapshot.samples)

    def write_delta(self, file: IO[bytes], seconds: float) -> None:
        """Write what changed over `seconds`: two snapshots, the first subtracted from the
        second, as Go's `?seconds=N` on a named profile."""
        with self._building():
            before = self.snapshot()
            # Kept as bytes while waiting: the collections that run meanwhile would otherwise
            # traverse every sample of a large profile, holding the GIL for tens of ms.
            packed = pack(before.samples)
        time.sleep(seconds)
        with self._building():
            before.samples = unpack(packed)
            after = self.snapshot()
            self._write_and_release(after.subtract(before), file)
            release_gradually(after.samples)
            release_gradually(before.samples)


_lock = threading.Lock()
_profiles: dict[str, Profile] = {}


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
