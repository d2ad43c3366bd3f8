"""The compiled MurmurHash3 against mmh3, the reference C implementation: bit for bit, for ids
of every length (a block boundary every 16 bytes, tails of 1 to 15), any bytes, any prefix."""
from __future__ import annotations

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.murmur3 import digests, digests_of_str


def _reference(ids: list[bytes]) -> list[bytes]:
    return [mmh3.hash_bytes(i) for i in ids]


def test_every_length_up_to_four_blocks_matches_mmh3():
    rng = np.random.default_rng(7)
    ids = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(65) for _ in range(8)]
    assert [bytes(d) for d in digests(ids)] == _reference(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40),
       st.lists(st.binary(max_size=20), min_size=1, max_size=4), st.data())
def test_prefixed_ids_digest_as_their_concatenation(ids, prefixes, data):
    which = data.draw(st.lists(st.integers(0, len(prefixes) - 1), min_size=len(ids), max_size=len(ids)))
    got = digests(ids, tuple(prefixes), which)
    assert got.shape == (len(ids), 2) and got.dtype == np.uint64
    assert [bytes(d) for d in got] == _reference([prefixes[w] + i for w, i in zip(which, ids)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=40), st.booleans())
def test_strings_digest_as_their_utf8_bytes(ids, prefixed):
    which = [len(i) % 2 for i in ids] if prefixed else None
    prefixes = (b"f:", b"s:") if prefixed else (b"",)
    expected = [(prefixes[w] if prefixed else b"") + i.encode() for w, i in zip(which or [0] * len(ids), ids)]
    assert [bytes(d) for d in digests_of_str(ids, prefixes, which)] == _reference(expected)


def test_a_string_no_utf8_can_hold_is_refused():
    with pytest.raises(UnicodeEncodeError):
        digests_of_str(["ok", "\ud800"])


def test_a_prefix_choice_that_names_no_prefix_is_refused():
    for which in ([0], [0, 2], [-1, 0]):  # too few, past the prefixes, before them
        with pytest.raises(ValueError, match="which must name"):
            digests([b"a", b"b"], (b"f:", b"s:"), which)
