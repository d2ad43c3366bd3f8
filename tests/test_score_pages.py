"""Score pages against the rows they were built from: any batch size (pages cut anywhere), any
ids and names the schemas accept, every decision, and scores read back in any order, once or
many times; and pages that are not pages, or that their batch's expiry entry does not list
exactly, are refused with a reason in a join's state before anything is written."""
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
    RecentPages,
    batch_page_keys,
    columns_at,
    encode_page,
    first_serial,
    page_rows,
    page_tables,
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
    recent = RecentPages(data.draw(st.integers(1, 8)))  # the newest pages, as their writer keeps them
    last = data.draw(st.integers(0, 2**40))
    for batch in batches:
        first = first_serial(last)
        assert first % PAGE_ROWS == 0 and first > last
        tables = page_tables(tuple(zip(*batch)))
        keys, values = batch_page_keys(first, len(batch)), list(map(encode_page, tables))
        assert len(keys) == len(values) == -(-len(batch) // PAGE_ROWS) and not stored.keys() & set(keys)
        stored.update(zip(keys, values))
        recent.add(first // PAGE_ROWS, tables)
        assert len(recent) <= recent.size
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
    columns = columns_at(np.array([serials[i] for i in asked], np.int64), fetch)
    expected = list(zip(*[rows[i] for i in asked])) or [()] * 6
    assert [list(c) if isinstance(c, list) else c.tolist() for c in columns] == list(map(list, expected))
    fetched.clear()
    columns = columns_at(np.array([serials[i] for i in asked], np.int64), fetch, recent)
    assert [list(c) if isinstance(c, list) else c.tolist() for c in columns] == list(map(list, expected))
    assert not any(recent.get(int.from_bytes(key[2:], "big")) for key in fetched)  # the store only for the others
    assert recent.get(serials[-1] // PAGE_ROWS) is not None  # the newest page is always held


def test_pages_read_together_never_lend_each_other_strings():
    """Columns gather the rows of several pages at once, their strings in one list: a page
    whose codes run past its own strings is refused, not read into its neighbour's."""
    row = np.zeros(1, [("score", "<f8"), ("tau", "<f8"), ("ts", "<f8"), ("policy", "<u2"), ("segment", "<u2"),
                       ("decision", "u1")])
    row["segment"] = 1  # the page has one string: code 1 would be the next page's first
    pages = {batch_page_keys(256, 1)[0]: msgspec.msgpack.encode((row.tobytes(), ["p"])),
             batch_page_keys(512, 1)[0]: msgspec.msgpack.encode((np.zeros(1, row.dtype).tobytes(), ["q"]))}
    fetch = lambda keys: [pages.get(k) for k in keys]  # noqa: E731
    assert columns_at(np.array([512]), fetch)[:2] == (["q"], ["q"])
    with pytest.raises(ValueError, match="no string"):
        columns_at(np.array([256, 512]), fetch)
    pages[batch_page_keys(256, 1)[0]] = msgspec.msgpack.encode((b"\x00" * 30, ["p"]))  # a row and a byte
    with pytest.raises(ValueError, match="not whole"):
        columns_at(np.array([256, 512]), fetch)


def test_a_score_not_stored_is_a_key_error():
    columns = (["p"] * 3, ["s"] * 3, [0.5] * 3, [0.5] * 3, ["act"] * 3, [1.0] * 3)
    values = dict(zip(batch_page_keys(256, 3), map(encode_page, page_tables(columns))))
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
        page_rows(value)


def _page(rows: int) -> bytes:
    columns = (["p"] * rows, ["s"] * rows, [0.5] * rows, [0.5] * rows, ["act"] * rows, [1.0] * rows)
    return encode_page(page_tables(columns)[0])


def _n(first: int, n: int) -> bytes:
    return msgspec.msgpack.encode([first, [b"a"] * n])


P, X = b"p:" + (2).to_bytes(8, "big"), b"x:000000000000100000000001N"  # the second page; the expiry entry


@pytest.mark.parametrize(("change", "reason"), [
    (lambda e: {**e, P: b"\x92\xc4\x01\x00\x90"}, "score page"),
    (lambda e: {**e, P: _page(43)}, "page 1 of 2 missing or not of 44 rows"),
    (lambda e: {k: v for k, v in e.items() if k != P}, "page 1 of 2 missing"),
    (lambda e: {**e, X: _n(257, 300)}, "from serial 257"),
    (lambda e: {**e, X: _n(256, 0)}, "of 0 scores"),
    (lambda e: {**e, b"m:serial": b"554"}, "the last is 554"),
    (lambda e: {**e, b"m:serial": b"%d" % (1 << 62)}, "out of range"),
    (lambda e: {**e, b"m:serial": b"x"}, "invalid literal"),
    (lambda e: {**e, X: b"\x92\x01"}, "score expiry entry"),
    (lambda e: {**e, b"p:" + (9).to_bytes(8, "big"): _page(3)}, "1 score pages that no expiry entry lists"),
    (lambda e: {**e, X[:-2] + b"2N": _n(256, 300)}, "page 0 of 2 missing"),  # a second entry for the same pages
])
def test_a_state_whose_pages_its_expiry_entries_do_not_list_exactly_is_refused_before_anything_is_written(
        change, reason):
    """A whole state of a batch of 300 scores (two pages under serials 256..555) with one thing
    changed. Loaded, each would fail later, when feedback asks for a score (a page missing or
    short), join the wrong score (a batch whose rows start mid-page), or let one batch's expiry
    delete another's page."""
    join = FeedbackJoin(None)
    again = FeedbackJoin(None)
    try:
        join.add_scores(["a"] * 300, [("p", "s", 0.5, 0.5, "act", 100.0)] * 300)
        state = join.dump()
        entries = dict(e for part in state["parts"] for e in msgspec.msgpack.decode(part))
        entries = {(X if k.startswith(b"x:") else k): v for k, v in entries.items()}
        assert sorted(k for k in entries if k[:2] in (b"p:", b"x:")) == [b"p:" + (1).to_bytes(8, "big"), P, X]
        again.load({**state, "parts": [msgspec.msgpack.encode(sorted(entries.items()))]})  # unchanged: taken
        assert again.pending_scores == 300 and again.lookup(["a"])[0][5] == 100.0
        fresh = FeedbackJoin(None)
        try:
            with pytest.raises(ValueError, match=f"join state: .*{reason}"):
                fresh.load({**state, "parts": [msgspec.msgpack.encode(sorted(change(entries).items()))]})
            assert list(fresh.db.keys()) == []
        finally:
            fresh.close()
    finally:
        join.close()
        again.close()


def test_a_delta_that_writes_a_page_the_store_holds_again_is_refused():
    join = FeedbackJoin(None)
    again = FeedbackJoin(None)
    try:
        join.add_scores(["a"], [("p", "s", 0.5, 0.5, "act", 100.0)])
        join.take_changes()
        again.load(join.dump())
        join.add_scores(["b"], [("p", "s", 0.5, 0.5, "act", 101.0)])
        counters, parts = join.changes_lazily(join.take_changes())
        entries = [(b"p:" + (1).to_bytes(8, "big") if k.startswith(b"p:") else k,
                    msgspec.msgpack.encode([256, [b"b"]]) if k[-1:] == b"N" else v)
                   for part in parts for k, v in msgspec.msgpack.decode(part)]
        with pytest.raises(ValueError, match="join state: a score page the store holds is written again"):
            again.apply({**counters, "parts": [msgspec.msgpack.encode(entries)]})
        assert again.lookup(["a", "b"]) == [("p", "s", 0.5, 0.5, "act", 100.0), None]
    finally:
        join.close()
        again.close()


def test_a_join_s_slices_end_at_their_byte_size_too_so_the_expiry_entries_of_large_batches_are_not_one(
        monkeypatch):
    """An expiry entry is a row that lists its whole batch's scenario ids: by rows alone, all of
    a large store's would be one slice, hundreds of megabytes. By bytes as well, each slice
    stays within the bound but for the entry that passes it."""
    from streams.operators import join as join_module

    monkeypatch.setattr(join_module, "SLICE_BYTES", 20_000)
    join = FeedbackJoin(None)
    again = FeedbackJoin(None)
    try:
        for b in range(12):
            join.add_scores([f"scenario-{b}-{i}-" + "x" * 40 for i in range(300)],
                            [("p", "s", 0.5, 0.5, "act", 100.0 + b)] * 300)
        counters, parts = join.dump_lazily(slice_size=50_000)
        parts = list(parts)
        entries = [msgspec.msgpack.decode(part) for part in parts]
        largest = max(len(k) + len(v) for slice_ in entries for k, v in slice_)
        assert len(parts) > 3
        assert all(sum(len(k) + len(v) for k, v in slice_) < 20_000 + largest for slice_ in entries)
        expiry = [sum(k.startswith(b"x:") for k, _ in slice_) for slice_ in entries]
        assert sum(expiry) == 12 and max(expiry) < 12  # the expiry entries are in several slices
        again.load({**counters, "parts": parts})
        assert again.dump() == join.dump() and again.pending_scores == 3600
    finally:
        join.close()
        again.close()


def test_a_join_is_dumped_and_its_changes_taken_in_slices_that_count_a_page_as_its_scores():
    """A slice bounds a round's share of a checkpoint: counted in entries, one slice could
    take every page of a store, 256 times the scores a slice of other keys holds."""
    join = FeedbackJoin(None)
    again = FeedbackJoin(None)
    try:
        join.take_changes()
        for b in range(3):
            join.add_scores([f"s{b}-{i}" for i in range(1000)], [("p", "s", 0.5, 0.5, "act", 100.0 + b)] * 1000)
        for counters, parts in (join.dump_lazily(slice_size=600), join.changes_lazily(join.take_changes(), 600)):
            parts = list(parts)
            pages = [sum(k.startswith(b"p:") for k, _ in msgspec.msgpack.decode(part)) for part in parts]
            assert sum(pages) == 12 and max(pages) == 3  # 600 rows: two pages, and the third that passes them
        again.load({**counters, "parts": parts})  # the changes since a capture of an empty store: all of it
        assert again.dump() == join.dump() and again.pending_scores == 3000
    finally:
        join.close()
        again.close()
