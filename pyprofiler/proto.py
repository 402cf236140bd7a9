"""Snapshot <-> gzipped profile.proto, the format `go tool pprof` and the scrapers read."""

from __future__ import annotations

import gzip
from typing import IO

from pyprofiler import symbols
from pyprofiler._proto import profile_pb2
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType, escaped

# The name of the profiles' one mapping: no file's, bracketed as the kernel names mappings
# without a file ("[vdso]", "[heap]"), which pprof never tries to symbolize.
MAPPING_NAME = "[python]"


class _ProfileBuilder:
    """Interns strings, functions and locations while samples are appended."""

    def __init__(self) -> None:
        self.profile = profile_pb2.Profile()
        self._strings: dict[str, int] = {}
        self._functions: dict[tuple[str, str, int], int] = {}
        self._locations: dict[tuple[int, int], int] = {}
        self.string("")  # pprof requires string_table[0] == "".

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.profile.string_table)
            self.profile.string_table.append(escaped(text))  # protobuf strings are UTF-8.
        return index

    def value_type(self, message: profile_pb2.ValueType, value: ValueType) -> None:
        message.type = self.string(value.type)
        message.unit = self.string(value.unit)

    def location(self, frame: Frame) -> int:
        function_key = (frame.function, frame.filename, frame.start_line)
        function_id = self._functions.get(function_key)
        if function_id is None:
            function_id = self._functions[function_key] = len(self._functions) + 1
            symbols.remember_file(escaped(frame.filename), frame.filename)
            self.profile.function.add(
                id=function_id,
                name=self.string(frame.function),
                system_name=self.string(frame.function),
                filename=self.string(frame.filename),
                start_line=frame.start_line,
            )
        location_key = (function_id, frame.line)
        location_id = self._locations.get(location_key)
        if location_id is None:
            location_id = self._locations[location_key] = len(self._locations) + 1
            address = symbols.location_address(frame.function, frame.filename, frame.line)
            symbols.remember(address, escaped(frame.function))
            location = self.profile.location.add(id=location_id, mapping_id=1, address=address)
            location.line.add(function_id=function_id, line=frame.line)
        return location_id

    def sample(self, sample: Sample) -> None:
        message = self.profile.sample.add()
        message.location_id.extend([self.location(f) for f in sample.frames])
        message.value.extend(sample.values)
        for key, value in sample.labels:
            message.label.add(key=self.string(key), str=self.string(value))
        for key, number, unit in sample.num_labels:
            message.label.add(key=self.string(key), num=number, num_unit=self.string(unit))


def encode(snapshot: Snapshot) -> bytes:
    """The gzipped profile.proto bytes of a snapshot."""
    builder = _ProfileBuilder()
    profile = builder.profile
    for value_type in snapshot.sample_types:
        builder.value_type(profile.sample_type.add(), value_type)
    builder.value_type(profile.period_type, snapshot.period_type)
    profile.period = snapshot.period
    profile.time_nanos = snapshot.time_nanos
    profile.duration_nanos = snapshot.duration_nanos
    if snapshot.default_sample_type:
        profile.default_sample_type = builder.string(snapshot.default_sample_type)
    profile.comment.extend(builder.string(c) for c in snapshot.comments)
    # One mapping for every location, fully symbolized, so that pprof never looks for symbols
    # for the synthetic addresses. Its name is no file's: pprof disassembles the mapping's file
    # wherever it can open one (the interpreter's binary, at addresses that mean nothing there)
    # and reads the source files named by the functions only where it cannot.
    profile.mapping.add(
        id=1,
        filename=builder.string(MAPPING_NAME),
        has_functions=True,
        has_filenames=True,
        has_line_numbers=True,
    )
    for sample in snapshot.samples:
        builder.sample(sample)
    # Level 1, as Go: profiles are written often and read rarely.
    return gzip.compress(profile.SerializeToString(), compresslevel=1)


def write(snapshot: Snapshot, file: IO[bytes]) -> None:
    file.write(encode(snapshot))


def decode(data: bytes) -> Snapshot:
    """Read a profile.proto, gzipped or not, back into a Snapshot."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    profile = profile_pb2.Profile.FromString(data)
    strings: list[str] = list(profile.string_table)
    functions = {f.id: f for f in profile.function}
    frames_by_location = {}
    for location in profile.location:
        frames_by_location[location.id] = tuple(
            Frame(
                strings[functions[line.function_id].name],
                strings[functions[line.function_id].filename],
                functions[line.function_id].start_line,
                line.line,
            )
            for line in location.line
        )
    samples = []
    for message in profile.sample:
        frames: tuple[Frame, ...] = ()
        for location_id in message.location_id:
            frames += frames_by_location[location_id]
        labels = tuple(
            (strings[label.key], strings[label.str]) for label in message.label if label.str
        )
        num_labels = tuple(
            (strings[label.key], label.num, strings[label.num_unit])
            for label in message.label
            if not label.str
        )
        samples.append(Sample(frames, tuple(message.value), labels, num_labels))
    return Snapshot(
        sample_types=tuple(
            ValueType(strings[t.type], strings[t.unit]) for t in profile.sample_type
        ),
        period_type=ValueType(strings[profile.period_type.type], strings[profile.period_type.unit]),
        period=profile.period,
        time_nanos=profile.time_nanos,
        duration_nanos=profile.duration_nanos,
        default_sample_type=strings[profile.default_sample_type] or None,
        samples=samples,
        comments=tuple(strings[c] for c in profile.comment),
    )
