"""Score pages against the rows they were built from: any batch size (pages cut anywhere), any
ids and names the schemas accept, every decision, and scores read back in any order, once or
many times; and pages that are not pages are refused with a reason, also in a join's state."""
from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.layout import DECISIONS
from streams.operators.join import FeedbackJoin
from streams.operators.score_pages import (
    PAGE_ROWS,
    batch_page_keys,
    check_page,
    first_serial,
    page_values,
    rows_at,
)

NAMES = st.one_of(st.sampled_from(["default", "p", "p\x00", "é" * 256]), st.text(min_size=1, max_size=256))
ROW = st.tuples(NAMES, NAMES, st.floats(0, 1), st.floats(0, 1), st.sampled_from(DECISIONS),
                st.floats(0, 253402300799.999))


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.lists(ROW, min_size=1, max_size=3 * PAGE_ROWS + 1), min_size=1, max_size=3),
       data=st.data())
def test_pages_give_back_exactly_the_rows_of_their_batches(batches, data):
    stored, serials, rows = {}, [], []
    last = data.draw(st.integers(0, 2**40))
    for batch in batches:
        first = first_serial(last)
        assert first % PAGE_ROWS == 0 and first > last
        keys, values = batch_page_keys(first, len(batch)), page_values(tuple(zip(*batch)))
        assert len(keys) == len(values) == -(-len(batch) // PAGE_ROWS) and not stored.keys() & set(keys)
        stored.update(zip(keys, values))
        serials += range(first, first + len(batch))
        rows += batch
        last = first + len(batch) - 1
    asked = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=600))
    fetched = []

    def fetch(keys):
        fetched.extend(keys)
        return [stored.get(k) for k in keys]

    got = rows_at(np.array([serials[i] for i in asked], np.int64), fetch)
    assert got == [rows[i] for i in asked]  # bit for bit: floats as float64
    assert len(fetched) == len(set(fetched))  # a page is read once a call


def test_a_score_not_stored_is_a_key_error():
    columns = (["p"] * 3, ["s"] * 3, [0.5] * 3, [0.5] * 3, ["act"] * 3, [1.0] * 3)
    values = dict(zip(batch_page_keys(256, 3), page_values(columns)))
    fetch = lambda keys: [values.get(k) for k in keys]  # noqa: E731
    with pytest.raises(KeyError, match="beyond its page"):
        rows_at(np.array([259]), fetch)
    with pytest.raises(KeyError, match="not stored"):
        rows_at(np.array([512]), fetch)


@pytest.mark.parametrize(("value", "reason"), [
    (b"\xc1", "score page"),
    (msgspec.msgpack.encode(("x", ["p"])), "score page"),
    (msgspec.msgpack.encode((b"", ["p"])), "0 bytes of rows"),
    (msgspec.msgpack.encode((b"\x00" * 30, ["p"])), "30 bytes of rows"),
    (msgspec.msgpack.encode((b"\x00" * 29 * (PAGE_ROWS + 1), ["p"])), "bytes of rows"),
    (msgspec.msgpack.encode((b"\x00" * 24 + b"\x01\x00" + b"\x00\x00" + b"\x00", ["p"])), "no string or decision"),
    (msgspec.msgpack.encode((b"\x00" * 28 + b"\x03", ["p"])), "no string or decision"),
])
def test_a_value_that_is_not_a_page_is_refused_with_its_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        check_page(value)


def test_a_state_with_a_bad_page_is_refused_as_a_join_state():
    join = FeedbackJoin(None)
    try:
        join.add_scores(["a"], [("p", "s", 0.5, 0.5, "act", 1.0)])
        state = join.dump()
        entries = [(k, b"\x92\xc4\x01\x00\x90" if k.startswith(b"p:") else v)
                   for part in state["parts"] for k, v in msgspec.msgpack.decode(part)]
        again = FeedbackJoin(None)
        with pytest.raises(ValueError, match="join state: score page"):
            again.load({**state, "parts": [msgspec.msgpack.encode(entries)]})
        again.close()
    finally:
        join.close()
