"""Go's legacy text layouts (`?debug=1`), written through a port of Go's text/tabwriter.

`go tool pprof` parses the record lines (`count: bytes [...] @ addresses`); the `#` frame lines
are for people and are aligned exactly as Go aligns them. Texts may hold lone surrogates (names
as the program has them): whoever encodes them escapes those (`encode_text`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from pyprofiler import symbols
from pyprofiler.snapshot import Frame, escaped

if TYPE_CHECKING:  # The profiles own the records they hand over; nothing of theirs runs here.
    from pyprofiler.count_profiles import GoroutineText
    from pyprofiler.heap import HeapRecord

_TAB_WIDTH = 8
_PADDING = 1


def encode_text(text: str) -> bytes:
    """A text form's bytes: UTF-8, a lone surrogate escaped as `escaped` escapes it."""
    return text.encode("utf-8", "backslashreplace")


def _set_widths(
    rows: list[list[str]], widths: list[list[int]], column: int, start: int, end: int
) -> None:
    """Widths of `column` for rows[start:end], block by block, then of the next column within
    each block. (A module function: a recursive closure would be a reference cycle.)"""
    i = start
    while i < end:
        if column >= len(rows[i]) - 1:
            i += 1
            continue
        j, width = i, 1
        while j < end and column < len(rows[j]) - 1:
            width = max(width, len(rows[j][column]) + _PADDING)
            j += 1
        for k in range(i, j):
            widths[k][column] = width
        _set_widths(rows, widths, column + 1, i, j)
        i = j


def tabwrite(lines: Sequence[str]) -> str:
    """Align tab-separated cells as Go's tabwriter.NewWriter(w, 1, 8, 1, '\\t', 0) does.

    A column's width is set per block of consecutive lines that have a cell in that column;
    cells are padded with tabs to the width rounded up to a multiple of 8.
    """
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[0] * (len(row) - 1) for row in rows]
    _set_widths(rows, widths, 0, 0, len(rows))
    out = []
    for row, row_widths in zip(rows, widths):
        parts = []
        for cell, width in zip(row, row_widths):
            cell_width = -(-width // _TAB_WIDTH) * _TAB_WIDTH
            parts.append(cell + "\t" * -(-(cell_width - len(cell)) // _TAB_WIDTH))
        parts.append(row[-1])
        out.append("".join(parts))
    return "\n".join(out)


def frame_lines(frames: Iterable[Frame]) -> tuple[list[str], list[str]]:
    """(the `@ ...` addresses, the `#` lines) for a stack, leaf first."""
    addresses, lines = [], []
    for frame in frames:
        address = symbols.location_address(frame.function, frame.filename, frame.line)
        function = escaped(frame.function)  # Escaped before the columns are measured.
        symbols.remember(address, function)
        # Go lists return addresses, one past the call, and pprof subtracts 1 before it asks
        # /symbol for a name; the `#` lines show the location itself.
        addresses.append(f"{address + 1:#x}")
        lines.append(f"#\t{address:#x}\t{function}\t{escaped(frame.filename)}:{frame.line}")
    return addresses, lines


def heap_text(records: Sequence[HeapRecord], rate: int, stats: Sequence[tuple[str, object]]) -> str:
    """Go's heap/allocs debug=1 layout, with a Python counterpart of `# runtime.MemStats`."""

    def counts(objects: int, nbytes: int, all_objects: int, all_bytes: int) -> str:
        return f"{objects}: {nbytes} [{all_objects}: {all_bytes}]"

    inuse = [(r.allocs - r.frees, r.alloc_bytes - r.free_bytes) for r in records]
    lines = [
        "heap profile: "
        + counts(
            sum(o for o, _ in inuse),
            sum(b for _, b in inuse),
            sum(r.allocs for r in records),
            sum(r.alloc_bytes for r in records),
        )
        + f" @ heap/{2 * rate}"
    ]
    # Largest in-use first, as Go 1.19 orders them.
    for (objects, nbytes), record in sorted(
        zip(inuse, records), key=lambda pair: pair[0][1], reverse=True
    ):
        addresses, frames = frame_lines(record.frames)
        lines.append(
            counts(objects, nbytes, record.allocs, record.alloc_bytes) + " @ " + " ".join(addresses)
        )
        lines.extend(frames)
        lines.append("")
    lines.append("")
    lines.append("# python.MemStats")
    lines.extend(f"# {name} = {value}" for name, value in stats)
    return tabwrite(lines) + "\n"


def go_quoted(text: str) -> str:
    """`text` as Go's %q verb prints it (strconv.Quote)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def labels_text(labels: Sequence[tuple[str, str]]) -> str:
    """Go's labelMap.String: {"k1":"v1", "k2":"v2"}, sorted."""
    return "{" + ", ".join(sorted(f"{go_quoted(k)}:{go_quoted(v)}" for k, v in labels)) + "}"


def count_text(
    name: str,
    total: int,
    groups: Sequence[tuple[int, tuple[Frame, ...], tuple[tuple[str, str], ...]]],
) -> str:
    """Go's count-profile layout (goroutine, threadcreate, custom profiles at debug=1): a group
    per (stack, labels), its labels on a `# labels:` line where it has any."""
    lines = [f"{name} profile: total {total}"]
    for count, frames, labels in sorted(groups, key=lambda group: -group[0]):
        addresses, frame_text = frame_lines(frames)
        lines.append(" ".join([f"{count} @", *addresses]))
        if labels:
            lines.append("# labels: " + labels_text(labels))
        lines.extend(frame_text)
        lines.append("")
    return tabwrite(lines) + "\n"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds >= 60:
        return f", {int(seconds // 60)} minutes"
    return f", {int(seconds)} seconds"


def goroutine_dump(goroutines: Iterable[GoroutineText]) -> Iterator[str]:
    """Go's full dump (goroutine?debug=2): one block per thread or task, then who created it.

    Yields a block at a time: a dump of tens of thousands of tasks joined into one string would
    hold the GIL for the whole copy."""
    for index, g in enumerate(goroutines):
        lines = [f'goroutine {g.id} [{g.state}{_age(g.age_seconds)}]: {g.kind} "{g.name}"']
        for frame in g.frames:
            lines.append(f"{frame.function}(...)")
            lines.append(f"\t{frame.filename}:{frame.line}")
        if g.created_by:
            creator, *callers = g.created_by
            lines.append(f"created by {creator.function} in goroutine {g.creator_id}")
            lines.append(f"\t{creator.filename}:{creator.line}")
            lines.extend(f"\tcalled from {f.function} at {f.filename}:{f.line}" for f in callers)
        yield ("\n" if index else "") + "\n".join(lines) + "\n"


def contention_text(header: str, records: Sequence[tuple[int, int, tuple[Frame, ...]]]) -> str:
    """Go's block/mutex debug=1 layout: `<delay ns> <count> @ addresses`, longest delay first;
    cycles/second is 1e9, so the "cycles" are nanoseconds."""
    lines = header.split("\n")
    for delay, count, frames in sorted(records, key=lambda record: -record[0]):
        addresses, frame_text = frame_lines(frames)
        lines.append(" ".join([f"{delay} {count} @", *addresses]))
        lines.extend(frame_text)
        lines.append("")
    return tabwrite(lines) + "\n"
