"""Partials messages are applied in the order they were sent, each once, whatever order they
land in: against the plain definition, over every delivery order with re-deliveries and
restarts from a checkpoint at any point."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state.snapshot import SnapshotError
from streams.worker.sequencer import PartialsSequencer


def _cut(draw, src: int, numbers: list[int]) -> list[tuple]:
    """Parts `numbers` (consecutive) of input partition `src` in messages (src, first, parts),
    cut anywhere, as rounds cut them."""
    out, i = [], 0
    while i < len(numbers):
        k = draw(st.integers(1, len(numbers) - i))
        out.append((src, numbers[i], tuple((src, n) for n in numbers[i:i + k])))
        i += k
    return out


@st.composite
def deliveries(draw):
    """Parts 1..n of a few input partitions in messages cut anywhere, and resent from any part
    on, cut differently (a replay from a checkpoint); each delivered once or more, in any order,
    with a restart (from the checkpoint the sequencer would write then) after any of them."""
    sent, messages = [], []
    for src in range(draw(st.integers(1, 3))):
        numbers = list(range(1, draw(st.integers(1, 8)) + 1))
        sent += [(src, n) for n in numbers]
        messages += _cut(draw, src, numbers)
        for _ in range(draw(st.integers(0, 2))):
            messages += _cut(draw, src, numbers[draw(st.integers(0, len(numbers) - 1)):])
    copies = messages + draw(st.lists(st.sampled_from(messages), max_size=6))
    order = draw(st.permutations(copies))
    restarts = draw(st.sets(st.integers(0, len(order) - 1), max_size=3))
    return sent, order, restarts


@settings(max_examples=400, deadline=None)
@given(deliveries())
def test_each_part_is_applied_once_in_the_order_it_was_sent(drawn):
    sent, log, restarts = drawn  # `log`: the partials partition, offset = index
    applied: list[tuple[int, int]] = []
    seq = PartialsSequencer()
    offset = 0
    while offset < len(log):
        src, first, parts = log[offset]
        applied += seq.accept(src, first, offset, parts)
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
    assert seq.accept(0, 1, 10, ["a"]) == ["a"]
    assert seq.accept(0, 3, 11, ["c"]) == [] and seq.held == 1
    assert seq.resume_offset(12) == 11  # "c" is not applied: a restart must read it again
    assert seq.accept(1, 1, 12, ["x"]) == ["x"]  # other inputs are not held up
    assert seq.accept(0, 2, 13, ["b"]) == ["b", "c"] and seq.held == 0
    assert seq.accept(0, 2, 14, ["b"]) == [] and seq.resume_offset(15) == 15
    assert seq.applied == {0: 3, 1: 1}


@st.composite
def deleted_before_read(draw):
    """Parts 1..n of a few input partitions in messages cut anywhere, in send order,
    interleaved; some re-delivered later, some parts resent later from any part on, cut
    differently (a replay); the offsets [a, b) deleted before the reader got to them, the log's
    end `e` when it finds them gone (the rest lands later), and restarts after any offset it
    reads. Retention deletes old records, long after resends of their time landed: `e` is past
    every message holding a part first sent before offset b."""
    counts = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    queues = [_cut(draw, src, list(range(1, k + 1))) for src, k in enumerate(counts)]
    log = []
    while any(queues):
        log.append(draw(st.sampled_from([q for q in queues if q])).pop(0))
    for _ in range(draw(st.integers(0, 4))):  # a re-delivery lands after its original
        at = draw(st.integers(0, len(log) - 1))
        log.insert(draw(st.integers(at + 1, len(log))), log[at])
    for _ in range(draw(st.integers(0, 2))):  # a replay lands after the original of its first part
        at = draw(st.integers(0, len(log) - 1))
        src, first, parts = log[at]
        again = _cut(draw, src, list(range(first + draw(st.integers(0, len(parts) - 1)), counts[src] + 1)))
        where = draw(st.integers(at + 1, len(log)))
        log[where:where] = again
    a = draw(st.integers(0, len(log)))
    b = draw(st.integers(a, len(log)))
    first_sent = {}
    for i, (_, _, parts) in enumerate(log):
        for part in parts:
            first_sent.setdefault(part, i)
    early = [i + 1 for i, (_, _, parts) in enumerate(log) if any(first_sent[part] < b for part in parts)]
    e = draw(st.integers(max([b] + early), len(log)))
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
            applied += [part for _, parts in seq.give_up(e) for part in parts]
            offset = b
            continue
        src, first, parts = log[offset]
        applied += seq.accept(src, first, offset, parts)
        offset += 1
        if offset - 1 in restarts:
            restarts = restarts - {offset - 1}
            resume = seq.resume_offset(offset)
            seq = PartialsSequencer(dict(seq.applied), seq.resync)
            offset = resume
    return applied, seq


@settings(max_examples=1000, deadline=None)
@given(deleted_before_read())
def test_after_messages_are_deleted_unread_every_part_still_in_the_log_is_applied_once_in_order(drawn):
    """Restarts at any point, also between the give-up and the end it noted. Each input
    partition's applied parts: every one the log still holds, once, in the order sent; the
    parts of a message that lands after a later part are dropped (before the gap they were
    applied already; after it, the ones before that part were given up). Nothing is left waiting."""
    log, a, b, e, restarts = drawn
    applied, seq = _read(log, a, b, e, restarts)
    kept = [m for i, m in enumerate(log) if not a <= i < b]
    for src in {s for s, _, _ in log}:
        expected: list[int] = []
        for _, _, parts in (m for m in kept if m[0] == src):
            expected += [n for _, n in parts if not expected or n > expected[-1]]
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
    got, seq = _read([(src, n, ((src, n),)) for src, n in log], a, b, e, set())
    assert [n for s, n in got if s == 0] == applied and seq.held == 0


def test_past_the_end_noted_at_the_give_up_a_message_that_comes_early_waits_again():
    seq = PartialsSequencer({0: 1, 1: 4})
    assert seq.accept(0, 3, 10, ["c"]) == [] and seq.held == 1  # waits for 2
    assert seq.give_up(end=20) == [(0, ["c"])] and seq.held == 0 and seq.applied == {0: 3, 1: 4}
    assert seq.accept(1, 3, 11, ["old"]) == []  # a re-delivery of one applied: dropped
    assert seq.accept(1, 6, 12, ["f"]) == ["f"]  # 5 was deleted
    assert seq.accept(1, 7, 13, ["g"]) == ["g"] and seq.resync == [20, []]  # before the end: not settled
    assert seq.accept(1, 9, 20, ["i"]) == ["i"]  # past it, not following 7: 8 was deleted
    assert seq.accept(1, 10, 21, ["j"]) == ["j"] and seq.resync == [20, [1]]  # settled
    assert seq.accept(1, 12, 22, ["l"]) == [] and seq.held == 1  # from now on, 11 is waited for
    assert seq.accept(1, 11, 23, ["k"]) == ["k", "l"]
    assert seq.accept(0, 4, 24, ["d"]) == ["d"] and seq.resync == [20, [0, 1]]
    assert seq.applied == {0: 4, 1: 12}


def test_a_replay_s_message_overlapping_the_parts_applied_gives_only_the_rest_and_can_settle_a_resync():
    seq = PartialsSequencer({0: 2})
    assert seq.accept(0, 1, 5, ["a", "b", "c"]) == ["c"]  # a replay cut its round differently
    assert seq.give_up(end=10) == [] and seq.resync == [10, []]
    assert seq.accept(0, 3, 10, ["c", "d"]) == ["d"] and seq.resync == [10, [0]]  # follows on from 3: settled
    assert seq.accept(0, 6, 11, ["f"]) == [] and seq.held == 1  # so 5 is waited for
    assert seq.accept(0, 4, 12, ["d", "e"]) == ["e", "f"] and seq.applied == {0: 6}


@pytest.mark.parametrize("resync", [{"12": 1}, [20], [20, [0, "1"]], ["20", []], [20, [0], 1], [True, []]])
def test_a_checkpoint_s_malformed_resync_state_is_refused_with_what_it_holds(resync):
    with pytest.raises(SnapshotError, match="resync state"):
        PartialsSequencer({0: 1}, resync)
