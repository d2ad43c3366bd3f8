"""The compiled detector (`kernels.detector.MixtureSR`) against the pure-Python reference it
compiles: the same log R, bit for bit, over the whole domain the rules feed it (weighted
label sums and Poisson counts, every rate the configuration accepts, both tails, looks of
any length), so trigger ids do not depend on which one runs."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.detector import MixtureSR, peek_each
from kernels.reference.sequential import MixtureSR as Reference

rates = st.floats(1e-9, 1 - 1e-9).filter(lambda p: 0.0 < p < 1.0)
sums = st.floats(0.0, 1e7, allow_nan=False, allow_infinity=False)


@st.composite
def updates(draw, max_size=12):
    """(x, n) with 0 <= x <= n: a weighted success sum and weight sum, or a count and exposure."""
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        n = draw(sums)
        out.append((draw(st.floats(0.0, 1.0)) * n, n))
    return out


@settings(max_examples=300, deadline=None)
@given(p0=rates, upper=st.booleans(), poisson=st.booleans(), threshold=st.floats(0.0, 60.0),
       history=updates(), look=updates(max_size=6))
def test_the_compiled_detector_is_the_reference_bit_for_bit(p0, upper, poisson, threshold, history, look):
    if poisson:
        upper = False  # the Poisson ratio is for the lower tail only
    compiled, reference = MixtureSR(p0, threshold, upper, poisson), Reference(p0, threshold, upper, poisson)
    assert compiled.p1 == reference.p1
    for x, n in history:
        assert compiled.update(x, n) == reference.update(x, n)
        assert compiled.log_r == reference.log_r  # exact, -inf and +inf included
        assert _same(compiled.get(), reference.get())
    assert _same(compiled.peek(look), reference.peek(look))
    assert compiled.log_r == reference.log_r  # a look keeps nothing


def test_state_round_trips_as_plain_floats_and_reset_starts_over():
    d = MixtureSR(0.2, 5.0)
    for _ in range(3):
        d.update(40.0, 100.0)
    saved = d.log_r
    assert all(type(v) is float for v in saved)
    other = MixtureSR(0.2, 5.0)
    other.log_r = saved
    assert other.get() == d.get() and other.update(40.0, 100.0) == d.update(40.0, 100.0)
    d.reset()
    assert d.get() == -math.inf and d.log_r == [-math.inf] * len(d.p1)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@settings(max_examples=200, deadline=None)
@given(p0=rates, upper=st.booleans(), poisson=st.booleans(), histories=st.lists(updates(), max_size=6),
       data=st.data())
def test_looks_at_many_detectors_in_one_call_are_each_ones_own_look(p0, upper, poisson, histories, data):
    """`peek_each`, one call for all detectors, gives each detector what the reference's own
    look gives, bit for bit: rows in any order, shared or not looked at, groups of any size."""
    if poisson:
        upper = False
    compiled = [MixtureSR(p0, 10.0, upper, poisson) for _ in histories]
    references = [Reference(p0, 10.0, upper, poisson) for _ in histories]
    for c, r, history in zip(compiled, references, histories):
        for x, n in history:
            c.update(x, n)
            r.update(x, n)
    columns = data.draw(updates(max_size=20))
    x, n = np.array([u[0] for u in columns]), np.array([u[1] for u in columns])
    index = st.integers(0, max(len(columns) - 1, 0))
    looks = [data.draw(st.lists(index, max_size=5 if columns else 0)) for _ in histories]
    bounds = np.cumsum([0, *map(len, looks)])
    got = peek_each(compiled, x, n, np.array([i for look in looks for i in look], dtype=np.int64), bounds)
    assert len(got) == len(histories)
    for value, reference, look in zip(got.tolist(), references, looks):
        assert _same(value, reference.peek([columns[i] for i in look]))
    assert [c.log_r for c in compiled] == [r.log_r for r in references]  # looks keep nothing
