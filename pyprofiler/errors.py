"""The one exception family that pyprofiler raises into the calling program."""


class PyprofilerError(Exception):
    """Misuse of the pyprofiler API, described in a full sentence."""


class ProfilerBusyError(PyprofilerError):
    """A profile that runs one at a time (CPU, wall) is already being taken."""
