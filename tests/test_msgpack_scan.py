"""kernels.msgpack_scan against msgspec's own decoding of the same bytes."""
import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import msgpack_scan

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=300)
    | st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.binary(max_size=20)),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=5), inner, max_size=6),
    max_leaves=60)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def buf(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


@settings(max_examples=400, deadline=None)
@given(st.lists(values, max_size=30))
def test_array_items_are_where_each_item_lies_and_how_deep(items):
    data = msgspec.msgpack.encode(items)
    status, count, start, end, depths = msgpack_scan.array_items(buf(data), 0, len(items))
    assert (status, count) == (msgpack_scan.OK, len(items))
    assert [msgspec.msgpack.decode(data[s:e]) for s, e in zip(start, end)] == items
    assert depths.tolist() == list(map(depth, items))
    if items:
        assert msgpack_scan.array_items(buf(data), 0, len(items) - 1)[0] == msgpack_scan.TOO_MANY
    assert msgpack_scan.map_fields(buf(data), 0, *msgpack_scan.names([b"a"]))[0] == msgpack_scan.NOT_THIS_KIND
    assert msgpack_scan.value_end(buf(data + b"\x01"), 0) == len(data)
    assert msgpack_scan.value_end(buf(data[:-1]), 0) == -1 or not items


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "bb", "", "ccc", "a\x00"]) | st.text(max_size=4), values, max_size=8),
       st.lists(st.sampled_from([b"a", b"bb", b"", b"ccc", b"zz"]), min_size=1, max_size=5, unique=True))
def test_map_fields_find_the_wanted_keys_and_skip_the_rest(mapping, wanted):
    data = msgspec.msgpack.encode(mapping)
    status, start, end, depths = msgpack_scan.map_fields(buf(data), 0, *msgpack_scan.names(wanted))
    assert status == msgpack_scan.OK
    for key, s, e, d in zip(wanted, start.tolist(), end.tolist(), depths.tolist()):
        if key.decode() in mapping:
            assert msgspec.msgpack.decode(data[s:e]) == mapping[key.decode()] and d == depth(mapping[key.decode()])
        else:
            assert s == e == d == -1


def test_the_last_of_repeated_keys_wins():
    data = b"\x83\xa1a\x01\xa1b\x02\xa1a\x91\x03"
    _, start, end, depths = msgpack_scan.map_fields(buf(data), 0, *msgpack_scan.names([b"a", b"b"]))
    assert msgspec.msgpack.decode(data[start[0]:end[0]]) == [3] and depths.tolist() == [1, 0]


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=10), st.data())
def test_cut_or_corrupted_bytes_are_malformed_never_a_crash(items, data):
    encoded = msgspec.msgpack.encode(items)
    cut = data.draw(st.integers(1, len(encoded) - 1)) if len(encoded) > 1 else 1
    status, *_ = msgpack_scan.array_items(buf(encoded[:cut]), 0, 100)
    assert status in (msgpack_scan.MALFORMED, msgpack_scan.OK)
    if status == msgpack_scan.OK:  # only when the cut falls after the last item
        assert cut == len(encoded)
    at = data.draw(st.integers(0, len(encoded) - 1))
    corrupted = encoded[:at] + b"\xc1" + encoded[at + 1:]  # the byte msgpack never uses
    status, *_ = msgpack_scan.array_items(buf(corrupted), 0, 100)
    assert status in (msgpack_scan.OK, msgpack_scan.MALFORMED)
    try:
        msgspec.msgpack.decode(corrupted)  # 0xc1 inside a str or bin is data, not a type byte
    except msgspec.DecodeError:
        return
    assert status == msgpack_scan.OK


def test_depth_costs_no_recursion_and_declared_sizes_no_memory():
    deep = b"\x91" * 1_000_000 + b"\x90"
    status, count, _, _, depths = msgpack_scan.array_items(buf(deep), 0, 1)
    assert (status, count, depths.tolist()) == (msgpack_scan.OK, 1, [1_000_000])
    huge = b"\xdd\xff\xff\xff\xff"  # an array declaring 2^32 - 1 items, holding none
    assert msgpack_scan.array_items(buf(huge), 0, 10)[0] == msgpack_scan.TOO_MANY
    assert msgpack_scan.array_items(buf(huge), 0, 2**33)[0] == msgpack_scan.MALFORMED
