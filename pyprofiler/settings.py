"""The settings of `python -m pyprofiler run`, each an option and a `PYPROFILER_*` variable.

One table drives both: the runner parses its options and the variables with the same checks,
then hands every setting to the program it runs through the variables, which the bootstrap in
that program (and in every Python process the program starts) reads back with the same checks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from pyprofiler import registry

ENV_PREFIX = "PYPROFILER_"


class SettingError(ValueError):
    """A setting's value that cannot be used, described in a full sentence."""


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise SettingError(f"{text!r} is not a host name or address")
    return text


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"{text!r} is not {what}") from None
    if value < low or (high is not None and value > high):
        raise SettingError(f"{text!r} is not {what}")
    return value


def _port(text: str) -> int:
    return _integer(text, 0, 65535, "a port number (0 to 65535; 0 picks a free port)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SettingError(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    return _integer(text, 1, None, "a whole number of 1 or more")


def _rate(text: str) -> int:
    return _integer(text, 0, None, "a whole number of 0 or more")


def _hz(text: str) -> int:
    return _integer(text, 1, 1000, "a rate from 1 to 1000 Hz")


def _directory(text: str) -> str:
    if not text:
        raise SettingError("the dump directory is an empty path")
    return text


def _profile_names(text: str) -> tuple[str, ...]:
    # Built-in names only: the runner starts dumps before the program can make custom profiles.
    known = [profile.name for profile in registry.profiles()]
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SettingError(
            f"there is no profile named {unknown[0]!r}; give a comma-separated list of "
            f"{', '.join(known)}"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Settings:
    """What the runner starts in each process; None leaves pyprofiler's own default."""

    host: str = "127.0.0.1"
    port: int = 6060
    dump_dir: str | None = None
    interval: float = 60.0
    keep: int | None = None
    profiles: tuple[str, ...] | None = None
    block_rate: int | None = None
    mutex_fraction: int | None = None
    mem_rate: int | None = None
    cpu_hz: int | None = None

    def to_environ(self) -> dict[str, str | None]:
        """Every setting as its variable's text; None for a setting left at its default
        (the caller removes that variable)."""
        environ: dict[str, str | None] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            environ[env_name(field.name)] = None if value is None else str(value)
        return environ


@dataclass(frozen=True)
class Option:
    """One setting: its Settings field, its parser, and the help text of its option."""

    field: str
    parse: Callable[[str], object]
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.field)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


OPTIONS = (
    Option("host", _host, "HOST", "address to serve /debug/pprof/ on (default 127.0.0.1)"),
    Option("port", _port, "PORT", "port to serve on (default 6060; 0 picks a free one)"),
    Option("dump_dir", _directory, "DIR", "write profiles to DIR every interval"),
    Option("interval", _seconds, "SECONDS", "seconds between dumps (default 60)"),
    Option("keep", _count, "N", "keep the newest N dumps of each profile (default all)"),
    Option(
        "profiles",
        _profile_names,
        "NAMES",
        "comma-separated profiles to dump (default profile,heap,allocs,block,mutex,goroutine)",
    ),
    Option("block_rate", _rate, "NS", "block profile rate, as Go's SetBlockProfileRate"),
    Option("mutex_fraction", _rate, "N", "mutex profile fraction, as SetMutexProfileFraction"),
    Option("mem_rate", _rate, "BYTES", "heap sampling rate, as Go's MemProfileRate"),
    Option("cpu_hz", _hz, "HZ", "CPU and wall profile rate (default 100)"),
)


def parse_environ(environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """The PYPROFILER_* variables that are set, parsed, keyed by Settings field; an empty
    variable counts as unset, as container environments often declare every variable. Raises
    SettingError naming the variable and its value."""
    parsed = {}
    for option in OPTIONS:
        text = environ.get(option.env, "")
        if not text:
            continue
        try:
            parsed[option.field] = option.parse(text)
        except SettingError as error:
            raise SettingError(f"{option.env}={text!r}: {error}") from None
    return parsed


def settings_from_environ(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from the PYPROFILER_* variables; raises SettingError naming a bad one."""
    return Settings(**parse_environ(environ))
