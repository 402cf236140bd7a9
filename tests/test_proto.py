"""The profile.proto encoder fed made-up Snapshots, judged by `go tool pprof` and by the raw
protobuf messages."""

from __future__ import annotations

import gzip
import re

import pytest
from support import go_pprof, raw_locations, raw_samples, top_table

from pyprofiler import proto, symbols
from pyprofiler._proto import profile_pb2
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType

ALPHA_12 = Frame("shop.Cart.total", "/srv/shop/cart.py", 10, 12)
ALPHA_14 = Frame("shop.Cart.total", "/srv/shop/cart.py", 10, 14)
BETA = Frame("shop.handle_request", "/srv/shop/views.py", 30, 33)
MAIN = Frame("shop.<module>", "/srv/shop/__init__.py", 1, 5)
TIME_NANOS = 1_700_000_000_123_456_789


def cpu_snapshot(**overrides) -> Snapshot:
    fields = dict(
        sample_types=(ValueType("samples", "count"), ValueType("cpu", "nanoseconds")),
        period_type=ValueType("cpu", "nanoseconds"),
        period=10_000_000,
        time_nanos=TIME_NANOS,
        duration_nanos=2_000_000_000,
        samples=[
            Sample(
                (ALPHA_12, BETA, MAIN),
                (3, 30_000_000),
                (("thread", "worker-1"),),
                (("request_bytes", 2048, "bytes"),),
            ),
            Sample((ALPHA_14, BETA, MAIN), (1, 10_000_000), (("thread", "MainThread"),)),
            Sample((BETA, MAIN), (2, 20_000_000), (("thread", "worker-1"),)),
        ],
    )
    fields.update(overrides)
    return Snapshot(**fields)


def parsed(snapshot: Snapshot) -> profile_pb2.Profile:
    return profile_pb2.Profile.FromString(gzip.decompress(proto.encode(snapshot)))


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(proto.encode(cpu_snapshot()))
    return path


def test_output_is_gzip_at_top_level():
    # pprof sniffs the gzip magic; the spec says the file on disk is gzipped.
    assert proto.encode(cpu_snapshot())[:2] == b"\x1f\x8b"


def test_go_pprof_raw_shows_types_functions_and_lines(profile_file):
    raw = go_pprof(["-raw"], profile_file)
    assert "PeriodType: cpu nanoseconds" in raw
    assert "Period: 10000000" in raw
    assert "samples/count cpu/nanoseconds" in raw
    assert "Duration: 2s" in raw
    locations = "\n".join(raw_locations(raw).values())
    assert "shop.Cart.total /srv/shop/cart.py:12 s=10" in locations
    assert "shop.Cart.total /srv/shop/cart.py:14 s=10" in locations
    assert "shop.handle_request /srv/shop/views.py:33 s=30" in locations
    assert "shop.<module> /srv/shop/__init__.py:5 s=1" in locations


def test_go_pprof_raw_shows_sample_values_and_labels(profile_file):
    samples = raw_samples(go_pprof(["-raw"], profile_file))
    assert sorted(values for values, _ in samples) == [
        (1, 10_000_000),
        (2, 20_000_000),
        (3, 30_000_000),
    ]
    by_values = {values: labels for values, labels in samples}
    # Numeric labels keep their unit; pprof prints them as "<num> <unit>".
    assert by_values[(3, 30_000_000)] == {"thread": "worker-1", "request_bytes": "2048 bytes"}
    assert by_values[(1, 10_000_000)] == {"thread": "MainThread"}


def test_go_pprof_top_attributes_flat_and_cum(profile_file):
    table = top_table(go_pprof(["-top"], profile_file))
    assert table["shop.Cart.total"] == (66.67, 66.67)
    assert table["shop.handle_request"] == (33.33, 100.0)
    assert table["shop.<module>"] == (0.0, 100.0)


def test_go_pprof_tagfocus_on_string_label(profile_file):
    table = top_table(go_pprof(["-tagfocus", "thread=MainThread", "-top"], profile_file))
    assert set(table) == {"shop.Cart.total", "shop.handle_request", "shop.<module>"}
    # Percentages stay relative to the unfocused total: only the 10 ms MainThread sample is left.
    assert table["shop.Cart.total"] == (16.67, 16.67)
    assert table["shop.handle_request"] == (0.0, 16.67)


def test_default_sample_type_is_what_pprof_shows(tmp_path):
    path = tmp_path / "p.pb.gz"
    path.write_bytes(proto.encode(cpu_snapshot(default_sample_type="samples")))
    top = go_pprof(["-top"], path)
    assert "Type: samples" in top
    assert "samples/count[dflt] cpu/nanoseconds" in go_pprof(["-raw"], path)


def test_comments_reach_pprof(tmp_path):
    path = tmp_path / "p.pb.gz"
    path.write_bytes(proto.encode(cpu_snapshot(comments=("pyprofiler test run",))))
    assert "Comment: pyprofiler test run" in go_pprof(["-raw"], path)


def test_string_table_starts_empty():
    # pprof rejects a profile whose string_table[0] is not "".
    assert parsed(cpu_snapshot()).string_table[0] == ""


def test_locations_and_functions_are_interned():
    profile = parsed(cpu_snapshot())
    strings = profile.string_table
    functions = {f.id: strings[f.name] for f in profile.function}
    # Three distinct functions although Cart.total appears at two lines.
    assert sorted(functions.values()) == ["shop.<module>", "shop.Cart.total", "shop.handle_request"]
    # Four distinct (function, line) pairs -> four locations.
    assert len(profile.location) == 4
    by_key = {}
    for location in profile.location:
        (line,) = location.line
        by_key[(functions[line.function_id], line.line)] = location.id
    first, second, third = profile.sample
    # BETA and MAIN are shared by all samples: same location ids everywhere.
    assert first.location_id[1:] == second.location_id[1:] == third.location_id
    assert list(third.location_id) == [
        by_key[("shop.handle_request", 33)],
        by_key[("shop.<module>", 5)],
    ]
    # Same function, other line: a different location pointing at the same function.
    assert first.location_id[0] != second.location_id[0]
    alpha_locations = [
        loc for loc in profile.location if functions[loc.line[0].function_id] == "shop.Cart.total"
    ]
    assert len({loc.line[0].function_id for loc in alpha_locations}) == 1


def test_ids_are_nonzero_and_unique():
    profile = parsed(cpu_snapshot())
    for messages in (profile.function, profile.location, profile.mapping):
        ids = [m.id for m in messages]
        assert 0 not in ids
        assert len(ids) == len(set(ids))


def test_function_fields():
    profile = parsed(cpu_snapshot())
    strings = profile.string_table
    function = next(f for f in profile.function if strings[f.name] == "shop.Cart.total")
    assert strings[function.system_name] == "shop.Cart.total"
    assert strings[function.filename] == "/srv/shop/cart.py"
    assert function.start_line == 10


def test_location_addresses_nonzero_distinct_and_stable():
    first = parsed(cpu_snapshot())
    # Other frame order -> other location ids, but the same frames must keep their addresses
    # (scrapers that subtract consecutive profiles key samples by address).
    reordered = cpu_snapshot(
        samples=[Sample((MAIN,), (1, 1)), Sample((ALPHA_14, ALPHA_12, BETA), (1, 1))]
    )
    second = parsed(reordered)

    def addresses(profile):
        strings = profile.string_table
        names = {f.id: strings[f.name] for f in profile.function}
        return {
            (names[loc.line[0].function_id], loc.line[0].line): loc.address
            for loc in profile.location
        }

    first_addresses, second_addresses = addresses(first), addresses(second)
    assert 0 not in first_addresses.values()
    assert len(set(first_addresses.values())) == len(first_addresses) == 4
    assert first_addresses == second_addresses
    # The ids did change, so equality above is about addresses, not about identical output.
    first_ids = {loc.address: loc.id for loc in first.location}
    second_ids = {loc.address: loc.id for loc in second.location}
    assert first_ids != second_ids


def test_locations_point_at_a_fully_symbolized_mapping():
    profile = parsed(cpu_snapshot())
    (mapping,) = profile.mapping
    # Without these flags pprof tries to symbolize the synthetic addresses.
    assert mapping.has_functions and mapping.has_filenames and mapping.has_line_numbers
    assert {loc.mapping_id for loc in profile.location} == {mapping.id}


def test_go_pprof_reports_mapping_as_symbolized(profile_file):
    raw = go_pprof(["-raw"], profile_file)
    mappings = raw.split("Mappings", 1)[1]
    assert "[FN][FL][LN]" in mappings


def test_duration_zero_stays_zero(tmp_path):
    snapshot = cpu_snapshot(duration_nanos=0)
    assert parsed(snapshot).duration_nanos == 0
    path = tmp_path / "p.pb.gz"
    path.write_bytes(proto.encode(snapshot))
    assert "Duration" not in go_pprof(["-raw"], path)


def test_time_and_period_fields():
    profile = parsed(cpu_snapshot())
    strings = profile.string_table
    assert profile.time_nanos == TIME_NANOS
    assert profile.duration_nanos == 2_000_000_000
    assert profile.period == 10_000_000
    assert (strings[profile.period_type.type], strings[profile.period_type.unit]) == (
        "cpu",
        "nanoseconds",
    )
    # Unset default_sample_type: pprof falls back to the last sample type, as for Go's CPU.
    assert profile.default_sample_type == 0


def test_numeric_label_fields():
    profile = parsed(cpu_snapshot())
    strings = profile.string_table
    labels = {strings[label.key]: label for label in profile.sample[0].label}
    assert strings[labels["thread"].str] == "worker-1"
    assert labels["request_bytes"].num == 2048
    assert strings[labels["request_bytes"].num_unit] == "bytes"
    assert labels["request_bytes"].str == 0


def test_decode_round_trips():
    snapshot = cpu_snapshot(default_sample_type="samples", comments=("one", "two"))
    decoded = proto.decode(proto.encode(snapshot))
    assert decoded == snapshot
    # Equality of the dataclass covers these; spelled out so a failure says which one.
    assert decoded.samples == snapshot.samples
    assert decoded.sample_types == snapshot.sample_types
    assert decoded.period_type == snapshot.period_type
    assert (decoded.time_nanos, decoded.duration_nanos) == (TIME_NANOS, 2_000_000_000)
    assert decoded.default_sample_type == "samples"


def test_decode_accepts_uncompressed_protobuf():
    snapshot = cpu_snapshot()
    raw = gzip.decompress(proto.encode(snapshot))
    assert proto.decode(raw) == snapshot


def test_empty_snapshot_is_a_valid_profile(tmp_path):
    path = tmp_path / "empty.pb.gz"
    path.write_bytes(proto.encode(cpu_snapshot(samples=[])))
    raw = go_pprof(["-raw"], path)
    assert "samples/count cpu/nanoseconds" in raw
    assert raw_samples(raw) == []


def test_total_sums_one_column():
    assert cpu_snapshot().total("cpu") == 60_000_000
    assert cpu_snapshot().total("samples") == 6


def test_symbol_lookup_resolves_encoded_addresses():
    profile = parsed(cpu_snapshot())
    strings = profile.string_table
    names = {f.id: strings[f.name] for f in profile.function}
    for location in profile.location:
        assert symbols.lookup(location.address) == names[location.line[0].function_id]


def test_location_address_is_deterministic_and_nonzero():
    address = symbols.location_address("shop.Cart.total", "/srv/shop/cart.py", 12)
    assert address == symbols.location_address("shop.Cart.total", "/srv/shop/cart.py", 12)
    assert address != symbols.location_address("shop.Cart.total", "/srv/shop/cart.py", 13)
    assert 0 < address < 2**48


def test_undecodable_filename_still_encodes(tmp_path):
    # On Linux a source path with non-UTF-8 bytes reaches co_filename as surrogate escapes
    # (os.fsdecode); protobuf strings must be UTF-8, yet one such frame must not make the
    # whole profile fail.
    frame = Frame("legacy.load", "/srv/caf\udce9/legacy.py", 3, 4)
    snapshot = cpu_snapshot(samples=[Sample((frame, MAIN), (1, 10_000_000))])
    path = tmp_path / "p.pb.gz"
    path.write_bytes(proto.encode(snapshot))
    locations = "\n".join(raw_locations(go_pprof(["-raw"], path)).values())
    # The undecodable byte is escaped where it stood, so the name still says which file it was.
    assert "legacy.load /srv/caf\\udce9/legacy.py:4" in locations


def test_mapping_names_no_file_that_pprof_could_disassemble(profile_file):
    # pprof opens a mapping's file to disassemble it at the locations' addresses; our
    # addresses are synthetic, so the Source view only reads Python files when it cannot.
    (mapping,) = parsed(cpu_snapshot()).mapping
    name = parsed(cpu_snapshot()).string_table[mapping.filename]
    assert name == proto.MAPPING_NAME == "[python]"
    assert (mapping.memory_start, mapping.memory_limit, mapping.build_id) == (0, 0, 0)
    mappings = go_pprof(["-raw"], profile_file).split("Mappings", 1)[1]
    assert re.search(r"^1: 0x0/0x0/0x0 \[python\]\s+\[FN\]\[FL\]\[LN\]$", mappings, re.M)
