"""The one exception family that pyprofiler raises into the calling program."""


class PyprofilerError(Exception):
    """Misuse of the pyprofiler API, described in a full sentence."""


class ProfileUnavailableError(PyprofilerError):
    """A profile that this process cannot produce (for example, without the native extension)."""


class ProfilerBusyError(PyprofilerError):
    """A profile that runs one at a time (CPU, wall) is already being taken."""
