"""Partials messages are applied in the order they were sent, each once, whatever order they
land in: against the plain definition, over every delivery order with re-deliveries and
restarts from a checkpoint at any point."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state.snapshot import SnapshotError
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


@st.composite
def deleted_before_read(draw):
    """Messages 1..n of a few input partitions in send order, interleaved, some re-delivered
    later; the offsets [a, b) deleted before the reader got to them, the log's end `e` when it
    finds them gone (the rest lands later), and restarts after any offset it reads. Retention
    deletes old records, long after resends of their time landed: `e` is past every copy of
    a message sent before offset b."""
    counts = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    queues = [[(src, n) for n in range(1, k + 1)] for src, k in enumerate(counts)]
    log = []
    while any(queues):
        log.append(draw(st.sampled_from([q for q in queues if q])).pop(0))
    for _ in range(draw(st.integers(0, 4))):  # a re-delivery lands after its original
        at = draw(st.integers(0, len(log) - 1))
        log.insert(draw(st.integers(at + 1, len(log))), log[at])
    a = draw(st.integers(0, len(log)))
    b = draw(st.integers(a, len(log)))
    first = {}
    for i, m in enumerate(log):
        first.setdefault(m, i)
    e = draw(st.integers(max([b] + [i + 1 for i, m in enumerate(log) if first[m] < b]), len(log)))
    restarts = draw(st.sets(st.integers(0, len(log) - 1), max_size=4))
    return log, a, b, e, restarts


def _read(log, a, b, e, restarts):
    """What a reader applies of `log` whose offsets [a, b) are gone: its fetch jumps from a to b
    and it gives up on them (the log then ending at `e`), restarting from its checkpoints after
    the offsets in `restarts`; and its sequencer at the end."""
    applied: list[tuple[int, int]] = []
    seq, offset = PartialsSequencer(), 0
    while offset < len(log):
        if a <= offset < b:
            applied += [part for _, part in seq.give_up(e)]
            offset = b
            continue
        src, n = log[offset]
        applied += seq.accept(src, n, offset, (src, n))
        offset += 1
        if offset - 1 in restarts:
            restarts = restarts - {offset - 1}
            resume = seq.resume_offset(offset)
            seq = PartialsSequencer(dict(seq.applied), seq.resync)
            offset = resume
    return applied, seq


@settings(max_examples=1000, deadline=None)
@given(deleted_before_read())
def test_after_messages_are_deleted_unread_every_message_still_in_the_log_is_applied_once_in_order(drawn):
    """Restarts at any point, also between the give-up and the end it noted. Each input
    partition's applied messages: every one the log still holds, once, in the order sent; a
    re-delivery that lands after a later message is dropped (before the gap it was applied
    already; after it, the ones before that message were given up). Nothing is left waiting."""
    log, a, b, e, restarts = drawn
    applied, seq = _read(log, a, b, e, restarts)
    kept = [m for i, m in enumerate(log) if not a <= i < b]
    for src in {s for s, _ in log}:
        expected: list[int] = []
        for n in (n for s, n in kept if s == src):
            if not expected or n > expected[-1]:
                expected.append(n)
        assert [n for s, n in applied if s == src] == expected
    assert seq.held == 0


@pytest.mark.parametrize("log, a, b, e, applied", [
    # resends of 1 and 2 landed after 3, which was deleted: 4 does not wait for 3
    ([(0, 3), (0, 1), (0, 2), (0, 4), (0, 5)], 0, 1, 5, [1, 2, 4, 5]),
    ([(0, 3), (0, 4), (0, 1), (0, 2), (0, 5)], 0, 2, 5, [1, 2, 5]),
    # a resend of 1 after 2, which was deleted, and 3 lands after the end noted: it does not wait for 2
    ([(0, 2), (0, 1), (0, 3), (0, 4)], 0, 1, 2, [1, 3, 4]),
    # an input partition that sent nothing between the give-up and the end: its next does not wait
    ([(0, 1), (1, 1), (1, 2), (0, 2), (0, 5), (0, 6)], 1, 4, 4, [1, 5, 6]),
])
def test_a_give_up_leaves_nothing_waiting_for_a_deleted_message(log, a, b, e, applied):
    got, seq = _read(log, a, b, e, set())
    assert [n for s, n in got if s == 0] == applied and seq.held == 0


def test_past_the_end_noted_at_the_give_up_a_message_that_comes_early_waits_again():
    seq = PartialsSequencer({0: 1, 1: 4})
    assert seq.accept(0, 3, 10, "c") == [] and seq.held == 1  # waits for 2
    assert seq.give_up(end=20) == [(0, "c")] and seq.held == 0 and seq.applied == {0: 3, 1: 4}
    assert seq.accept(1, 3, 11, "old") == []  # a re-delivery of one applied: dropped
    assert seq.accept(1, 6, 12, "f") == ["f"]  # 5 was deleted
    assert seq.accept(1, 7, 13, "g") == ["g"] and seq.resync == [20, []]  # before the end: not settled
    assert seq.accept(1, 9, 20, "i") == ["i"]  # past it, not following 7: 8 was deleted
    assert seq.accept(1, 10, 21, "j") == ["j"] and seq.resync == [20, [1]]  # settled
    assert seq.accept(1, 12, 22, "l") == [] and seq.held == 1  # from now on, 11 is waited for
    assert seq.accept(1, 11, 23, "k") == ["k", "l"]
    assert seq.accept(0, 4, 24, "d") == ["d"] and seq.resync == [20, [0, 1]]
    assert seq.applied == {0: 4, 1: 12}


@pytest.mark.parametrize("resync", [{"12": 1}, [20], [20, [0, "1"]], ["20", []], [20, [0], 1], [True, []]])
def test_a_checkpoint_s_malformed_resync_state_is_refused_with_what_it_holds(resync):
    with pytest.raises(SnapshotError, match="resync state"):
        PartialsSequencer({0: 1}, resync)
