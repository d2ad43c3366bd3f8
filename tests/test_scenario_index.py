"""The join's scenario index against a dict: any sequence of batches of puts, merges, reads
and replacements, on digests that share their high or low halves, through growth and the
rebuilds that reclaim deleted slots."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.digest_map
from kernels.digest_map import DEAD, LIVE
from kernels.scenario_index import ScenarioIndex

# few distinct halves: digests that share one half, and probe paths that cross
DIGESTS = st.tuples(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 40))


def _array(digests) -> np.ndarray:
    return np.array(digests, np.uint64).reshape(-1, 2)


@st.composite
def batches(draw):
    out = []
    for _ in range(draw(st.integers(1, 30))):
        digests = draw(st.lists(DIGESTS, min_size=0, max_size=40))
        op = draw(st.sampled_from(["put", "merge", "get", "replace"]))
        numbers = draw(st.lists(st.integers(0, 2**40), min_size=len(digests), max_size=len(digests)))
        flags = draw(st.lists(st.booleans(), min_size=len(digests), max_size=len(digests)))
        out.append((op, digests, numbers, flags))
    return out


@settings(max_examples=300, deadline=None)
@given(batches(), st.sampled_from([2, 3, 8, 1000, 1024]), st.sampled_from([1 << 20, 4]))
def test_the_index_answers_as_a_dict_does(ops, slots, double_below):
    """Tables of any size, growing by doubling or by a quarter (from `DOUBLE_BELOW` slots)."""
    kept, kernels.digest_map.DOUBLE_BELOW = kernels.digest_map.DOUBLE_BELOW, double_below
    try:
        _answers_as_a_dict(ops, slots)
    finally:
        kernels.digest_map.DOUBLE_BELOW = kept


def _answers_as_a_dict(ops, slots):
    index, ref = ScenarioIndex(slots), {}  # ref: digest -> (latest, scored more than once)
    serial = 0
    for op, digests, numbers, flags in ops:
        d = _array(digests)
        if op == "put":
            serials = np.arange(serial + 1, serial + 1 + len(digests))
            serial += len(digests)
            want = []
            for key, s in zip(digests, serials.tolist()):
                want.append(ref.get(key, (0, False)))
                ref[key] = (s, want[-1][0] != 0)
            latest, rescored = index.put(d, serials)
            assert list(zip(latest.tolist(), rescored.tolist())) == want
        elif op == "merge":  # serials in any order
            for key, n in zip(digests, numbers):
                latest, _ = ref.get(key, (0, False))
                ref[key] = (max(latest, n + 1), True) if latest else (n + 1, False)
            index.merge(d, np.array(numbers, np.int64) + 1)
        elif op == "get":
            latest, rescored = index.get(d)
            assert list(zip(latest.tolist(), rescored.tolist())) == [ref.get(k, (0, False)) for k in digests]
        else:  # replace: a scenario's latest as it stands (most) or any other number (left alone)
            latest = [ref.get(k, (0, False))[0] if n % 3 else n for k, n in zip(digests, numbers)]
            new = [n if n % 5 else 0 for n in numbers]
            for key, was, s, f in zip(digests, latest, new, flags):
                if key in ref and ref[key][0] == was:
                    if s == 0:
                        del ref[key]
                    else:
                        ref[key] = (s, f)
            index.replace(d, np.array(latest), np.array(new), np.array(flags, np.bool_))
        assert len(index) == len(ref)
        assert 4 * (len(index) + index.meta[DEAD]) <= 3 * len(index.state)  # live and deleted
    latest, rescored = index.get(_array(list(ref)))
    assert list(zip(latest.tolist(), rescored.tolist())) == list(ref.values())


def test_a_steady_number_of_scenarios_keeps_the_table_s_size_under_churn():
    """Deleted slots are reclaimed by rebuilding in place, not by growing."""
    index = ScenarioIndex()
    rng = np.random.default_rng(1)
    sizes = set()
    serial = 0
    live = rng.integers(0, 2**63, size=(1000, 2), dtype=np.uint64)
    index.put(live, np.arange(1, 1001))
    serial = 1000
    for _ in range(200):
        fresh = rng.integers(0, 2**63, size=(100, 2), dtype=np.uint64)
        old, live = live[:100], np.concatenate([live[100:], fresh])
        latest, _ = index.get(old)
        index.replace(old, latest, np.zeros(100), np.zeros(100, np.bool_))
        index.put(fresh, np.arange(serial + 1, serial + 101))
        serial += 100
        sizes.add(len(index.state))
        assert len(index) == 1000
    assert sizes == {2048}  # 1,000 live: over five eighths of 1,024


def test_a_table_most_of_whose_scenarios_expired_shrinks_and_keeps_the_rest():
    index = ScenarioIndex()
    d = np.random.default_rng(2).integers(0, 2**63, size=(100_000, 2), dtype=np.uint64)
    index.put(d, np.arange(1, 100_001))
    assert len(index.state) == 262_144
    index.replace(d[100:], np.arange(101, 100_001), np.zeros(99_900), np.zeros(99_900, np.bool_))
    assert len(index.state) == 1024 and len(index) == 100
    assert index.get(d[:100])[0].tolist() == list(range(1, 101))
    index.merge(d[:2], np.array([7, 1]))  # a rebuild's order: the highest serial is the latest
    assert [x.tolist() for x in index.get(d[:2])] == [[7, 2], [True, True]]


def test_a_large_table_grows_by_a_quarter_and_finds_every_scenario(monkeypatch):
    """From `DOUBLE_BELOW` slots on a table grows by a quarter, to sizes that are no power of
    two, when its live scenarios would pass three quarters of it (to fill five eighths at most)."""
    monkeypatch.setattr(kernels.digest_map, "DOUBLE_BELOW", 4096)
    index, sizes = ScenarioIndex(), []
    d = np.random.default_rng(3).integers(0, 2**63, size=(20_000, 2), dtype=np.uint64)
    for lo in range(0, 20_000, 500):
        index.put(d[lo:lo + 500], np.arange(lo + 1, lo + 501))
        sizes.append(len(index.state))
    chain = [1024, 2048, 4096]
    while chain[-1] < 40_000:
        chain.append(chain[-1] + chain[-1] // 4)  # 5120, 6400, 8000, ...
    assert set(sizes) <= set(chain) and len(set(sizes)) > 8
    assert sizes[-1] == 30_516  # the first of them that 20,000 fill to three quarters at most
    assert index.get(d)[0].tolist() == list(range(1, 20_001))


@pytest.mark.parametrize("slots", [0, 1, 1 << 32])
def test_a_table_has_two_slots_at_least_and_fewer_than_two_to_the_32(slots):
    with pytest.raises(ValueError, match="at least 2 and below 2"):
        ScenarioIndex(slots)


def test_a_table_never_grows_past_2_to_the_32_slots():
    """A digest's home slot is scaled from 32 bits of its hash: a table that would need more
    slots is refused before anything is allocated."""
    index = ScenarioIndex()
    index.meta[LIVE] = 3 << 30  # as if it held 3.2 billion scenarios
    with pytest.raises(ValueError, match="over 2\\^32"):
        index.put(np.array([[1, 2]], np.uint64), np.array([1]))
