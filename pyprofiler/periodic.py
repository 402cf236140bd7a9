"""Periodic dumps: every `interval` seconds, each named profile written to a directory as
`<name>-<UTC time>-<pid>.pb.gz`, for later analysis (what Go programs do by hand with a ticker
around pprof.StartCPUProfile and WriteHeapProfile).

CPU and wall profiles are consecutive windows of the one sampler of their kind (cpu.py), so the
files of an hour add up to the hour's CPU; the others are written as they stand at each tick
(heap: in use now; allocs, block, mutex: cumulative since the program started, as Go writes
them). A file appears under its final name only when complete. A directory that cannot be
written is logged once per cause and tried again at the next tick; nothing is raised into the
program. A forked child (a worker of a pool) starts writing its own files.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable

from pyprofiler import cpu, registry
from pyprofiler.errors import PyprofilerError
from pyprofiler.samplers.own_locks import OwnLock

log = logging.getLogger("pyprofiler")

DEFAULT_PROFILES = ("profile", "heap", "allocs", "block", "mutex", "goroutine")
SUFFIX = ".pb.gz"


class _Chunks(list):
    write = list.append


class _Writer:
    def __init__(
        self, directory: str, interval: float, names: tuple[str, ...], keep: int | None
    ) -> None:
        self.directory = directory
        self.interval = interval
        self.names = names
        self.keep = keep
        self.pid = os.getpid()
        self._stopping = threading.Event()
        self._windows: dict[str, cpu.Window] = {}
        self._failures: set[tuple[str, int | None]] = set()  # Causes logged, until a success.
        self._thread = threading.Thread(target=self._run, name="pyprofiler-periodic", daemon=True)

    def start(self) -> None:
        for name in self.names:
            profile = registry.lookup(name)
            if isinstance(profile, cpu.TimedProfile):
                self._windows[name] = cpu.open_window(profile.kind, exclusive=False)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stopping.wait(max(0.0, next_tick - time.monotonic())):
            self._write_all(final=False)
            next_tick += self.interval
            if next_tick < time.monotonic():  # A tick took longer than the interval.
                next_tick = time.monotonic() + self.interval
        self._write_all(final=True)

    def _write_all(self, final: bool) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        stamp += f".{int(time.time() * 1000) % 1000:03d}Z"
        for name in self.names:
            try:
                data = self._profile(name, final)
            except Exception:  # A profile failing is no reason to stop the others or the host.
                log.exception("pyprofiler: the %s profile could not be taken", name)
                continue
            self._write(name, f"{name}-{stamp}-{self.pid}{SUFFIX}", data)

    def _profile(self, name: str, final: bool) -> bytes:
        profile = registry.lookup(name)
        if profile is None:
            raise PyprofilerError(f"no profile named {name!r}")
        chunks = _Chunks()
        window = self._windows.get(name)
        if window is not None:
            assert isinstance(profile, cpu.TimedProfile)
            take = cpu.close_window if final else cpu.take_window
            registry.write_snapshot(take(profile.kind, window), chunks)
        else:
            profile.write_to(chunks)
        return b"".join(chunks)

    def _write(self, name: str, filename: str, data: bytes) -> None:
        final_path = os.path.join(self.directory, filename)
        # Hidden while it is written, so that nothing reads or counts a partial file.
        partial_path = os.path.join(self.directory, f".{filename}.partial")
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(partial_path, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial_path, final_path)
            self._prune(name)
        except OSError as exc:
            self._failed(exc)
            try:
                os.unlink(partial_path)
            except OSError:
                pass
            return
        self._failures.clear()

    def _prune(self, name: str) -> None:
        if self.keep is None:
            return
        prefix, suffix = f"{name}-", f"-{self.pid}{SUFFIX}"
        mine = sorted(
            entry
            for entry in os.listdir(self.directory)
            if entry.startswith(prefix) and entry.endswith(suffix)
            # Another profile's name may extend this one's ("mutex" and "mutex-x").
            and "-" not in entry[len(prefix) : -len(suffix)]
        )
        for entry in mine[: max(0, len(mine) - self.keep)]:
            os.unlink(os.path.join(self.directory, entry))

    def _failed(self, exc: OSError) -> None:
        cause = (type(exc).__name__, exc.errno)
        if cause not in self._failures:
            self._failures.add(cause)
            log.warning(
                "pyprofiler: cannot write profiles to %s (%s); trying again every %g s",
                self.directory,
                exc,
                self.interval,
            )


_lock = OwnLock()
_writer: _Writer | None = None
_atexit_registered = False


def start_periodic(
    directory: str | os.PathLike,
    interval: float = 60,
    profiles: Iterable[str] = DEFAULT_PROFILES,
    keep: int | None = None,
) -> None:
    """Write each of `profiles` to `directory` every `interval` seconds as
    `<name>-<UTC time>-<pid>.pb.gz`, keeping the newest `keep` files of each (all, if None),
    until stop_periodic() (or the program's exit) writes the last, partial window."""
    global _writer, _atexit_registered
    names = tuple(profiles)
    if not names:
        raise PyprofilerError("start_periodic() needs at least one profile name")
    for name in names:
        profile = registry.lookup(name)
        if profile is None:
            raise PyprofilerError(f"start_periodic(): there is no profile named {name!r}")
        if profile.timed and not isinstance(profile, cpu.TimedProfile):
            # The trace and the call profile run a window of their own, at a cost while it runs.
            raise PyprofilerError(
                f"start_periodic(): the {name} profile is not written periodically"
            )
    if not interval > 0:
        raise PyprofilerError(f"start_periodic(): interval must be positive, not {interval!r}")
    if keep is not None and keep < 1:
        raise PyprofilerError(f"start_periodic(): keep must be at least 1, not {keep!r}")
    with _lock:
        if _writer is not None:
            raise PyprofilerError("periodic profiles are already being written; stop first")
        writer = _Writer(os.fspath(directory), float(interval), names, keep)
        writer.start()
        _writer = writer
        if not _atexit_registered:
            atexit.register(_stop_at_exit)
            _atexit_registered = True


def stop_periodic() -> None:
    """Write the last, partial window of every profile and stop writing."""
    global _writer
    with _lock:
        writer, _writer = _writer, None
    if writer is None:
        raise PyprofilerError("stop_periodic() called without start_periodic()")
    writer.stop()


def _stop_at_exit() -> None:
    try:
        if _writer is not None:
            stop_periodic()
    except Exception:  # Exiting anyway: never a traceback into the host's exit.
        log.exception("pyprofiler: writing the last periodic profiles failed")


def after_fork_in_child() -> None:
    # The writer thread stayed in the parent; a worker of a pool writes its own files.
    global _writer
    parent, _writer = _writer, None
    if parent is not None:
        try:
            start_periodic(parent.directory, parent.interval, parent.names, parent.keep)
        except Exception:
            log.exception("pyprofiler: periodic profiles could not restart after fork")
