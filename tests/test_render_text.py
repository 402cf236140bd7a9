"""The text renderers (`?debug=1` and the goroutine dump) on made-up records: Go's layouts,
checked line by line, without a sampler, a registry or a server."""

from __future__ import annotations

import re

from pyprofiler import symbols
from pyprofiler.count_profiles import GoroutineText
from pyprofiler.render_text import (
    contention_text,
    count_text,
    encode_text,
    goroutine_dump,
    heap_text,
    tabwrite,
)
from pyprofiler.samplers.heap import HeapRecord
from pyprofiler.snapshot import Frame

LEAF = Frame("app.handler", "/srv/app.py", 10, 12)
ROOT = Frame("app.main", "/srv/app.py", 1, 3)
OTHER = Frame("app.worker", "/srv/worker.py", 5, 7)
RECORD = re.compile(r"(.*) @( 0x[0-9a-f]+)+\Z")


def address(frame: Frame) -> int:
    return symbols.location_address(frame.function, frame.filename, frame.line)


def frame_line(frame: Frame) -> re.Pattern:
    """A `#` line: address, function and place, in tab-aligned columns."""
    place = f"{frame.filename}:{frame.line}"
    return re.compile(rf"#\t+{address(frame):#x}\t+{re.escape(frame.function)}\t+{place}\Z")


def test_tabwrite_aligns_cells_to_tab_stops_per_block():
    assert tabwrite(["a\tb", "longer cell\tc", "", "x\ty"]) == ("a\t\tb\nlonger cell\tc\n\nx\ty")


def test_count_text_lists_stacks_most_counted_first_with_return_addresses():
    text = count_text("goroutine", 5, [(1, (OTHER,), ()), (4, (LEAF, ROOT), ())])
    lines = text.split("\n")
    assert lines[0] == "goroutine profile: total 5"
    assert lines[1] == f"4 @ {address(LEAF) + 1:#x} {address(ROOT) + 1:#x}"
    assert frame_line(LEAF).match(lines[2]) and frame_line(ROOT).match(lines[3])
    assert lines[5] == f"1 @ {address(OTHER) + 1:#x}"
    assert symbols.lookup(address(LEAF)) == LEAF.function


def test_heap_text_totals_in_use_and_allocated_largest_in_use_first():
    records = [
        HeapRecord((OTHER,), allocs=2, frees=2, alloc_bytes=64, free_bytes=64),
        HeapRecord((LEAF, ROOT), allocs=3, frees=1, alloc_bytes=300, free_bytes=100),
    ]
    text = heap_text(records, 512 * 1024, [("RSS", 1000), ("GCCounts", "[1 2 3]")])
    lines = text.split("\n")
    assert lines[0] == "heap profile: 2: 200 [5: 364] @ heap/1048576"
    assert RECORD.match(lines[1]).group(1) == "2: 200 [3: 300]"
    assert frame_line(LEAF).match(lines[2])
    assert RECORD.match(lines[5]).group(1) == "0: 0 [2: 64]"
    assert text.endswith("# python.MemStats\n# RSS = 1000\n# GCCounts = [1 2 3]\n")


def test_contention_text_lists_the_longest_delay_first_under_its_header():
    text = contention_text(
        "--- mutex:\ncycles/second=1000000000\nsampling period=5",
        [(1_000, 2, (OTHER,)), (9_000, 1, (LEAF,))],
    )
    lines = text.split("\n")
    assert lines[:3] == ["--- mutex:", "cycles/second=1000000000", "sampling period=5"]
    assert RECORD.match(lines[3]).group(1) == "9000 1"
    assert RECORD.match(lines[6]).group(1) == "1000 2"


def test_goroutine_dump_shows_state_age_frames_and_creator():
    dump = "".join(
        goroutine_dump(
            [
                GoroutineText(1, "thread", "MainThread", "running", None, (LEAF, ROOT), (), 0),
                GoroutineText(7, "task", "req-1", "awaiting x", 125.0, (OTHER,), (ROOT, LEAF), 1),
            ]
        )
    )
    assert dump == (
        'goroutine 1 [running]: thread "MainThread"\n'
        "app.handler(...)\n\t/srv/app.py:12\n"
        "app.main(...)\n\t/srv/app.py:3\n"
        "\n"
        'goroutine 7 [awaiting x, 2 minutes]: task "req-1"\n'
        "app.worker(...)\n\t/srv/worker.py:7\n"
        "created by app.main in goroutine 1\n\t/srv/app.py:3\n"
        "\tcalled from app.handler at /srv/app.py:12\n"
    )


def test_texts_with_lone_surrogates_are_escaped_when_encoded():
    assert encode_text("f\udce9") == b"f\\udce9"
