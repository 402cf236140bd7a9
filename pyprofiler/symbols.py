"""Addresses for profile locations, the table that /debug/pprof/symbol answers from, and the
source files that profiles have named, which are all that the built-in UI's source view reads.

Python frames have no program counters, so each location gets a synthetic address derived from
its content. The address is the same in every profile this or any process writes for that
function and line, which is what scrapers that subtract consecutive profiles (Grafana Alloy keys
samples by location addresses) need.
"""

from __future__ import annotations

import hashlib

from pyprofiler.samplers.own_locks import OwnLock

# Enough for every distinct line that a large service reports; the oldest entries go first.
MAX_SYMBOLS = 65536
# Enough for every source file of a large service; the oldest go first.
MAX_FILES = 16384

_lock = OwnLock()
_names: dict[int, str] = {}
# A file's name as profiles carry it (escaped where it is not UTF-8) -> its name on disk.
_files: dict[str, str] = {}


def location_address(function: str, filename: str, line: int) -> int:
    """A stable, nonzero 47-bit address for one line of one function."""
    digest = hashlib.blake2b(
        f"{filename}\0{function}\0{line}".encode("utf-8", "surrogatepass"), digest_size=6
    ).digest()
    return (int.from_bytes(digest, "big") >> 1) | 0x1000


def remember(address: int, function: str) -> None:
    with _lock:
        if address in _names:
            return
        if len(_names) >= MAX_SYMBOLS:
            del _names[next(iter(_names))]
        _names[address] = function


def lookup(address: int) -> str | None:
    with _lock:
        return _names.get(address)


def remember_file(name_in_profile: str, filename: str) -> None:
    with _lock:
        if name_in_profile in _files:
            return
        if len(_files) >= MAX_FILES:
            del _files[next(iter(_files))]
        _files[name_in_profile] = filename


def named_file(name_in_profile: str) -> str | None:
    """The file on disk behind a file name of a profile this process encoded, or None."""
    with _lock:
        return _files.get(name_in_profile)
