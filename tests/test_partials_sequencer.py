"""Partials messages are applied in the order they were sent, each once, whatever order they
land in: against the plain definition, over every delivery order with re-deliveries and
restarts from a checkpoint at any point."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.worker.sequencer import PartialsSequencer


@st.composite
def deliveries(draw):
    """Messages 1..n of a few input partitions, each delivered once or more, in any order,
    with a restart (from the checkpoint the sequencer would write then) after any of them."""
    sent = [(src, seq) for src in range(draw(st.integers(1, 3))) for seq in range(1, draw(st.integers(1, 8)) + 1)]
    copies = sent + draw(st.lists(st.sampled_from(sent), max_size=6))
    order = draw(st.permutations(copies))
    restarts = draw(st.sets(st.integers(0, len(order) - 1), max_size=3))
    return sent, order, restarts


@settings(max_examples=400, deadline=None)
@given(deliveries())
def test_each_message_is_applied_once_in_the_order_it_was_sent(drawn):
    sent, log, restarts = drawn  # `log`: the partials partition, offset = index
    applied: list[tuple[int, int]] = []
    seq = PartialsSequencer()
    offset = 0
    while offset < len(log):
        src, n = log[offset]
        applied += seq.accept(src, n, offset, (src, n))
        offset += 1
        if offset - 1 in restarts:  # checkpoint, crash, load: read again from where it says
            restarts = restarts - {offset - 1}  # each restart happens once
            resume = seq.resume_offset(offset)
            assert resume <= offset
            seq = PartialsSequencer(dict(seq.applied))
            offset = resume
    for src in {s for s, _ in sent}:
        assert [n for s, n in applied if s == src] == [n for s, n in sent if s == src]
    assert seq.held == 0


def test_a_message_that_lands_early_waits_for_the_one_before_it():
    seq = PartialsSequencer()
    assert seq.accept(0, 1, 10, "a") == ["a"]
    assert seq.accept(0, 3, 11, "c") == [] and seq.held == 1
    assert seq.resume_offset(12) == 11  # "c" is not applied: a restart must read it again
    assert seq.accept(1, 1, 12, "x") == ["x"]  # other inputs are not held up
    assert seq.accept(0, 2, 13, "b") == ["b", "c"] and seq.held == 0
    assert seq.accept(0, 2, 14, "b") == [] and seq.resume_offset(15) == 15
    assert seq.applied == {0: 3, 1: 1}
